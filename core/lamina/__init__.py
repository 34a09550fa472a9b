"""lamina: container layer storage compatible with containers/storage."""
__version__ = "0.1.0"
