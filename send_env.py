from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
p = TracerProvider(); p.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
with p.get_tracer("t").start_as_current_span("x"): pass
p.shutdown()
