import pytest
import torch

from bench.config import make_config
from bench.errors import BenchError
from bench.models import build_model
from bench.models.mask import dense_mask
from bench.training import TRAINERS
from bench.models.normalize import Normalizer
from bench.training.base import accuracy, fit

from helpers import ibp_verified_accuracy


def train(digits, training, model_name="cnn4", mask_fn=None, **options):
    options = {"epochs": 4, **options}
    config = make_config(dataset="digits", model=model_name, training=training, eps=0.05,
                         eps_start_epoch=1, eps_length=2, batch_size=64, **options)
    torch.manual_seed(config.seed)
    model = build_model(model_name, digits.input_shape, digits.num_classes)
    mask = dense_mask(model)
    if mask_fn:
        mask_fn(mask)
    trainer = TRAINERS.get(training)(config, model, digits.input_shape, digits.num_classes)
    normalizer = Normalizer(digits.mean, digits.std)
    fit(trainer, mask, digits.train_x, digits.train_y, normalizer,
        torch.Generator().manual_seed(config.seed), progress=False)
    return model, mask, normalizer


def test_crown_ibp_batchnorm_statistics_reach_the_model(digits):
    torch.manual_seed(0)
    before = build_model("cnn4", digits.input_shape, 10)[1].running_mean.clone()
    model, _, _ = train(digits, "crown-ibp")
    assert not torch.allclose(model[1].running_mean, before)
    assert torch.all(model[1].running_var > 0)


@pytest.mark.parametrize("training", ["natural", "crown-ibp"])
def test_pruned_weights_stay_zero_and_runs_are_reproducible(digits, training):
    def prune_half(mask):
        mask["0.weight"].view(-1)[::2] = 0

    model_a, mask, _ = train(digits, training, mask_fn=prune_half)
    model_b, _, _ = train(digits, training, mask_fn=prune_half)
    assert torch.all(model_a[0].weight[mask["0.weight"] == 0] == 0)
    assert torch.any(model_a[0].weight[mask["0.weight"] == 1] != 0)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name


def test_certified_training_certifies_more_than_natural_training(digits):
    x, y = digits.test_x[:200], digits.test_y[:200]
    natural, _, normalizer = train(digits, "natural", model_name="mlp", lr=3e-3, epochs=15)
    certified, _, _ = train(digits, "crown-ibp", model_name="mlp", lr=3e-3, epochs=15)
    assert accuracy(certified, x, y, normalizer) > 0.5
    assert ibp_verified_accuracy(certified, x, y, normalizer, 0.05) > \
        ibp_verified_accuracy(natural, x, y, normalizer, 0.05) + 0.1


def test_unknown_training_method():
    with pytest.raises(BenchError, match="unknown training method 'magic'"):
        TRAINERS.get("magic")


def test_crown_ibp_natural_steps_on_the_model_match_steps_through_auto_lirpa(digits):
    """Before the eps ramp, CROWN-IBP trains the model itself (cheaper than auto_LiRPA's
    graph): the same parameters and BatchNorm statistics as natural steps through the
    bounded loss, also after the bounded module takes over at eps > 0."""
    from bench.training.base import Batch

    config = make_config(dataset="digits", model="cnn4", training="crown-ibp", eps=0.05)
    normalizer = Normalizer(digits.mean, digits.std)
    shape, classes = digits.input_shape, digits.num_classes
    torch.manual_seed(0)
    start = build_model("cnn4", shape, classes).state_dict()
    batches = []
    for k, eps in enumerate((0.0, 0.0, 0.0, 0.02)):
        x, y = digits.train_x[64 * k:64 * (k + 1)], digits.train_y[64 * k:64 * (k + 1)]
        lower, upper = normalizer.box(x, eps)
        batches.append(Batch(normalizer(x), y, lower, upper, eps, eps / 0.05))
    trained = []
    for through_lirpa in (False, True):
        model = build_model("cnn4", shape, classes)
        model.load_state_dict(start)
        model.train()
        trainer = TRAINERS.get("crown-ibp")(config, model, shape, classes)
        # SGD, not Adam: Adam scales the rounding noise in the (zero) gradient of a conv bias
        # that feeds BatchNorm up to full-size steps, differently on each path.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for batch in batches:
            if through_lirpa and batch.eps == 0:
                loss = torch.log(trainer.bounded(batch.x, batch.y)).mean()
            else:
                loss = trainer.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        trainer.finish()
        trained.append(model.state_dict())
    on_model, through_lirpa = trained
    assert not torch.equal(on_model["1.running_mean"], start["1.running_mean"])
    for name, value in on_model.items():
        if name.endswith("num_batches_tracked"):
            continue  # counted only on the model (BN uses its momentum, not this count)
        torch.testing.assert_close(value, through_lirpa[name], rtol=1e-4, atol=1e-5,
                                   msg=name)
