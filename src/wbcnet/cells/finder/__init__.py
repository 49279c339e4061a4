"""The learned cell finder's network (net.py) and where the shipped one lives (paths.py). Its training
is training/finder.py, its scoring evaluation/finder.py, its lab adaptation lab/finder.py and its
commands cli/finder.py. The rest of wbcnet reaches it only through cells/locate.py."""
