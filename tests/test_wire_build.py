"""The package builds its C core where it can, and installs and runs without it where it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _environment(**env: str) -> dict[str, str]:
    """This process's environment without the core switch it may run under, plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if k != "TAILSAMPLER_NO_EXTENSIONS"}, **env}


def _build(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    out = tmp_path / "lib"
    result = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(out), "--build-temp", str(tmp_path / "temp")],
        cwd=ROOT, env=_environment(**env), capture_output=True, text=True, timeout=300,
    )
    return result, list(out.rglob("_wire*.so"))


def test_the_extension_builds_with_the_machines_compiler(tmp_path: Path) -> None:
    result, built = _build(tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(built) == 1 and "WARNING" not in result.stderr


def test_without_a_compiler_the_build_warns_and_goes_on_without_the_extension(tmp_path: Path) -> None:
    result, built = _build(tmp_path, CC="/nonexistent/cc")
    assert result.returncode == 0, result.stderr
    assert "WARNING: the C wire core (tailsampler.collector._wire) could not be compiled" in result.stderr
    assert built == []


def test_no_extensions_skips_the_build(tmp_path: Path) -> None:
    result, built = _build(tmp_path, TAILSAMPLER_NO_EXTENSIONS="1")
    assert result.returncode == 0, result.stderr
    assert "building without the C wire core" in result.stderr and built == []


def _core(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=_environment(**env), capture_output=True, text=True, timeout=60)


_PRINT_CORE = "from tailsampler.collector import wire; print(wire.CORE, wire.split(b'').span_count)"


@pytest.mark.parametrize(("env", "core"), [({}, "c"), ({"TAILSAMPLER_NO_EXTENSIONS": "1"}, "python"),
                                           ({"TAILSAMPLER_NO_EXTENSIONS": "0"}, "c")])
def test_the_environment_picks_the_core(env: dict[str, str], core: str) -> None:
    result = _core(_PRINT_CORE, **env)
    assert result.stdout.split() == [core, "0"], result.stderr


def test_a_missing_extension_runs_the_pure_core_and_says_so() -> None:
    blocked = (
        "import sys\n"
        "class Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tailsampler.collector._wire': raise ImportError('not built here')\n"
        "sys.meta_path.insert(0, Missing())\n"
    )
    result = _core(blocked + _PRINT_CORE)
    assert result.stdout.split() == ["python", "0"], result.stderr
    assert "the C wire core is not built (not built here): running the pure-Python core" in result.stderr
