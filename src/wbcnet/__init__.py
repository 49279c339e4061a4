"""wbcnet: white blood cell classification with a multi-head attention CNN."""
__version__ = "0.1.0"
