"""The `stepflow` command: `dev` and `serve` run as real subprocesses (with a workflow file, against a real
step server on a thread); `send`, `runs`, `run [--wait]` and `--json` talk to them over HTTP. Each command is
run at least once through the installed console script; further cases run the same click commands
in-process (click's CliRunner), which spares a ~0.5 s interpreter start per call. Every failure must be a
message on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import free_port

from stepflow.cli.main import main

pytestmark = pytest.mark.runs_once  # the CLI's own servers run on SQLite files

STEPFLOW = Path(sys.executable).parent / "stepflow"
SK = "signkey-test-" + "5f" * 32   # production-strength keys, as `stepflow serve` requires
EK = "evt-" + "a1" * 16
ULID_LINE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def clean_env() -> dict[str, str]:
    """The environment without STEPFLOW_* settings, so only the command line configures the CLI."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def stepflow(*args: str, timeout: float = 30) -> Ran:
    """The console script in a subprocess."""
    done = subprocess.run([str(STEPFLOW), *args], capture_output=True, text=True, timeout=timeout, env=clean_env(),
                          check=False)
    return Ran(done.returncode, done.stdout, done.stderr)


def cli(*args: str) -> Ran:
    """The same command in this process. An exception escaping the command is a crash: it is re-raised."""
    runner = CliRunner(env={k: None for k in os.environ if k.startswith("STEPFLOW_")})
    result = runner.invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def assert_clean_failure(result: Ran, *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"


# --- a step server on a thread, and `stepflow dev|serve` in a subprocess -------------------------------------


class _Steps(BaseHTTPRequestHandler):
    """/add sums data.a + data.b; /fail answers 400; /hold answers once `release` is set, /gate once `gate` is."""

    release = threading.Event()
    gate = threading.Event()
    gate_calls = 0
    flaky_calls = 0

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/add":
            data = payload["event"]["data"]
            answer: dict[str, Any] = {"status": 200, "body": {"sum": data["a"] + data["b"]}}
        elif self.path == "/hold":
            self.release.wait(10)
            answer = {"status": 200, "body": {"held": True}}
        elif self.path == "/slow":  # answers after 3 s: a run that is certainly still running meanwhile
            time.sleep(3)
            answer = {"status": 200, "body": {"slow": True}}
        elif self.path == "/flaky":  # 503 on every other call: each run's step succeeds on its second attempt
            type(self).flaky_calls += 1
            answer = {"status": 503 if self.flaky_calls % 2 else 200, "body": {"flaky": True}}
        elif self.path == "/gate":
            type(self).gate_calls += 1
            self.gate.wait(10)
            answer = {"status": 200, "body": {"gated": True}}
        else:
            answer = {"status": 400, "body": {"reason": "refused"}}
        raw = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Server:
    url: str
    port: int
    db: Path
    log: Path


@contextmanager
def server_process(command: str, tmp: Path, *args: str, stop_timeout: float = 10) -> Iterator[Server]:
    """`stepflow dev|serve ARGS` on a free port, waited for until /health answers; SIGINT at the end (then
    SIGKILL after `stop_timeout`)."""
    port = free_port()
    db = tmp / f"{command}-{port}.db"
    log = tmp / f"{command}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(STEPFLOW), command, "--port", str(port), "--db", str(db), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"stepflow {command} exited with {proc.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"stepflow {command} did not listen within 20s: {log.read_text()}")
            time.sleep(0.05)
        yield Server(url=url, port=port, db=db, log=log)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def workflow_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    _Steps.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Steps)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    steps = f"http://127.0.0.1:{httpd.server_address[1]}"
    path = tmp_path_factory.mktemp("cli") / "functions.json"
    path.write_text(json.dumps({"functions": [
        {"id": "adder", "triggers": [{"event": "math/add"}],
         "steps": {"add": {"runtime": {"type": "http", "url": steps + "/add"}},
                   "check": {"runtime": {"type": "http", "url": steps + "/add"}, "after": [{"step": "add"}]}}},
        {"id": "breaker", "triggers": [{"event": "math/break"}],
         "steps": {"fail": {"runtime": {"type": "http", "url": steps + "/fail"}}}},
        {"id": "holder", "triggers": [{"event": "math/hold"}],
         "steps": {"hold": {"runtime": {"type": "http", "url": steps + "/hold"}}}},
        {"id": "gated", "triggers": [{"event": "busy/go"}],
         "steps": {"gate": {"runtime": {"type": "http", "url": steps + "/gate"}}}},
        {"id": "slow", "triggers": [{"event": "math/slow"}],
         "steps": {"nap": {"runtime": {"type": "http", "url": steps + "/slow"}}}},
        {"id": "flaky", "triggers": [{"event": "math/flaky"}],
         "steps": {"wobbly": {"runtime": {"type": "http", "url": steps + "/flaky"}}}},
        {"id": "one-by-one", "triggers": [{"event": "math/queue"}], "concurrency": 1,
         "steps": {"nap": {"runtime": {"type": "http", "url": steps + "/slow"}}}},
    ]}))
    yield path
    _Steps.release.set()
    _Steps.gate.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def dev(workflow_file: Path) -> Iterator[Server]:
    with server_process("dev", workflow_file.parent, "-f", str(workflow_file), "--backoff-base", "0.01") as server:
        yield server


