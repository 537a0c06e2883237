"""The hostile-conditions suite (issue 11): every async test here runs on asyncio's
event loop and on uvloop's, the one production uses with the ``speed`` extra (a
fault answered right on one loop was answered internalError on the other)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
