"""Run ``tailsampler`` under cProfile with a CPU-time clock: ``python -m tailsampler.loadgen.profiled OUT ARGS``.

``python -m cProfile`` counts wall time, so an agent waiting on its event loop shows ``epoll``
as its hottest function; counting process CPU time leaves only the work that costs CPU.
"""

from __future__ import annotations

import cProfile
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m tailsampler.loadgen.profiled OUTPUT.prof serve --config FILE", file=sys.stderr)
        return 2
    from tailsampler.collector.cli import main as collector_main

    profiler = cProfile.Profile(time.process_time)
    try:
        return profiler.runcall(collector_main, argv[1:])
    finally:
        profiler.dump_stats(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
