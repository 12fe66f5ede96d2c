"""The package's version, in a module of its own that imports nothing (the build reads it too)."""

__version__ = "0.1.0.dev0"
