"""Reading an OpenTelemetry Collector config: its ``tail_sampling`` processors, checked and
converted, so users can bring their existing policies (``tailsampler validate
--otel-collector-config FILE [--write OUT]``).

A processor counts when it is named ``tail_sampling`` or ``tail_sampling/<name>``. Each block is
decoded exactly as our own ``tail_sampling`` section and its policies are built, so a block
that validates here runs here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tailsampler.collector.config import TailSamplingConfig, read_yaml, sampling_problems
from tailsampler.common.errors import ConfigError, Problem
from tailsampler.common.settings import INVALID, collect
from tailsampler.policies import PolicyContext, policy_problems

_PROCESSOR = "tail_sampling"


def tail_sampling_blocks(path: str | Path) -> dict[str, Any]:
    """``{processor id: block}`` for every tail_sampling processor in the file."""
    data = read_yaml(path)
    processors = data.get("processors") if isinstance(data, dict) else None
    if not isinstance(processors, dict):
        raise ConfigError(f"{path}: processors: no processors section; is this an OpenTelemetry Collector config?")
    blocks = {
        str(name): block if block is not None else {}
        for name, block in processors.items()
        if str(name) == _PROCESSOR or str(name).startswith(_PROCESSOR + "/")
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
    """One message per problem in the file's tail_sampling blocks; an empty list means OK."""
    try:
        blocks = tail_sampling_blocks(path)
    except ConfigError as exc:
        return str(exc).splitlines()
    problems = []
    for processor, block in blocks.items():
        try:
            check_block(block, processor, str(path))
        except ConfigError as exc:
            problems += str(exc).splitlines()
    return problems


def convert_otel_collector_config(path: str | Path, processor: str | None = None) -> str:
    """Our config (YAML) with the tail_sampling block carried over verbatim after validation.

    With several tail_sampling processors in the file, ``processor`` says which one.
    """
    blocks = tail_sampling_blocks(path)
    if processor is None:
        if len(blocks) > 1:
            raise ConfigError(f"{path}: processors: several tail_sampling processors ({', '.join(blocks)}); name the one to convert")
        processor = next(iter(blocks))
    if processor not in blocks:
        raise ConfigError(f"{path}: processors: no processor named {processor!r}; found {', '.join(blocks)}")
    check_block(blocks[processor], processor, str(path))
    body = yaml.safe_dump({"tail_sampling": blocks[processor]}, sort_keys=False, default_flow_style=False)
    return f"# tail_sampling converted from {path} (processors.{processor}); other sections use tailsampler defaults\n{body}"
