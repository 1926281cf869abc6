"""The OpenAPI document (`GET /openapi.json`) is true: it names exactly the routes the server registers, it is a
valid OpenAPI 3.1 document, and its v2 run is the InngestRun JSON Schema. tests/test_fuzz_api.py checks that the
server's answers conform to it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest
from conftest import RunningServer, ServerFactory

from stepflow.server import ServerSettings
from stepflow.server.openapi import INNGEST_RUN_SCHEMA, document

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def registered_routes(server: RunningServer) -> set[tuple[str, str]]:
    assert server.app is not None
    routes = set()
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"route {route!r} has neither a path nor a template"
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD to every GET
        routes.add((route.method, path))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document()["paths"].items()
            for method in item if method in METHODS}


async def test_every_registered_route_is_documented_and_nothing_else(stepflow: RunningServer) -> None:
    registered = registered_routes(stepflow)
    documented = documented_routes()
    assert registered - documented == set(), "routes the server serves but /openapi.json does not describe"
    assert documented - registered == set(), "operations /openapi.json describes but the server does not serve"


async def test_path_parameters_match_the_route_templates() -> None:
    for path, item in document()["paths"].items():
        in_template = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == in_template, f"{method.upper()} {path}"


def test_the_document_is_valid_openapi() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document())


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for item in document()["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_the_v2_run_is_the_inngest_run_schema() -> None:
    published = json.loads((ROOT / "runtimes" / "schemas" / "inngest-run.schema.json").read_text())
    published.pop("$schema", None)
    published.pop("$id", None)
    assert INNGEST_RUN_SCHEMA == published
    assert document()["components"]["schemas"]["RunV2"] == published


def test_schemathesis_loads_the_document() -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(documented_routes())


async def test_served_without_credentials(stepflow_factory: ServerFactory) -> None:
    server = await stepflow_factory(settings=ServerSettings(signing_keys=["signkey-test-1"],
                                                            event_keys=["evkey-test-1"]))
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/openapi.json") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            served = await resp.json()
        async with session.get(server.url + "/v1/runs") as resp:
            assert resp.status == 401  # the REST API itself stays protected
    assert served == json.loads(json.dumps(document()))
    assert served["openapi"].startswith("3.1")
