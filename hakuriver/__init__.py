"""HakuRiver: a small cluster task runner."""

__version__ = "0.4.0.dev0"
