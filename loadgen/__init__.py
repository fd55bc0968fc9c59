"""Realistic OTLP traffic, the sampling-quality report and the benchmark for tailsampler."""

from tailsampler.loadgen.bench import BenchOptions, run_bench
from tailsampler.loadgen.model import TraceGenerator, TrafficShape
from tailsampler.loadgen.quality import QualityReport
from tailsampler.loadgen.report import ReportOptions, run_report
from tailsampler.loadgen.sink import NullServer, Sink
from tailsampler.loadgen.traffic import TrafficConfig, TrafficResult, build_payloads, run_traffic

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
