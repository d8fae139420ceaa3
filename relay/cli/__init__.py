"""The ``relay`` command line: the click commands (commands.py, stats.py) and
the test traffic generator behind ``relay send`` (sender.py). May import anything."""

from __future__ import annotations

from relay.cli.commands import main
from relay.cli.stats import stats

main.add_command(stats)

__all__ = ["main"]
