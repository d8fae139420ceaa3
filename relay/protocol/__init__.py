"""Sans-IO codecs: framing, RFC 5424/3164, RELP frames and sessions; bytes in, values out.

May import relay.errors only: never trio, socket, os or the clock (time is passed in).
"""
