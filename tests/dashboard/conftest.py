from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from dashboard.app import create_app


@pytest.fixture
def client(tl) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """The dashboard on a fresh, initialised database, through Litestar's test client."""
    with TestClient(create_app(tl)) as test_client:
        yield test_client
