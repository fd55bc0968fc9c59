"""Realistic OTLP traffic, the sampling-quality report and the benchmark for tailsampler."""

from loadgen.bench import BenchOptions, run_bench
from loadgen.model import TraceGenerator, TrafficShape
from loadgen.quality import QualityReport
from loadgen.report import ReportOptions, run_report
from loadgen.sink import NullServer, Sink
from loadgen.traffic import TrafficConfig, TrafficResult, build_payloads, run_traffic

__all__ = [
    "BenchOptions",
    "NullServer",
    "QualityReport",
    "ReportOptions",
    "Sink",
    "TraceGenerator",
    "TrafficConfig",
    "TrafficResult",
    "TrafficShape",
    "build_payloads",
    "run_bench",
    "run_report",
    "run_traffic",
]
