"""The CLI's client commands: `send`, `runs list|show|cancel`, `functions list|invoke` (and the older spellings
`runs EVENT_ID` and `run RUN_ID`, kept working). Exit codes and errors as in output.py."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from stepflow import codec
from stepflow.cli.output import EXIT_FAILED, EXIT_USAGE, fail, fail_for, print_json, print_table, show
from stepflow.client import Client
from stepflow.durations import parse_duration
from stepflow.errors import StepflowError

RUN_COLUMNS = [("run_id", "RUN"), ("function_id", "FUNCTION"), ("status", "STATUS"),
               ("run_started_at", "STARTED"), ("ended_at", "ENDED"), ("output", "OUTPUT")]
EVENT_COLUMNS = [("id", "EVENT"), ("name", "NAME"), ("received_at", "RECEIVED"), ("data", "DATA")]
STEP_COLUMNS = [("step_id", "STEP"), ("status", "STATUS"), ("attempts", "ATTEMPTS"), ("started_at", "STARTED"),
                ("ended_at", "ENDED"), ("output", "OUTPUT"), ("error", "ERROR")]
FUNCTION_COLUMNS = [("id", "FUNCTION"), ("app_id", "APP"), ("kind", "KIND"), ("version", "VERSION"),
                    ("paused", "PAUSED"), ("triggers", "TRIGGERS")]


def _client_options(func: Any) -> Any:
    func = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)
    func = click.option("--url", envvar="STEPFLOW_BASE_URL", default="http://127.0.0.1:8288", show_default=True,
                        help="The stepflow server.")(func)
    func = click.option("--signing-key", envvar="STEPFLOW_SIGNING_KEY", default=None)(func)
    return func


def _with_client(url: str, signing_key: str | None, action: Any, event_key: str | None = None, *,
                 as_json: bool = False) -> Any:
    async def go() -> Any:
        async with Client(url, signing_key=signing_key, event_key=event_key) as client:
            return await action(client)

    try:
        return asyncio.run(go())
    except StepflowError as exc:
        fail_for(exc, as_json=as_json)


def _json_object(text: str, option: str, as_json: bool) -> dict[str, Any]:
    try:
        value = codec.loads(text)
    except codec.JSONDecodeError as exc:
        fail(f"{option} is not valid JSON: {exc}", EXIT_USAGE, as_json=as_json)
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object", EXIT_USAGE, as_json=as_json)
    return dict(value)


@click.command()
@click.argument("name")
@click.option("--data", default="{}", help="The event's data, a JSON object.")
@click.option("--id", "event_id", default=None, help="An id for deduplication (24 h).")
@click.option("--event-key", envvar="STEPFLOW_EVENT_KEY", default=None)
@_client_options
def send(name: str, data: str, event_id: str | None, event_key: str | None, url: str, signing_key: str | None,
         as_json: bool) -> None:
    """Send an event NAME with --data JSON."""
    event: dict[str, Any] = {"name": name, "data": _json_object(data, "--data", as_json)}
    if event_id:
        event["id"] = event_id
    ids = _with_client(url, signing_key, lambda c: c.send(event), event_key=event_key, as_json=as_json)
    if as_json:
        print_json({"ids": ids})
    else:
        for i in ids:
            click.echo(i)


class _RunsGroup(click.Group):
    """`stepflow runs EVENT_ID`, the older spelling, still means `stepflow runs for-event EVENT_ID`."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                               list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["for-event", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=_RunsGroup)
def runs() -> None:
    """Runs: list them, show one, cancel one (`runs EVENT_ID` lists the runs an event started)."""


@runs.command("for-event")
@click.argument("event_id")
@_client_options
def runs_for_event(event_id: str, url: str, signing_key: str | None, as_json: bool) -> None:
    """The runs that EVENT_ID started."""
    data = _with_client(url, signing_key, lambda c: c.get_event_runs(event_id), as_json=as_json)
    show(data, data, RUN_COLUMNS, as_json=as_json)


