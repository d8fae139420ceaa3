"""relay: a syslog relay server on trio."""

__version__ = "0.1.0"
