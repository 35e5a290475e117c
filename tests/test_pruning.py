import pytest
import torch

from bench.config import make_config
from bench.errors import BenchError
from bench.models import build_model
from bench.pruning import PRUNERS
from bench.pruning.base import PruneContext, keep_largest
from bench.models.mask import dense_mask, layer_sparsity, load_mask, prunable, remain_ratio, save_mask


def context(model, seed=0):
    return PruneContext({k: v.clone() for k, v in model.state_dict().items()},
                        torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                        torch.Generator().manual_seed(seed))


def test_unstructured_pruning_targets_conv_weights_only():
    model = build_model("cnn4", (1, 28, 28), 10)
    assert prunable(model) == ["0.weight", "3.weight"]
    # an MLP has no conv: its hidden linear layers are pruned, never the output layer
    assert prunable(build_model("mlp", (1, 8, 8), 10)) == ["1.weight", "3.weight"]


def test_imp_prunes_the_globally_smallest_surviving_weights():
    torch.manual_seed(0)
    model = build_model("cnn4", (1, 28, 28), 10)
    config = make_config(prune_rate=0.2)
    mask = dense_mask(model)
    params = dict(model.named_parameters())
    for level in range(1, 4):
        new = PRUNERS.get("imp").prune(config, model, mask, context(model))
        # 20% of the remaining weights go each level
        assert remain_ratio(new) == pytest.approx(0.8 ** level, abs=1e-3)
        # pruned weights stay pruned
        for name in mask:
            assert not (new[name].bool() & ~mask[name].bool()).any()
        # global magnitude: every kept weight is at least as large as every newly pruned one
        kept = torch.cat([params[n].abs()[new[n].bool()] for n in new])
        dropped = torch.cat([params[n].abs()[(mask[n].bool() & ~new[n].bool())] for n in new])
        assert kept.min() >= dropped.max()
        mask = new


def test_keep_largest_handles_ties_exactly():
    scores = {"a": torch.ones(10)}
    mask = keep_largest(scores, {"a": torch.ones(10)}, 0.3)
    assert int(mask["a"].sum()) == 7


def test_random_pruner_is_seeded():
    model = build_model("cnn4", (1, 28, 28), 10)
    config = make_config(prune_rate=0.2)
    a = PRUNERS.get("random").prune(config, model, dense_mask(model), context(model, seed=1))
    b = PRUNERS.get("random").prune(config, model, dense_mask(model), context(model, seed=1))
    c = PRUNERS.get("random").prune(config, model, dense_mask(model), context(model, seed=2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_mask_roundtrip_and_sparsity(tmp_path):
    model = build_model("cnn4", (1, 28, 28), 10)
    mask = dense_mask(model)
    mask["0.weight"].view(-1)[:10] = 0
    save_mask(mask, tmp_path / "mask.pt")
    back = load_mask(tmp_path / "mask.pt")
    assert all(torch.equal(mask[n], back[n]) for n in mask)
    assert layer_sparsity(back)["0.weight"] == pytest.approx(10 / mask["0.weight"].numel())
    assert layer_sparsity(back)["3.weight"] == 0.0


def test_unknown_pruner_lists_choices():
    with pytest.raises(BenchError, match="unknown pruner 'magic'.*imp"):
        PRUNERS.get("magic")
