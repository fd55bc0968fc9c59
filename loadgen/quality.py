"""The sampling-quality table: what tail sampling kept, beside a head sampler on the same traces.

Ground truth is the ledger of sent traces (span count, error, slow); what was stored is what the
sink received. The head-based baseline keeps a trace when the low 56 bits of its trace ID fall
under the sampling probability, the rule W3C random trace IDs and OpenTelemetry's
``TraceIdRatioBased`` sampler share; head sampling keeps whole traces, so its completeness is 100%
and it never duplicates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tailsampler.loadgen.traffic import SentTrace

_RANDOM_BITS = 1 << 56


@dataclass(frozen=True, slots=True)
class Outcome:
    """One sampler's result on the run; rates are fractions (None when there was nothing to rate)."""

    traces_sent: int
    traces_stored: int
    spans_sent: int
    spans_stored: int
    storage_reduction: float
    error_traces: int
    error_capture: float | None
    slow_traces: int
    slow_capture: float | None
    normal_traces: int
    normal_keep: float | None
    complete: float | None
    duplicate_deliveries: int
    unknown_spans: int


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _outcome(ledger: dict[bytes, SentTrace], stored: dict[bytes, int], duplicates: int,
             complete: int, unknown: int) -> Outcome:
    """Shared arithmetic: ``stored`` maps each stored sent trace to its distinct spans stored."""
    errors = [t for t, s in ledger.items() if s.error]
    slow = [t for t, s in ledger.items() if s.slow and not s.error]
    normal = [t for t, s in ledger.items() if not s.error and not s.slow]
    spans_sent = sum(s.span_count for s in ledger.values())
    spans_stored = sum(stored.values())
    return Outcome(
        traces_sent=len(ledger),
        traces_stored=len(stored),
        spans_sent=spans_sent,
        spans_stored=spans_stored,
        storage_reduction=1 - spans_stored / spans_sent if spans_sent else 0.0,
        error_traces=len(errors),
        error_capture=_rate(sum(t in stored for t in errors), len(errors)),
        slow_traces=len(slow),
        slow_capture=_rate(sum(t in stored for t in slow), len(slow)),
        normal_traces=len(normal),
        normal_keep=_rate(sum(t in stored for t in normal), len(normal)),
        complete=_rate(complete, len(stored)),
        duplicate_deliveries=duplicates,
        unknown_spans=unknown,
    )


def tail_outcome(ledger: dict[bytes, SentTrace], delivered: dict[bytes, dict[bytes, int]]) -> Outcome:
    """What the collector stored: ``delivered[trace_id][span_id]`` counts deliveries at the sink.

    Slow traces that also failed count as errors only, so each class is rated on its own.
    Spans of traces that were never sent count as unknown (another client shares the sink).
    """
    stored: dict[bytes, int] = {}
    duplicates = complete = unknown = 0
    for trace_id, spans in delivered.items():
        sent = ledger.get(trace_id)
        if sent is None:
            unknown += len(spans)
            continue
        stored[trace_id] = len(spans)
        duplicates += sum(spans.values()) - len(spans)
        complete += len(spans) >= sent.span_count
    return _outcome(ledger, stored, duplicates, complete, unknown)


def head_keeps(trace_id: bytes, probability: float) -> bool:
    return int.from_bytes(trace_id[9:], "big") < probability * _RANDOM_BITS


def head_outcome(ledger: dict[bytes, SentTrace], probability: float = 0.1) -> Outcome:
    """A head sampler deciding at the root with ``probability``, on the same traces."""
    stored = {t: s.span_count for t, s in ledger.items() if head_keeps(t, probability)}
    return _outcome(ledger, stored, 0, len(stored), 0)


@dataclass(frozen=True, slots=True)
class QualityReport:
    tail: Outcome
    head: Outcome
    head_probability: float
    run: dict[str, object]

    def checks(self) -> dict[str, bool]:
        """The targets for the example policies."""
        tail = self.tail
        return {
            "error capture 100%": tail.error_capture in (None, 1.0),
            "slow capture 100%": tail.slow_capture in (None, 1.0),
            "storage reduction >= 90%": tail.storage_reduction >= 0.9,
            "kept traces complete 100%": tail.complete in (None, 1.0),
            "0 duplicate deliveries": tail.duplicate_deliveries == 0,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "tail": asdict(self.tail),
            "head": asdict(self.head),
            "head_probability": self.head_probability,
            "checks": self.checks(),
        }

    def markdown(self) -> str:
        tail, head = self.tail, self.head
        head_label = f"head-based {self.head_probability:.0%}"
        rows = [
            ("traces sent", f"{tail.traces_sent}", f"{head.traces_sent}", ""),
            ("traces stored", f"{tail.traces_stored}", f"{head.traces_stored}", ""),
            ("spans sent / stored", f"{tail.spans_sent} / {tail.spans_stored}",
             f"{head.spans_sent} / {head.spans_stored}", ""),
            ("storage reduction (spans)", _pct(tail.storage_reduction), _pct(head.storage_reduction), ">= 90%"),
            (f"error-trace capture ({tail.error_traces} traces)", _pct(tail.error_capture),
             _pct(head.error_capture), "100.0%"),
            (f"slow-trace capture ({tail.slow_traces} traces)", _pct(tail.slow_capture),
             _pct(head.slow_capture), "100.0%"),
            (f"normal-traffic keep rate ({tail.normal_traces} traces)", _pct(tail.normal_keep),
             _pct(head.normal_keep), ""),
            ("kept traces complete", _pct(tail.complete), _pct(head.complete), "100.0%"),
            ("duplicate deliveries", f"{tail.duplicate_deliveries}", f"{head.duplicate_deliveries}", "0"),
        ]
        lines = [f"| metric | tailsampler | {head_label} | target |", "|---|---:|---:|---:|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        if tail.unknown_spans:
            lines.append(f"\n{tail.unknown_spans} span(s) at the sink belonged to traces this run did not send.")
        failed = [name for name, ok in self.checks().items() if not ok]
        lines.append("")
        lines.append("Targets met." if not failed else "Targets missed: " + ", ".join(failed) + ".")
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"
