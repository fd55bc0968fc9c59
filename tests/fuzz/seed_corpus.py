"""Writes the seed corpus of real and hostile requests (``corpus/``) that the fuzz test and the
atheris harness mutate: ``python -m tests.fuzz.seed_corpus``. Files already there are kept, so
inputs a long fuzzing run found can be added beside them."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tests import wire_bodies
from tests.otlp_layouts import mixed_request, random_body

CORPUS = Path(__file__).parent / "corpus"


def seeds() -> list[bytes]:
    bodies = [wire_bodies.real_request(24, seed) for seed in range(3)]
    bodies += [random_body(random.Random(seed)) for seed in (1, 2, 5, 8)]
    bodies += [mixed_request([bytes([i]) * 16 for i in range(1, 4)]).SerializeToString()]
    bodies += [wire_bodies.trace_id_twice(), wire_bodies.span_id_twice_beside_none(), wire_bodies.parent_twice_beside_root(),
               wire_bodies.last_occurrences(), wire_bodies.known_fields_of_other_wire_types()]
    bodies += [wire_bodies.nested_groups(100 - depth, level) for level, depth in wire_bodies.LEVEL_DEPTH.items()]
    return [body for body in bodies if len(body) <= 16384]


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for body in seeds():
        (CORPUS / hashlib.sha1(body).hexdigest()[:16]).write_bytes(body)


if __name__ == "__main__":
    main()
