"""Process and HTTP helpers for the end-to-end tests of the official Inngest SDKs on stepflow
(tests/test_inngest_sdks.py). It holds no tests.

Everything is a real process on 127.0.0.1: the `stepflow` CLI (dev or keyed serve, SQLite or PostgreSQL), the
SDK apps under tests/inngest_apps/ (Python `inngest` under FastAPI+uvicorn, JS `inngest` v3 and v4 under
express) and a stepflow-SDK app. Each process writes its output to a log file; the tests print the logs of a
failing test.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "inngest_apps"
VENV_BIN = Path(sys.executable).parent
STEPFLOW_BIN = str(VENV_BIN / "stepflow") if (VENV_BIN / "stepflow").exists() else shutil.which("stepflow")

SDKS = ["python", "js_v3", "js_v4"]
APP_IDS = {"python": "e2e-python", "js_v3": "e2e-js-v3", "js_v4": "e2e-js-v4"}
# the functions every SDK app declares (local ids; on the wire and in stepflow they are "<app id>-<id>")
FUNCTIONS = ["three-steps", "sleeper", "wait-match", "wait-timeout", "invoke-child", "invoke-parent", "send-child",
             "send-parent", "parallel", "always-fails", "non-retriable", "retry-after", "cancellable", "cron-tick",
             "cross-invoke-stepflow", "fails-notify", "fails-notify-failure", "sleep-until", "flaky-once",
             "one-at-a-time", "batched"]
# ("fails-notify-failure" is the onFailure / on_failure handler the SDKs register next to "fails-notify")
STEPFLOW_APP_ID = "sf-cross"
STEPFLOW_FUNCTIONS = ["double", "call-inngest"]
TERMINAL = {"Completed", "Failed", "Cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def token() -> str:
    return secrets.token_hex(6)


# --- HTTP ---------------------------------------------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> Any:
    """One JSON request; raises HttpError on a status >= 400 (with the body), returns the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise HttpError(method, url, exc.code, exc.read().decode(errors="replace")) from None
    return json.loads(raw) if raw.strip() else None


