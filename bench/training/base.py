"""The training loop every method shares; a method only defines its loss.

The loop owns what the paper fixes for all methods (Appendix A): the optimizer and its lr
decay, the smoothed eps ramp (auto_LiRPA's ``SmoothedScheduler``), gradient clipping, and the
pruning mask, re-applied after every step. Inputs reach the loss already normalized, together
with the L-inf box in normalized coordinates, because normalization stays outside the model
that is bounded.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bench.config import BuildConfig, Hyperparameters
from bench.lirpa_compat import auto_LiRPA  # noqa: F401  (patches before the scheduler import)
from auto_LiRPA.eps_scheduler import SmoothedScheduler
from bench.models.mask import Mask, apply_mask, mask_gradients
from bench.models.normalize import Normalizer


@dataclass
class Batch:
    x: torch.Tensor  # normalized inputs
    y: torch.Tensor
    lower: torch.Tensor  # the eps box, clipped to the valid pixel range, normalized
    upper: torch.Tensor
    eps: float  # the current eps in pixel units
    eps_fraction: float  # eps / final eps: how far the ramp has come (0 before it starts)


class Trainer(ABC):
    """One training method. Subclasses are registered in ``bench.training.TRAINERS``."""

    uses_eps: bool = True  # natural training ignores eps
    # The method's own hyperparameters, which the experiment's hash covers (an instance may
    # replace them, e.g. in a test).
    params: Hyperparameters = Hyperparameters()

    def __init__(self, config: BuildConfig, model: nn.Module, input_shape: tuple[int, ...],
                 num_classes: int, regularizers: list | None = None):
        self.config = config
        self.model = model
        self.input_shape = input_shape
        self.num_classes = num_classes
        # (weight, fn) pairs; fn(trainer, batch) -> scalar tensor. See bench.training.regularizers.
        self.regularizers = regularizers or []

    @staticmethod
    def initialize(model: nn.Module) -> None:
        """Re-initialize a freshly built model before its initial weights are saved (e.g.
        Fast-IBP's initialization). Runs once per run, so every level rewinds to the same
        weights."""

    @abstractmethod
    def loss(self, batch: Batch) -> torch.Tensor: ...

    def regularization(self, batch: Batch) -> torch.Tensor | float:
        return sum(weight * fn(self, batch) for weight, fn in self.regularizers)

    def preactivation_bounds(self, batch: Batch) -> list:
        """Bounds on the inputs of every ReLU for the batch's eps box, as a list of
        ``bench.training.regularizers.NeuronBounds``. By default IBP through auto_LiRPA;
        certified trainers override this to reuse the bounds their loss already computed."""
        from bench.training.regularizers import ibp_preactivation_bounds

        return ibp_preactivation_bounds(self, batch)

    def parameters(self):
        return self.model.parameters()

    def finish(self) -> None:
        """Called after the last epoch: write back anything kept outside ``self.model``."""


@dataclass
class TrainLog:
    epochs: int = 0
    final_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(config: BuildConfig, params) -> torch.optim.Optimizer:
    t = config.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def make_eps_scheduler(config: BuildConfig, batches_per_epoch: int) -> SmoothedScheduler:
    t = config.training
    scheduler = SmoothedScheduler(
        config.properties.eps,
        f"start={t.eps_start_epoch},length={t.eps_length},mid={t.eps_mid}",
    )
    scheduler.set_epoch_length(batches_per_epoch)
    scheduler.train()
    return scheduler


def fit(trainer: Trainer, mask: Mask, train_x: torch.Tensor, train_y: torch.Tensor,
        normalizer: Normalizer, generator: torch.Generator, desc: str = "train",
        progress: bool = True, start_epoch: int = 0, end_epoch: int | None = None,
        on_epoch_end: Callable[[int], None] | None = None) -> TrainLog:
    """Train ``trainer.model`` in place under ``mask`` for epochs ``start_epoch`` up to
    ``end_epoch`` (default the configured epochs). A start past 0 continues the lr decay and the
    eps ramp from there: rewinding to epoch k, or finetuning without resetting them.
    ``on_epoch_end(epoch)`` counts epochs from 1."""
    import time

    settings = trainer.config.training
    eps_max = trainer.config.properties.eps
    model = trainer.model
    n = train_x.shape[0]
    batches = max(1, n // settings.batch_size)  # drop the last partial batch, as the reference does
    optimizer = make_optimizer(trainer.config, list(trainer.parameters()))
    lr_decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.lr_milestones,
                                                    settings.lr_gamma)
    eps_scheduler = make_eps_scheduler(trainer.config, batches)
    for _ in range(start_epoch):
        eps_scheduler.step_epoch(verbose=False)  # replays the skipped epochs' batches
        lr_decay.step()
    log = TrainLog()
    start = time.perf_counter()
    apply_mask(model, mask)
    model.train()
    end_epoch = settings.epochs if end_epoch is None else end_epoch
    epochs = tqdm(range(start_epoch, end_epoch), desc=desc, unit="epoch", disable=not progress,
                  leave=False)
    for epoch in epochs:
        eps_scheduler.step_epoch(verbose=True)
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for b in range(batches):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            x, y = train_x[idx], train_y[idx]
            eps_scheduler.step_batch()
            eps = eps_scheduler.get_eps() if trainer.uses_eps else 0.0
            lower, upper = normalizer.box(x, eps)
            fraction = eps / eps_max if eps_max > 0 else 0.0
            batch = Batch(normalizer(x), y, lower, upper, eps, fraction)
            loss = trainer.loss(batch)
            if trainer.regularizers and batch.eps > 0:
                loss = loss + trainer.regularization(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mask_gradients(model, mask)
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(list(trainer.parameters()), settings.grad_clip)
            optimizer.step()
            apply_mask(model, mask)
            total += float(loss.detach())
        lr_decay.step()
        log.losses.append(total / batches)
        epochs.set_postfix(loss=f"{log.losses[-1]:.3f}", eps=f"{eps_scheduler.get_eps():.4f}")
        if on_epoch_end is not None:
            trainer.finish()  # the callback may snapshot the model: bring it up to date
            on_epoch_end(epoch + 1)
    trainer.finish()
    model.eval()
    log.epochs = len(log.losses)
    log.final_loss = log.losses[-1] if log.losses else float("nan")
    log.seconds = time.perf_counter() - start
    return log


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalizer: Normalizer,
             batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        logits = model(normalizer(x[i:i + batch_size]))
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(1, x.shape[0])
