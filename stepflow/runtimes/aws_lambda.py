"""The lambda runtime: each attempt is a synchronous Lambda Invoke (`RequestResponse`), signed with SigV4.

Signing, credentials and region come from botocore (the standard chain: environment, shared config and
credentials files, profiles, container and instance roles) — nothing of AWS's auth is written by hand.

Contract: the function's return value is the Response (`status` or `statusCode`, a JSON-string `body`
decoded). A function error (`X-Amz-Function-Error`: the payload has errorType, errorMessage, stackTrace) is
recorded and treated as 500, so it is retried. A step's own `{"status": 503}` arrives as a normal AWS 200 and
follows the 5xx rule. Service throttling (429) and service 5xx are retried; service 4xx (function not found,
access denied, request too large) are not. An answer over the output limit is `output_too_large`. An Input
over Lambda's 6 MB synchronous payload limit is refused before sending.

Options: `function` (name, partial or full ARN), `qualifier`, `region`, `endpoint_url` (also
$STEPFLOW_LAMBDA_ENDPOINT or $AWS_ENDPOINT_URL_LAMBDA — e.g. `stepflow lambda serve`), `profile`, `timeout`.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import aiohttp

from stepflow import codec
from stepflow.errors import StepAttemptError
from stepflow.protocol.answers import Delivery
from stepflow.protocol.contract import snippet
from stepflow.runtimes.base import Invocation

MAX_SYNC_PAYLOAD = 6 * 1024 * 1024  # Lambda's limit for a synchronous invocation's request and response


def _botocore() -> Any:
    try:
        import botocore.session
    except ImportError as exc:  # pragma: no cover - the lambda extra is not installed
        raise StepAttemptError("runtime_unavailable", "the lambda runtime needs botocore: "
                               "in the stepflow checkout, pip install -e '.[lambda]'", retryable=False) from exc
    return botocore


async def _read_up_to(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, or its first `cap` bytes when longer (enough to know it is too long)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size >= cap:
            break
    return b"".join(chunks)


def region_of(function: str) -> str | None:
    """The region in a full ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)."""
    parts = function.split(":")
    return parts[3] if function.startswith("arn:") and len(parts) >= 7 else None


class LambdaRuntime:
    type = "lambda"

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._botocore_sessions: dict[str | None, Any] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _aws(self, profile: str | None) -> Any:
        session = self._botocore_sessions.get(profile)
        if session is None:
            botocore = _botocore()
            session = botocore.session.Session(profile=profile) if profile else botocore.session.get_session()
            self._botocore_sessions[profile] = session
        return session

    def _signed_request(self, invocation: Invocation) -> tuple[str, dict[str, str]]:
        opts = invocation.options
        function = str(opts["function"])
        session = self._aws(opts.get("profile"))
        region = (opts.get("region") or region_of(function) or session.get_config_variable("region")
                  or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
        if not region:
            raise StepAttemptError("lambda_config", "no AWS region for the lambda step: set `region`, use a full "
                                   "ARN, or set AWS_REGION", retryable=False)
        endpoint = (opts.get("endpoint_url") or os.environ.get("STEPFLOW_LAMBDA_ENDPOINT")
                    or os.environ.get("AWS_ENDPOINT_URL_LAMBDA") or os.environ.get("AWS_ENDPOINT_URL")
                    or f"https://lambda.{region}.amazonaws.com").rstrip("/")
        url = f"{endpoint}/2015-03-31/functions/{quote(function, safe='')}/invocations"
        if opts.get("qualifier"):
            url += f"?Qualifier={quote(str(opts['qualifier']), safe='')}"
        credentials = session.get_credentials()
        if credentials is None:
            raise StepAttemptError("lambda_credentials", "no AWS credentials found (environment, ~/.aws/credentials, "
                                   "profile or role)", retryable=False)
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, data=invocation.input,
                             headers={"Content-Type": "application/json",
                                      "X-Amz-Invocation-Type": "RequestResponse"})
        SigV4Auth(credentials.get_frozen_credentials(), "lambda", region).add_auth(request)
        return url, dict(request.headers.items())

    async def invoke(self, invocation: Invocation) -> Delivery:
        size = len(invocation.input)
        if size > MAX_SYNC_PAYLOAD:
            raise StepAttemptError("input_too_large", f"the Input is {size} bytes; Lambda accepts at most "
                                   f"{MAX_SYNC_PAYLOAD} bytes for a synchronous invocation. Pass references "
                                   "to large data instead", retryable=False, details={"size": size})
        url, headers = self._signed_request(invocation)
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        try:
            async with self._session.post(url, data=invocation.input, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=invocation.timeout)) as resp:
                raw = await _read_up_to(resp, MAX_SYNC_PAYLOAD + 1)
                return self._delivery(resp.status, resp.headers, raw, invocation)
        except StepAttemptError:
            raise
        except TimeoutError as exc:
            raise StepAttemptError("timeout", f"Lambda did not answer within {invocation.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise StepAttemptError("connection_failed", f"cannot reach Lambda at {url.split('/2015')[0]}: "
                                   f"{exc}") from exc

    @staticmethod
    def _delivery(status: int, headers: Any, raw: bytes, invocation: Invocation) -> Delivery:
        """The function's payload. An error of the Lambda service (throttling, access denied) is no answer;
        an error of the function (X-Amz-Function-Error) is a 500 answer from the step."""
        function = invocation.options["function"]
        if status >= 300:
            kind = headers.get("x-amzn-ErrorType", "").split(":")[0]
            try:
                body = codec.loads(raw)
                message = body.get("message") or body.get("Message") or str(body)
                kind = kind or body.get("Type") or body.get("__type", "")
            except (codec.JSONDecodeError, AttributeError):
                message = snippet(raw)
            detail = f"Lambda Invoke of {function!r} answered {status} {kind}: {message}"
            if status == 429:
                raise StepAttemptError("throttled", detail)
            if status >= 500:
                raise StepAttemptError("lambda_service_error", detail)
            raise StepAttemptError("lambda_error", detail, retryable=False,
                                   details={"status": status, "error_type": kind})
        if headers.get("X-Amz-Function-Error"):
            try:
                payload = codec.loads(raw) if raw.strip() else None
            except codec.JSONDecodeError:
                payload = snippet(raw)
            error = payload if isinstance(payload, dict) else {"errorMessage": str(payload)}
            if error.get("errorType") == "Function.ResponseSizeTooLarge":  # would be too large every time
                raise StepAttemptError("output_too_large", f"the Lambda function's answer exceeded Lambda's "
                                       f"{MAX_SYNC_PAYLOAD}-byte limit: {error.get('errorMessage')}",
                                       retryable=False)
            return Delivery(document={"error": "function_error", "errorType": error.get("errorType"),
                                      "errorMessage": error.get("errorMessage"),
                                      "stackTrace": error.get("stackTrace")},
                            size=len(raw), default_status=500)
        # the payload is the answer; the transport's 200 says only that Lambda ran the function
        return Delivery(body=raw, truncated=len(raw) > MAX_SYNC_PAYLOAD)
