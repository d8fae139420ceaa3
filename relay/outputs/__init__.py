"""Outputs: the delivery loop and one module per upstream (TCP and TLS, RELP, UDP, file).

May import spool/, tls/, policy/, config and below; never inputs/, app or cli.
"""
