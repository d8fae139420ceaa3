"""The input fuzzer's driver: hypothesis draws cases, a :class:`Rig` plays them.

Shared by tests/interop/test_fuzz.py (a few hundred cases, derandomized, the
first fault fails the test) and ``scripts/fuzz`` (for N minutes from a seed;
a fault is saved, confirmed on a fresh relay, and the fuzzing goes on with a
new relay). After every case the relay must still run and have logged no
traceback; every ``check_every`` cases every good client's latest message
must have arrived; at the end every good message arrived exactly once and
the relay exits 0 on SIGTERM.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from tests.interop.fuzzcases import EVENTS, Case, case_to_json, fuzz_case
from tests.interop.fuzzrig import Pki, Rig


@dataclass
class Fault:
    """Something a case (or one of the last few) did to the relay."""

    text: str
    cases: list[Case]  # the cases played since the last good check, the latest last
    reproducer: Case | None = None  # the one case that does it alone on a fresh relay
    saved: Path | None = None
    repeats: int = 0

    @property
    def signature(self) -> str:
        """What tells two faults apart: the first line, without numbers of the moment."""
        head = self.text.splitlines()[0]
        tail = [ln for ln in self.text.splitlines() if "error" in ln.lower()][-1:]
        return " | ".join([head.split(";")[0], *tail])


class FaultFound(AssertionError):
    pass


@dataclass
class Fuzzer:
    """Plays cases against a rig; ``restart=False`` raises FaultFound at the first fault."""

    directory: Path
    restart: bool = False
    check_every: int = 10
    confirm: bool = False  # replay a fault's cases on a fresh relay to find the culprit
    cases_run: int = 0
    faults: list[Fault] = field(default_factory=list)
    targets: collections.Counter[str] = field(default_factory=collections.Counter)
    slowest: list[tuple[float, str]] = field(default_factory=list)  # (seconds, case)
    _recent: list[Case] = field(default_factory=list)
    _rigs: int = 0
    rig: Rig | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = Pki.create(self.directory)

    def start(self) -> Rig:
        self._rigs += 1
        self.rig = Rig(self.directory / f"rig-{self._rigs}", self.pki).start()
        return self.rig

    def play(self, case: Case) -> None:
        assert self.rig is not None
        started = time.monotonic()
        self.rig.play(case)
        took = time.monotonic() - started
        self.slowest = sorted([*self.slowest, (took, case.describe())], reverse=True)[:5]
        self.cases_run += 1
        self.targets[case.target] += 1
        self._recent.append(case)
        problems = self.rig.faults()
        if not problems and self.cases_run % self.check_every == 0:
            problems = self.rig.check_progress()
            if not problems:
                self._recent = []
        if problems:
            self._fault("\n".join(problems))

    def _fault(self, text: str) -> None:
        fault = Fault(text, list(self._recent))
        self._recent = []
        if not self.restart:
            cases = "\n".join(
                json.dumps(case_to_json(c)["chunks_repr"]) + "  " + c.describe()
                for c in fault.cases
            )
            raise FaultFound(f"{text}\n--- the cases since the last good check:\n{cases}")
        assert self.rig is not None
        self.rig.kill()
        if self.confirm:
            fault.reproducer = self._culprit(fault.cases)
        for known in self.faults:
            if known.signature == fault.signature:
                known.repeats += 1
                break
        else:
            self.faults.append(fault)
            fault.saved = self._save(fault, len(self.faults))
        self.start()

    def _culprit(self, cases: list[Case]) -> Case | None:
        """The latest of ``cases`` that, alone on a fresh relay, stops or breaks it."""
        for case in reversed(cases):
            self._rigs += 1
            rig = Rig(self.directory / f"rig-{self._rigs}-replay", self.pki).start(good=False)
            try:
                rig.play(case)
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and rig.relay.running():
                    time.sleep(0.05)  # give a dying relay a moment: observation, not sync
                if rig.faults():
                    return case
            finally:
                rig.kill()
        return None

    def _save(self, fault: Fault, number: int) -> Path:
        path = self.directory / f"fault-{number}.json"
        data = {
            "fault": fault.text,
            "reproducer": None if fault.reproducer is None else case_to_json(fault.reproducer),
            "cases": [case_to_json(c) for c in fault.cases],
        }
        path.write_text(json.dumps(data, indent=1))
        return path

    def run(
        self,
        max_examples: int,
        *,
        seed: int | None = None,
        deadline: float | None = None,
    ) -> None:
        """Draw and play up to ``max_examples`` cases (until ``deadline``, a monotonic time).

        Without ``seed`` the draw is derandomized: the same cases every run.
        """

        @settings(
            max_examples=max_examples,
            derandomize=seed is None,
            database=None,
            phases=[Phase.generate],  # no shrinking: a dead relay fails every case
            suppress_health_check=list(HealthCheck),
            deadline=None,
        )
        @given(fuzz_case())
        def one(case: Case) -> None:
            if deadline is None or time.monotonic() < deadline:
                self.play(case)

        test: Callable[[], None] = one if seed is None else hypothesis_seed(seed)(one)
        test()

    def finish(self) -> list[str]:
        """The end checks (Rig.finish): good messages all once, exit 0, no traceback."""
        assert self.rig is not None
        return self.rig.finish()


def event_summary() -> str:
    return ", ".join(f"{name}: {n}" for name, n in sorted(EVENTS.items()))
