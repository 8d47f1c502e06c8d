"""Each e2e test module gets the four services as processes (see tests/stack.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stack.tiny_model import TinyModel
from tests.stack import Stack, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), tiny_model) as running:
        yield running
