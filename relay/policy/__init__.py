"""Decisions without I/O: back-off, target choice, selectors, rate limits, redaction.

May import relay.config and below; never trio, socket, os or time (now is passed in).
"""
