"""Inputs, one module per transport (datagrams, TCP and TLS, RELP): they move bytes only.

May import spool/, tls/, policy/, config and below; never outputs/, app or cli.
"""
