"""The registries build every method at matched size; the command line is generated from them; the figure data
comes from the bundled models themselves."""

import dataclasses
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
    networks = [counts[name] for name in ("standard", "iterative", "encoder_iterative", "semi_amortized")]
    assert max(networks) / min(networks) < 1.05
    assert counts["per_datapoint"] == 2 * 20 * 3
    assert counts["variational_em"] == counts["variational_em_reference"] == 0
    assert sum(spec.figures for spec in METHODS) == 1


@pytest.mark.parametrize("knob", [{"highway": True}, {"depth": 3}, {"depth": 3, "highway": True},
                                  {"normalize_hidden": False}, {"depth": 3, "normalize_hidden": False},
                                  {"antithetic": False}, {"depth": 3, "antithetic": False},
                                  {"clip_encoder_gradient": False}, {"gate_init": False},
                                  {"depth": 3, "gate_init": False}, {"final_check": False}])
def test_every_tuning_knob_keeps_the_networks_matched(knob):
    config = RunConfig(latent_dim=3, hidden=24, iterations=2, batch_size=8, device="cpu")
    x = torch.rand(20, 12, generator=torch.Generator().manual_seed(0))
    reference = build_model_and_guide(config, "iterative", x)[1].count_inference_parameters()
    tuned = dataclasses.replace(config, **knob)
    for name in ("standard", "iterative", "encoder_iterative", "semi_amortized"):
        with pyro.get_param_store().scope():
            guide = build_model_and_guide(tuned, name, x)[1]
        assert abs(guide.count_inference_parameters() / reference - 1) < 0.05, (name, knob)
        if "depth" in knob:
            assert len(guide.hidden_sizes) == 3, name
        if name in ("iterative", "encoder_iterative"):
            assert guide.highway == knob.get("highway", False)
            assert guide.normalize_hidden == knob.get("normalize_hidden", True)
            assert all(net.normalize_hidden == guide.normalize_hidden for net in guide.update_nets)
            pair = knob.get("antithetic", True)
            assert (guide.num_particles, guide.pairs_particles()) == ((2, True) if pair else (1, False)), name
            # the iterative method's gates start near 1 unless --no-gate-init; encoder_iterative keeps PyTorch's start
            started = knob.get("gate_init", True) and name == "iterative"
            assert guide.gate_bias == (2.0 if started else None), name
            assert all(bool((net.gate.bias == 2.0).all()) == started for net in guide.update_nets), name
        if name == "semi_amortized":  # checked at evaluation unless --no-final-check
            assert guide.final_check == ("inference" if knob.get("final_check", True) else False)
        if name in ("standard", "semi_amortized", "encoder_iterative"):
            assert guide.clip_gradient == (3.0 if knob.get("clip_encoder_gradient", True) else None), name


def test_inner_step_sizes_reach_the_guides():
    config = RunConfig(latent_dim=3, hidden=24, iterations=2, batch_size=8, device="cpu", inner_lr=0.7,
                       reference_steps=7)
    x = torch.rand(20, 12, generator=torch.Generator().manual_seed(0))
    assert build_model_and_guide(config, "semi_amortized", x)[1].lr == 0.7
    assert build_model_and_guide(config, "variational_em", x)[1].lr == 0.7
    reference = build_model_and_guide(config, "variational_em_reference", x)[1]
    assert (reference.lr, reference.num_steps) == (0.7, 7)
    with pytest.raises(ValueError, match="built for models of independent datapoints"):
        build_model_and_guide(RunConfig(model="dmm", latent_dim=2, hidden=8), "encoder_iterative",
                              torch.rand(4, 3, 5))


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
    assert "--local-steps" in text and "[used by: variational_em_warm, per_datapoint]" in text


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
