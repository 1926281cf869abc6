"""End-to-end check of the CSV-import example, exactly as a user would run it by hand.

1. starts the example's step server (port 9000) and `stepflow dev -f process_csv_upload.json` (port 8288,
   a throw-away SQLite file) as subprocesses;
2. sends `imports/csv.uploaded` with the Python client (`stepflow.Client`);
3. reads the runs with a plain HTTP request, as the source document's `getRuns` does — `GET
   /v1/events/{id}/runs` with `Authorization: Bearer $STEPFLOW_SIGNING_KEY` (empty in keyless dev) — and
   polls once a second until the run is Completed, as its `getRunOutput` does;
4. asserts the output is `{"status": "success", "processedItems": 98, "failedItems": 2}`;
5. stops both servers (also when something failed) and checks that they exited cleanly.

    .venv/bin/python examples/csv_import/check.py

The ports are the ones written in the workflow file. `--step-port` / `--api-port` pick others (the workflow
is then copied to the temporary directory with its URLs rewritten), for when 9000 or 8288 are taken.
Exit status: 0 passed, 1 failed, 2 could not start (a port is busy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import stepflow

HERE = Path(__file__).resolve().parent
WORKFLOW = HERE / "process_csv_upload.json"
STEP_SERVER = HERE / "step_server.py"
EVENT_NAME = "imports/csv.uploaded"
EXPECTED_OUTPUT = {"status": "success", "processedItems": 98, "failedItems": 2}
DEFAULT_STEP_PORT = 9000  # as written in process_csv_upload.json
DEFAULT_API_PORT = 8288   # stepflow dev's default


class CheckFailed(Exception):
    pass


class PortBusy(Exception):
    pass


def ensure_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as the servers use it: a port left in TIME_WAIT by a previous run counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PortBusy(
                f"port {port} (for the {what}) is busy: {exc.strerror}. Something already listens on "
                f"127.0.0.1:{port} — perhaps a {what} you started by hand (see `ss -ltnp 'sport = :{port}'`). "
                "Stop it and run this check again.") from None


def stepflow_command() -> list[str]:
    """The `stepflow` console script beside this interpreter (as a user runs it), else `python -m`."""
    script = Path(sys.executable).parent / "stepflow"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "stepflow.cli.main"]


class Process:
    """A child process whose output goes to a log file, shown when something goes wrong."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 — open for the child's whole life, closed in stop()
        # Same process group as this script: whoever kills our group (run_all.py on a timeout) kills these too.
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=HERE.parent.parent)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise CheckFailed(f"the {self.name} exited early with status {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").rstrip()
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (no output)"

    def stop(self, timeout: float = 15.0) -> str | None:
        """SIGTERM, then wait; SIGKILL if it does not go. Returns a problem description, or None if clean."""
        problem = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problem = f"the {self.name} did not stop within {timeout:g}s of SIGTERM and was killed"
        rc = self.proc.returncode
        if problem is None and rc not in (0, -signal.SIGTERM):
            problem = f"the {self.name} exited with status {rc} on shutdown"
        self._log.close()
        return problem


