"""The ring of intervals: what a window adds up, on a clock the test moves, and its bounds."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from tailsampler.collector.history import COARSE_STEP, FINE_LENGTH, FINE_STEP, PUBLISHED, History, add_up, decode, encode
from tailsampler.collector.stats import StatsQuery, window_stats

T0 = 1_800_000_000  # a multiple of 60: minutes and 10 s intervals start here


class Agent:
    """Counters that only grow, and the wall clock, both moved by the test."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.now = float(T0)
        self.history = History(lambda: Counter(self.counts), lambda: self.now)

    async def run(self, seconds: int, per_second: dict[tuple[str, ...], int]) -> None:
        """``seconds`` of traffic, sampled on every 10 s boundary as the collector does."""
        for _ in range(seconds):
            self.counts.update(per_second)
            self.now += 1
            if self.now % FINE_STEP == 0:
                await self.history.sample()


RECEIVED = ("spans", "received")


async def test_a_window_adds_up_its_intervals_and_the_one_in_progress() -> None:
    agent = Agent()
    await agent.run(120, {RECEIVED: 5})
    await agent.run(35, {RECEIVED: 1, ("traces", "kept", "errors"): 1})
    extent, intervals = agent.history.intervals(60, agent.now)
    assert extent.step == FINE_STEP and extent.first == T0 + 100  # six intervals: 100..150, 150 in progress
    total = sum((c for _, c in intervals), Counter())
    assert total[RECEIVED] == 20 * 5 + 35 and total["traces", "kept", "errors"] == 35
    stats = window_stats(intervals, StatsQuery(60, ("policy",)), agent.now - extent.first, extent.step, extent.first)
    assert stats["spans"]["received"] == 135 and stats["rates"]["spans_received"] == pytest.approx(135 / 55, abs=0.001)
    assert stats["by_policy"]["errors"]["kept"] == 35 and stats["keep_percent"] == 100.0


async def test_fine_intervals_last_an_hour_and_minutes_a_day() -> None:
    agent = Agent()
    await agent.run(2 * 3600 + 5, {RECEIVED: 1})
    _, fine = agent.history.intervals(3600, agent.now)  # 359 whole intervals, and 5 s of the one in progress
    assert len(fine) == FINE_LENGTH and sum(c[RECEIVED] for _, c in fine) == 3595
    extent, coarse = agent.history.intervals(2 * 3600, agent.now)  # 119 whole minutes, and 5 s
    assert extent.step == COARSE_STEP and sum(c[RECEIVED] for _, c in coarse) == 119 * 60 + 5
    assert len(agent.history._fine._intervals) <= FINE_LENGTH  # older ones are gone


async def test_published_intervals_add_up_across_agents() -> None:
    one, two = Agent(), Agent()
    await one.run(60, {RECEIVED: 2})
    await two.run(60, {RECEIVED: 3, ("bytes", "kept"): 7})
    decoded = [decode(agent.history.published(agent.now)[str(FINE_STEP)]) for agent in (one, two)]
    extent, intervals = one.history.intervals(300, one.now)
    assert decode(encode(extent, intervals)) == intervals
    total = add_up(decoded, T0)
    assert sum(c[RECEIVED] for _, c in total) == 60 * 5
    assert sum(c["bytes", "kept"] for _, c in total) == 60 * 7
    starts = [start for start, _ in total]
    assert starts == list(range(T0, starts[-1] + FINE_STEP, FINE_STEP))  # aligned: one interval per start


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"window": "5x"}, "window: expected a duration"),
        ({"window": "1s"}, "window: must be between 10s and 24h"),
        ({"window": "5m", "by": "host"}, "by: expected service, policy"),
        ({"by": "service"}, "by and series need a window"),
        ({"window": "5m", "series": "maybe"}, "series: expected true or false"),
        ({"windows": "5m"}, "unknown parameter(s) windows"),
    ],
)
def test_a_bad_query_names_its_parameter(query: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        StatsQuery.parse(query)


async def test_what_an_agent_publishes_is_bounded() -> None:
    agent = Agent()
    per_second = {RECEIVED: 1000, **{("service", f"service-{n}", "received"): 1 for n in range(64)}}
    await agent.run(2 * 3600 + 5, per_second)
    published = agent.history.published(agent.now)
    for step, length in PUBLISHED:
        columns = published[str(step)]
        assert columns["step"] == step and all(len(values) == length for values in columns["counts"].values())
        assert sum(c[RECEIVED] for _, c in decode(columns)) == (length - 1) * step * 1000 + 5 * 1000
    assert len(msgspec.json.encode(published)) < 64 * 1024
