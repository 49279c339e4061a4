"""The learned cell finder: its network (net.py), training data (data.py), training (train.py),
scoring (evaluate.py) and the `wbcnet finder` commands (cli.py). The rest of wbcnet reaches it
only through data/locate.py."""