def http_raw(method: str, url: str, headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, str]:
    """One request without a body; returns (status, body text) whatever the status."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_http_ok(url: str, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before answering {url}:\n"
                               f"{proc.tail()}")
        try:
            http("GET", url, timeout=2)
            return
        except (OSError, HttpError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last})"
                       + (f"\n{proc.tail()}" if proc is not None else ""))


# --- processes ----------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, offset: int = 0, limit: int = 12000) -> str:
        try:
            data = self.log_path.read_bytes()[offset:]
        except OSError:
            return ""
        text = data.decode(errors="replace")
        if len(text) > limit:
            text = f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]
        return text

    def size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)   # its own process group (start_new_session)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)


def start_proc(name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT) -> Proc:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Proc(name, popen, log_path)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any INNGEST_/STEPFLOW_ setting of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "STEPFLOW_"))}
    env.update(extra)
    return env


# --- the stack: stepflow + an SDK app + the stepflow-SDK app ------------------------------------------------


def js_ready(sdk: str) -> bool:
    return (APPS / sdk / "node_modules" / "inngest" / "package.json").exists()


def python_sdk_ready() -> bool:
    try:
        import fastapi  # noqa: F401
        import inngest  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Stack:
    """One stepflow server (dev or keyed serve) with one SDK app and the stepflow-SDK app synced to it."""

    sdk: str
    mode: str                      # "dev" | "serve"
    log_dir: Path
    db: str
    url: str = ""
    app_url: str = ""              # the SDK app's root (http://127.0.0.1:P)
    serve_url: str = ""            # its Inngest endpoint (…/api/inngest)
    sf_app_url: str = ""           # the stepflow-SDK app's endpoint
    signing_key: str | None = None
    event_key: str = "dev-key"
    procs: dict[str, Proc] = field(default_factory=dict)
    sync_error: str | None = None
    functions: dict[str, Any] = field(default_factory=dict)

    @property
    def app_id(self) -> str:
        return APP_IDS[self.sdk]

    def fn_id(self, local: str) -> str:
        return f"{self.app_id}-{local}"

    def ev(self, name: str) -> str:
        return f"{self.app_id}/{name}"

    # -- processes

    def start_stepflow(self, sync_urls: list[str], port: int | None = None) -> None:
        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [STEPFLOW_BIN or "stepflow", self.mode, "--port", str(port), "--db", self.db,
                "--backoff-base", "0.05", "-v"]
        if self.mode == "serve":
            argv += ["--signing-key", str(self.signing_key), "--event-key", self.event_key]
        for u in sync_urls:
            argv += ["-u", u]
        proc = start_proc(f"stepflow-{self.mode}", argv, clean_env(PYTHONUNBUFFERED="1"), self.log_dir)
        self.procs["stepflow"] = proc
        wait_http_ok(self.url + "/health", 30, proc)

    def sdk_env(self, port: int) -> dict[str, str]:
        env = clean_env(PORT=str(port), APP_ID=self.app_id, PYTHONUNBUFFERED="1", NODE_ENV="test")
        if self.mode == "dev":
            env.update(INNGEST_DEV=self.url, INNGEST_BASE_URL=self.url)
        else:
            env.update(INNGEST_DEV="0", INNGEST_SIGNING_KEY=str(self.signing_key), INNGEST_EVENT_KEY=self.event_key,
                       INNGEST_BASE_URL=self.url, INNGEST_API_BASE_URL=self.url,
                       INNGEST_EVENT_API_BASE_URL=self.url)
        return env

    def start_sdk_app(self, port: int) -> None:
        self.app_url = f"http://127.0.0.1:{port}"
        self.serve_url = self.app_url + "/api/inngest"
        self.procs["app"] = self._start_sdk_proc(f"app-{self.sdk}", self.sdk_env(port), self.app_url)

    def _start_sdk_proc(self, name: str, env: dict[str, str], app_url: str) -> Proc:
        if self.sdk == "python":
            argv, cwd = [sys.executable, str(APPS / "python_app.py")], ROOT
        else:
            argv, cwd = ["node", "app.js"], APPS / self.sdk
        proc = start_proc(name, argv, env, self.log_dir, cwd=cwd)
        try:
            wait_http_ok(app_url + "/health", 30, proc)
        except BaseException:
            proc.stop()
            raise
        return proc

    def start_sdk_app_variant(self, key: str, app_id: str, **env: str) -> tuple[Proc, str]:
        """Another process of the SDK app, under `app_id` and with `env` over the stack's SDK environment (e.g. a
        wrong INNGEST_SIGNING_KEY); listed in `procs[key]` (its log is printed with the others, it is stopped
        with the stack). Returns it and its Inngest endpoint."""
        port = free_port()
        app_url = f"http://127.0.0.1:{port}"
        full_env = {**self.sdk_env(port), "APP_ID": app_id, **env}
        proc = self._start_sdk_proc(f"app-{self.sdk}-{key}", full_env, app_url)
        self.procs[key] = proc
        return proc, app_url + "/api/inngest"

    def start_stepflow_app(self, port: int) -> None:
        self.sf_app_url = f"http://127.0.0.1:{port}/api/stepflow"
        env = clean_env(PORT=str(port), STEPFLOW_BASE_URL=self.url, PYTHONUNBUFFERED="1")
        if self.mode == "dev":
            env["STEPFLOW_DEV"] = "1"
        else:
            env["STEPFLOW_SIGNING_KEY"] = str(self.signing_key)
        proc = start_proc("app-stepflow-sdk", [sys.executable, str(APPS / "stepflow_app.py")], env, self.log_dir)
        self.procs["sf_app"] = proc
        wait_http_ok(f"http://127.0.0.1:{port}/health", 30, proc)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()

    def logs(self, offsets: dict[str, int] | None = None) -> str:
        parts = []
        for key, proc in self.procs.items():
            off = (offsets or {}).get(key, 0)
            parts.append(f"----- {proc.name} ({proc.log_path}) -----\n{proc.tail(off)}")
        return "\n".join(parts)

    def offsets(self) -> dict[str, int]:
        return {key: proc.size() for key, proc in self.procs.items()}

    # -- the stepflow API

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signing_key}"} if self.signing_key else {}

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        return http(method, self.url + path, body, headers=self.auth, timeout=timeout)

    def send(self, name: str, data: dict[str, Any] | None = None) -> str:
        answer = http("POST", f"{self.url}/e/{self.event_key}", {"name": name, "data": data or {}})
        return str(answer["ids"][0])

    def registered(self) -> dict[str, dict[str, Any]]:
        return {f["id"]: f for f in self.api("GET", "/v1/functions")["data"]}

    def wait_functions(self, ids: list[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        """Wait until all `ids` are listed by GET /v1/functions; returns the listing."""
        deadline = time.monotonic() + timeout
        while True:
            have = self.registered()
            if all(i in have for i in ids) or time.monotonic() > deadline:
                return have
            time.sleep(0.2)

    def event_runs(self, event_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/v1/events/{event_id}/runs")["data"])

    def run_of(self, event_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The (single) run the event started, as soon as it exists."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.event_runs(event_id)
            if runs:
                assert len(runs) == 1, f"event {event_id} started {len(runs)} runs: {runs}"
                return runs[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"event {event_id} started no run within {timeout}s")
            time.sleep(0.1)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/v1/runs/{run_id}")["data"])

    def wait_run(self, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The run once it has ended (long poll), or as it is after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.1, deadline - time.monotonic())
            wait = f"{max(100, int(left * 1000))}ms"
            run = dict(self.api("GET", f"/v1/runs/{run_id}?wait={wait}", timeout=left + 10)["data"])
            if run["status"] in TERMINAL or time.monotonic() >= deadline:
                return run

    def finish(self, event_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Run the event started, once ended; fails the test with the run and its steps if it did not end."""
        run = self.wait_run(self.run_of(event_id)["run_id"], timeout)
        assert run["status"] in TERMINAL, (f"run did not end within {timeout}s: {run}\nsteps: "
                                           f"{self.steps(run['run_id'])}")
        return run

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        try:
            return list(self.api("GET", f"/v1/runs/{run_id}/steps")["data"])
        except HttpError as exc:
            return [{"error": str(exc)}]

    def step_named(self, run_id: str, name: str) -> dict[str, Any] | None:
        for s in self.steps(run_id):
            if s.get("step_id") == name or s.get("hashed_id") == sha1(name) or s.get("step_id") == sha1(name):
                return s
        return None

    # -- the SDK app

    def counts(self, tok: str) -> dict[str, Any]:
        return dict(http("GET", f"{self.app_url}/counts?token={tok}"))

    def count(self, tok: str, step: str) -> int:
        return int(self.counts(tok).get(step, {}).get("count", 0))


def make_signing_key() -> str:
    return "signkey-test-" + secrets.token_hex(32)
