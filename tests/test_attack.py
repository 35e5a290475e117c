"""The PGD attack of the cascade and of the ``lirpa`` and ``milp`` workers (``attack``): its
targeted starts reach a counterexample that the untargeted objective cannot see."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.formats.vnnlib import robustness_property
from bench.verifiers.attack import attack
from bench.verifiers.lirpa import Lirpa
from bench.verifiers.milp import Milp
from bench.verifiers.onnx_torch import LoadedModel, load_property, spec_holds
from bench.verifiers.stages import CascadeSettings

pytestmark = pytest.mark.skipif(not Milp().is_installed(), reason="milp's modules are missing")


def _decoy_network(path: Path) -> None:
    """Two inputs in [0, 1], three outputs: y0 = 0; y1 = -0.01 (the nearest class everywhere,
    never reached, flat); y2 = 10 x0 - 9.9, which reaches y0 only where x0 >= 0.99. Minimizing
    the margin to the nearest class follows y1 and gets no gradient, so only a start that
    happens to lie in the corner finds the counterexample; a start aimed at y2 walks there."""
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.0, -0.01, -9.9]))
    torch.onnx.export(layer.eval(), torch.zeros(1, 2), str(path), input_names=["input"],
                      output_names=["output"], dynamo=False)


def test_a_start_aimed_at_each_spec_finds_what_the_nearest_spec_hides(tmp_path):
    model_path, property_path = tmp_path / "decoy.onnx", tmp_path / "decoy.vnnlib"
    _decoy_network(model_path)
    property_path.write_text(robustness_property(np.full(2, 0.5), 0, 0.5, 3))
    model = LoadedModel(model_path)
    disjuncts, boxes, batched = load_property(model, property_path, np.random.default_rng(0))
    (_, specs), (inner, _) = disjuncts[0], boxes[0]

    def run(targeted: bool, seed: int):
        return attack(model.network, model.reference, inner, specs, model.n_out,
                      model.prepared_shape, 20, 10, batched, torch.Generator().manual_seed(seed),
                      targeted=targeted)

    assert all(run(False, seed) is None for seed in range(3))
    for seed in range(3):
        found = run(True, seed)
        assert found is not None, seed
        x, y = found
        assert x[0] >= 0.99 and spec_holds(y, specs)


def test_the_targeted_starts_are_a_setting_of_the_cascade_and_of_lirpa():
    assert CascadeSettings().as_params()["attack_targeted"] is True
    assert CascadeSettings.from_params({"attack_targeted": False}).attack_targeted is False
    # milp's: test_milp.test_parameters_round_trip_to_the_worker
    from bench.verifiers import _lirpa_main

    common = ["--onnx", "m.onnx", "--vnnlib", "p.vnnlib", "--result", "r.txt"]
    lirpa_args = Lirpa(pgd_targeted=False).worker_args(None)
    assert _lirpa_main.parse_args([*common, *lirpa_args]).pgd_targeted is False
    assert _lirpa_main.parse_args([*common, *Lirpa().worker_args(None)]).pgd_targeted is True
