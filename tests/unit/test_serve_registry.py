"""How the HTTP API's replica groups concurrent submits (no Ray: the registry is a fake)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray

from raybeam.errors import QueueFull
from serve_app.registry import RayRegistry


class Recording(RayRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    async def _acall(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        await asyncio.sleep(0.01)
        if method == "submit":
            return [it["id"] for it in args[1]]
        return [
            QueueFull("full") if queue == "full" else [it["id"] for it in items]
            for queue, items in args[0]
        ]


def test_submits_that_arrive_together_share_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    registry = Recording()

    async def submit(queue: str, n: int) -> Any:
        try:
            return await registry.call("submit", queue, [{"id": f"{queue}-{n}"}])
        except QueueFull as exc:
            return exc

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(submit("full" if n % 3 == 0 else "q", n) for n in range(1, 10))
        )

    answers = asyncio.run(main())
    assert [m for m, _ in registry.calls] == ["submit_each"]
    assert len(registry.calls[0][1][0]) == 9
    for n, answer in enumerate(answers, start=1):
        if n % 3 == 0:
            assert isinstance(answer, QueueFull)
        else:
            assert answer == [f"q-{n}"]
    assert not registry.sending and not registry.waiting
    # a lone submit goes as itself
    assert asyncio.run(submit("q", 10)) == ["q-10"]
    assert registry.calls[-1][0] == "submit"
