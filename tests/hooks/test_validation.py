"""Bad input is refused when the Monitor, the probe, an operator or a callback is built, with one
line naming the argument and the fix, not at the first probe (which used to warn and leave the
whole run without curvature)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import cases
import edgewatch as ew
from edgewatch.curvature import HessianOperator
from edgewatch.hooks import validation


def tiny():
    """A model, its optimizer and a two-batch probe, small enough to build in milliseconds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = [(torch.randn(5, 3), torch.randint(0, 2, (5,))), (torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    return model, torch.optim.SGD(model.parameters(), lr=0.1), probe


def monitor(probe=None, model=None, optimizer=None, **settings):
    default_model, default_optimizer, default_probe = tiny()
    model = model or default_model
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    return ew.Monitor(model, optimizer, cases.cross_entropy, default_probe if probe is None else probe, **settings)


BAD_SETTINGS = [
    ({"k": 0}, ValueError, r"k must be an integer >= 1, got 0"),
    ({"k": -1}, ValueError, r"k must be an integer >= 1, got -1"),
    ({"k": 1.0}, ValueError, r"k must be an integer"),
    ({"k": True}, ValueError, r"k must be an integer >= 1, got True"),
    ({"tol": 0}, ValueError, r"tol must be a number strictly between 0 and 1, got 0; .*e\.g\. tol=1e-3"),
    ({"tol": -1e-3}, ValueError, r"tol must be .* got -0\.001"),
    ({"tol": math.nan}, ValueError, r"tol must be .* got nan"),
    ({"tol": math.inf}, ValueError, r"tol must be .* got inf"),
    ({"tol": "1e-3"}, ValueError, r"tol must be .* got '1e-3'"),
    ({"max_hvps": 0}, ValueError, r"max_hvps must be an integer >= 1, got 0; .*e\.g\. max_hvps=100"),
    ({"max_hvps": 50.0}, ValueError, r"max_hvps must be an integer"),
    ({"max_hvps": None}, ValueError, r"max_hvps must be an integer"),
    ({"k": 3, "max_hvps": 2}, ValueError, r"max_hvps=2 is below k=3.*raise max_hvps or lower k"),
    ({"method": "fast"}, ValueError, r"method must be one of .*'auto', got 'fast'"),
    ({"seed": 1.5}, ValueError, r"seed must be an integer .* got 1\.5"),
    ({"train": "yes"}, ValueError, r"train must be True .* got 'yes'"),
    ({"history": 1}, ValueError, r"history must be an integer >= 2, got 1"),
    ({"curvature": "often"}, ValueError, r"curvature must be \"budget\""),
    ({"track_updates": None}, ValueError, r"track_updates must be True or False, got None"),
    ({"main_process": 1}, ValueError, r"main_process must be True, False or None, got 1"),
    ({"stop_on": "nonfinite"}, ValueError, r"stop_on must be a list of event kinds.*stop_on=\['nonfinite'\]"),
    ({"stop_on": ["exploded"]}, ValueError, r"stop_on has unknown event kinds \['exploded'\]"),
    ({"detectors": [1]}, TypeError, r"detectors\[0\] is not a detector"),
    ({"detectors": ew.hooks.NonFiniteDetector()}, TypeError, r"detectors must be a list.*wrap one in a list"),
    ({"callbacks": print}, TypeError, r"callbacks must be a list.*wrap one in a list"),
    ({"callbacks": [None]}, TypeError, r"callbacks\[0\] is not callable"),
    ({"grad_scaler": 3}, TypeError, r"grad_scaler must be the loop's torch\.amp\.GradScaler or None, got int"),
    ({"loggers": "foo"}, ValueError, r"unknown logger 'foo'"),
    ({"loggers": [3]}, TypeError, r"a logger is a spec string"),
    ({"run_dir": True}, TypeError, r"run_dir must be a directory path"),
]


@pytest.mark.parametrize(("settings", "error", "match"), BAD_SETTINGS, ids=[str(s) for s, _, _ in BAD_SETTINGS])
def test_a_bad_setting_is_refused_when_the_monitor_is_built(settings, error, match):
    with pytest.raises(error, match=match):
        monitor(**settings)


def test_every_keyword_argument_of_the_monitor_has_a_check():
    parameters = inspect.signature(ew.Monitor.__init__).parameters.values()
    keywords = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords == set(validation._SETTINGS)
    # the curvature settings' defaults are CurvatureConfig's, declared once
    config = ew.hooks.CurvatureConfig()
    assert {p.name: p.default for p in parameters if hasattr(config, p.name)} == {
        name: getattr(config, name) for name in ("k", "tol", "max_hvps", "method", "seed", "train")}


def test_good_settings_at_their_edges_pass():
    built = monitor(k=2, max_hvps=2, tol=1e-12, seed=-1, train=None, every=None, curvature=None,
                    history=2, loggers=["stdout"], run_dir=False, stop_on=["nonfinite"], main_process=None)
    assert built.curvature.k == 2


@pytest.mark.parametrize(("settings", "match"), [
    ({"stream_hvps": 0}, r"stream_hvps must be an integer >= 1, got 0"),
    ({"stream_tol": 0.0}, r"stream_tol must be a number strictly between 0 and 1, got 0\.0"),
    ({"stream_drop": 1.5}, r"stream_drop must be .* got 1\.5"),
    ({"k": 0}, r"k must be an integer >= 1, got 0"),
])
def test_the_curvature_config_refuses_bad_settings_when_it_is_written(settings, match):
    with pytest.raises(ValueError, match=match):
        ew.hooks.CurvatureConfig(**settings)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"probe": []}, ValueError, r"the probe is empty"),
    ({"probe": 5}, TypeError, r"probe must be a list of batches, got int"),
    ({"method": "fast"}, ValueError, r"method must be one of"),
    ({"weights": [1.0, math.nan]}, ValueError, r"weights must be finite, non-negative and not all zero, got \[1\.0, nan\]"),
    ({"weights": [1.0, -1.0]}, ValueError, r"weights must be finite, non-negative"),
    ({"weights": [0, 0]}, ValueError, r"weights must be finite, non-negative and not all zero"),
    ({"weights": [1.0]}, ValueError, r"weights has 1 entries for 2 probe batches; give one per batch"),
    ({"weights": "ab"}, TypeError, r"weights must be a list with one number per probe batch"),
    ({"weights": [1.0, "x"]}, TypeError, r"weights must be numbers"),
    ({"reuse_graph": None}, ValueError, r"reuse_graph must be True or False, got None"),
    ({"seed": 0.5}, ValueError, r"seed must be an integer"),
    ({"train": 1}, ValueError, r"train must be True .* got 1"),
    ({"dtype": "float64"}, TypeError, r"dtype must be a torch floating dtype"),
])
def test_the_hessian_operator_refuses_bad_arguments(kwargs, error, match):
    model, _, probe = tiny()
    kwargs = {"probe": probe, **kwargs}
    with pytest.raises(error, match=match):
        HessianOperator(model, cases.cross_entropy, kwargs.pop("probe"), **kwargs)


