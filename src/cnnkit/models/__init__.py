"""Where tensors are transformed: the model registry, its architectures and their facts."""

from cnnkit.models import classic as _classic  # noqa: F401  (importing a module registers its builders)
from cnnkit.models import convnet as _convnet  # noqa: F401
from cnnkit.models import detection as _detection  # noqa: F401
from cnnkit.models import detector as _detector  # noqa: F401
from cnnkit.models import efficientnet_lite as _efficientnet_lite  # noqa: F401
from cnnkit.models import embedding as _embedding  # noqa: F401
from cnnkit.models import gan as _gan  # noqa: F401
from cnnkit.models import kws as _kws  # noqa: F401
from cnnkit.models import mlp as _mlp  # noqa: F401
from cnnkit.models import series as _series  # noqa: F401
from cnnkit.models import spec as _spec  # noqa: F401
from cnnkit.models.registry import (
    ModelSpec,
    build,
    create_model,
    kwargs_for_data,
    list_models,
    model_entry,
    register_model,
)

__all__ = ["ModelSpec", "build", "create_model", "kwargs_for_data", "list_models", "model_entry", "register_model"]
