"""cnnkit: from labelled images to a trained, understood, deployable CNN.

Example:
    >>> import cnnkit
    >>> run = cnnkit.train(data="digits", epochs=5)
    >>> classifier = cnnkit.load(run.dir)
    >>> classifier.predict(["seven.png"])[0].label

Public names are imported on first use, so ``cnnkit --help`` does not wait for PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

_EXPORTS = {
    "Classifier": "cnnkit.deploy.torch_runtime",
    "CnnkitError": "cnnkit.errors",
    "Prediction": "cnnkit.tasks.classify.records",
    "Run": "cnnkit.training.runlog",
    "TrainConfig": "cnnkit.config",
    "create_model": "cnnkit.models",
    "evaluate": "cnnkit.tasks.classify.evaluate",
    "list_models": "cnnkit.models",
    "load": "cnnkit.deploy.load",
    "load_data": "cnnkit.data",
    "register_model": "cnnkit.models",
    "train": "cnnkit.training.fit",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, "fit" if name == "train" else name)


def __dir__() -> list[str]:
    return __all__
