"""``python -m pyro_iterative``: the same as the ``pyro-iterative`` command."""

from .cli import main

raise SystemExit(main())
