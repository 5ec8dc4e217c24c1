"""The package version, in a module of its own: templates, firmware and the CLI read it without
importing the package's __init__ (which would tie them to everything it imports)."""

__version__ = "0.1.0"
