import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models: one thread beats two (thread sync costs more than the matmuls).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_config():
    from router.config import load_config

    return load_config("tiny")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state, so random tiny weights never make a test flaky."""
    torch.manual_seed(0)