@runs.command("list")
@click.option("--status", default=None, type=click.Choice(
    ["Queued", "Running", "Completed", "Failed", "Cancelled", "Paused"], case_sensitive=False))
@click.option("--function", "function_id", default=None, help="Only this function's runs.")
@click.option("--event", "event_name", default=None, help="Only runs started by events of this name.")
@click.option("--since", default=None, help="Only runs created since: a duration ago (1h, 30m) or an RFC 3339 time.")
@click.option("--reruns-of", "original_run_id", default=None, help="Only the reruns of this run.")
@click.option("--query", default=None,
              help='CEL over event, output and run, e.g. \'event.data.tenant == "acme" && output.code == "x"\'.')
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@_client_options
def runs_list(status: str | None, function_id: str | None, event_name: str | None, since: str | None,
              original_run_id: str | None, query: str | None, limit: int, url: str, signing_key: str | None,
              as_json: bool) -> None:
    """The newest runs, newest first."""
    start = _since(since, as_json)
    page = _with_client(url, signing_key, lambda c: c.list_runs(
        status=status, function_id=function_id, event_name=event_name, original_run_id=original_run_id,
        since=start, query=query, limit=limit), as_json=as_json)
    if as_json:
        print_json(page)
        return
    print_table(page["data"], RUN_COLUMNS)
    search = page.get("search")
    if search and search["errors"]:
        click.echo(f"note: the query failed on {search['errors']} of the {search['scanned']} runs read (counted as "
                   f"no match), e.g. {search['first_error']}", err=True)
    if search and page["has_more"] and len(page["data"]) < limit:
        click.echo(f"note: stopped after reading {search['scanned']} runs; older runs may match too "
                   "(narrow it with --since/--function, or page on with --json's cursor)", err=True)


