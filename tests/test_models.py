import pytest
import torch
import torch.nn as nn

from bench.errors import BenchError
from bench.models import MODELS, build_model


def conv_specs(model):
    return [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
            for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_cnn7_matches_table_1_for_cifar():
    model = build_model("cnn7", (3, 32, 32), 10)
    assert conv_specs(model) == [(3, 32, 3, 1), (32, 64, 4, 2), (64, 64, 3, 1),
                                 (64, 128, 4, 2), (128, 128, 4, 2)]
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(2048, 100), (100, 10)]
    # every conv is followed by BatchNorm then ReLU
    layers = list(model)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d) and isinstance(layers[i + 2], nn.ReLU)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_cnn7_one_channel_variant_has_fc_1152():
    model = build_model("cnn7", (1, 28, 28), 10)
    assert conv_specs(model)[0][0] == 1
    first_fc = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_fc.in_features == 1152


@pytest.mark.parametrize("name", ["cnn4", "mlp"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_small_models_run(name, shape):
    assert build_model(name, shape, 10)(torch.zeros(3, *shape)).shape == (3, 10)


def test_unknown_model_lists_choices():
    with pytest.raises(BenchError, match="unknown model 'resnet999'.*cnn7"):
        MODELS.get("resnet999")
