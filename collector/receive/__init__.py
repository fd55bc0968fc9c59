"""OTLP receivers: gRPC and HTTP front ends over the one ingest path."""

from .grpc import GrpcReceiver
from .http import HttpReceiver

__all__ = ["GrpcReceiver", "HttpReceiver"]
