"""Unit tests run without Ray: a guard, not a convention (as Serve's own unit tests have)."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(autouse=True)
def disallow_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unit tests must not start Ray: put this test under tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
