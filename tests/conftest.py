"""Shared fixtures: every test starts with an empty Pyro param store and fixed seeds.

The tests use small networks, for which one torch thread is as fast as two and, unlike two, does not slow
down many-fold when the machine's cores are shared with other work.
"""

import pyro
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
