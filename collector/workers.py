"""``tailsampler serve --workers N``: N agent processes on one host sharing the listening ports.

Each worker is a whole agent whose receivers are bound with SO_REUSEPORT, so the kernel spreads
connections across them; this is only sound when they share the Redis buffer, since any worker
may receive any span. Worker k serves its admin API on the admin port + k: a metrics scrape must
reach the same process every time, or its counters would seem to jump back and forth.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tailsampler.collector.config import Config


def run_workers(path: str, config: Config, workers: int) -> int:
    if config.buffer.type != "redis":
        print(
            f"tailsampler: {path}: buffer.type: --workers {workers} needs the shared redis buffer; "
            "with the memory buffer each worker would hold a different part of every trace",
            file=sys.stderr,
        )
        return 2
    command = [sys.executable, "-m", "tailsampler.collector.cli", "serve", "--config", path, "--worker"]
    children = [subprocess.Popen([*command, str(index)]) for index in range(workers)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads the config file itself
    while any(child.poll() is None for child in children):
        if any(child.returncode not in (None, 0) for child in children):
            forward(signal.SIGTERM, None)  # one worker failing takes the group down cleanly
        time.sleep(0.2)
    return max(child.returncode for child in children)
