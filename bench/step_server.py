"""The benchmark's step server: three routes that answer `{"status": 200, "body": {...}}` at once.

Runs in its own process (started by bench_core.py), as a user's step server would in production, so the
stepflow server and the steps compete for the machine's cores as they really do.

    python bench/step_server.py --port 9300
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def make_app() -> web.Application:
    async def step(request: web.Request) -> web.Response:
        payload = await request.json()
        name = request.match_info["name"]
        body = {"step": name, "attempt": payload["ctx"]["attempt"], "seen": sorted(payload["steps"])}
        return web.Response(body=json.dumps({"status": 200, "body": body}), content_type="application/json")

    app = web.Application()
    app.router.add_post("/{name:a|b|c}", step)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
