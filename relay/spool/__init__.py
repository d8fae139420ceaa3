"""The per-output queue: settings, memory and disk segments, records, the router into them.

May import policy/, config, message, stats, protocol, errors; settings.py imports nothing.
"""
