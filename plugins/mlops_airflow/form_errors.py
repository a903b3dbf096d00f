"""A readable message when a trigger form's value is refused by its Param schema.

The Airflow API answers a run whose params fail their JSON schema with HTTP 400 and the whole jsonschema error as
the detail (the schema dumped, then the instance), which the trigger form shows as it is. This ASGI middleware,
registered by the plugin on the API server, keeps the first paragraph of such a detail, e.g. "Invalid input for
param min_macro_f1: 5 is greater than the maximum of 1", and leaves every other response untouched.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "Invalid input for param "


def readable_detail(body: bytes) -> bytes:
    """The response body with a param validation detail cut to its first paragraph (other bodies unchanged)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    detail = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(detail, str) or not detail.startswith(PREFIX):
        return body
    data["detail"] = detail.split("\n\n", 1)[0].strip()
    return json.dumps(data).encode()


class ReadableParamErrors:
    """Pure ASGI middleware: rewrites the body of 400 answers to POST / PATCH / PUT requests with
    :func:`readable_detail`; everything else streams through unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") not in {"POST", "PATCH", "PUT"}:
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if message.get("status") != 400:
                    held["through"] = True
                    await send(message)
                else:
                    held["start"] = message
                return
            if held.get("through") or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = readable_detail(b"".join(chunks))
            start = held["start"]
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
