"""Decisions without I/O: back-off, which target takes the next batch, rate limits (next: filters).

May import relay.config and below; never trio, socket, os or time (now is passed in).
"""
