"""The one exception type for mistakes a user can fix: bad input, a missing file, a wrong flag.

`wbcnet` prints a WbcnetError as one line and exits 2. Any other exception is a bug in wbcnet
and keeps its traceback. Code that raises one names the file or value and says what is wrong.
"""


class WbcnetError(Exception):
    """A problem with what the user gave us, explained in one line."""


def needs(command: str, *modules: str, install: str) -> None:
    """Refuse a command whose optional packages are missing (`a|b`: either), saying how to install them."""
    from importlib.util import find_spec

    if not all(any(find_spec(m) for m in name.split("|")) for name in modules):
        raise WbcnetError(f"wbcnet {command} needs {install}")
