import os

import pytest
import torch

# Small CPU tests: one thread keeps them deterministic and avoids oversubscription on 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
