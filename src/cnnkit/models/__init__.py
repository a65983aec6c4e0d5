"""Where tensors are transformed: the model registry and its architectures."""

from cnnkit.models import classic as _classic  # noqa: F401
from cnnkit.models import convnet as _convnet  # noqa: F401  (registers the builder)
from cnnkit.models import efficientnet_lite as _efficientnet_lite  # noqa: F401
from cnnkit.models import mlp as _mlp  # noqa: F401
from cnnkit.models import spec as _spec  # noqa: F401
from cnnkit.models.convnet import convnet_kwargs_for
from cnnkit.models.registry import ModelSpec, build, create_model, list_models, register_model

__all__ = ["ModelSpec", "build", "create_model", "kwargs_for_data", "list_models", "register_model"]


def kwargs_for_data(name: str, train_images: int) -> dict[str, int]:
    """Builder arguments that follow from the training set's size; only the default ConvNet has one (its head)."""
    return convnet_kwargs_for(train_images) if name == "convnet" else {}
