"""Shared fixtures: every test starts with an empty Pyro param store and fixed seeds.

The tests use small networks, for which one torch thread is as fast as two and, unlike two, does not slow
down many-fold when the machine's cores are shared with other work. The command-line runs that tests start as
subprocesses get one thread too (``OMP_NUM_THREADS``), so that a run killed there and resumed here computes as an
uninterrupted run here does: float32 sums split over two threads round differently.
"""

import os

import pyro
import pytest
import torch

torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses the tests start


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
