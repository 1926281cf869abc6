"""`stepflow dev | serve | send | runs | run`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

from stepflow.cli.client_commands import cancel, events, functions, replay, run, runs, send
from stepflow.cli.output import fail
from stepflow.engine import EngineConfig
from stepflow.engine.activity import JsonLines
from stepflow.errors import StepflowError
from stepflow.server.app import ServerSettings
from stepflow.server.keys import check_production_keys
from stepflow.server.runner import ServerOptions, run_server
from stepflow.store import DEFAULT_SQLITE_PATH


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


@click.group()
@click.version_option(package_name="stepflow")
def main() -> None:
    """stepflow: durable step execution. Events trigger functions; every step result is stored."""


def _check_bind(_ctx: Any, _param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT (e.g. 127.0.0.1:9464) or :PORT, got {value!r}")
    return f"{host or '127.0.0.1'}:{port}"


def _server_options(func: Any) -> Any:
    options = [
        click.option("-f", "--file", "files", multiple=True, type=click.Path(dir_okay=False),
                     help="Workflow function file (.json or .toml). Repeatable."),
        click.option("-u", "--app-url", "app_urls", multiple=True,
                     help="An SDK app endpoint to sync (it registers its functions). Repeatable."),
        click.option("--host", default="127.0.0.1", show_default=True),
        click.option("--port", default=8288, show_default=True, type=int),
        click.option("--db", envvar="STEPFLOW_DATABASE_URL", default=None,
                     help=f"Store URL or SQLite path [default: {DEFAULT_SQLITE_PATH}]"),
        click.option("--concurrency", type=int, default=None, help="Steps executing at once [default: 100]"),
        click.option("--backoff-base", type=float, default=None,
                     help="First retry delay in seconds (doubles each retry) [default: 1]"),
        click.option("--step-timeout", type=float, default=None, help="Default step timeout, seconds [900]"),
        click.option("-v", "--verbose", is_flag=True, help="Log everything at INFO (stepflow's internals too)."),
        click.option("-q", "--quiet", is_flag=True,
                     help="Only warnings and errors (dev prints a line per event, retry and ended run otherwise)."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                     envvar="STEPFLOW_LOG_FORMAT", help="json: one JSON object per line, for log collectors."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
                     default=None, envvar="STEPFLOW_LOG_LEVEL",
                     help="The level of every logger, stepflow's activity lines included (overrides -v / -q)."),
        click.option("--header-timeout", type=float, default=10.0, show_default=True,
                     envvar="STEPFLOW_HEADER_TIMEOUT",
                     help="Seconds a request's headers may take to arrive (slow clients are cut off; 0: no limit)."),
        click.option("--body-timeout", type=float, default=30.0, show_default=True, envvar="STEPFLOW_BODY_TIMEOUT",
                     help="Seconds a request's body may take to arrive (0: no limit)."),
        click.option("--metrics-bind", default=None, envvar="STEPFLOW_METRICS_BIND", metavar="HOST:PORT",
                     callback=_check_bind, help="Also serve GET /metrics on this address, without a key (on the "
                     "server's own port it is behind the signing key)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def configure_logging(*, verbose: bool, quiet: bool, log_format: str, activity: bool,
                      level: str | None = None) -> None:
    """WARNING and above always; the activity lines (events, runs, steps, retries, syncs) when `activity` and not
    `quiet`; everything at INFO with `verbose`; `level` sets every logger's level instead. Text for people, JSON
    lines for machines."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose and not quiet else logging.WARNING)
    logging.getLogger("stepflow.activity").setLevel(
        logging.WARNING if quiet else logging.INFO if (activity or verbose) else logging.WARNING)
    if level is not None:
        root.setLevel(level.upper())
        logging.getLogger("stepflow.activity").setLevel(level.upper())


def _start(files: tuple[str, ...], app_urls: tuple[str, ...], host: str, port: int, db: str | None,
           concurrency: int | None, backoff_base: float | None, step_timeout: float | None, verbose: bool,
           settings: ServerSettings, run_workers: bool = True, *, quiet: bool = False,
           log_format: str = "text", metrics_bind: str | None = None, log_level: str | None = None) -> None:
    # dev tells what happens by default, as Inngest's dev server does; a production server only with -v
    configure_logging(verbose=verbose, quiet=quiet, log_format=log_format, activity=settings.dev, level=log_level)
    engine = EngineConfig.from_env(concurrency=concurrency, backoff_base=backoff_base, step_timeout=step_timeout,
                                   signing_key=settings.signing_keys[0] if settings.signing_keys else None)
    options = ServerOptions(host=host, port=port, store_url=db, function_files=list(files), settings=settings,
                            engine=engine, app_urls=list(app_urls), run_workers=run_workers,
                            metrics_bind=metrics_bind)
    try:
        _run_async(run_server(options, announce=lambda line: click.echo(line, err=False)))
    except StepflowError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@main.command()
