"""``relay import-rsyslog``: an rsyslog configuration read into relay.toml text.

Pure: no I/O of its own (files are read through the ``Files`` the caller
passes), so it is tested with configurations held in a dict. ``lexer`` cuts
the text into statements, ``rsyslog`` walks them, ``actions`` makes outputs
of rsyslog's actions and queues, ``selectors`` folds ``stop`` into filters,
``toml`` writes the result.
"""

from __future__ import annotations

from relay.importer.rsyslog import Conversion, Files, MappingFiles, UnreadableConfig, convert
from relay.importer.values import Problem

__all__ = ["Conversion", "Files", "MappingFiles", "Problem", "UnreadableConfig", "convert"]
