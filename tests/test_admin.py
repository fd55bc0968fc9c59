"""The admin listener's own promises, against a running collector."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.collectors import StartCollector, collector_config
from tests.redis_servers import RedisProcess


async def test_metrics_never_wait_for_the_buffers_store(start_collector: StartCollector, fresh_redis: RedisProcess, tmp_path: Path) -> None:
    collector = await start_collector(collector_config(
        [{"type": "sqlite", "path": str(tmp_path / "kept.db")}],
        buffer={"type": "redis", "url": fresh_redis.url, "timeout": "5s"},
    ))
    fresh_redis.pause()  # anything that reached Redis now would wait out the 5 s timeout
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with session.get(f"http://127.0.0.1:{collector.admin.port}/metrics") as response:
                assert response.status == 200
                assert "tailsampler_buffer_traces" in await response.text()
    finally:
        fresh_redis.resume()
