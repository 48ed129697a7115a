"""The time structure of a sequential model: which local sites are the steps of one latent, and which data each
step sees.

A Pyro model of sequences draws its latents in a ``pyro.markov`` loop, one sample site per step, named by the step
(``z_1``, ``z_2``, ... in Pyro's deep Markov model). Pyro's traces do not record which sites a loop drew, so
:func:`time_layout` groups the local sites of a :class:`~pyro_iterative.inference.sites.SiteLayout` by their names
(:func:`step_of`, or a function the user gives): every local site must be step ``t`` of some group, all steps of a
group the same size; the observed sites with a step (``x_1``, ...) are that step's data, those without one are
data of every step. The result, a :class:`TimeLayout`, says how to stack a group's per-step lambdas into one
``(batch, steps, width)`` tensor and where each step's data lie in a datapoint's flattened observations. Networks,
ELBOs and masks live elsewhere (:mod:`pyro_iterative.guides.sequential`, :mod:`pyro_iterative.inference.inner_elbo`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .sites import SiteLayout

__all__ = [
    "STEP_PATTERN",
    "StepGroup",
    "TimeLayout",
    "step_of",
    "time_layout",
]

#: How :func:`step_of` reads a site's name: a group name, an underscore, and the step number (``z_12``, ``obs_x_3``).
STEP_PATTERN = re.compile(r"^(?P<group>.+)_(?P<step>\d+)$")


def step_of(name: str) -> tuple[str, int] | None:
    """``(group, step)`` of a site named like ``z_12`` (group ``"z"``, step 12), or ``None`` for a name without a
    step (see :data:`STEP_PATTERN`).

    Usage::

        step_of("z_12")      # ("z", 12)
        step_of("obs_x_3")   # ("obs_x", 3)
        step_of("theta")     # None
    """
    match = STEP_PATTERN.match(name)
    return None if match is None else (match["group"], int(match["step"]))


@dataclass(frozen=True)
class StepGroup:
    """The per-step local sites of one latent (``z_1``, ..., ``z_T``) and each step's data.

    :ivar name: the group's name (``"z"``).
    :ivar sites: the local site of every step, in step order.
    :ivar steps: the step numbers, ascending.
    :ivar size: unconstrained coordinates of one step (q's lambda of a step has ``2 * size`` entries).
    :ivar data_columns: ``(len(steps), step_data_size)`` indices into a datapoint's flattened observations (the
        layout's observed sites, concatenated): row ``t`` gives the data of step ``steps[t]``.
    """

    name: str
    sites: tuple[str, ...]
    steps: tuple[int, ...]
    size: int
    data_columns: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def data_size(self) -> int:
        """Observed values one step reads."""
        return self.data_columns.shape[1]

    def stack(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The group's per-site ``(batch, width)`` tensors as one ``(batch, steps, width)`` tensor."""
        return torch.stack([values[name] for name in self.sites], dim=1)

    def unstack(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`stack`."""
        return dict(zip(self.sites, stacked.unbind(1)))

    def step_data(self, data: torch.Tensor) -> torch.Tensor:
        """``(batch, steps, step_data_size)`` from a ``(batch, data_size)`` tensor of flattened observations."""
        return data[:, self.data_columns.to(data.device)]


@dataclass(frozen=True)
class TimeLayout:
    """A model's local sites grouped by time step (see :func:`time_layout`).

    :ivar groups: one :class:`StepGroup` per latent, in the order of their first sites.
    """

    groups: tuple[StepGroup, ...]


def time_layout(layout: SiteLayout, step: Callable[[str], tuple[str, int] | None] = step_of) -> TimeLayout:
    """Group a model's local sites by time step, by their names.

    Usage::

        layout = discover_sites(poutine.trace(dmm).get_trace(sequences, lengths))
        time = time_layout(layout)             # sites z_1 ... z_T: one group "z" of T steps
        time.groups[0].steps[:3]               # (1, 2, 3)

    :param layout: the model's sites.
    :param step: ``step(name)`` gives ``(group, step number)`` of a site, or ``None`` for a site that is not one step
        of a sequence (default :func:`step_of`: names like ``z_12``).
    :raises ValueError: for a local site without a step, a group whose steps differ in size or repeat, a step without
        data of its own, or steps whose data differ in size; each error names the sites and what is expected.
    """
    expected = (
        "sequential guides expect every local latent to be one time step of a group, named like 'z_1', 'z_2', ... "
        "(pass step=... to read the names otherwise), e.g. drawn in a pyro.markov loop"
    )
    groups: dict[str, list[tuple[int, str, int]]] = {}
    for site in layout.local_sites:
        found = step(site.name)
        if found is None:
            raise ValueError(f"Local site '{site.name}' has no time step: {expected}; use IterativeGuide for it.")
        groups.setdefault(found[0], []).append((found[1], site.name, site.size))
    offsets, columns_at, static = 0, {}, []
    for observed in layout.observed_sites:
        columns = list(range(offsets, offsets + observed.size))
        offsets += observed.size
        found = step(observed.name)
        if found is None:
            static += columns
        else:
            columns_at.setdefault(found[1], []).extend(columns)
    result = []
    for name, entries in groups.items():
        entries.sort()
        steps = [entry[0] for entry in entries]
        if len(set(steps)) != len(steps):
            raise ValueError(f"Group '{name}' has two sites for one step among {[e[1] for e in entries]}: {expected}.")
        sizes = {entry[2] for entry in entries}
        if len(sizes) != 1:
            raise ValueError(
                f"The steps of group '{name}' differ in size ({sorted(sizes)} coordinates): one update network serves "
                "every step, so each step of a latent must have the same shape."
            )
        missing = [entry[1] for entry in entries if entry[0] not in columns_at]
        if missing and not static:
            raise ValueError(
                f"No observed site has the step of {missing[:3]}: each step's update reads that step's observations "
                "(sites named like 'x_1', 'x_2', ... for z_1, z_2, ...)."
            )
        rows = [columns_at.get(entry[0], []) + static for entry in entries]
        widths = {len(row) for row in rows}
        if len(widths) != 1:
            raise ValueError(
                f"The steps of group '{name}' see observations of different sizes ({sorted(widths)} values): each "
                "step must observe the same shape (pad and mask the steps instead)."
            )
        result.append(StepGroup(name, tuple(e[1] for e in entries), tuple(steps), sizes.pop(),
                                torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)))
    return TimeLayout(tuple(result))