def send(dev: Server, name: str, data: dict[str, Any] | None = None) -> str:
    result = cli("send", name, "--data", json.dumps(data or {}), "--url", dev.url)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def run_id_of(dev: Server, event_id: str) -> str:
    result = cli("runs", event_id, "--json", "--url", dev.url)
    assert result.returncode == 0, result.stderr
    [run] = json.loads(result.stdout)
    return str(run["run_id"])


# --- dev ---------------------------------------------------------------------------------------------------


def wait_for_log(server: Server, *needles: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = server.log.read_text()
        if all(n in text for n in needles) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_dev_prints_a_line_per_event_retry_and_ended_run(workflow_file: Path) -> None:
    with server_process("dev", workflow_file.parent, "-f", str(workflow_file), "--backoff-base", "0.01") as dev:
        added = send(dev, "math/add", {"a": 1, "b": 2})
        broken = send(dev, "math/break")
        flaky = send(dev, "math/flaky")
        runs = {name: run_id_of(dev, event) for name, event in (("add", added), ("break", broken),
                                                               ("flaky", flaky))}
        text = wait_for_log(dev, f"run {runs['flaky']} (flaky) Completed", f"run {runs['break']} (breaker) Failed",
                            f"run {runs['add']} (adder) Completed")
    assert f"event math/add ({added}) received; started 1 run(s): adder" in text, text
    assert re.search(rf"INFO stepflow.activity: run {runs['add']} \(adder\) Completed in \d+\.\d{{3}}s", text), text
    assert re.search(rf"WARNING stepflow.activity: run {runs['break']} \(breaker\) Failed in [\d.]+s: the step "
                     r"answered status 400", text), text
    assert re.search(rf"run {runs['flaky']} \(flaky\): step wobbly failed attempt 1 \(the step answered status "
                     r"503\); retrying in", text), text
    assert "synced app" not in text and "Traceback" not in text


def test_dev_logs_json_lines_or_nothing_when_quiet(workflow_file: Path) -> None:
    with server_process("dev", workflow_file.parent, "-f", str(workflow_file), "--log-format", "json") as dev:
        event_id = send(dev, "math/add", {"a": 2, "b": 2})
        run_id = run_id_of(dev, event_id)
        text = wait_for_log(dev, f'"run_id":"{run_id}","function_id":"adder","status":"Completed"')
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    kinds = {(line.get("kind"), line.get("status")) for line in lines if line["logger"] == "stepflow.activity"}
    assert {("event", None), ("run_started", None), ("step", "completed"), ("run", "Completed")} <= kinds, lines
    [event_line] = [line for line in lines if line.get("kind") == "event"]
    assert event_line["event_id"] == event_id and event_line["functions"] == ["adder"]
    steps = [line for line in lines if line.get("kind") == "step" and line["run_id"] == run_id]
    assert [(s["step"], s["attempt"], s["function_id"]) for s in steps] == [("add", 1, "adder"), ("check", 1, "adder")]
    assert all(isinstance(s["duration_ms"], int) for s in steps)
    [ended] = [line for line in lines if line.get("kind") == "run" and line["run_id"] == run_id]
    assert re.fullmatch(r"[0-9a-f]{32}", ended["trace_id"]) and {s["trace_id"] for s in steps} == {ended["trace_id"]}
    with server_process("dev", workflow_file.parent, "-f", str(workflow_file), "--quiet") as quiet:
        run_id = run_id_of(quiet, send(quiet, "math/add", {"a": 1, "b": 1}))
        cli("run", run_id, "--wait", "--json", "--url", quiet.url)
        time.sleep(0.3)
        assert "stepflow.activity" not in quiet.log.read_text()
    with server_process("dev", workflow_file.parent, "-f", str(workflow_file), "--log-level", "warning") as calm:
        run_id = run_id_of(calm, send(calm, "math/add", {"a": 1, "b": 1}))
        cli("run", run_id, "--wait", "--json", "--url", calm.url)
        time.sleep(0.3)
        assert "INFO" not in calm.log.read_text()  # --log-level warning: no INFO line, activity or not


def test_dev_says_where_the_store_and_api_are(dev: Server) -> None:
    text = dev.log.read_text()
    assert f"http://127.0.0.1:{dev.port}" in text
    assert str(dev.db.resolve()) in text and "SQLite" in text
    assert "dev mode" in text  # keyless, and it says so
    for fn in ("adder", "breaker", "holder"):
        assert f"function {fn}" in text


# --- send ----------------------------------------------------------------------------------------------------


def test_send_prints_the_event_id(dev: Server) -> None:
    result = stepflow("send", "math/add", "--data", '{"a": 2, "b": 3}', "--url", dev.url)
    assert result.returncode == 0, result.stderr
    assert ULID_LINE.match(result.stdout.strip()), result.stdout
    assert result.stdout.count("\n") == 1

    as_json = cli("send", "math/add", "--data", '{"a": 1, "b": 1}', "--url", dev.url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    ids = json.loads(as_json.stdout)["ids"]
    assert len(ids) == 1 and ULID_LINE.match(ids[0])

    given = cli("send", "math/add", "--data", '{"a": 1, "b": 1}', "--id", "cli-order-1", "--url", dev.url)
    assert given.returncode == 0 and given.stdout.strip() == "cli-order-1"


def test_send_refuses_bad_data(dev: Server) -> None:
    assert_clean_failure(cli("send", "math/add", "--data", "{not json", "--url", dev.url),
                         "--data is not valid JSON")
    assert_clean_failure(cli("send", "math/add", "--data", "[1, 2]", "--url", dev.url),
                         "--data must be a JSON object")


# --- runs and run ----------------------------------------------------------------------------------------------


def test_run_wait_then_runs_show_the_completed_run(dev: Server) -> None:
    event_id = send(dev, "math/add", {"a": 20, "b": 22})
    run_id = run_id_of(dev, event_id)

    waited = stepflow("run", run_id, "--wait", "--url", dev.url)
    assert waited.returncode == 0, waited.stderr
    lines = waited.stdout.splitlines()
    assert lines[0].split() == ["RUN", "FUNCTION", "STATUS", "STARTED", "ENDED", "OUTPUT"]
    assert lines[1].startswith(run_id) and " adder " in lines[1] and " Completed " in lines[1]
    assert lines[1].endswith('{"sum":42}')
    assert lines[2] == ""
    assert lines[3].split() == ["STEP", "STATUS", "ATTEMPTS", "STARTED", "ENDED", "OUTPUT", "ERROR"]
    assert [line.split()[:3] for line in lines[4:]] == [["add", "completed", "1"], ["check", "completed", "1"]]

    table = stepflow("runs", event_id, "--url", dev.url)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["RUN", "FUNCTION", "STATUS", "STARTED", "ENDED", "OUTPUT"]
    assert row.split()[:3] == [run_id, "adder", "Completed"]
    assert row.index("Completed") == header.index("STATUS")  # columns line up under their headings

    as_json = cli("runs", event_id, "--json", "--url", dev.url)
    [run] = json.loads(as_json.stdout)
    assert run["run_id"] == run_id and run["status"] == "Completed" and run["output"] == {"sum": 42}

    detail = cli("run", run_id, "--json", "--url", dev.url)
    assert detail.returncode == 0, detail.stderr
    doc = json.loads(detail.stdout)
    assert doc["status"] == "Completed" and doc["output"] == {"sum": 42} and doc["event_id"] == event_id
    assert [(s["step_id"], s["status"]) for s in doc["steps"]] == [("add", "completed"), ("check", "completed")]


def test_a_failed_run_exits_non_zero_and_shows_its_error(dev: Server) -> None:
    run_id = run_id_of(dev, send(dev, "math/break"))
    result = cli("run", run_id, "--wait", "--url", dev.url)
    assert result.returncode == 1
    assert " Failed " in result.stdout.splitlines()[1]
    [error_line] = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert '"step_error"' in error_line and "400" in error_line
    step_row = result.stdout.splitlines()[-1]
    assert step_row.split()[:3] == ["fail", "failed", "1"]

    as_json = json.loads(cli("run", run_id, "--json", "--url", dev.url).stdout)
    assert as_json["status"] == "Failed" and as_json["error"]["status"] == 400


def test_run_wait_gives_up_after_its_timeout(dev: Server) -> None:
    run_id = run_id_of(dev, send(dev, "math/hold"))
    try:
        began = time.monotonic()
        result = cli("run", run_id, "--wait", "--timeout", "0.5", "--url", dev.url)
        assert time.monotonic() - began < 10
        assert_clean_failure(result, run_id, "Running", "0.5s")
        # without --wait the current state is printed at once
        now = cli("run", run_id, "--url", dev.url)
        assert now.returncode == 0 and " Running " in now.stdout.splitlines()[1]
        assert now.stdout.splitlines()[-1].split()[:2] == ["hold", "running"]
    finally:
        _Steps.release.set()  # let the run end, so the server stops at once
    done = cli("run", run_id, "--wait", "--timeout", "10", "--json", "--url", dev.url)
    assert json.loads(done.stdout)["output"] == {"held": True}


def test_an_event_that_started_nothing_prints_none(dev: Server) -> None:
    event_id = send(dev, "nobody/listens")
    result = cli("runs", event_id, "--url", dev.url)
    assert result.returncode == 0 and result.stdout.strip() == "(none)"
    assert json.loads(cli("runs", event_id, "--json", "--url", dev.url).stdout) == []


def test_client_commands_fail_with_a_clear_message(dev: Server) -> None:
    assert_clean_failure(stepflow("runs", "no-such-event", "--url", dev.url), "404", "no-such-event", "not found")
    assert_clean_failure(cli("run", "not-a-ulid", "--url", dev.url), "400", "not a run id")
    assert_clean_failure(cli("run", "01HW3C5Z7YJ8KQ2V9M4N6P8R0T", "--url", dev.url), "404", "not found")
    dead = f"http://127.0.0.1:{free_port()}"
    assert_clean_failure(cli("send", "math/add", "--url", dead), "cannot reach", dead)
    assert_clean_failure(cli("runs", "x", "--url", dead), "cannot reach")


def test_dev_refuses_a_port_in_use(dev: Server, tmp_path: Path) -> None:
    result = stepflow("dev", "--port", str(dev.port), "--db", str(tmp_path / "other.db"))
    assert_clean_failure(result, "cannot listen", str(dev.port))


def test_a_server_with_every_slot_busy_still_answers(workflow_file: Path, tmp_path: Path) -> None:
    def post_event(url: str) -> None:
        request = urllib.request.Request(url + "/e/dev", data=b'{"name": "busy/go"}', method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=3) as resp:
            assert resp.status == 200

    _Steps.gate.clear()
    _Steps.gate_calls = 0
    try:
        with server_process("dev", tmp_path, "-f", str(workflow_file), "--concurrency", "1",
                            stop_timeout=2) as busy:
            post_event(busy.url)
            deadline = time.monotonic() + 5
            while _Steps.gate_calls < 1:  # the first run's step holds the only slot
                assert time.monotonic() < deadline
                time.sleep(0.02)
            post_event(busy.url)  # the second run is due, with no free slot: it must wait, not freeze all
            time.sleep(0.3)
            with urllib.request.urlopen(busy.url + "/health", timeout=3) as resp:
                assert resp.status == 200
            _Steps.gate.set()
            deadline = time.monotonic() + 5
            while True:  # both runs complete, one after the other
                with urllib.request.urlopen(busy.url + "/v1/runs?status=Completed", timeout=3) as resp:
                    if len(json.loads(resp.read())["data"]) == 2:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        _Steps.gate.set()


# --- serve ---------------------------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_keys(tmp_path: Path) -> None:
    db = tmp_path / "serve.db"
    port = str(free_port())
    assert_clean_failure(stepflow("serve", "--port", port, "--db", str(db)), "signing key", "--signing-key",
                         "STEPFLOW_SIGNING_KEY")
    assert_clean_failure(cli("serve", "--port", port, "--db", str(db), "--signing-key", "s"),
                         "event key", "--event-key", "STEPFLOW_EVENT_KEY")
    assert_clean_failure(cli("serve", "--port", port, "--db", str(db), "--event-key", "k"), "signing key")
    assert_clean_failure(cli("serve", "--port", port, "--db", str(db), "--signing-key", "", "--event-key", "k"),
                         "signing key")
    assert not db.exists()  # it stopped before touching anything


@pytest.mark.parametrize(("signing_key", "event_key", "needles"), [
    ("   ", EK, ("signing key is empty or only whitespace", "openssl rand -hex 32")),
    (SK + " ", EK, ("signing key contains whitespace",)),
    ("signkey-prod-" + "ab" * 10, EK, ("signing key is 20 characters (not counting a signkey-<env>- prefix)",
                                       "at least 32")),
    (SK, "short", ("event key is 5 characters", "at least 16")),
    (SK, SK, ("the event key is the signing key", "different secret")),
], ids=["whitespace-only", "whitespace", "short-signing", "short-event", "same"])
def test_serve_refuses_weak_keys_saying_what_to_do(tmp_path: Path, signing_key: str, event_key: str,
                                                    needles: tuple[str, ...]) -> None:
    db = tmp_path / "serve.db"
    assert_clean_failure(cli("serve", "--port", str(free_port()), "--db", str(db), "--signing-key", signing_key,
                             "--event-key", event_key), *needles)
    assert not db.exists()


def test_serve_with_keys_requires_them(tmp_path: Path, workflow_file: Path) -> None:
    with server_process("serve", tmp_path, "-f", str(workflow_file), "--signing-key", SK,
                        "--event-key", EK) as served:
        assert "dev mode" not in served.log.read_text()
        refused = cli("send", "math/add", "--data", '{"a": 1, "b": 2}', "--url", served.url, "--event-key", "wrong")
        assert_clean_failure(refused, "401", "event key")
        sent = cli("send", "math/add", "--data", '{"a": 1, "b": 2}', "--url", served.url, "--event-key", EK)
        assert sent.returncode == 0, sent.stderr
        event_id = sent.stdout.strip()
        assert_clean_failure(cli("runs", event_id, "--url", served.url), "401", "signing key")
        assert_clean_failure(cli("runs", event_id, "--url", served.url, "--signing-key", "bad"), "401")
        listed = cli("runs", event_id, "--json", "--url", served.url, "--signing-key", SK)
        assert listed.returncode == 0, listed.stderr
        [run] = json.loads(listed.stdout)
        waited = cli("run", run["run_id"], "--wait", "--json", "--url", served.url, "--signing-key", SK)
        assert json.loads(waited.stdout)["output"] == {"sum": 3}


# --- bad workflow files ---------------------------------------------------------------------------------------


def test_dev_refuses_a_file_whose_after_names_an_unknown_step(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "broken", "triggers": [{"event": "x/y"}], "steps": {
        "parse": {"runtime": _http()},
        "report": {"runtime": _http(), "after": [{"step": "pasre"}]}}}))
    result = stepflow("dev", "--port", str(free_port()), "--db", str(tmp_path / "x.db"), "-f", str(bad))
    assert_clean_failure(result, str(bad), "function 'broken'", "step 'report'", "unknown step 'pasre'", "parse")
    assert "listening" not in result.stdout


