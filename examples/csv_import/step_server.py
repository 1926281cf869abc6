"""The CSV import's steps, as plain HTTP endpoints: no SDK, just the step contract.

Each endpoint receives the Input `{event, steps, ctx}` as a JSON POST body and answers `{status, body}`.

    python examples/csv_import/step_server.py --port 9000

It also serves the uploaded file itself (GET /files/{name}.csv: 100 rows, 2 of them malformed), so the
example needs nothing outside this machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import os

import aiohttp
from aiohttp import web

from stepflow.protocol import signing

SIGNING_KEY = os.environ.get("STEPFLOW_SIGNING_KEY")  # set it and every request's signature is checked


def make_csv(rows: int = 100, bad: tuple[int, ...] = (17, 58)) -> str:
    out = io.StringIO()
    out.write("id,email,amount\n")
    for i in range(1, rows + 1):
        if i in bad:
            out.write(f"{i},not-an-email,-\n")  # malformed: no amount
        else:
            out.write(f"{i},user{i}@example.com,{i * 10}\n")
    return out.getvalue()


async def read_input(request: web.Request) -> dict:
    body = await request.read()
    if SIGNING_KEY:
        signing.verify(body, request.headers.get(signing.SIGNATURE_HEADER), SIGNING_KEY)
    return await request.json()


async def serve_file(request: web.Request) -> web.Response:
    return web.Response(text=make_csv(), content_type="text/csv")


async def download(request: web.Request) -> web.Response:
    payload = await read_input(request)
    url = payload["event"]["data"]["file"]
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        if resp.status == 404:
            return web.json_response({"status": 404, "body": {"error": f"no such file {url}"}})  # not retried
        if resp.status >= 400:
            return web.json_response({"status": 503, "body": {"error": f"storage answered {resp.status}"}})
        text = await resp.text()
    return web.json_response({"status": 200, "body": {"csv": text}})


async def parse(request: web.Request) -> web.Response:
    payload = await read_input(request)
    text = payload["steps"]["download"]["body"]["csv"]
    results, failures = [], []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            if "@" not in row["email"]:
                raise ValueError("bad email")
            results.append({"id": int(row["id"]), "amount": int(row["amount"])})
        except (ValueError, TypeError, KeyError):
            failures.append(row.get("id"))
    return web.json_response({"status": 200, "body": {"processedItems": len(results),
                                                      "failedItems": len(failures), "failedRows": failures}})


async def report(request: web.Request) -> web.Response:
    payload = await read_input(request)
    parsed = payload["steps"]["parse"]["body"]
    return web.json_response({"status": 200, "body": {"status": "success",
                                                      "processedItems": parsed["processedItems"],
                                                      "failedItems": parsed["failedItems"]}})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/files/{name}", serve_file)
    app.router.add_post("/download", download)
    app.router.add_post("/parse", parse)
    app.router.add_post("/report", report)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None)
