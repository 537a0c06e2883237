"""Fixtures shared by the test suite."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from ocspd.http import init_app
from tests.helpers import TestPki, build_pki

AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def test_pki(tmp_path: Path) -> TestPki:
    """A P-256 CA with a delegated responder, served from index.txt."""
    return build_pki(tmp_path / "pki")


@pytest.fixture
def ocspd_client(aiohttp_client: Any) -> AppClient:
    """Start an ocspd app for a TestPki and return a test client for it."""

    async def start(test_pki: TestPki, **kwargs: Any) -> TestClient[Any, Any]:
        env = kwargs.pop("env", {})
        app: web.Application = init_app(test_pki.config(**env), index_poll=0.05, **kwargs)
        return await aiohttp_client(app)  # type: ignore[no-any-return]

    return start
