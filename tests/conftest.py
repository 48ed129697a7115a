"""Shared fixtures: every test starts with an empty Pyro param store and fixed seeds."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
