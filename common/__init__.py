"""The bottom layer: values and codecs every stage shares (durations, byte sizes, config errors,
host:port endpoints, the OTLP span field table, OTLP/JSON, the decision value).

It imports nothing of tailsampler's own, so any package may import it without pulling in a
stage above it; ``tests/test_layers.py`` holds every module to that.
"""
