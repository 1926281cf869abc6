"""Run every example's check: each directory under examples/ with a `check.py`, and each standalone example
script `examples/<name>.py` (run without arguments, it checks itself).

    .venv/bin/python examples/run_all.py [NAME ...] [--timeout SECONDS] [--verbose]

Each check runs with the project's virtualenv Python (`.venv/bin/python`, else this interpreter) as a
subprocess in its own process group, with a timeout. Prints PASS/FAIL per example (and the output of those
that failed); exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
ROOT = EXAMPLES.parent


def venv_python() -> str:
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def run_check(check: Path, python: str, timeout: float) -> tuple[bool, str, float]:
    """(passed, output, seconds). On timeout: SIGTERM the check (it stops its own servers), then SIGKILL the
    whole process group, so nothing it started outlives it."""
    started = time.monotonic()
    proc = subprocess.Popen([python, str(check)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        note = ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        note = f"\n(timed out after {timeout:g}s and was stopped)"
    finally:
        try:  # leftovers of a check that exited without stopping its children
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = out.decode(errors="replace") + note
    return proc.returncode == 0 and not note, text, time.monotonic() - started


def discover() -> dict[str, Path]:
    """Example name -> the script that checks it: `<dir>/check.py`, or a standalone `<name>.py`."""
    found = {path.parent.name: path for path in EXAMPLES.glob("*/check.py")}
    for path in EXAMPLES.glob("*.py"):
        if path.name != Path(__file__).name and not path.name.startswith("_"):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these examples (directory or script names)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per example [120]")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the output of passing checks too")
    args = parser.parse_args()

    checks = discover()
    if args.names:
        unknown = set(args.names) - set(checks)
        if unknown:
            print(f"no such example(s): {', '.join(sorted(unknown))}; known: {', '.join(checks)}", file=sys.stderr)
            return 2
        checks = {name: path for name, path in checks.items() if name in args.names}
    if not checks:
        print("no examples found (expected examples/<name>/check.py or examples/<name>.py)", file=sys.stderr)
        return 1

    python = venv_python()
    failed = []
    for name, check in checks.items():
        passed, output, seconds = run_check(check, python, args.timeout)
        print(f"{'PASS' if passed else 'FAIL'}  {name}  ({seconds:.1f}s)", flush=True)
        if not passed or args.verbose:
            print("\n".join("    " + line for line in output.rstrip().splitlines()), flush=True)
        if not passed:
            failed.append(name)

    print(f"\n{len(checks) - len(failed)}/{len(checks)} examples passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