# -- non-finite probe batches ------------------------------------------------------------------
@pytest.mark.parametrize(("value", "name"), [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "inf")])
def test_a_probe_batch_with_nan_or_inf_is_refused_naming_the_batch(value, name):
    _, _, probe = tiny()
    probe[1][0][2, 1] = value
    with pytest.raises(ValueError, match=rf"probe batch 1 contains {name} \(1 of 12 values of probe\[1\]\[0\]\)"):
        monitor(probe=probe, stop_on=["nonfinite"])


def test_a_nan_deep_in_a_dict_batch_is_found_and_named():
    model = nn.Linear(3, 2)
    probe = [{"x": torch.ones(2, 3), "extra": [torch.zeros(2), torch.tensor([1.0, math.nan])]}]
    with pytest.raises(ValueError, match=r"probe batch 0 contains NaN \(1 of 2 values of probe\[0\]\['extra'\]\[1\]\)"):
        HessianOperator(model, lambda m, b: m(b["x"]).sum(), probe)


def test_values_beyond_float32_become_inf_in_the_probe_and_are_refused():
    model, _, probe = tiny()  # a float32 model: the probe is cast to float32
    probe[0] = (probe[0][0].double() * 1e300, probe[0][1])
    with pytest.raises(ValueError, match=r"probe batch 0 contains inf"):
        HessianOperator(model, cases.cross_entropy, probe)


