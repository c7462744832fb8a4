"""The package version, importable from every layer (the top-level package re-exports it)."""

__version__ = "0.1.0"
