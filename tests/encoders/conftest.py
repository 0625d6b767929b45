import pytest

from common.testing import register_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_name() -> str:
    return register_tiny_clip()
