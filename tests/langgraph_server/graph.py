"""A tiny LangGraph graph for runbridge's integration tests: no LLM, no network.

Input ``{"input": {...}}``; behaviour is driven by that dict:

- ``{"sleep": 2.0}``     sleeps that many seconds (asyncio, so a cancel interrupts it),
- ``{"fail": "message"}`` raises ``RuntimeError("message")`` (the run ends in error),
- anything else           returns ``{"result": <the input>}``.

``sleep`` and ``fail`` combine: sleep first, then fail.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    input: dict[str, Any]
    result: Any


async def work(state: State) -> dict[str, Any]:
    data = dict(state.get("input") or {})
    delay = data.get("sleep")
    if delay:
        await asyncio.sleep(float(delay))
    if "fail" in data:
        raise RuntimeError(str(data["fail"]))
    return {"result": data}


builder = StateGraph(State)
builder.add_node("work", work)
builder.add_edge(START, "work")
builder.add_edge("work", END)
graph = builder.compile()
