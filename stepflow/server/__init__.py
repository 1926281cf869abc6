"""The HTTP server: event API, REST v1/v2. `create_app` builds the aiohttp application around an engine."""

from stepflow.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