def _http(path: str = "/x") -> dict[str, Any]:
    return {"type": "http", "url": "http://127.0.0.1:9/" + path.lstrip("/")}


@pytest.mark.parametrize(("steps", "needles"), [
    ({"a": {"runtime": _http(), "after": [{"step": "b"}]}, "b": {"runtime": _http(), "after": [{"step": "a"}]},
      "c": {"runtime": _http()}},
     ("cycle", "a", "b")),
    ({"a": {"runtime": _http()}, "b": {"runtime": _http(), "after": [{"step": "a", "if": "steps.a.body >"}]}},
     ("step 'b'", "CEL", "steps.a.body >")),
    ({"a": {"runtime": {"type": "ftp", "url": "ftp://x"}}},
     ("step 'a'", "unknown runtime type 'ftp'")),
], ids=["cycle", "bad-cel", "unknown-runtime"])
def test_dev_refuses_an_invalid_workflow_file(tmp_path: Path, steps: dict[str, Any], needles: tuple[str, ...]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "broken", "triggers": [{"event": "x/y"}], "steps": steps}))
    result = cli("dev", "--port", str(free_port()), "--db", str(tmp_path / "x.db"), "-f", str(bad))
    assert_clean_failure(result, str(bad), "function 'broken'", *needles)
    assert "listening" not in result.stdout
    assert not (tmp_path / "x.db").exists()


