"""The bottom layer: what every other package stands on, importing no other wbcnet package.

    errors.py    WbcnetError: one-line errors for a user's mistake (the CLI prints them, no traceback)
    files.py     atomic writes, output folders that never lose earlier results, disk-full checks
    weights.py   safetensors in and out (never pickle), their hashes
    results.py   the typed records every command returns and every page draws
    imageio.py   decoding a picture to RGB, with a clear error naming the file
"""
