"""Visual localization pipeline: retrieval -> NCNet matching -> PnP + dense pose verification."""

__version__ = "0.1.0"
