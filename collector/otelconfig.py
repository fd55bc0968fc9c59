"""``tailsampler validate --otel-collector-config FILE [--write OUT]``: an OpenTelemetry Collector
config checked, and written as a tailsampler config.

A whole Collector config (one with ``service.pipelines``) is checked as ``serve`` would run it
(``collector/otelcol.py``), and every ``tail_sampling`` / ``tail_sampling/<name>`` processor in it is
checked too, used by the pipeline or not; ``--write`` writes the complete translated config,
receivers and exporters included. A file that holds only processors is checked block by block,
and ``--write`` carries its tail_sampling block over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tailsampler.collector import otelcol
from tailsampler.collector.config import TailSamplingConfig, read, read_yaml, sampling_problems
from tailsampler.common.errors import ConfigError, Problem
from tailsampler.common.settings import INVALID, collect
from tailsampler.policies import PolicyContext, policy_problems

_PROCESSOR = "tail_sampling"


def tail_sampling_blocks(path: str | Path, data: Any) -> dict[str, Any]:
    """``{processor id: block}`` for every tail_sampling processor in the file."""
    processors = data.get("processors") if isinstance(data, dict) else None
    if not isinstance(processors, dict):
        raise ConfigError(f"{path}: processors: no processors section; is this an OpenTelemetry Collector config?")
    blocks = {
        str(name): block if block is not None else {}
        for name, block in processors.items()
        if otelcol.kind(str(name)) == _PROCESSOR
    }
    if not blocks:
        raise ConfigError(f"{path}: processors: no tail_sampling or tail_sampling/<name> processor found")
    return blocks


def check_block(block: Any, processor: str, source: str) -> TailSamplingConfig:
    """Decode and build one block; errors read ``source: processors.<id>.<key path>: problem``."""
    root = f"processors.{processor}"
    if not isinstance(block, dict):
        raise ConfigError(f"{source}: {root}: expected a mapping, got {type(block).__name__}")
    problems: list[Problem] = []
    ts = collect(block, TailSamplingConfig, root, problems)
    if isinstance(block.get("policies"), list):
        problems += policy_problems(block["policies"], f"{root}.policies", PolicyContext(clock=lambda: 0.0))
    if ts is not INVALID:
        problems += sampling_problems(ts, root)
    if problems or ts is INVALID:
        raise ConfigError(*problems, source=source)
    return ts


def validate_otel_collector_config(path: str | Path) -> list[str]:
    """One message per problem in the file; an empty list means it runs here."""
    try:
        data = read_yaml(path)
        blocks = tail_sampling_blocks(path, data)
    except ConfigError as exc:
        return str(exc).splitlines()
    problems: list[str] = []
    for processor, block in blocks.items():
        try:
            check_block(block, processor, str(path))
        except ConfigError as exc:
            problems += str(exc).splitlines()
    if otelcol.is_collector_config(data):
        try:
            read(data, str(path))
        except ConfigError as exc:
            problems += [line for line in str(exc).splitlines() if line not in problems]
    return problems


def convert_otel_collector_config(path: str | Path, processor: str | None = None) -> str:
    """A tailsampler config (YAML) for the file, after checking it: the whole translated config
    for a Collector config, or the tail_sampling block for a file of processors only.

    ``processor`` names the tail_sampling processor to carry over: by default the traces
    pipeline's, or the file's only one.
    """
    data = read_yaml(path)
    blocks = tail_sampling_blocks(path, data)
    if processor is not None and processor not in blocks:
        raise ConfigError(f"{path}: processors: no processor named {processor!r}; found {', '.join(blocks)}")
    if otelcol.is_collector_config(data):
        loaded = read(data, str(path), processor)
        body = yaml.safe_dump(loaded.translated, sort_keys=False, default_flow_style=False)
        notes = "".join(f"# not run: {w}\n" for w in loaded.warnings)
        return f"# converted from the OpenTelemetry Collector config {path}\n{notes}{body}"
    if processor is None:
        if len(blocks) > 1:
            raise ConfigError(f"{path}: processors: several tail_sampling processors ({', '.join(blocks)}); name the one to convert")
        processor = next(iter(blocks))
    check_block(blocks[processor], processor, str(path))
    body = yaml.safe_dump({"tail_sampling": blocks[processor]}, sort_keys=False, default_flow_style=False)
    return f"# tail_sampling converted from {path} (processors.{processor}); other sections use tailsampler defaults\n{body}"
