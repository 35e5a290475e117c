"""SNIP (Lee et al. 2018; paper 3.4.1): connection sensitivity at initialization.

SNIP scores a connection by how much the loss reacts to removing it, ``|dL/dc|`` for a mask
variable ``c`` multiplying the weight, which equals ``|g * w|``. Lee et al. evaluate it once,
before training, on one minibatch with the natural loss; here every level evaluates it at the
weights the level rewinds to (``PruneContext.initial_state``) under the current mask, so the
trained weights play no part. Of the weights still kept, the ``prune_rate`` fraction with the
lowest sensitivity is pruned, globally across layers (Lee et al. rank all layers together).

The paper's own code (VITA-Group/CertifiedPruning, ``pruner.py``) instead takes the mask
gradient of the *trained* network under the certified loss, which is the Taylor criterion;
this module keeps SNIP's published definition so that SNIP and Taylor pruning differ.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch.nn as nn

from bench.config import BuildConfig, Hyperparameters, param
from bench.pruning import pruner
from bench.pruning.base import PruneContext, keep_largest
from bench.models.mask import Mask, apply_mask
from bench.pruning.taylor import cross_entropy_loss, gradient_saliency, saliency_batches


@dataclass(frozen=True)
class SnipParams(Hyperparameters):
    batches: int = param(1, "Minibatches (of --batch-size) the sensitivity is averaged over "
                         "(Lee et al.: one).")


SNIP = SnipParams()


@pruner("snip", params=SNIP)
def prune(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
          context: PruneContext) -> Mask:
    # Only the architecture of the trained model is used: every value, BatchNorm statistics
    # included, is overwritten by the initialization.
    model = copy.deepcopy(trained_model)
    model.load_state_dict(context.initial_state)
    apply_mask(model, current_mask)
    batches = saliency_batches(context, config.training.batch_size, SNIP.batches)
    scores = gradient_saliency(model, current_mask, batches, cross_entropy_loss)
    return keep_largest(scores, current_mask, config.pruning.prune_rate)
