"""Fixtures shared by the test suite: one table of curvature cases with float64 dense references."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import cases  # noqa: E402


@dataclass
class Case:
    """A model, its loss and probe, and the dense float64 Hessian as ground truth."""

    name: str
    model: nn.Module
    loss_fn: object
    probe: list
    hessian: torch.Tensor

    @property
    def eigenvalues(self) -> torch.Tensor:  # descending
        return torch.linalg.eigvalsh(self.hessian).flip(0)


@pytest.fixture(autouse=True, scope="session")
def _runs_in_a_temporary_directory(tmp_path_factory):
    """Monitors write run directories by default: keep them out of the checkout."""
    os.environ["EDGEWATCH_DIR"] = str(tmp_path_factory.mktemp("runs"))


def _build(name: str) -> Case:
    if name == "mlp":
        model, probe = cases.mlp(), cases.digits_probe()
    elif name == "cnn_bn":
        model, probe = cases.cnn_bn(), cases.digits_probe(sizes=(48, 32), images=True)
    else:
        raise KeyError(name)
    return Case(name, model, cases.cross_entropy, probe, cases.dense_hessian(model, cases.cross_entropy, probe))


_CACHE: dict[str, Case] = {}

CASE_NAMES = ["mlp", "cnn_bn"]


@pytest.fixture(params=CASE_NAMES)
def case(request) -> Case:
    """The digits MLP and the small CNN with BatchNorm, each with its dense Hessian (cached)."""
    if request.param not in _CACHE:
        _CACHE[request.param] = _build(request.param)
    return _CACHE[request.param]


@pytest.fixture
def mlp_case() -> Case:
    if "mlp" not in _CACHE:
        _CACHE["mlp"] = _build("mlp")
    return _CACHE["mlp"]
