"""The registries build every method at matched size; the command line is generated from them; the figure data
comes from the bundled models themselves."""

from dataclasses import dataclass

import pyro
import pytest
import torch

from pyro_iterative import TrainableGuide
from pyro_iterative.evaluation import reconstruction
from pyro_iterative.experiments.config import RunConfig
from pyro_iterative.experiments.registry import METHODS, MODELS, Registry, build_model_and_guide


def test_registry_refuses_unknown_and_duplicate_names():
    @dataclass(frozen=True)
    class Spec:
        name: str

    registry = Registry("colour")
    registry.register(Spec("red"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Spec("red"))
    with pytest.raises(ValueError, match="Unknown colour 'blue'; choose one of red"):
        registry["blue"]
    assert registry.names() == ("red",) and "red" in registry


def test_every_method_builds_a_trainable_guide_at_matched_size():
    config = RunConfig(latent_dim=3, hidden=24, iterations=2, batch_size=8, device="cpu")
    x = torch.rand(20, 12, generator=torch.Generator().manual_seed(0))
    counts = {}
    for spec in METHODS:
        with pyro.get_param_store().scope():
            model, guide = build_model_and_guide(config, spec.name, x)
            assert isinstance(guide, TrainableGuide) and guide.layout is not None
            assert isinstance(spec.test_time(model, guide, config), TrainableGuide)
            counts[spec.name] = guide.count_inference_parameters()
            assert spec.label(config)
    networks = [counts[name] for name in ("standard", "iterative", "semi_amortized")]
    assert max(networks) / min(networks) < 1.05
    assert counts["per_datapoint"] == 2 * 20 * 3
    assert sum(spec.figures for spec in METHODS) == 1


def test_every_model_has_a_known_binarization_and_builds():
    from pyro_iterative.data import BINARIZE_MODES

    for spec in MODELS:
        assert spec.binarize in BINARIZE_MODES
        model = spec.build(10, 4, 8)
        assert isinstance(model, torch.nn.Module)
    assert RunConfig(model="gaussian").binarize == "none" and RunConfig(model="vae").binarize == "dynamic"
    with pytest.raises(ValueError, match="Unknown model 'magic'"):
        RunConfig(model="magic")


def test_command_line_options_come_from_run_config_and_the_registries(capsys):
    from pyro_iterative.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for spec in MODELS:
        assert spec.name in text and spec.description.split()[0] in text
    for spec in METHODS:
        assert spec.label(RunConfig()) in text
    assert "--is-samples" in text and "(default: 5000; --quick 1000)" in text
    assert "--local-steps" in text and "[used by: per_datapoint]" in text


@pytest.mark.parametrize("name", ["vae", "hierarchical"])
def test_reconstruction_is_the_models_own_predicted_mean(name):
    pyro.set_rng_seed(0)
    model = MODELS[name].build(16, 4, 8)
    x = torch.rand(5, 16, generator=torch.Generator().manual_seed(1)).round()
    from pyro_iterative import IterativeGuide

    guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(8,)).setup(x)
    inference = guide.refine(x, record=True)
    images = [reconstruction(model, inference, x, lam=lam) for lam in inference.lams]
    assert len(images) == 3 and all(image.shape == (5, 16) for image in images)
    with torch.no_grad():
        if name == "vae":
            expected = model.reconstruct(inference.lam["z"][:, :4])
        else:  # the bottom latent's location through the decoder
            expected = torch.sigmoid(model.decoder(inference.lam["z1"][:, :4]))
    assert torch.allclose(images[-1], expected, atol=1e-6)
    assert not torch.allclose(images[0], images[-1])  # the iterations moved q
