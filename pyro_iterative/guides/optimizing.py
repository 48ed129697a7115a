"""OptimizingGuide: q optimized from lambda_0 for every batch by a torch optimizer, with no inference network.

The test-time inference of variational EM (which learns no encoder, so new data need their own optimization),
as a :class:`~pyro_iterative.guides.base.LocalGuide`, so that it offers the same inspection and evaluation as
the learned guides. The optimization loop itself is :func:`~pyro_iterative.inference.optimize.optimize_lambda`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..inference.batch import Batch
from ..inference.cost import ModelPasses
from ..inference.optimize import check_optimizer_settings, optimize_lambda
from ..inference.sites import SiteLayout
from .base import LocalGuide, Refinement

__all__ = [
    "OptimizingGuide",
]


class OptimizingGuide(LocalGuide):
    """A guide with no inference network: q is optimized for every batch, at every call, from lambda_0 or (with
    ``warm_start``) from where the previous call left each datapoint's q.

    Trained with the model (SVI), it is variational EM as the literature runs it (Hoffman et al. 2013; the "SVI"
    baseline of Kim et al. 2018): each minibatch's q takes ``num_steps`` optimizer steps on its ELBO, then the model
    takes its step at the result. It has no parameters of its own; it also infers q on new data for a model trained
    with :class:`~pyro_iterative.guides.per_datapoint.PerDatapointGuide`, or serves as a reference optimizer.

    Usage::

        guide = OptimizingGuide(model, optimizer="adam", lr=0.05, num_steps=100)
        guide.elbo_trajectory(x_test)   # (num_steps + 1, batch)

        em = OptimizingGuide(model, num_steps=5, warm_start=True).setup(x_train, subsample_size=64)
        svi = SVI(model, em, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())   # each datapoint resumes its own q

    :param optimizer: a name from :data:`~pyro_iterative.inference.optimize.OPTIMIZERS`.
    :param lr: learning rate; default from :data:`~pyro_iterative.inference.optimize.DEFAULT_LEARNING_RATES`.
    :param num_steps: optimizer steps per call.
    :param warm_start: keep every datapoint's optimized lambda (a buffer of one row per datapoint of the data plate's
        full size, saved in ``state_dict``) and start its next optimization there instead of at lambda_0 (the
        optimizer's own state starts afresh at each call). Calls on a data plate of another size (new data) are
        refused: infer those with a guide without ``warm_start``.
    :param kwargs: options of :class:`~pyro_iterative.guides.base.LocalGuide`.
    """

    def __init__(
        self, model: Callable, *, optimizer: str = "adam", lr: float | None = None, num_steps: int = 100,
        warm_start: bool = False, **kwargs
    ) -> None:
        check_optimizer_settings(optimizer, lr, num_steps, None)
        super().__init__(model, **kwargs)
        self.optimizer, self.lr, self.num_steps = optimizer, lr, num_steps
        self.warm_start = bool(warm_start)

    def _setup_networks(self, layout: SiteLayout) -> None:
        self.register_buffer("_like", torch.zeros(()))  # no parameters: remember the dtype and device

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        # lambda takes the latents' dtype and device (a float64 model gets float64 lambda)
        self._like = self.prototype_trace.nodes[self.layout.local_sites[0].name]["value"].new_zeros(())
        if self.warm_start:  # every datapoint's q starts at lambda_0
            full_size = self.layout.plate.full_size or self.layout.plate.size
            self.register_buffer("stored_lambda", torch.cat(list(self._initial_lambda(full_size).values()), dim=-1))

    def count_inference_parameters(self) -> int:
        """0, or with ``warm_start`` the stored lambda (a location and a log-scale per coordinate per datapoint)."""
        return self.stored_lambda.numel() if self.warm_start else 0

    def _starting_lambda(self, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.warm_start:
            return self._initial_lambda(len(batch))
        if batch.full_size != len(self.stored_lambda):
            raise ValueError(
                f"This OptimizingGuide(warm_start=True) stores q for the {len(self.stored_lambda)} datapoints it was "
                f"set up on, but the model's plate '{self.layout.plate_name}' has {batch.full_size}: infer q on other "
                "data with OptimizingGuide(warm_start=False)."
            )
        rows = self.stored_lambda[batch.indices.to(self.stored_lambda.device)]
        sites = self.layout.local_sites
        return dict(zip((site.name for site in sites), rows.split([2 * site.size for site in sites], dim=-1)))

    def _parameter_like(self) -> torch.Tensor:
        return self._like

    def inference_cost(self, num_iterations: int | None = None) -> ModelPasses:
        """``num_steps`` forward and backward passes per datapoint and particle (one more forward pass, of one particle,
        to read the masks of a model that masks local sites)."""
        steps = self.num_steps if num_iterations is None else num_iterations
        passes = steps * self.num_particles
        return ModelPasses(forward=passes + self._reads_masks_by_running_the_model(), backward=passes)

    def _refine(
        self,
        args: tuple,
        kwargs: dict,
        batch: Batch,
        global_values: dict[str, torch.Tensor],
        *,
        num_iterations: int | None = None,
        record: bool = False,
    ) -> Refinement:
        steps = self.num_steps if num_iterations is None else num_iterations
        result = optimize_lambda(
            self._inner_elbo, args, kwargs, batch, global_values, self._starting_lambda(batch),
            optimizer=self.optimizer, lr=self.lr, num_steps=steps, record_path=record,
        )
        self.nonfinite_gradients += result.nonfinite_gradients
        if self.warm_start:
            sites = self.layout.local_sites
            self.stored_lambda[batch.indices.to(self.stored_lambda.device)] = torch.cat(
                [result.lam[site.name].detach() for site in sites], dim=-1)
        return Refinement(lam=result.lam, elbos=list(result.trajectory[:-1]), path=result.path[:-1])
