"""The collector's Prometheus metrics, one registry per running collector.

A registry per instance (rather than the process-global default) keeps several collectors in
one process, as tests and ``--workers`` run them, from sharing or clashing counters.

No ``_created`` series: prometheus-client would add one per counter and histogram child (the time
it was first used), which doubles what every scrape carries and what Prometheus stores, for a
value that no query of ours reads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()

from tailsampler.collector.services import ServiceNames


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.services = ServiceNames()  # the bounded service label of the service_* counters
        r = self.registry
        self.spans_received = Counter(
            "tailsampler_spans_received", "Spans accepted into the buffer or forwarded late",
            ["transport"], registry=r,
        )
        self.spans_refused = Counter(
            "tailsampler_spans_refused",
            "Spans refused: invalid IDs (partial success), undecodable bodies, buffer full or unavailable",
            ["reason"], registry=r,
        )
        self.received_bytes = Counter(
            "tailsampler_received_bytes", "Bytes of accepted export requests, after decompression",
            ["transport"], registry=r,
        )
        self.kept_bytes = Counter(
            "tailsampler_kept_bytes", "Bytes of the traces kept, as handed to the exporters", registry=r,
        )
        self.service_traces_received = Counter(
            "tailsampler_service_traces_received",
            "Root spans received, by the service.name of their resource (bounded; the rest as other)",
            ["service"], registry=r,
        )
        self.service_traces_kept = Counter(
            "tailsampler_service_traces_kept",
            "Traces kept, by root service (the first span's when the root is missing)",
            ["service"], registry=r,
        )
        self.service_spans_kept = Counter(
            "tailsampler_service_spans_kept", "Spans of the traces kept, by root service",
            ["service"], registry=r,
        )
        self.requests = Counter(
            "tailsampler_requests", "Export requests by transport and outcome",
            ["transport", "outcome"], registry=r,
        )
        self.traces_decided = Counter(
            "tailsampler_traces_decided", "Traces decided, by decision and deciding policy",
            ["decision", "policy"], registry=r,
        )
        self.spans_decided = Counter(
            "tailsampler_spans_decided", "Spans of decided traces, by decision",
            ["decision"], registry=r,
        )
        self.policy_votes = Counter(
            "tailsampler_policy_votes", "Each policy's vote on each decided trace",
            ["policy", "vote"], registry=r,
        )
        self.late_spans = Counter(
            "tailsampler_late_spans", "Spans that arrived after their trace was decided",
            ["decision"], registry=r,
        )
        self.early_decisions = Counter(
            "tailsampler_early_decisions",
            "Traces decided before their deadline: overflow, maximum_trace_size_bytes, shutdown",
            ["reason"], registry=r,
        )
        self.overflow_refusals = Counter(
            "tailsampler_overflow_refusals", "Requests refused because the buffer was full",
            registry=r,
        )
        self.decision_errors = Counter(
            "tailsampler_decision_errors", "Traces whose evaluation failed and were kept to lose nothing",
            registry=r,
        )
        self.buffer_traces = Gauge("tailsampler_buffer_traces", "Traces in the buffer", registry=r)
        self.buffer_bytes = Gauge("tailsampler_buffer_bytes", "Bytes of spans in the buffer", registry=r)
        self.decision_round_seconds = Histogram(
            "tailsampler_decision_round_seconds",
            "Time to evaluate the policies on one round of due traces and hand the kept ones over",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r,
        )
        self.overload_active = Gauge(
            "tailsampler_overload_active", "1 while overload relief decides new traces at once, else 0", registry=r,
        )
        self.overload_level = Gauge(
            "tailsampler_overload_level_ratio",
            "The highest of buffer traces / num_traces, buffer bytes / max_bytes and decision lag / max_decision_lag",
            registry=r,
        )
        self.overload_activations = Counter(
            "tailsampler_overload_activations", "Times overload relief turned on", registry=r,
        )
        self.overload_rescued = Counter(
            "tailsampler_overload_rescued_traces",
            "Traces overload relief had dropped that an error span turned into kept ones",
            registry=r,
        )
        self.config_reloads = Counter(
            "tailsampler_config_reloads", "Config reloads (SIGHUP or POST /api/v1/reload), by result",
            ["result"], registry=r,
        )
        self.config_info = Gauge(
            "tailsampler_config_info", "1, labelled with the hash of the config the agent runs", ["hash"], registry=r,
        )
        self.build_info = Gauge("tailsampler_build_info", "1, labelled with the version", ["version"], registry=r)
        self.decision_lag = Histogram(
            "tailsampler_decision_lag_seconds",
            "How long after its deadline a trace was decided (the decision loop keeping up, or not)",
            buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30), registry=r,
        )
