"""stepflow is a typed package: a user's mypy sees its annotations (`py.typed`), and step functions are checked
— `step.run("x", fn, 1, "a")` against `fn`'s parameters, its value typed as `fn`'s result. mypy --strict runs on
two small user programs: one must pass, the other must fail on exactly the calls that are wrong."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import stepflow

pytestmark = pytest.mark.runs_once  # no store

PROGRAMS = Path(__file__).parent / "typing_programs"
ROOT = Path(__file__).resolve().parent.parent


def mypy(program: str) -> tuple[int, str]:
    # The checkout is on MYPYPATH: an editable install is an import hook, which mypy cannot follow. (An installed
    # wheel carries py.typed, checked below, and mypy then reads the same annotations from site-packages.)
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "/dev/null",
               "--ignore-missing-imports", str(PROGRAMS / program)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=PROGRAMS, env=env)
    return done.returncode, done.stdout + done.stderr


def test_the_package_ships_py_typed() -> None:
    assert (Path(stepflow.__file__).parent / "py.typed").is_file()
    assert 'stepflow = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()  # and the wheel takes it along


def test_a_user_program_type_checks() -> None:
    code, output = mypy("user_program.py")
    assert code == 0, output


def test_wrong_step_calls_are_refused() -> None:
    code, output = mypy("wrong_calls.py")
    assert code == 1, output
    lines = sorted({int(m.group(1)) for m in re.finditer(r"wrong_calls\.py:(\d+): error", output)})
    assert lines == [16, 17, 18], output
