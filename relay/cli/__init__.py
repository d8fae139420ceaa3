"""The ``relay`` command line: the click commands (commands.py) and the test
traffic generator behind ``relay send`` (sender.py). May import anything."""

from __future__ import annotations

from relay.cli.commands import main

__all__ = ["main"]
