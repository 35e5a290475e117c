"""prune-bench: does pruning improve the certified robustness of ReLU networks?"""

__version__ = "0.1.0"
