"""The interface every cnnkit model shares (timm's): features, head, classifier and layer groups.

Training, fine-tuning, explanation and export ask the model, never its name: the
classifier is what ``get_classifier`` returns (the layer a new task replaces and
fine-tuning trains first), and ``layer_groups`` says which parameters are early body,
late body and head for discriminative learning rates.
"""

from __future__ import annotations

import abc
import threading

import torch
from torch import nn


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule named ``path`` (as in ``named_modules``) is."""
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


class Network(nn.Module, abc.ABC):
    """A classifier split into a feature extractor and a head that ends in one linear classifier.

    Subclasses set ``num_features`` (channels of the feature map, or width of flat
    features) and define ``forward_features``, ``forward_head`` and ``get_classifier``;
    ``forward``, ``reset_classifier`` and ``layer_groups`` follow from those.
    """

    num_features: int

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) input -> features, (B, num_features, *spatial') or (B, num_features)."""

    @abc.abstractmethod
    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Features -> (B, num_classes) logits."""

    @abc.abstractmethod
    def get_classifier(self) -> nn.Linear:
        """The last linear layer, one output per class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) input -> (B, in_features) the classifier's input: the image's representation.

        Every architecture ends in one linear classifier, so what enters it is the one place
        that means "the model's features" for all of them (pooled, after any hidden head
        layers): similarity search indexes it, and an embedding model returns its own.
        """
        return self.input_of(self.get_classifier(), x)

    def input_of(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run the network on ``x`` (B, ...) and return what ``layer``, one of its modules, received, as (B, F)."""
        captured: list[torch.Tensor] = []
        caller = threading.get_ident()

        def capture(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            # A service embeds on several threads through one model: every thread's hook sees
            # every call, so each keeps only the input of its own thread's call.
            if threading.get_ident() == caller:
                captured.append(args[0])

        hook = layer.register_forward_pre_hook(capture)
        try:
            self(x)
        finally:
            hook.remove()
        return captured[-1].flatten(1)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` outputs."""
        old = self.get_classifier()
        path = next(name for name, module in self.named_modules() if module is old)
        replace_module(self, path, nn.Linear(old.in_features, num_classes))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Early body, late body and head (the classifier), each in forward order, for fine-tuning.

        The body is every parameter but the classifier's, in registration (forward) order,
        cut in two halves by tensor count: layers near the input, whose generic edge and
        texture detectors need the least change, and those near the head. A model with
        more telling stage boundaries may override this.
        """
        head = list(self.get_classifier().parameters())
        heads = {id(parameter) for parameter in head}
        body = [parameter for parameter in self.parameters() if id(parameter) not in heads]
        half = -(-len(body) // 2)
        return [body[:half], body[half:], head]
