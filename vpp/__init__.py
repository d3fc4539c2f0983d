"""Virtual power plant aggregation engine: the core and the application."""

__version__ = "0.1.0"
