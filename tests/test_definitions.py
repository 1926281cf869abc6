"""Workflow definitions: JSON and TOML files, Python declarations, and every invalid definition refused at
load with a message naming the file, the function, the step and the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, StepServer

import stepflow
from stepflow import DefinitionError, FunctionDef, load_function_file, parse_function
from stepflow.definitions import RetryPolicy

HTTP = {"type": "http", "url": "http://127.0.0.1:9000/x"}

# The issue's example file, as written.
ISSUE_EXAMPLE: dict[str, Any] = {
    "id": "process-csv-upload", "name": "Process CSV upload",
    "triggers": [{"event": "imports/csv.uploaded"}],
    "steps": {
        "parse": {"runtime": {"type": "http", "url": "http://127.0.0.1:9000/parse"}},
        "report": {"runtime": {"type": "http", "url": "http://127.0.0.1:9000/report"},
                   "after": [{"step": "parse", "if": "steps.parse.body.processedItems > 0", "wait": "2s"}],
                   "retries": {"attempts": 3}},
    },
}


def write_json(tmp_path: Path, document: Any, name: str = "fn.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def fn(steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "wf", "triggers": [{"event": "app/go"}], "steps": steps, **extra}


def refused(tmp_path: Path, document: Any) -> DefinitionError:
    """Load `document` from a real file and return the error it was refused with."""
    path = write_json(tmp_path, document)
    with pytest.raises(DefinitionError) as info:
        load_function_file(path)
    error = info.value
    assert str(path) in str(error), "the message must name the file"
    assert error.source == str(path)
    return error


# --- loading valid files -----------------------------------------------------------------------------------


def check_issue_example(f: FunctionDef, source: Path) -> None:
    assert f.id == "process-csv-upload"
    assert f.name == "Process CSV upload"
    assert f.app_id == "default"
    assert f.source == str(source)
    assert [t.event for t in f.triggers] == ["imports/csv.uploaded"]
    assert f.roots == ("parse",)
    assert f.children == {"parse": ("report",), "report": ()}
    report = f.steps["report"]
    assert report.runtime.type == "http"
    assert report.runtime.options == {"url": "http://127.0.0.1:9000/report"}
    (edge,) = report.after
    assert edge.step == "parse"
    assert edge.condition is not None and edge.condition.source == "steps.parse.body.processedItems > 0"
    assert edge.wait == 2.0
    assert f.attempts_for("report") == 3
    assert f.attempts_for("parse") == 5  # default: 4 retries = 5 attempts
    assert f.output_step is None
    assert f.matches("imports/csv.uploaded", {"name": "imports/csv.uploaded", "data": {}})
    assert not f.matches("imports/csv.deleted", {"name": "imports/csv.deleted", "data": {}})


def test_loads_the_issue_example_json_file(tmp_path: Path) -> None:
    path = write_json(tmp_path, ISSUE_EXAMPLE)
    (f,) = load_function_file(path)
    check_issue_example(f, path)


def test_loads_the_same_function_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "fn.toml"
    path.write_text(textwrap.dedent("""
        id = "process-csv-upload"
        name = "Process CSV upload"
        triggers = [{event = "imports/csv.uploaded"}]

        [steps.parse]
        runtime = {type = "http", url = "http://127.0.0.1:9000/parse"}

        [steps.report]
        runtime = {type = "http", url = "http://127.0.0.1:9000/report"}
        after = [{step = "parse", if = "steps.parse.body.processedItems > 0", wait = "2s"}]
        retries = {attempts = 3}
    """))
    (f,) = load_function_file(path)
    check_issue_example(f, path)
    # identical to the JSON declaration
    assert f == parse_function(ISSUE_EXAMPLE, source=str(path))


def test_loads_several_functions_from_toml_array_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "fns.toml"
    path.write_text(textwrap.dedent("""
        [[functions]]
        id = "first"
        app_id = "imports"
        triggers = [{event = "imports/*"}]
        retries = 2
          [functions.steps.a]
          runtime = {type = "http", url = "http://127.0.0.1:9000/a"}
          [functions.steps.b]
          runtime = {type = "http", url = "http://127.0.0.1:9000/b", timeout = "300ms"}
          after = ["a"]
          output = true

        [[functions]]
        id = "second"
        triggers = [{cron = "TZ=Europe/Paris 0 9 * * 1-5"}, {event = "reports/due", if = "event.data.n > 1"}]
          [functions.steps.only]
          runtime = {type = "http", url = "https://example.com/step"}
    """))
    first, second = load_function_file(path)
    assert (first.id, first.app_id, second.id) == ("first", "imports", "second")
    assert first.retries == RetryPolicy(attempts=3)
    assert first.attempts_for("b") == 3  # function-level retries apply to steps without their own
    assert first.output_step == "b"
    assert first.steps["b"].after[0].step == "a" and first.steps["b"].after[0].condition is None
    assert first.steps["b"].runtime.options["timeout"] == "300ms"
    assert first.matches("imports/anything", {"data": {}})
    assert not first.matches("exports/anything", {"data": {}})
    assert second.triggers[0].cron == "TZ=Europe/Paris 0 9 * * 1-5"
    assert second.matches("reports/due", {"data": {"n": 2}})
    assert not second.matches("reports/due", {"data": {"n": 1}})


def test_loads_a_list_of_functions_and_a_functions_object_from_json(tmp_path: Path) -> None:
    one = fn({"a": {"runtime": HTTP}}, id="one")
    two = fn({"a": {"runtime": HTTP}}, id="two")
    listed = load_function_file(write_json(tmp_path, [one, two], "list.json"))
    wrapped = load_function_file(write_json(tmp_path, {"functions": [one, two]}, "wrapped.json"))
    assert [f.id for f in listed] == ["one", "two"]
    assert [f.id for f in wrapped] == ["one", "two"]
    assert str(listed[0].source).endswith("list.json") and str(wrapped[1].source).endswith("wrapped.json")


def test_after_accepts_a_bare_step_id_and_multiple_parents(tmp_path: Path) -> None:
    path = write_json(tmp_path, fn({
        "a": {"runtime": HTTP}, "b": {"runtime": HTTP},
        "c": {"runtime": HTTP, "after": ["a", {"step": "b", "wait": "1m30s"}]},
        "d": {"runtime": HTTP, "after": "c"},
    }))
    (f,) = load_function_file(path)
    assert f.roots == ("a", "b")
    assert [(e.step, e.wait) for e in f.steps["c"].after] == [("a", 0.0), ("b", 90.0)]
    assert f.children["a"] == ("c",) and f.children["b"] == ("c",) and f.children["c"] == ("d",)


@pytest.mark.parametrize("wait", ["1.5s", 1.5, 2, "250ms", "1h"])
def test_definitions_survive_a_round_trip_through_the_stored_config(wait: Any) -> None:
    """The engine stores `to_config()` and re-parses it after a restart: the result must be the same function."""
    original = parse_function(fn({
        "a": {"runtime": {**HTTP, "timeout": "300ms"}, "retries": {"attempts": 2}, "timeout": 12.5},
        "b": {"runtime": HTTP, "after": [{"step": "a", "if": "response.status == 200", "wait": wait}],
              "output": True, "name": "B"},
    }, retries=7, app_id="app"), source="x.json")
    again = parse_function(original.to_config(), source="x.json")
    assert again == original
    assert again.steps["b"].after[0].wait == original.steps["b"].after[0].wait
    assert again.to_config() == original.to_config()


def test_python_timedelta_wait_survives_the_round_trip() -> None:
    original = stepflow.workflow("td", triggers=[stepflow.event("app/go")], steps={
        "a": {"runtime": HTTP},
        "b": {"runtime": HTTP, "after": [{"step": "a", "wait": timedelta(minutes=2)}]},
    })
    assert original.steps["b"].after[0].wait == 120.0
    again = parse_function(original.to_config(), source="store")
    assert again.steps["b"].after[0].wait == 120.0


# --- Python declarations -----------------------------------------------------------------------------------


def test_python_declaration_builds_the_same_function_as_a_file() -> None:
    declared = stepflow.workflow(
        "process-csv-upload", name="Process CSV upload",
        triggers=[stepflow.event("imports/csv.uploaded")],
        steps=ISSUE_EXAMPLE["steps"])
    assert declared.source is not None and declared.source.startswith(f"{__file__}:")
    assert declared == parse_function(ISSUE_EXAMPLE, source=declared.source)
    assert declared.attempts_for("report") == 3


def test_python_declaration_helpers() -> None:
    f = stepflow.workflow("helpers", app_id="billing", retries=0,
                          triggers=[stepflow.event("billing/*", if_="event.data.amount > 10"),
                                    stepflow.cron("*/5 * * * *")],
                          steps={"a": {"runtime": HTTP}})
    assert f.app_id == "billing"
    assert f.attempts_for("a") == 1
    assert f.triggers[1].cron == "*/5 * * * *"
    assert f.matches("billing/paid", {"data": {"amount": 11}})
    assert not f.matches("billing/paid", {"data": {"amount": 10}})


def test_python_declaration_errors_name_the_declaring_file_function_and_step() -> None:
    with pytest.raises(DefinitionError) as info:
        stepflow.workflow("bad", triggers=[stepflow.event("app/go")],
                          steps={"a": {"runtime": HTTP, "after": ["nope"]}})
    message = str(info.value)
    assert __file__ in message, message  # where the declaration is, so the user can find it
    assert "'bad'" in message and "step 'a'" in message and "'nope'" in message


async def test_python_declared_workflow_runs(stepflow: RunningServer, step_server: StepServer) -> None:
    url = step_server.json("/only", {"status": 200, "body": {"ok": True}})
    await stepflow.engine.register(stepflow_workflow(url))
    ids = await stepflow.client.send({"name": "py/go", "data": {}})
    assert await stepflow.client.wait_for_output(ids[0], timeout=10) == {"ok": True}


def stepflow_workflow(url: str) -> FunctionDef:
    return stepflow.workflow("py-declared", triggers=[stepflow.event("py/go")],
                             steps={"only": {"runtime": {"type": "http", "url": url}}})


# --- invalid definitions -----------------------------------------------------------------------------------


def test_unknown_step_in_after(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"parse": {"runtime": HTTP},
                                  "report": {"runtime": HTTP, "after": [{"step": "prase"}]}}))
    assert (error.function, error.step) == ("wf", "report")
    assert "'prase'" in error.problem and "unknown step" in error.problem
    assert "function 'wf'" in str(error) and "step 'report'" in str(error)


def test_unknown_step_suggests_a_case_insensitive_match(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"Parse": {"runtime": HTTP}, "b": {"runtime": HTTP, "after": ["parse"]}}))
    assert "did you mean 'Parse'" in error.problem


def test_two_step_cycle(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP, "after": ["b"]},
                                  "b": {"runtime": HTTP, "after": ["a"]}}))
    assert "cycle" in error.problem
    assert error.step in ("a", "b")
    assert "a -> b -> a" in error.problem or "b -> a -> b" in error.problem


def test_longer_cycle_behind_a_valid_root(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({
        "root": {"runtime": HTTP},
        "a": {"runtime": HTTP, "after": ["root", "d"]},
        "b": {"runtime": HTTP, "after": ["a"]},
        "c": {"runtime": HTTP, "after": ["b"]},
        "d": {"runtime": HTTP, "after": ["c"]},
    }))
    assert "cycle" in error.problem
    path = error.problem.split(": ", 1)[1].split(" -> ")
    assert path[0] == path[-1]
    assert sorted(path[:-1]) == ["a", "b", "c", "d"]  # the whole cycle, and nothing but the cycle
    assert error.step in ("a", "b", "c", "d")


def test_step_after_itself(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP, "after": ["a"]}}))
    assert error.step == "a" and "itself" in error.problem


def test_bad_cel_on_an_edge(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP},
                                  "b": {"runtime": HTTP, "after": [{"step": "a", "if": "steps.a.body >"}]}}))
    assert error.step == "b"
    assert "invalid CEL expression" in error.problem and "steps.a.body >" in error.problem
    assert "\n" not in str(error)  # one readable line


def test_bad_cel_in_a_trigger(tmp_path: Path) -> None:
    error = refused(tmp_path, {"id": "wf", "triggers": [{"event": "a/b", "if": "event.data.x == "}],
                               "steps": {"a": {"runtime": HTTP}}})
    assert error.function == "wf"
    assert "trigger #1" in error.problem and "invalid CEL expression" in error.problem


@pytest.mark.parametrize("condition", ["", 42, True])
def test_edge_condition_must_be_a_non_empty_string(tmp_path: Path, condition: Any) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP},
                                  "b": {"runtime": HTTP, "after": [{"step": "a", "if": condition}]}}))
    assert error.step == "b" and "non-empty string" in error.problem


def test_unknown_runtime_type(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": {"type": "ftp", "url": "ftp://x"}}}))
    assert error.step == "a"
    assert "unknown runtime type 'ftp'" in error.problem and "http" in error.problem


@pytest.mark.parametrize("runtime", [{"type": "http"}, {"type": "http", "url": "ftp://x/y"},
                                     {"type": "http", "url": 5}])
def test_http_runtime_needs_a_url(tmp_path: Path, runtime: dict[str, Any]) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": runtime}}))
    assert error.step == "a" and "needs 'url'" in error.problem


def test_runtime_missing(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"after": []}}))
    assert error.step == "a" and "'runtime'" in error.problem


@pytest.mark.parametrize("wait", ["2 parsecs", "-1s", -1, "", "5", True])
def test_bad_wait_duration(tmp_path: Path, wait: Any) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP},
                                  "b": {"runtime": HTTP, "after": [{"step": "a", "wait": wait}]}}))
    assert error.step == "b"
    assert "invalid duration" in error.problem and "'after' 'a'" in error.problem


def test_bad_runtime_timeout(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": {**HTTP, "timeout": "soon"}}}))
    assert error.step == "a" and "runtime.timeout" in error.problem


@pytest.mark.parametrize("retries, expected", [
    (-1, "between 0 and 100"), (101, "between 0 and 100"), ("3", "number of retries"),
    (True, "number of retries"), ({"attempts": 0}, "from 1 to 101"), ({"attempts": 2.5}, "from 1 to 101"),
    ({"attempts": 3, "backoff": "1s"}, "only 'attempts'"),
])
def test_bad_step_retries(tmp_path: Path, retries: Any, expected: str) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP, "retries": retries}}))
    assert error.step == "a" and expected in error.problem


def test_bad_function_retries(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP}}, retries=1000))
    assert error.function == "wf" and error.step is None and "'retries'" in error.problem


def test_two_output_steps(tmp_path: Path) -> None:
    error = refused(tmp_path, fn({"a": {"runtime": HTTP, "output": True},
                                  "b": {"runtime": HTTP, "after": ["a"], "output": True}}))
    assert "only one step" in error.problem and "'a'" in error.problem and "'b'" in error.problem


@pytest.mark.parametrize("schedule, expected", [
    ("61 * * * *", "invalid cron expression"), ("* * * *", "invalid cron expression"),
    ("every day", "invalid cron expression"), ("", "schedule string"),
    ("TZ=Mars/Olympus 0 9 * * *", "unknown time zone"),
])
def test_invalid_cron(tmp_path: Path, schedule: str, expected: str) -> None:
    error = refused(tmp_path, {"id": "wf", "triggers": [{"cron": schedule}], "steps": {"a": {"runtime": HTTP}}})
    assert error.function == "wf" and expected in error.problem


@pytest.mark.parametrize("document, expected", [
    ({"triggers": [{"event": "a"}], "steps": {"a": {"runtime": HTTP}}}, "'id'"),
    (fn({"a": {"runtime": HTTP}}, triggers=[]), "'triggers'"),
    (fn({"a": {"runtime": HTTP}}, triggers=[{"event": "a/*/b"}]), "wildcards"),
    (fn({}), "'steps'"),
    (fn({"a": {"runtime": HTTP, "iff": "true"}}), "unknown field(s) ['iff']"),
    (fn({"a": {"runtime": HTTP}}, stepz={}), "unknown field(s) ['stepz']"),
    (fn({"bad id": {"runtime": HTTP}}), "step ids"),
    (fn({"a": {"runtime": HTTP}, "b": {"runtime": HTTP, "after": [{"step": "a", "when": "x"}]}}),
     "unknown field(s) ['when']"),
    (fn({"a": {"runtime": HTTP}, "b": {"runtime": HTTP, "after": ["a", "a"]}}), "twice"),
    ([], "no function"),
    ([fn({"a": {"runtime": HTTP}}), fn({"a": {"runtime": HTTP}})], "declared twice"),
])
def test_other_structural_errors(tmp_path: Path, document: Any, expected: str) -> None:
    error = refused(tmp_path, document)
    assert expected in error.problem


def test_the_second_function_of_a_file_is_named(tmp_path: Path) -> None:
    good = fn({"a": {"runtime": HTTP}}, id="good")
    bad = fn({"a": {"runtime": HTTP, "after": ["zz"]}}, id="bad")
    error = refused(tmp_path, [good, bad])
    assert error.function == "bad" and error.step == "a"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="cannot read file"):
        load_function_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": "x",')
    with pytest.raises(DefinitionError, match="not valid JSON") as info:
        load_function_file(broken)
    assert str(broken) in str(info.value)
    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text("id = ")
    with pytest.raises(DefinitionError, match="not valid TOML"):
        load_function_file(broken_toml)
    yaml = tmp_path / "fn.yaml"
    yaml.write_text("id: x")
    with pytest.raises(DefinitionError, match="expected a .json or .toml file"):
        load_function_file(yaml)


def test_definition_errors_are_stepflow_errors() -> None:
    with pytest.raises(stepflow.StepflowError):
        parse_function("not an object")


def test_stepflow_dev_refuses_an_invalid_file_before_listening(tmp_path: Path) -> None:
    """The CLI loads files before anything listens and exits with the loader's message."""
    path = write_json(tmp_path, fn({"a": {"runtime": HTTP}, "b": {"runtime": HTTP, "after": ["c"]}}))
    stepflow_bin = Path(sys.executable).parent / "stepflow"
    proc = subprocess.run([str(stepflow_bin), "dev", "--port", "1", "--db", str(tmp_path / "s.db"),
                           "-f", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert str(path) in output and "step 'b'" in output and "'c'" in output
    assert "Traceback" not in output
