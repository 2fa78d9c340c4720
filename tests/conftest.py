import pytest

from clo.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data():
    try:
        return shared_data_dir()
    except FileNotFoundError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def tiny_tok():
    from clo.testing import tiny_tokenizer

    return tiny_tokenizer()