@_server_options
@click.option("--signing-key", envvar="STEPFLOW_SIGNING_KEY", default=None,
              help="Optional in dev: when set, the REST API requires it and step requests are signed.")
@click.option("--event-key", envvar="STEPFLOW_EVENT_KEY", default=None, help="Optional in dev.")
def dev(files: tuple[str, ...], app_urls: tuple[str, ...], host: str, port: int, db: str | None,
        concurrency: int | None, backoff_base: float | None, step_timeout: float | None, verbose: bool, quiet: bool,
        log_format: str, log_level: str | None, header_timeout: float, body_timeout: float,
        metrics_bind: str | None, signing_key: str | None, event_key: str | None) -> None:
    """Everything in one process on embedded SQLite, keyless unless keys are given."""
    settings = ServerSettings(signing_keys=[signing_key] if signing_key else [],
                              event_keys=[event_key] if event_key else [], dev=True,
                              header_timeout=header_timeout, body_timeout=body_timeout)
    _start(files, app_urls, host, port, db, concurrency, backoff_base, step_timeout, verbose, settings,
           quiet=quiet, log_format=log_format, metrics_bind=metrics_bind, log_level=log_level)


@main.command()
@_server_options
@click.option("--signing-key", envvar="STEPFLOW_SIGNING_KEY", default=None, help="Required.")
@click.option("--signing-key-fallback", envvar="STEPFLOW_SIGNING_KEY_FALLBACK", default=None,
              help="Also accepted on the REST API, for key rotation.")
@click.option("--event-key", "event_keys", envvar="STEPFLOW_EVENT_KEY", multiple=True, help="Required. Repeatable.")
@click.option("--workers/--no-workers", default=True, show_default=True,
              help="Also execute steps in this process (--no-workers: APIs only, next to `stepflow worker`s).")
def serve(files: tuple[str, ...], app_urls: tuple[str, ...], host: str, port: int, db: str | None,
          concurrency: int | None, backoff_base: float | None, step_timeout: float | None, verbose: bool,
          quiet: bool, log_format: str, log_level: str | None, header_timeout: float, body_timeout: float,
          metrics_bind: str | None, signing_key: str | None, signing_key_fallback: str | None,
          event_keys: tuple[str, ...], workers: bool) -> None:
    """The production server: the same as dev, but keys are required."""
    if not signing_key:
        fail("stepflow serve needs a signing key: --signing-key or STEPFLOW_SIGNING_KEY "
             "(it protects the REST API and signs requests to your steps)")
    if not event_keys or not all(event_keys):
        fail("stepflow serve needs an event key: --event-key or STEPFLOW_EVENT_KEY "
             "(events are accepted only at /e/<event key>)")
    assert signing_key is not None
    keys = [signing_key] + ([signing_key_fallback] if signing_key_fallback else [])
    try:
        check_production_keys(keys, list(event_keys))
    except StepflowError as exc:
        fail(f"stepflow serve: {exc.message}")
    settings = ServerSettings(signing_keys=keys, event_keys=list(event_keys), dev=False,
                              header_timeout=header_timeout, body_timeout=body_timeout)
    _start(files, app_urls, host, port, db, concurrency, backoff_base, step_timeout, verbose, settings, workers,
           quiet=quiet, log_format=log_format, metrics_bind=metrics_bind, log_level=log_level)


@main.command()
@click.option("--db", envvar="STEPFLOW_DATABASE_URL", required=True,
              help="The shared store, e.g. postgresql://user@host/db (SQLite allows one engine per file).")
