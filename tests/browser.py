"""A real browser for the console's tests: Debian's headless Chromium driven by Playwright.

Chromium comes from the system's packages (``apt-get install -y chromium``), never from
``playwright install``; without it the tests fail saying so. Every page a test visits can be
saved as a screenshot for a person to look at: they go to one directory per run, named at the
end of the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import AsyncIterator

import pytest

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
_SHOTS: list[Path] = []


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not found:
        pytest.fail("no Chromium to test the console in: install Debian's package (apt-get install -y chromium), "
                    "or set CHROMIUM to a chromium binary")
    return found


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this run's console screenshots go (``TAILSAMPLER_SCREENSHOTS`` to choose)."""
    chosen = os.environ.get("TAILSAMPLER_SCREENSHOTS")
    where = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "console-screenshots"
    where.mkdir(parents=True, exist_ok=True)
    _SHOTS.append(where)
    return where


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[test]'")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for where in dict.fromkeys(_SHOTS):
        shots = sorted(where.glob("*.png"))
        if shots:
            terminalreporter.write_line(f"console screenshots ({len(shots)}): {where}")