def test_dev_refuses_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    result = cli("dev", "--port", str(free_port()), "--db", str(tmp_path / "x.db"), "-f", str(missing))
    assert_clean_failure(result, str(missing), "cannot read")
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": "x", ')
    result = cli("dev", "--port", str(free_port()), "--db", str(tmp_path / "x.db"), "-f", str(broken))
    assert_clean_failure(result, str(broken), "not valid JSON")
    other = tmp_path / "functions.yaml"
    other.write_text("id: x")
    result = cli("dev", "--port", str(free_port()), "--db", str(tmp_path / "x.db"), "-f", str(other))
    assert_clean_failure(result, str(other), ".json or .toml")


# --- exit codes and errors scripts can rely on ----------------------------------------------------------------


def test_exit_codes_say_what_went_wrong(dev: Server) -> None:
    unreachable = cli("run", "01M8RSD81X91PSHM3J4SC5560N", "--url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 4
    assert_clean_failure(unreachable, "cannot reach stepflow at http://127.0.0.1:")
    assert "0 unreachable" not in unreachable.stderr  # a sentence, not a status code
    missing = cli("run", "01M8RSD81X91PSHM3J4SC5560N", "--url", dev.url)
    assert missing.returncode == 3
    assert_clean_failure(missing, "404", "not found")
    usage = cli("send", "t/x", "--data", "{nope", "--url", dev.url)
    assert usage.returncode == 2
    assert_clean_failure(usage, "--data is not valid JSON")
    slow = run_id_of(dev, send(dev, "math/slow"))
    timed_out = cli("run", slow, "--wait", "--timeout", "0.2", "--url", dev.url)
    assert timed_out.returncode == 5
    assert_clean_failure(timed_out, "still")
    failed = run_id_of(dev, send(dev, "math/break"))
    ended = cli("run", failed, "--wait", "--json", "--url", dev.url)
    assert ended.returncode == 1 and json.loads(ended.stdout)["status"] == "Failed"


def test_json_errors_are_json(dev: Server) -> None:
    missing = cli("run", "01M8RSD81X91PSHM3J4SC5560N", "--json", "--url", dev.url)
    assert missing.returncode == 3
    error = json.loads(missing.stdout)["error"]
    assert error["code"] == "not_found" and "not found" in error["message"]
    unreachable = cli("runs", "some-event", "--json", "--url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 4 and json.loads(unreachable.stdout)["error"]["code"] == "unreachable"


def test_runs_list_show_cancel_and_functions(dev: Server) -> None:
    """The grouped commands, and the older spellings (`runs EVENT_ID`, `run RUN_ID`) that keep working."""
    event_id = send(dev, "math/add", {"a": 20, "b": 22})
    run_id = run_id_of(dev, event_id)
    shown = cli("runs", "show", run_id, "--wait", "--json", "--url", dev.url)
    assert shown.returncode == 0 and json.loads(shown.stdout)["output"]["sum"] == 42
    old = cli("run", run_id, "--json", "--url", dev.url)
    assert json.loads(old.stdout)["run_id"] == run_id
    listed = cli("runs", "list", "--function", "adder", "--status", "Completed", "--json", "--url", dev.url)
    assert listed.returncode == 0 and run_id in [r["run_id"] for r in json.loads(listed.stdout)["data"]]
    recent = cli("runs", "list", "--since", "1h", "--event", "math/add", "--json", "--url", dev.url)
    assert run_id in [r["run_id"] for r in json.loads(recent.stdout)["data"]]
    assert json.loads(cli("runs", "list", "--event", "math/none", "--json", "--url", dev.url).stdout)["data"] == []
    future = datetime.now(UTC) + timedelta(hours=1)
    assert json.loads(cli("runs", "list", "--since", future.isoformat(), "--json", "--url", dev.url).stdout)[
        "data"] == []
    listed_events = json.loads(cli("events", "list", "--name", "math/add", "--json", "--url", dev.url).stdout)
    assert event_id in [e["id"] for e in listed_events["data"]]
    event_shown = cli("events", "show", event_id, "--url", dev.url)
    assert event_shown.returncode == 0 and "math/add" in event_shown.stdout and run_id in event_shown.stdout
    assert cli("events", "show", "no-such-event", "--url", dev.url).returncode == 3
    bad_since = cli("runs", "list", "--since", "last tuesday", "--url", dev.url)
    assert bad_since.returncode == 2
    assert_clean_failure(bad_since, "--since must be a duration")
    table = cli("runs", "list", "--limit", "5", "--url", dev.url)
    assert table.stdout.startswith("RUN") and "adder" in table.stdout
    other = run_id_of(dev, send(dev, "math/add", {"a": 1, "b": 2}))
    queried = cli("runs", "list", "--query", f'output.sum == 42 && event.id == "{event_id}"', "--json", "--url",
                  dev.url)
    assert [r["run_id"] for r in json.loads(queried.stdout)["data"]] == [run_id], queried
    assert other in cli("runs", "list", "--query", 'event.data.b == 2', "--url", dev.url).stdout
    noted = cli("runs", "list", "--query", "event.data.missing == 1", "--url", dev.url)
    assert noted.returncode == 0 and "note: the query failed on" in noted.stderr and "missing" in noted.stderr
    bad_query = cli("runs", "list", "--query", "event.data.", "--url", dev.url)
    assert_clean_failure(bad_query, "'query': invalid CEL expression")
    slow = run_id_of(dev, send(dev, "math/slow"))
    cancelled = cli("runs", "cancel", slow, "--json", "--url", dev.url)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "Cancelled"
    assert cli("runs", "show", slow, "--url", dev.url).returncode == 1  # a cancelled run: exit code 1
    functions = json.loads(cli("functions", "list", "--json", "--url", dev.url).stdout)
    assert {"adder", "breaker", "slow"} <= {f["id"] for f in functions}
    invoked = cli("functions", "invoke", "adder", "--data", '{"a": 1, "b": 1}', "--wait", "--json", "--url", dev.url)
    assert invoked.returncode == 0, invoked
    assert json.loads(invoked.stdout)["output"]["sum"] == 2
    rerun = cli("runs", "rerun", run_id, "--from-step", "check", "--json", "--url", dev.url)
    assert rerun.returncode == 0, rerun
    again = json.loads(rerun.stdout)
    assert again["original_run_id"] == run_id and again["run_id"] != run_id
    shown_again = json.loads(cli("runs", "show", again["run_id"], "--wait", "--json", "--url", dev.url).stdout)
    assert shown_again["output"] == {"sum": 42} and shown_again["steps"][0]["step_id"] == "add"
    refused = cli("runs", "rerun", slow, "--from-step", "nope", "--url", dev.url)
    assert refused.returncode == 3
    assert_clean_failure(refused, "has no step 'nope'")
    unknown = cli("functions", "invoke", "nope", "--url", dev.url)
    assert unknown.returncode == 3
    assert_clean_failure(unknown, "no function 'nope'")


def test_cancel_in_bulk_follows_the_operation_to_its_end(dev: Server) -> None:
    tagged = [run_id_of(dev, send(dev, "math/slow", {"batch": 7})) for _ in range(2)]
    untagged = run_id_of(dev, send(dev, "math/slow", {"batch": 8}))
    done = cli("cancel", "slow", "--if", "event.data.batch == 7", "--json", "--url", dev.url)
    assert done.returncode == 0, done
    op = json.loads(done.stdout)
    assert op["status"] == "Completed" and op["cancelled"] == 2 and op["skipped"] >= 1
    for run_id in tagged:
        assert json.loads(cli("runs", "show", run_id, "--json", "--url", dev.url).stdout)["status"] == "Cancelled"
    assert json.loads(cli("runs", "show", untagged, "--json", "--url", dev.url).stdout)["status"] != "Cancelled"
    table = cli("cancel", "slow", "--url", dev.url)
    assert table.returncode == 0 and "Completed:" in table.stdout and "cancelled" in table.stdout
    assert "cancelling" in table.stderr  # the progress bar
    missing = cli("cancel", "nope", "--url", dev.url)
    assert missing.returncode == 3
    assert_clean_failure(missing, "no function 'nope'")


def test_replay_follows_the_operation_to_its_end(dev: Server) -> None:
    failed = run_id_of(dev, send(dev, "math/break"))
    assert cli("runs", "show", failed, "--wait", "--url", dev.url).returncode == 1
    done = cli("replay", "breaker", "--since", "1h", "--status", "Failed", "--json", "--url", dev.url)
    assert done.returncode == 0, done
    op = json.loads(done.stdout)
    assert op["status"] == "Completed" and op["started"] >= 1 and op["statuses"] == ["FAILED"]
    reruns = json.loads(cli("runs", "list", "--reruns-of", failed, "--json", "--url", dev.url).stdout)["data"]
    assert len(reruns) == 1 and reruns[0]["function_id"] == "breaker"
    table = cli("replay", "adder", "--since", "1h", "--event", "math/add", "--url", dev.url)
    assert table.returncode == 0 and "Completed:" in table.stdout and "replaying" in table.stderr
    bad = cli("replay", "adder", "--since", "soon", "--url", dev.url)
    assert bad.returncode == 2
    assert_clean_failure(bad, "--since must be a duration")


def test_functions_pause_and_resume(dev: Server) -> None:
    paused = cli("functions", "pause", "adder", "--url", dev.url)
    assert paused.returncode == 0 and "adder paused" in paused.stdout
    try:
        listed = cli("functions", "list", "--url", dev.url).stdout.splitlines()
        assert "PAUSED" in listed[0]
        [adder] = [line for line in listed if line.startswith("adder ")]
        assert "since 20" in adder and all("since" not in line for line in listed if line is not adder)
        run_id = run_id_of(dev, send(dev, "math/add", {"a": 1, "b": 2}))
        assert json.loads(cli("runs", "show", run_id, "--json", "--url", dev.url).stdout)["status"] == "Paused"
    finally:
        resumed = cli("functions", "resume", "adder", "--json", "--url", dev.url)
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["runs_resumed"] >= 1
    shown = json.loads(cli("runs", "show", run_id, "--wait", "--json", "--url", dev.url).stdout)
    assert shown["status"] == "Completed" and shown["output"] == {"sum": 3}
    assert cli("functions", "pause", "nope", "--url", dev.url).returncode == 3


def test_migrate_a_sqlite_file_and_an_unreachable_database(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    migrated = cli("migrate", "--db", str(db))
    assert migrated.returncode == 0 and "up to date" in migrated.stdout, migrated
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
    assert cli("migrate", "--db", str(db)).returncode == 0  # again: nothing to do
    unreachable = cli("migrate", "--db", f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    assert_clean_failure(unreachable, "cannot connect to PostgreSQL")


def test_runs_show_says_why_a_run_waits(dev: Server) -> None:
    first = run_id_of(dev, send(dev, "math/queue"))
    second = run_id_of(dev, send(dev, "math/queue"))
    try:
        deadline = time.monotonic() + 10
        while json.loads(cli("runs", "show", first, "--json", "--url", dev.url).stdout)["status"] != "Running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shown = cli("runs", "show", second, "--url", dev.url)
        assert shown.returncode == 0 and "waiting: concurrency limit (1/1)" in shown.stdout, shown
        listed = json.loads(cli("functions", "list", "--json", "--url", dev.url).stdout)
        assert [f["flow_control"] for f in listed if f["id"] == "one-by-one"] == [{"concurrency": [{"limit": 1}]}]
    finally:
        for run_id in (first, second):
            cli("runs", "cancel", run_id, "--url", dev.url)
