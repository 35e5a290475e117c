"""Model architectures, registered in ``MODELS`` as ``build(input_shape, num_classes) -> nn.Module``."""
from bench.registry import Registry

MODELS = Registry("model", "bench.models")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int):
    return MODELS.get(name)(tuple(input_shape), num_classes)
