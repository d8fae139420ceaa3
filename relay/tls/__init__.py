"""TLS: profiles (values), contexts and permitted peers, certificates, failures, the stream.

May import config, message, stats, protocol, errors; profile.py imports only relay.errors.
"""
