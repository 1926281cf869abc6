"""Docs that are true: every fenced Python block in docs/*.md marked runnable is executed, as written.

The convention (docs/architecture.md, "Documentation that runs"): the line right before a ```python fence is

    <!-- runnable -->                      the block runs on its own
    <!-- runnable: quickstart-server -->   the block talks to the quickstart's server: the test first starts
                                           the quickstart's own steps.py and `stepflow dev -f welcome_user.json`
                                           (both taken from docs/quickstart.md) on ports 9001 and 8288

Each block runs in a fresh process of this checkout's Python, in an empty temporary directory, without
STEPFLOW_* variables, with a time limit; it fails the test when it exits non-zero. Blocks that are fragments
(they use names defined elsewhere, or serve forever) stay unmarked.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.runs_once  # doc snippets choose their own store

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
STEPFLOW = str(Path(PYTHON).parent / "stepflow")
TIMEOUT = 120
MARKER = re.compile(r"^<!--\s*runnable(?::\s*(?P<setup>[\w-]+))?\s*-->\s*$")
SETUPS = {"quickstart-server"}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int           # 1-based line of the fence
    setup: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks(text: str, language: str) -> Iterator[tuple[int, str]]:
    """(0-based line of the opening fence, code) for every ```<language> block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start = i
            i += 1
            body: list[str] = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            yield start, "\n".join(body) + "\n"
        i += 1


def runnable_blocks() -> list[Block]:
    blocks: list[Block] = []
    for path in sorted(DOCS.glob("*.md")):
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            match = MARKER.match(line.strip())
            if match is None:
                continue
            fence = lines[index + 1].strip() if index + 1 < len(lines) else ""
            if fence != "```python":
                raise AssertionError(f"{path.name}:{index + 1}: a runnable marker must be right before a ```python "
                                     f"fence, found {fence!r}")
            setup = match.group("setup")
            if setup is not None and setup not in SETUPS:
                raise AssertionError(f"{path.name}:{index + 1}: unknown setup {setup!r}; known: {sorted(SETUPS)}")
            code = dict(fenced_blocks("\n".join(lines), "python"))[index + 1]
            blocks.append(Block(path.name, index + 2, setup, code))
    return blocks


BLOCKS = runnable_blocks()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOW_")}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on port {port} within {timeout}s")


def quickstart_files() -> tuple[str, str]:
    """The quickstart's welcome_user.json and steps.py: its first json and python blocks."""
    text = (DOCS / "quickstart.md").read_text()
    workflow = next(code for _, code in fenced_blocks(text, "json"))
    steps = next(code for _, code in fenced_blocks(text, "python"))
    assert '"id": "welcome-user"' in workflow and "ThreadingHTTPServer" in steps, "quickstart.md changed shape"
    return workflow, steps


@pytest.fixture
def quickstart_server(tmp_path: Path) -> Iterator[None]:
    for port in (8288, 9001):
        if not port_free(port):
            pytest.skip(f"the quickstart needs port {port}, which something else is using")
    workflow, steps = quickstart_files()
    setup = tmp_path / "quickstart"
    setup.mkdir()
    (setup / "welcome_user.json").write_text(workflow)
    (setup / "steps.py").write_text(steps)
    procs = [subprocess.Popen([PYTHON, "steps.py"], cwd=setup, env=clean_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for_port(9001, procs[0], "the quickstart's steps.py")
        procs.append(subprocess.Popen([STEPFLOW, "dev", "-f", "welcome_user.json"], cwd=setup, env=clean_env(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(8288, procs[1], "stepflow dev -f welcome_user.json")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_runnable_block(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if block.setup == "quickstart-server":
        request.getfixturevalue("quickstart_server")
    work = tmp_path / "cwd"
    work.mkdir()
    script = work / "snippet.py"
    script.write_text(block.code)
    try:
        done = subprocess.run([PYTHON, script.name], cwd=work, env=clean_env(), capture_output=True, text=True,
                              check=False, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id}: still running after {TIMEOUT}s\nstdout:\n{exc.stdout!r}\nstderr:\n{exc.stderr!r}")
    assert done.returncode == 0, (f"{block.id} exited with {done.returncode}\n--- code\n{block.code}"
                                  f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}")


def test_the_blocks_that_were_broken_are_marked() -> None:
    """Issue 11 item 9 named these snippets broken; they stay runnable and marked."""
    marked: dict[str, list[str]] = {}
    for b in BLOCKS:
        marked.setdefault(b.doc, []).append(b.code)
    workflows = "\n".join(marked.get("workflows.md", []))
    assert "stepflow.Engine(SqliteStore(" in workflows          # the embedded engine on a store
    assert "create_app(engine" in workflows                      # the APIs of the embedded engine
    assert '"status": "success"' in "\n".join(marked.get("step-contract.md", []))
    assert any(b.setup == "quickstart-server" for b in BLOCKS)


def test_every_marker_is_on_a_python_block() -> None:
    # runnable_blocks() raises at import for a misplaced marker; this states it as a test of its own
    text = "".join(p.read_text() for p in DOCS.glob("*.md"))
    assert len(re.findall(r"(?m)^\s*<!--\s*runnable", text)) == len(BLOCKS)


# --- what the prose around the embedded snippets claims (workflows.md, "Declaring workflows from Python") ------

def test_create_app_refuses_what_it_cannot_serve() -> None:
    from stepflow.server import ServerSettings, create_app

    with pytest.raises(TypeError, match=r"takes a stepflow\.Engine or a stepflow\.engine\.EngineCore, not object"):
        create_app(object(), ServerSettings(dev=True))  # type: ignore[arg-type]


def test_engine_takes_apps_functions_and_one_store(tmp_path: Path) -> None:
    import stepflow
    from stepflow.store import SqliteStore

    with pytest.raises(TypeError, match="takes SDK apps"):
        stepflow.Engine(str(tmp_path / "a.db"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="one store"):
        stepflow.Engine(SqliteStore(tmp_path / "a.db"), store=f"sqlite:///{tmp_path}/b.db")
    with pytest.raises(TypeError, match="one store"):
        stepflow.Engine(SqliteStore(tmp_path / "a.db"), SqliteStore(tmp_path / "b.db"))


async def test_register_before_and_after_start(tmp_path: Path) -> None:
    import stepflow
    from stepflow.store import SqliteStore

    def fn(fid: str) -> stepflow.FunctionDef:
        return stepflow.workflow(fid, triggers=[stepflow.event("docs/t")],
                                 steps={"s": {"runtime": {"type": "inprocess", "handler": "json:dumps"}}})

    engine = stepflow.Engine(SqliteStore(tmp_path / "e.db"), fn("early"))
    assert await engine.register(fn("before-start")) is None      # registered when the engine starts
    async with engine:
        assert await engine.register(fn("after-start")) == 1
        ids = await engine.send({"name": "docs/t"})
        runs = await engine.get_event_runs(ids[0])
        assert sorted(r["function_id"] for r in runs) == ["after-start", "before-start", "early"]
        with pytest.raises(TypeError, match="workflow function"):
            await engine.register("nope")  # type: ignore[arg-type]
