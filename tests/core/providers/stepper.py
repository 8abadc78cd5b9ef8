"""Step a provider exchange with canned responses, recording the requests it yields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runbridge.core.http import Exchange, Request, Response


@dataclass
class Canned:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None

    def response(self, request: Request) -> Response:
        if self.raw is not None:
            content = self.raw
        else:
            content = b"" if self.body is None else json.dumps(self.body).encode()
        headers = {"content-type": "application/json", **self.headers}
        return Response(self.status, headers, content, request)


def step(exchange: Exchange[Any], *responses: Canned) -> tuple[list[Request], Any]:
    """Answer each yielded request with the next canned response; return (requests, result).

    Fails if the exchange asks for more requests than responses were given, or fewer.
    """
    requests: list[Request] = []
    queue = list(responses)
    try:
        request = next(exchange)
        while True:
            requests.append(request)
            assert queue, f"unexpected extra request {request.method} {request.path}"
            request = exchange.send(queue.pop(0).response(request))
    except StopIteration as stop:
        assert not queue, f"{len(queue)} canned response(s) left unused"
        return requests, stop.value
