"""The one exception type for mistakes a user can fix: bad input, a missing file, a wrong flag.

`wbcnet` prints a WbcnetError as one line and exits 2. Any other exception is a bug in wbcnet
and keeps its traceback. Code that raises one names the file or value and says what is wrong.
"""


class WbcnetError(Exception):
    """A problem with what the user gave us, explained in one line."""
