import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLO_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data directory {SHARED_DATA} not found (set CLO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tok():
    from clo.testing import tiny_tokenizer

    return tiny_tokenizer()
