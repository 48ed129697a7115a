"""Reference generative models written as Pyro models (installed as ``pyro_iterative.models``)."""
