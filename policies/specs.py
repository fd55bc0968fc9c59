"""``PolicySpec``: the tagged union (tag ``type``) of every policy type's config Struct.

Sub-policies of ``and``, ``not``, ``drop`` and ``composite`` refer to this union by the string
annotation ``policies.specs.PolicySpec``, resolved when msgspec first decodes a config.
"""

from __future__ import annotations

from typing import Union

from .registry import KINDS

PolicySpec = Union[tuple(kind.spec for kind in KINDS.values())]  # type: ignore[valid-type]
