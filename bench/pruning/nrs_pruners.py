"""IMP+RS and IMP+NRS (paper 3.4.2 and 4.1.2): magnitude pruning (IMP) of networks trained
with the ReLU-stability (RS) or the normalized ReLU-stability (NRS) regularizer.

The pruning step is IMP's; what differs is the training, which the pipeline derives from the
``regularizer`` declared here (see ``bench.training.regularizers``).
"""
from __future__ import annotations

from bench.pruning import imp, pruner

# The same prune function as IMP, registered under the names that also select the training
# regularizer.
pruner("imp+rs", regularizer="rs")(imp.prune)
pruner("imp+nrs", regularizer="nrs")(imp.prune)