def _since(text: str | None, as_json: bool) -> datetime | None:
    """`--since`: `1h` (that long ago) or an RFC 3339 time; a bad one is a usage error (exit code 2)."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except (StepflowError, ValueError):
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since must be a duration (1h, 30m) or an RFC 3339 time, not {text!r}", EXIT_USAGE,
             as_json=as_json, error_code="usage")
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _show(run_id: str, wait: bool, timeout: float, url: str, signing_key: str | None, as_json: bool) -> None:
    async def action(client: Client) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        info = await client.wait_for_run(run_id, timeout) if wait else await client.get_run(run_id)
        return info, await client.get_run_steps(run_id)

    info, steps = _with_client(url, signing_key, action, as_json=as_json)
    if as_json:
        print_json({**info, "steps": steps})
    else:
        print_table([info], RUN_COLUMNS)
        if info.get("error"):
            click.echo(f"error: {codec.dumps(info['error']).decode()}")
        if info.get("waiting"):  # flow control holds it (docs/flow-control.md)
            click.echo(f"waiting: {info['waiting']}")
        click.echo()
        print_table(steps, STEP_COLUMNS)
    if info["status"] in ("Failed", "Cancelled"):
        sys.exit(EXIT_FAILED)


def _show_options(func: Any) -> Any:
    func = click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait with --wait.")(func)
    func = click.option("--wait", is_flag=True, help="Wait until the run ends.")(func)
    return click.argument("run_id")(func)


@runs.command("show")
@_show_options
@_client_options
def runs_show(run_id: str, wait: bool, timeout: float, url: str, signing_key: str | None, as_json: bool) -> None:
    """One run, with its steps (exit code 1 if it failed or was cancelled)."""
    _show(run_id, wait, timeout, url, signing_key, as_json)


@click.command("run")
@_show_options
@_client_options
def run(run_id: str, wait: bool, timeout: float, url: str, signing_key: str | None, as_json: bool) -> None:
    """The older spelling of `stepflow runs show RUN_ID`."""
    _show(run_id, wait, timeout, url, signing_key, as_json)


@runs.command("cancel")
@click.argument("run_id")
@_client_options
def runs_cancel(run_id: str, url: str, signing_key: str | None, as_json: bool) -> None:
    """Cancel a run (a run that has ended is shown as it is)."""
    info = _with_client(url, signing_key, lambda c: c.cancel(run_id), as_json=as_json)
    show(info, [info], RUN_COLUMNS, as_json=as_json)


@runs.command("rerun")
@click.argument("run_id")
@click.option("--from-step", default=None, help="Keep the results before this step and run from it.")
@_client_options
def runs_rerun(run_id: str, from_step: str | None, url: str, signing_key: str | None, as_json: bool) -> None:
    """Rerun a run that has ended; prints the new run."""
    info = _with_client(url, signing_key, lambda c: c.rerun(run_id, from_step=from_step), as_json=as_json)
    show(info, [info], RUN_COLUMNS, as_json=as_json)


@click.group()
def functions() -> None:
    """Functions: list them, invoke one."""


@functions.command("list")
@_client_options
def functions_list(url: str, signing_key: str | None, as_json: bool) -> None:
    """The functions the server runs."""
    data = _with_client(url, signing_key, lambda c: c.list_functions(), as_json=as_json)
    show(data, [{**f, "paused": f"since {f['paused_at']}" if f["paused"] else "no"} for f in data],
         FUNCTION_COLUMNS, as_json=as_json)


@functions.command("invoke")
@click.argument("function_id")
@click.option("--data", default="{}", help="The run's event data, a JSON object.")
@click.option("--wait", is_flag=True, help="Wait until the run ends and show it.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait with --wait.")
@_client_options
def functions_invoke(function_id: str, data: str, wait: bool, timeout: float, url: str, signing_key: str | None,
                     as_json: bool) -> None:
    """Start one run of FUNCTION_ID with --data, whatever its triggers; prints the run id."""
    payload = _json_object(data, "--data", as_json)
    run_id = _with_client(url, signing_key, lambda c: c.invoke(function_id, payload), as_json=as_json)
    if wait:
        _show(run_id, True, timeout, url, signing_key, as_json)
    elif as_json:
        print_json({"run_id": run_id})
    else:
        click.echo(run_id)


@functions.command("pause")
@click.argument("function_id")
@_client_options
def functions_pause(function_id: str, url: str, signing_key: str | None, as_json: bool) -> None:
    """Pause FUNCTION_ID: new runs wait PAUSED, runs in flight stop at their next step; nothing is lost."""
    info = _with_client(url, signing_key, lambda c: c.pause(function_id), as_json=as_json)
    if as_json:
        print_json(info)
    else:
        click.echo(f"{function_id} paused ({info['runs_paused']} run(s) paused now)")


@functions.command("resume")
@click.argument("function_id")
@click.option("--cancel-paused", is_flag=True, help="Cancel the paused runs instead of letting them go on.")
@_client_options
def functions_resume(function_id: str, cancel_paused: bool, url: str, signing_key: str | None,
                     as_json: bool) -> None:
    """Resume FUNCTION_ID: its paused runs go on in order (or are cancelled)."""
    info = _with_client(url, signing_key, lambda c: c.resume(function_id, cancel_paused=cancel_paused),
                        as_json=as_json)
    if as_json:
        print_json(info)
    elif cancel_paused:
        click.echo(f"{function_id} resumed; {info['runs_cancelled']} paused run(s) cancelled")
    else:
        click.echo(f"{function_id} resumed; {info['runs_resumed']} paused run(s) going on")


@click.group()
def events() -> None:
    """Events: list them, show one with the runs it started."""


@events.command("list")
@click.option("--name", default=None, help="Only events of this name.")
@click.option("--since", default=None, help="Only events received since: a duration ago (1h) or an RFC 3339 time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@_client_options
def events_list(name: str | None, since: str | None, limit: int, url: str, signing_key: str | None,
                as_json: bool) -> None:
    """The newest events, newest received first."""
    start = _since(since, as_json)
    page = _with_client(url, signing_key, lambda c: c.list_events(name=name, since=start, limit=limit),
                        as_json=as_json)
    show(page, page["data"], EVENT_COLUMNS, as_json=as_json)


@events.command("show")
@click.argument("event_id")
@_client_options
def events_show(event_id: str, url: str, signing_key: str | None, as_json: bool) -> None:
    """One event and the runs it started."""
    async def action(client: Client) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await client.get_event(event_id), await client.get_event_runs(event_id)

    event, started = _with_client(url, signing_key, action, as_json=as_json)
    if as_json:
        print_json({**event, "runs": started})
        return
    print_table([event], EVENT_COLUMNS)
    click.echo()
    print_table(started, RUN_COLUMNS)


@click.command("cancel")
@click.argument("function_id")
@click.option("--if", "condition", default=None, help="Only runs whose event satisfies this CEL expression.")
@click.option("--since", default=None, help="Only runs created since: a duration ago (1h) or an RFC 3339 time.")
@click.option("--no-wait", is_flag=True, help="Start the bulk cancel and print its id; do not follow it.")
@_client_options
def cancel(function_id: str, condition: str | None, since: str | None, no_wait: bool, url: str,
           signing_key: str | None, as_json: bool) -> None:
    """Cancel FUNCTION_ID's runs that have not ended, in bulk (a durable operation), with a progress bar."""
    start = _since(since, as_json)
    op = _with_client(url, signing_key, lambda c: c.cancel_many(function_id, since=start, if_=condition),
                      as_json=as_json)
    if not no_wait:
        op = _follow(op, url, signing_key, as_json)
    if as_json:
        print_json(op)
    else:
        click.echo(f"{op['id']}  {op['status']}: {op['cancelled']} cancelled, {op['skipped']} skipped "
                   f"(if false), of {op['total']} not ended")


