"""The debug exporter writes kept traces to the log at the verbosity asked for."""

from __future__ import annotations

import logging

import pytest

from tests.storage_support import kept, running, spec


@pytest.mark.parametrize("verbosity,lines", [("basic", 0), ("normal", 2), ("detailed", 2 + 5)])
async def test_verbosity_sets_what_each_batch_logs(verbosity: str, lines: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tailsampler.debug")
    first, second = kept(3, policy="errors"), kept(2, policy="slow")
    async with running(spec(type="debug", verbosity=verbosity, sampling_initial=100, batch_max_traces=2)) as [exporter]:
        await exporter.submit(first)
        await exporter.submit(second)
    records = [r.getMessage() for r in caplog.records if r.name == "tailsampler.debug"]
    if verbosity == "basic":  # one line a batch: the two traces may go out in one batch or two
        assert len(records) in (1, 2)
        assert sum(int(m.split("trace(s), ")[1].split()[0]) for m in records) == 5
    else:
        assert len(records) == lines
        assert any(f"trace {first.trace_id.hex()} kept by errors: 3 span(s)" in m for m in records)
    if verbosity == "detailed":
        assert any("checkout: GET /cart" in m for m in records)


async def test_sampling_thins_the_lines_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tailsampler.debug")
    async with running(spec(type="debug", verbosity="normal", sampling_initial=2, sampling_thereafter=100)) as [exporter]:
        for _ in range(10):
            await exporter.submit(kept(1))
    assert len([r for r in caplog.records if r.name == "tailsampler.debug"]) in (2, 3, 4)
