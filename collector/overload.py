"""Overload relief: when the buffer nears its bounds or decisions fall behind, new traces are
decided at once on their trace ID instead of being buffered.

A spike beyond what an agent can decide otherwise ends in one of two bad places: the buffer's
bounds make it decide traces early on whatever has arrived (or refuse them), or, without bounds,
an OOM kill. Like Refinery's stress relief, relief instead stops buffering new traces while it is
on: each is kept or dropped the moment its first span arrives, by the same FNV-1a hash of the
trace ID as the ``probabilistic`` policy (so every agent, and every span of a trace, agrees),
except that a trace with an error span in sight is kept. Spans of traces already buffered still
follow their trace to a full decision by the policies. Relief decisions are ordinary verdicts:
the decision cache (in memory, or Redis) remembers them, so later spans follow them.

The level is the highest of the buffer's fill (traces against ``num_traces``, bytes against
``buffer.max_bytes``; fleet-wide with the Redis buffer) and the decision lag against
``max_decision_lag``. Relief turns on at ``activate_at`` and off at ``deactivate_at``, after at
least ``min_duration``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from tailsampler.collector.metrics import Metrics
from tailsampler.collector.wire import Fragment
from tailsampler.common.durations import Duration
from tailsampler.common.errors import Problem
from tailsampler.common.percent import Percent
from tailsampler.common.trace_facts import STATUS_BITS, trace_hash
from tailsampler.common.verdict import Verdict
from tailsampler.policies.probabilistic import threshold

if TYPE_CHECKING:  # the config, which holds OverloadConfig, is read before the buffers are
    from tailsampler.collector.buffer import Occupancy

log = logging.getLogger(__name__)

POLICY = "overload_relief"  # the deciding "policy" of relief verdicts, in metrics and recording
ERROR_POLICY = "overload_relief_error"


class OverloadConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``tail_sampling.overload``; absent (the default) means relief never turns on."""

    activate_at: Percent = Percent(90.0)
    deactivate_at: Percent = Percent(75.0)
    sampling_percentage: float = 10.0
    max_decision_lag: Duration = Duration(5.0)  # the decision lag that counts as 100%
    min_duration: Duration = Duration(10.0)  # relief stays on at least this long once on

    def problems(self, path: str) -> list[Problem]:
        found = []
        if self.deactivate_at >= self.activate_at:
            found.append(Problem(f"{path}.deactivate_at", f"must be below activate_at ({self.activate_at:g}%)"))
        if self.activate_at <= 0:
            found.append(Problem(f"{path}.activate_at", "must be greater than 0%"))
        if not 0 <= self.sampling_percentage <= 100:
            found.append(Problem(f"{path}.sampling_percentage", f"must be between 0 and 100, got {self.sampling_percentage}"))
        if self.max_decision_lag <= 0:
            found.append(Problem(f"{path}.max_decision_lag", "must be greater than 0"))
        return found


_ERROR = STATUS_BITS[2]


@dataclass(frozen=True)
class ReliefVerdicts:
    """The verdicts relief gives, and which one a new trace gets (``buffer.Relief``)."""

    kept: Verdict
    kept_for_error: Verdict
    dropped: Verdict
    threshold: int

    @classmethod
    def of(cls, config: OverloadConfig) -> "ReliefVerdicts":
        pct = config.sampling_percentage
        return cls(
            Verdict(True, POLICY, 100.0 / pct if pct > 0 else None),
            Verdict(True, ERROR_POLICY),
            Verdict(False, POLICY),
            threshold(pct) if pct > 0 else -1,
        )

    def choose(self, trace_id: bytes, fragment: Fragment) -> Verdict:
        """By the fragment's facts: the ``probabilistic`` hash of its trace ID with the default
        salt, and whether a span of it has status ERROR."""
        if trace_hash(fragment.facts) <= self.threshold:
            return self.kept
        return self.kept_for_error if fragment.facts[1] & _ERROR else self.dropped


class OverloadRelief:
    """Whether relief is on, from the levels it is shown; ``relief`` is what ingest hands the
    buffer (None while off)."""

    def __init__(self, config: OverloadConfig | None, max_traces: int, max_bytes: int, metrics: Metrics) -> None:
        self._max_traces = max_traces
        self._max_bytes = max_bytes
        self._metrics = metrics
        self.config = config
        self._verdicts = ReliefVerdicts.of(config) if config else None
        self.relief: ReliefVerdicts | None = None
        self._since = 0.0
        self.level = 0.0
        self.decided = 0  # traces decided at once since relief last turned on

    def configure(self, config: OverloadConfig | None) -> None:
        """New settings (a live config change); relief that is on stays on with the new ones, or
        turns off when the section is gone."""
        self.config = config
        self._verdicts = ReliefVerdicts.of(config) if config else None
        if self.relief is not None:
            if self._verdicts is None:
                self._switch(False, "tail_sampling.overload was removed", time.monotonic())
            else:
                self.relief = self._verdicts

    def observe(self, occupancy: "Occupancy", lag: float, now: float) -> None:
        """Take in the buffer's fill and the decision lag (``now``: monotonic seconds); turn relief
        on or off as they say."""
        config = self.config
        if config is None:
            return
        measures = {
            "num_traces": occupancy.traces / self._max_traces,
            "buffer.max_bytes": occupancy.bytes / self._max_bytes,
            "decision lag": lag / float(config.max_decision_lag),
        }
        which = max(measures, key=measures.__getitem__)
        self.level = measures[which]
        self._metrics.overload_level.set(self.level)
        what = f"{which} at {self.level:.0%}"
        if self.relief is None and self.level >= config.activate_at.share:
            self._switch(True, what, now)
        elif (
            self.relief is not None
            and self.level <= config.deactivate_at.share
            and now - self._since >= float(config.min_duration)
        ):
            self._switch(False, what, now)

    def _switch(self, on: bool, why: str, now: float) -> None:
        config = self.config
        if on:
            assert config is not None and self._verdicts is not None
            self.relief = self._verdicts
            self._since = now
            self.decided = 0
            self._metrics.overload_activations.inc()
            log.warning(
                "overload relief on: %s (activate_at %g%%); new traces are decided at once on their trace ID "
                "(%g%% kept, and every trace with an error span), buffered traces as usual",
                why, config.activate_at, config.sampling_percentage,
            )
        else:
            self.relief = None
            log.info("overload relief off after %.1fs: %s; %d traces were decided at once", now - self._since, why, self.decided)
        self._metrics.overload_active.set(1 if on else 0)

    def status(self) -> dict[str, object]:
        return {"configured": self.config is not None, "active": self.relief is not None, "level": round(self.level, 4)}
