import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Tokenization cache per test, so tests never see each other's files."""
    monkeypatch.setattr("instructmt.data.tokenize.DEFAULT_CACHE", tmp_path / "cache", raising=False)
    # the trainer's parsed-task cache (large task files only) also stays inside the test
    monkeypatch.setattr("instructmt.training.task_setup.cache_root", lambda: tmp_path / "cache", raising=False)


def free_port() -> int:
    """A TCP port nobody listens on now: each `accelerate launch` in the tests gets its own, so a
    rank of an earlier launch still exiting (slow under load) cannot hold the next one's port."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
