"""The command line: `wbcnet <command>` (main.py), the flags and their checks (options.py), the
demo, and `wbcnet finder ...` (finder.py). The top layer: nothing imports it but __main__.
"""