@click.option("--concurrency", type=int, default=None, help="Steps executing at once [default: 100]")
@click.option("--backoff-base", type=float, default=None, help="First retry delay in seconds [default: 1]")
@click.option("--step-timeout", type=float, default=None, help="Default step timeout, seconds [900]")
@click.option("--signing-key", envvar="STEPFLOW_SIGNING_KEY", default=None, help="Signs requests to steps.")
@click.option("-v", "--verbose", is_flag=True, help="Log engine activity.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, envvar="STEPFLOW_METRICS_PORT",
              help="Serve GET /metrics (Prometheus) on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="The address --metrics-port binds.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="STEPFLOW_LOG_FORMAT", help="json: one JSON object per line, for log collectors.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default=None, envvar="STEPFLOW_LOG_LEVEL", help="The level of every logger (overrides -v).")
def worker(db: str, concurrency: int | None, backoff_base: float | None, step_timeout: float | None,
           signing_key: str | None, verbose: bool, metrics_port: int | None, metrics_host: str, log_format: str,
           log_level: str | None) -> None:
    """The engine alone: claims and executes steps from the shared store (run as many as needed)."""
    from stepflow.server.runner import run_worker

    configure_logging(verbose=verbose, quiet=False, log_format=log_format, activity=verbose, level=log_level)
    config = EngineConfig.from_env(concurrency=concurrency, backoff_base=backoff_base, step_timeout=step_timeout,
                                   signing_key=signing_key)
    try:
        _run_async(run_worker(db, config, announce=click.echo,
                              metrics_bind=f"{metrics_host}:{metrics_port}" if metrics_port else None))
    except StepflowError as exc:
        fail(exc.message)


@main.command()
@click.option("--db", envvar="STEPFLOW_DATABASE_URL", required=True, help="The store to migrate.")
def migrate(db: str) -> None:
    """Bring the database schema up to date (PostgreSQL; SQLite files migrate themselves when opened)."""
    from stepflow.store import store_from_url

    store = store_from_url(db)

    async def run() -> tuple[int, int] | None:
        versions: tuple[int, int] | None = await store.migrate()
        if versions is None:  # SQLite migrates as it opens
            await store.open()
            await store.close()
        return versions

    try:
        versions = asyncio.run(run())
    except StepflowError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot reach the database: {exc}")
    if versions is None:
        click.echo(f"{db}: up to date")
    else:
        start, end = versions
        click.echo(f"schema version {start} -> {end}" if start != end else f"schema already at version {end}")


@main.group()
def package() -> None:
    """Package a Python step or an SDK app to run on a runtime."""


@package.command("docker")
@click.argument("target")
@click.option("--tag", "-t", required=True, help="Image name and tag, e.g. acme/resize:1")
@click.option("--base", default=None, help="Base image with Python (default: python:<this Python>-slim). Its "
              "Python version must match this one.")
def package_docker(target: str, tag: str, base: str | None) -> None:
    """Build an image from TARGET: `path/to/file.py:function` (a step taking the Input) or
    `package.module:app` (an SDK App; each call runs the function named in the Input)."""
    from stepflow.kit.docker_image import DEFAULT_BASE, build_image

    try:
        image_id = asyncio.run(build_image(target, tag, base or DEFAULT_BASE))
    except (StepflowError, OSError, ValueError, ImportError) as exc:
        fail(f"cannot build {tag}: {exc}")
    click.echo(f"built {tag} ({image_id[:19]})")
    click.echo(f'use it in a workflow step: {{"runtime": {{"type": "docker", "image": "{tag}"}}}}')


@package.command("lambda")
@click.argument("target")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The zip to write.")
@click.option("--timeout", default=30.0, show_default=True, help="Function timeout (s) for the manifest.")
@click.option("--memory", default=256, show_default=True, help="Memory (MB) for the manifest.")
def package_lambda(target: str, output: str, timeout: float, memory: int) -> None:
    """Build a Lambda zip from TARGET (`file.py:function` or `package.module:app`); handler:
    stepflow_handler.handler."""
    from pathlib import Path

    from stepflow.kit.lambda_zip import build_zip

    try:
        path = build_zip(target, Path(output), timeout=timeout, memory=memory)
    except (StepflowError, OSError, ValueError, ImportError) as exc:
        fail(f"cannot package {target}: {exc}")
    size = path.stat().st_size
    click.echo(f"wrote {path} ({size / 1048576:.1f} MiB); handler: stepflow_handler.handler")


@main.group(name="lambda")
def lambda_group() -> None:
    """Run Lambda functions locally."""


@lambda_group.command("serve")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9001, show_default=True, type=int)
@click.option("--max-workers", default=4, show_default=True, help="Warm processes per function, at most.")
@click.option("-v", "--verbose", is_flag=True, help="Show the functions' logs.")
def lambda_serve(directory: str, host: str, port: int, max_workers: int, verbose: bool) -> None:
    """Serve the Lambda Invoke API for every zip (from `stepflow package lambda`) or directory in DIRECTORY,
    running each handler through AWS's runtime interface client (awslambdaric) in warm processes."""
    from pathlib import Path

    from stepflow.lambda_local.server import serve as serve_lambda

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _run_async(serve_lambda(Path(directory), host, port, max_workers))
    except KeyboardInterrupt:
        pass
    except StepflowError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}")


if __name__ == "__main__":  # pragma: no cover
    main()


for command in (send, runs, run, functions, events, cancel, replay):
    main.add_command(command)