# -- the model and the optimizer -----------------------------------------------------------------
def test_all_frozen_parameters_are_refused_in_the_users_terms():
    model, _, _ = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match=r"all 4 parameters the optimizer updates are frozen \(requires_grad=False\).*requires_grad_\(True\)"):
        monitor(model=model, optimizer=optimizer)


def test_an_optimizer_of_another_model_is_refused():
    model, _, _ = tiny()
    other, _, _ = tiny()
    with pytest.raises(ValueError, match=r"the optimizer updates none of the model's parameters .*model\.parameters\(\)"):
        monitor(model=model, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


def test_parameters_outside_the_model_only_warn_and_the_model_is_still_measured():
    """A learnable loss temperature beside the model is legitimate: warned about, not refused."""
    model, _, probe = tiny()
    temperature = nn.Parameter(torch.ones(()))
    optimizer = torch.optim.SGD([*model.parameters(), temperature], lr=0.1)
    with pytest.warns(UserWarning, match=r"updates 1 of its 5 parameters outside the model"):
        watched = ew.Monitor(model, optimizer, cases.cross_entropy, probe, curvature=1, every=1, run_dir=False).attach()
    x, y = probe[0]
    optimizer.zero_grad()
    (cases.cross_entropy(model, (x, y)) * temperature).backward()
    optimizer.step()
    assert math.isfinite(watched.latest["curvature/lambda_max"])


def test_a_model_that_is_not_a_module_is_refused():
    _, optimizer, probe = tiny()
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got function"):
        ew.Monitor(lambda x: x, optimizer, cases.cross_entropy, probe)


# -- the trainer callbacks ---------------------------------------------------------------------
def test_the_shared_callback_check_refuses_at_construction():
    _, _, probe = tiny()
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 0"):
        validation.check_callback_arguments(cases.cross_entropy, probe, {"k": 0}, "EdgewatchCallback")
    with pytest.raises(TypeError, match=r"EdgewatchCallback got unknown Monitor arguments \['k_top'\]"):
        validation.check_callback_arguments(cases.cross_entropy, probe, {"k_top": 2}, "EdgewatchCallback")
    with pytest.raises(ValueError, match=r"loss_fn must accept two positional arguments"):
        validation.check_callback_arguments(lambda batch: batch, probe, {}, "EdgewatchCallback")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"k": 0}, ValueError, r"k must be an integer >= 1, got 0"),
    ({"tol": 0}, ValueError, r"tol must be a number strictly between 0 and 1"),
    ({"max_hvps": 0}, ValueError, r"max_hvps must be an integer >= 1"),
    ({"curvature": "often"}, ValueError, r"curvature must be"),
    ({"kk": 1}, TypeError, r"EdgewatchCallback got unknown Monitor arguments \['kk'\]"),
])
def test_the_transformers_callback_refuses_at_construction(kwargs, error, match):
    transformers = pytest.importorskip("edgewatch.integrations.transformers")
    probe = [{"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)}]
    with pytest.raises(error, match=match):
        transformers.EdgewatchCallback(probe, **kwargs)


def test_the_transformers_callback_refuses_a_nan_probe_at_construction():
    transformers = pytest.importorskip("edgewatch.integrations.transformers")
    probe = [{"inputs_embeds": torch.tensor([[[math.nan]]]), "labels": torch.zeros(1, 1, dtype=torch.long)}]
    with pytest.raises(ValueError, match=r"probe batch 0 contains NaN"):
        transformers.EdgewatchCallback(probe)
