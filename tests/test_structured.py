"""Channel pruning: Network Slimming, StructLTH, structured masks and physically compact models."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from bench.config import make_config
from bench.errors import BenchError
from bench.models import build_model
from bench.pruning import PRUNERS
from bench.pruning.base import PruneContext
from bench.models.mask import apply_mask, dense_mask
from bench.models.compact import (channel_remain_ratio, compact_model, conv_bn_pairs,
                                  exportable_model, kept_channels, model_stats,
                                  _infer_input_shape)
from bench.pruning.structured import channel_mask


def context(model):
    return PruneContext({k: v.clone() for k, v in model.state_dict().items()},
                        torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                        torch.Generator().manual_seed(0))


def pruned_set(keep):
    return {(name, c) for name, k in keep.items() for c in torch.nonzero(~k).flatten().tolist()}


def randomize_bn(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrongly removed
    channel or a constant leaking through BatchNorm would show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))


def test_conv_bn_pairs_follow_the_models():
    assert conv_bn_pairs(build_model("cnn4", (1, 28, 28), 10)) == [("0", "1"), ("3", "4")]
    assert conv_bn_pairs(build_model("cnn7", (3, 32, 32), 10)) == [
        ("0", "1"), ("3", "4"), ("6", "7"), ("9", "10"), ("12", "13")]
    assert conv_bn_pairs(build_model("mlp", (1, 8, 8), 10)) == []


def test_channel_mask_covers_conv_and_batchnorm_of_each_channel():
    model = build_model("cnn4", (1, 28, 28), 10)
    keep = {"0": torch.tensor([True] * 7 + [False]), "3": torch.ones(16, dtype=torch.bool)}
    mask = channel_mask(model, keep)
    assert set(mask) == {"0.weight", "0.bias", "1.weight", "1.bias",
                         "3.weight", "3.bias", "4.weight", "4.bias"}
    assert mask["0.weight"][7].sum() == 0 and mask["0.weight"][:7].min() == 1
    assert mask["0.bias"][7] == 0 and mask["1.weight"][7] == 0 and mask["1.bias"][7] == 0
    assert all(bool(mask[n].all()) for n in ("3.weight", "3.bias", "4.weight", "4.bias"))
    assert pruned_set(kept_channels(model, mask)) == {("0", 7)}
    assert channel_remain_ratio(model, mask) == pytest.approx(23 / 24)
    # the conv-weights-only mask of the dense level 0 keeps every channel
    assert pruned_set(kept_channels(model, dense_mask(model))) == set()


def test_slim_prunes_the_smallest_gammas_globally_and_keeps_pruned_channels_pruned():
    model = build_model("cnn4", (1, 28, 28), 10)
    # 24 distinct |gamma|s in a random order across both layers, some negative
    g = torch.Generator().manual_seed(3)
    values = (torch.randperm(24, generator=g).float() + 1) / 10
    values *= torch.where(torch.rand(24, generator=g) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        model[1].weight.copy_(values[:8])
        model[4].weight.copy_(values[8:])
    names = [("0", c) for c in range(8)] + [("3", c) for c in range(16)]
    by_gamma = [names[i] for i in torch.argsort(values.abs()).tolist()]

    slim = PRUNERS.get("slim")
    assert slim.regularizer == "slim" and slim.structured
    mask = slim.prune(make_config(prune_rate=0.11), model, dense_mask(model), context(model))
    # round(0.11 * 24) = 3 channels go: exactly the three smallest |gamma|
    assert pruned_set(kept_channels(model, mask)) == set(by_gamma[:3])
    assert channel_remain_ratio(model, mask) == pytest.approx(21 / 24)

    # next level, on the masked model: round(0.11 * 21) = 2 more, the old ones stay pruned
    apply_mask(model, mask)
    mask2 = slim.prune(make_config(prune_rate=0.11), model, mask, context(model))
    assert pruned_set(kept_channels(model, mask2)) == set(by_gamma[:5])

    # prune_rate unset: the structured default 0.11 applies
    default = slim.prune(make_config(), model, dense_mask(model), context(model))
    assert len(pruned_set(kept_channels(model, default))) == 3


def test_slim_keeps_at_least_one_channel_per_layer():
    model = build_model("cnn4", (1, 28, 28), 10)
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(1, 9) / 1000)  # every gamma of layer 0 is tiny
        model[4].weight.copy_(torch.arange(1, 17).float())
    mask = PRUNERS.get("slim").prune(make_config(prune_rate=0.9), model, dense_mask(model),
                                     context(model))
    keep = kept_channels(model, mask)
    # round(0.9 * 24) = 22 go; layer 0 keeps its largest gamma, layer 3 its largest
    assert torch.nonzero(keep["0"]).flatten().tolist() == [7]
    assert torch.nonzero(keep["3"]).flatten().tolist() == [15]


def test_structured_pruners_need_convolutions():
    model = build_model("mlp", (1, 8, 8), 10)
    for name in ("slim", "structlth"):
        with pytest.raises(BenchError, match="no convolution"):
            PRUNERS.get(name).prune(make_config(), model, dense_mask(model), context(model))


def structlth_model():
    """cnn4 whose channel ranking by dense magnitude and by IMP-kept magnitude disagree.

    Channel 0 of conv "0" has 16 weights of 0.1 (total 1.6); channel 5 of conv "3" has 128
    weights of 0.02 (total 2.56); every other weight is in [0.5, 1]. The IMP step at rate 0.06
    marks round(0.06 * 2176) = 131 weights: the 128 of channel 5 and 3 of channel 0, so after it
    channel 5 has nothing left and channel 0 still has 1.3."""
    model = build_model("cnn4", (1, 28, 28), 10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in (model[0], model[3]):
            sign = torch.where(torch.rand(conv.weight.shape, generator=g) < 0.5, -1.0, 1.0)
            conv.weight.copy_(sign * (0.5 + 0.5 * torch.rand(conv.weight.shape, generator=g)))
        model[0].weight[0] = 0.1
        model[3].weight[5] = -0.02
    return model


def test_structlth_ranks_channels_by_magnitude_left_after_the_imp_step():
    model = structlth_model()
    dense_totals = {"0": model[0].weight.abs().flatten(1).sum(1),
                    "3": model[3].weight.abs().flatten(1).sum(1)}
    # ranking by dense magnitude would have pruned channel 0 of conv "0"
    assert dense_totals["0"][0] < dense_totals["3"][5] < min(t.min() for t in (
        dense_totals["0"][1:], torch.cat([dense_totals["3"][:5], dense_totals["3"][6:]])))
    mask = PRUNERS.get("structlth").prune(make_config(prune_rate=0.06), model,
                                          dense_mask(model), context(model))
    # round(0.06 * 24) = 1 channel goes: the one the IMP step emptied
    assert pruned_set(kept_channels(model, mask)) == {("3", 5)}


def test_structlth_refills_kept_channels_and_zeroes_pruned_ones():
    model = structlth_model()
    structlth = PRUNERS.get("structlth")
    assert structlth.structured and structlth.default_rate == 0.11
    mask = structlth.prune(make_config(), model, dense_mask(model), context(model))  # rate 0.11
    keep = kept_channels(model, mask)
    # round(0.11 * 24) = 3 channels
    assert len(pruned_set(keep)) == 3 and ("3", 5) in pruned_set(keep)
    for conv, bn in (("0", "1"), ("3", "4")):
        for name in (f"{conv}.weight", f"{conv}.bias", f"{bn}.weight", f"{bn}.bias"):
            rows = mask[name].reshape(len(keep[conv]), -1)
            # kept channels are fully dense again (the IMP-marked weights of channel 0 of conv
            # "0" came back); pruned channels are zero everywhere, BatchNorm included
            assert bool(rows[keep[conv]].all()), name
            assert not bool(rows[~keep[conv]].any()), name
    # the next level starts from the structured mask: pruned channels stay pruned
    apply_mask(model, mask)
    mask2 = structlth.prune(make_config(), model, mask, context(model))
    keep2 = kept_channels(model, mask2)
    assert pruned_set(keep) < pruned_set(keep2)
    assert len(pruned_set(keep2)) == 3 + round(0.11 * 21)


def test_apply_mask_restores_zeros_of_pruned_channels_after_a_step():
    model = build_model("cnn4", (1, 28, 28), 10)
    keep = {"0": torch.tensor([True, False] * 4), "3": torch.tensor([True] * 15 + [False])}
    mask = channel_mask(model, keep)
    apply_mask(model, mask)
    with torch.no_grad():  # a fake optimizer step moves every parameter
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    apply_mask(model, mask)
    for conv, bn in (("0", "1"), ("3", "4")):
        pruned = ~keep[conv]
        for name in (f"{conv}.weight", f"{conv}.bias", f"{bn}.weight", f"{bn}.bias"):
            assert not bool(dict(model.named_parameters())[name][pruned].any()), name
    # so each pruned channel outputs exactly zero after BatchNorm, in train mode too
    outputs = {}
    model[1].register_forward_hook(lambda m, i, o: outputs.__setitem__("1", o))
    model[4].register_forward_hook(lambda m, i, o: outputs.__setitem__("4", o))
    model.train()(torch.rand(4, 1, 28, 28))
    assert not bool(outputs["1"][:, ~keep["0"]].any())
    assert not bool(outputs["4"][:, ~keep["3"]].any())


CASES = [("cnn4", (1, 28, 28)), ("cnn7", (3, 32, 32))]


def masked_model(name, input_shape, seed=0):
    """A model with 1 to 3 channels of every conv layer (the last included) pruned by mask."""
    torch.manual_seed(seed)
    model = build_model(name, input_shape, 10)
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for conv_name, _ in conv_bn_pairs(model):
        out_channels = dict(model.named_modules())[conv_name].out_channels
        k = torch.ones(out_channels, dtype=torch.bool)
        k[torch.randperm(out_channels, generator=g)[:1 + seed % 3 + len(keep) % 2]] = False
        keep[conv_name] = k
    mask = channel_mask(model, keep)
    apply_mask(model, mask)
    return model.eval(), mask, keep


@pytest.mark.parametrize("name,input_shape", CASES)
def test_compact_model_removes_channels_and_computes_the_same_function(name, input_shape):
    model, mask, keep = masked_model(name, input_shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _infer_input_shape(model) == input_shape
    compact = compact_model(model, mask)
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not compact.training

    modules = dict(compact.named_modules())
    pairs = conv_bn_pairs(model)
    in_channels = input_shape[0]
    for conv_name, bn_name in pairs:
        kept = int(keep[conv_name].sum())
        conv, bn = modules[conv_name], modules[bn_name]
        assert (conv.in_channels, conv.out_channels) == (in_channels, kept)
        assert conv.weight.shape[:2] == (kept, in_channels) and conv.bias.shape == (kept,)
        assert bn.num_features == kept and bn.running_mean.shape == (kept,)
        in_channels = kept
    first_linear = next(m for m in compact.modules() if isinstance(m, nn.Linear))
    dense_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    last_conv = dict(model.named_modules())[pairs[-1][0]]
    spatial = dense_linear.in_features // last_conv.out_channels
    assert first_linear.in_features == in_channels * spatial
    assert first_linear.out_features == dense_linear.out_features
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())

    x = torch.rand(8, *input_shape)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), atol=1e-5, rtol=0)
    # an explicit input shape gives the same model
    explicit = compact_model(model, mask, input_shape)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), compact(x), atol=0, rtol=0)


def test_compact_model_keeps_training_flags_and_frozen_parameters():
    model, mask, _ = masked_model("cnn4", (1, 28, 28))
    model.train()
    model[0].requires_grad_(False)
    compact = compact_model(model, mask)
    assert compact.training and all(m.training for m in compact.modules())
    assert not compact[0].weight.requires_grad and compact[3].weight.requires_grad


def test_compact_model_refuses_masks_whose_channels_do_not_output_zero():
    model = build_model("cnn4", (1, 28, 28), 10)
    # a conv-weights-only mask with a whole row zero: BatchNorm's beta would still pass on
    mask = dense_mask(model)
    mask["0.weight"][2] = 0
    with pytest.raises(ValueError, match="no entry for 1.weight, 1.bias"):
        compact_model(model, mask)
    everything = channel_mask(model, {"0": torch.zeros(8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="prunes every channel"):
        compact_model(model, everything)


def onnx_file(model, input_shape, path):
    torch.onnx.export(model, (torch.zeros(1, *input_shape),), str(path), dynamo=False,
                      opset_version=13, input_names=["input"], output_names=["output"])
    size = sum(numpy_helper.to_array(t).size for t in onnx.load(str(path)).graph.initializer)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), size


@pytest.mark.parametrize("name,input_shape", CASES)
def test_compact_onnx_is_smaller_and_gives_the_same_outputs(name, input_shape, tmp_path):
    model, mask, _ = masked_model(name, input_shape, seed=1)
    compact = compact_model(model, mask)
    dense_session, dense_size = onnx_file(model, input_shape, tmp_path / "dense.onnx")
    compact_session, compact_size = onnx_file(compact, input_shape, tmp_path / "compact.onnx")
    assert compact_size < dense_size
    for _ in range(4):
        x = torch.rand(1, *input_shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got_dense = dense_session.run(None, {"input": x.numpy()})[0]
        got_compact = compact_session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got_dense, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_compact, expected, atol=1e-5, rtol=0)


def test_exportable_model_and_stats():
    model, mask, keep = masked_model("cnn4", (1, 28, 28))
    assert exportable_model(model, mask, structured=False) is model
    compact = exportable_model(model, mask, structured=True)
    assert compact is not model
    dense_stats = model_stats(model, (1, 28, 28))
    compact_stats = model_stats(compact, (1, 28, 28))
    assert dense_stats["parameters"] == sum(p.numel() for p in model.parameters())
    assert dense_stats["nonzero_parameters"] < dense_stats["parameters"]
    assert compact_stats["parameters"] < dense_stats["parameters"]
    assert compact_stats["flops"] < dense_stats["flops"]
    # the first conv's MACs alone: out_channels x in_channels x 4 x 4 kernel x 14 x 14 outputs
    assert dense_stats["flops"] > 8 * 1 * 16 * 14 * 14
