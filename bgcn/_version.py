"""The package version (one home: bgcn.__version__, versions() and the results files read it)."""
__version__ = "0.1.0"
