"""Seeing into a running relay: the status document (status.py), the control
socket ``relay stats`` reads (control.py) and the Prometheus metrics
(metrics.py). Read at request time; nothing here runs per message."""
