"""Policy types by name: every policy module's ``KINDS``, gathered.

Adding a policy type is adding one module and naming it here; the tagged union of config structs
(``PolicySpec``) and the engine's builder both read this table.
"""

from __future__ import annotations

from . import (
    always_sample,
    boolean_attribute,
    combinators,
    composite,
    dynamic,
    latency,
    numeric_attribute,
    ottl_condition,
    probabilistic,
    rate_limiting,
    span_count,
    status_code,
    string_attribute,
    throughput,
    trace_flags,
    trace_state,
)
from .kind import PolicyKind

_MODULES = (
    always_sample,
    latency,
    status_code,
    probabilistic,
    string_attribute,
    numeric_attribute,
    boolean_attribute,
    trace_state,
    trace_flags,
    span_count,
    ottl_condition,
    rate_limiting,
    combinators,
    composite,
    dynamic,
    throughput,
)

KINDS: dict[str, PolicyKind] = {str(kind.spec.__struct_config__.tag): kind for module in _MODULES for kind in module.KINDS}