@click.command("replay")
@click.argument("function_id")
@click.option("--since", required=True, help="From: a duration ago (1h) or an RFC 3339 time.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["Queued", "Running", "Completed", "Failed", "Cancelled", "Paused"]),
              help="Replay the events of the function's runs in this status (repeatable); without it, every event "
                   "in the range that triggers the function.")
@click.option("--event", "event_name", default=None, help="Only events of this name.")
@click.option("--rate", type=click.IntRange(1, 10_000), default=None, help="Runs started a second [100].")
@click.option("--no-wait", is_flag=True, help="Start the replay and print it; do not follow it.")
@_client_options
def replay(function_id: str, since: str, statuses: tuple[str, ...], event_name: str | None, rate: int | None,
           no_wait: bool, url: str, signing_key: str | None, as_json: bool) -> None:
    """Replay events into FUNCTION_ID (its current version), with a progress bar until every run has started."""
    start = _since(since, as_json)
    op = _with_client(url, signing_key, lambda c: c.replay(function_id, since=start, statuses=list(statuses) or None,
                                                           event_name=event_name, rate=rate), as_json=as_json)
    if not no_wait:
        op = _follow(op, url, signing_key, as_json, label="replaying", kind="replay")
    if as_json:
        print_json(op)
    else:
        click.echo(f"{op['id']}  {op['status']}: {op['started']} run(s) started, {op['skipped']} skipped, of "
                   f"{op['total']} ({op['completed']} completed, {op['failed']} failed so far)")


def _follow(op: dict[str, Any], url: str, signing_key: str | None, as_json: bool, *, label: str = "cancelling",
            kind: str = "cancel") -> dict[str, Any]:
    """Poll the operation until it ends, drawing a progress bar on stderr (not with --json)."""
    async def poll(client: Client) -> dict[str, Any]:
        current = op
        length = max(1, int(current["total"]))
        with click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True) as bar:
            shown = 0
            while True:
                if not as_json:
                    bar.update(current["processed"] - shown)
                    shown = current["processed"]
                if current["status"] != "Running":
                    if not as_json:
                        bar.update(length - shown)
                    return current
                await asyncio.sleep(0.2)
                current = await (client.get_replay(op["id"]) if kind == "replay"
                                 else client.get_cancellation(op["id"]))

    followed: dict[str, Any] = _with_client(url, signing_key, poll, as_json=as_json)
    return followed