def http_get_json(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


def wait_until_ready(url: str, procs: list[Process], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            p.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise CheckFailed(f"{url} did not answer within {timeout:g}s")
        time.sleep(0.1)


# --- the source document's getRuns / getRunOutput, in Python ------------------------------------------------

def get_runs(api: str, event_id: str) -> list[dict[str, Any]]:
    status, body = http_get_json(f"{api}/v1/events/{event_id}/runs", headers={
        "Authorization": f"Bearer {os.environ.get('STEPFLOW_SIGNING_KEY', '')}"})
    if status != 200:
        raise CheckFailed(f"GET /v1/events/{event_id}/runs answered {status}: {body}")
    return body["data"]  # type: ignore[no-any-return]


def get_run_output(api: str, event_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    runs = get_runs(api, event_id)
    while not runs or runs[0]["status"] != "Completed":
        if time.monotonic() > deadline:
            state = runs[0]["status"] if runs else "no run at all"
            raise CheckFailed(f"the run is still {state} after {timeout:g}s")
        time.sleep(1.0)
        runs = get_runs(api, event_id)
        if runs and runs[0]["status"] in ("Failed", "Cancelled"):
            raise CheckFailed(f"Function run {runs[0]['status']}: {json.dumps(runs[0].get('error'))}")
    return runs[0]


# --- the check --------------------------------------------------------------------------------------------

def run_check(step_port: int, api_port: int, workdir: Path, timeout: float) -> None:
    ensure_port_free(step_port, "CSV example's step server")
    ensure_port_free(api_port, "stepflow dev server")

    workflow = WORKFLOW
    if step_port != DEFAULT_STEP_PORT:
        workflow = workdir / WORKFLOW.name
        workflow.write_text(WORKFLOW.read_text().replace(f"127.0.0.1:{DEFAULT_STEP_PORT}",
                                                         f"127.0.0.1:{step_port}"))
    api = f"http://127.0.0.1:{api_port}"
    file_url = f"http://127.0.0.1:{step_port}/files/upload.csv"

    procs: list[Process] = []
    failure: BaseException | None = None
    try:
        procs.append(Process("step server", [sys.executable, str(STEP_SERVER), "--port", str(step_port)],
                             workdir / "step_server.log"))
        procs.append(Process("stepflow dev server",
                             stepflow_command() + ["dev", "-f", str(workflow), "--port", str(api_port),
                                                   "--db", str(workdir / "stepflow.db")],
                             workdir / "stepflow.log"))
        wait_until_ready(file_url, procs)
        wait_until_ready(f"{api}/health", procs)
        print(f"started: step server on :{step_port}, stepflow dev on :{api_port} (db {workdir / 'stepflow.db'})")

        async def send() -> list[str]:
            async with stepflow.Client(api) as client:
                return await client.send({"name": EVENT_NAME,
                                          "data": {"file": file_url, "userId": "user_0xp3wqz7vumcvajt"}})

        ids = asyncio.run(send())
        if len(ids) != 1:
            raise CheckFailed(f"expected one event id, got {ids}")
        print(f"sent {EVENT_NAME}: event id {ids[0]}")

        run = get_run_output(api, ids[0], timeout)
        print(f"run {run['run_id']}: {run['status']}, output {json.dumps(run['output'])}")
        if run["status"] != "Completed":
            raise CheckFailed(f"runs[0].status is {run['status']!r}, expected 'Completed'")
        if run["output"] != EXPECTED_OUTPUT:
            raise CheckFailed(f"runs[0].output is {run['output']!r}, expected {EXPECTED_OUTPUT!r}")
        for field in ("run_id", "run_started_at", "function_id", "function_version", "environment_id",
                      "event_id", "status", "ended_at", "output"):
            if field not in run:
                raise CheckFailed(f"the run object lacks the field {field!r}: {run}")
        if run["event_id"] != ids[0] or run["function_id"] != "process-csv-upload":
            raise CheckFailed(f"the run belongs to another event or function: {run}")
    except BaseException as exc:
        failure = exc
        raise
    finally:
        problems = [p for p in (proc.stop() for proc in reversed(procs)) if p]
        if failure is not None and not isinstance(failure, PortBusy):
            for proc in procs:
                print(f"--- {proc.name} output ({' '.join(proc.argv)}):\n{proc.tail()}", file=sys.stderr)
        if problems and failure is None:
            raise CheckFailed("; ".join(problems))
        for problem in problems:
            print(f"also: {problem}", file=sys.stderr)
    print("servers stopped cleanly")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-port", type=int, default=DEFAULT_STEP_PORT)
    parser.add_argument("--api-port", type=int, default=DEFAULT_API_PORT)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the run to complete")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (db and logs)")
    args = parser.parse_args()

    # Stop cleanly (servers included) when asked to: run_all.py sends SIGTERM on its timeout.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="stepflow-csv-import-"))
    try:
        run_check(args.step_port, args.api_port, workdir, args.timeout)
    except PortBusy as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    except CheckFailed as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("PASS: runs[0].status == 'Completed' and runs[0].output ==", json.dumps(EXPECTED_OUTPUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
