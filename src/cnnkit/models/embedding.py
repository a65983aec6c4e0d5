"""An embedding network: any registered backbone, a linear projection, and a cosine classifier over class proxies.

This is the normalised softmax of Zhai & Wu, "Classification is a Strong Baseline for Deep
Metric Learning" (BMVC 2019): the backbone's features (what enters its classifier) are
projected to ``embed_dim`` and L2-normalised, and the logits are the cosine similarities
to one learnable proxy per class, divided by a temperature of 0.2. Cross-entropy on those
logits pulls each embedding towards its class proxy and away from the others, so images
of one class gather on the sphere, which is what similarity search needs. It was chosen over
pair and triplet losses (no mining, no batch-composition rules: the training loop and its
sampler stay as they are) and over ArcFace (one hyperparameter fewer; Zhai & Wu match it
on CUB, Cars and SOP), and it keeps the classifier interface: the
proxies are the model's ``get_classifier()``, a :class:`CosineClassifier`.

``forward`` returns the scaled cosine logits (B, K), so training is classification;
``forward_embedding`` returns the L2-normalised vector similarity search indexes. Which
vector is the ``embedding`` choice, read ever further below the loss, because with five
training classes the loss pulls the projected vectors onto five proxies, and that collapse
is what hurts classes never seen (Chen et al. 2020, SimCLR: the layer before the head
transfers better; Kornblith et al. 2021: the layers nearer the loss collapse the most):

- ``"pooled"`` (what ``cnnkit train --task embed`` builds): the backbone's convolutional
  features as its head pools or flattens them, before any hidden head layer (what enters
  the first linear layer after the last convolution). A backbone without a hidden layer
  (EfficientNet-Lite0, the classic zoo, the default ``convnet`` below 10,000 images) reads
  the same vector as ``"features"``.
- ``"features"``: the backbone's features, what its classifier took, after any hidden layer.
- ``"projection"``: the projected vector, width ``embed_dim``: how runs trained before
  these choices existed rebuild.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from cnnkit.errors import CnnkitError
from cnnkit.models.network import Network, replace_module
from cnnkit.models.registry import create_model, register_model

# Zhai & Wu's is 0.05; 0.2 pulls less hard onto the proxies (Kornblith et al. 2021: less class collapse transfers
# better). Chosen on the dev setting (Fashion-MNIST, 3 of the seen classes trained, the other 2 searched; 3 epochs,
# 6000 images, seeds 0 1): Recall@1 0.9632 ± 0.0011 at 0.2 against 0.9603 ± 0.0046 at 0.05, never the test classes.
TEMPERATURE = 0.2
EMBED_DIM = 512  # Zhai & Wu's width; digits, held-out R@1, one seed: 0.84 at 128, 0.90 at 512, 0.86 at 2048
EMBEDDINGS = ("pooled", "features", "projection")  # what forward_embedding returns (the module docstring)
# New runs' choice; checkpoints without one rebuild as "projection". On the dev setting (Fashion-MNIST, 3 of the seen
# classes trained on all their images, so the default convnet has its hidden layer; the other 2 searched; 3 epochs,
# seeds 0 1; docs/benchmarks.md): Recall@1 0.9663 ± 0.0025, MAP@R 0.733 for "pooled", 0.9557 ± 0.0018, 0.718 "features".
EMBEDDING = "pooled"


class CosineClassifier(nn.Linear):
    """Cosine similarity of the L2-normalised input (B, in_features) to each normalised proxy row, over a temperature.

    A :class:`~torch.nn.Linear` without bias whose weight (K, in_features) holds the class
    proxies, so code that asks a model for its classifier (fine-tuning, summaries) needs
    no change.

    Args:
        in_features: Width of the embedding.
        out_features: Number of classes (proxies).
        temperature: Divides the cosines; lower makes the softmax sharper. Defaults to 0.2.

    Example:
        >>> CosineClassifier(4, 3)(torch.randn(2, 4)).abs().max() <= 1 / 0.2
        tensor(True)
    """

    def __init__(self, in_features: int, out_features: int, temperature: float = TEMPERATURE) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cosines = functional.linear(functional.normalize(x, dim=1), functional.normalize(self.weight, dim=1))
        return cosines / self.temperature  # (B, K)


class EmbeddingNetwork(Network):
    """``backbone`` with its classifier replaced by a projection to ``embed_dim`` and a :class:`CosineClassifier`.

    Args:
        backbone: A :class:`Network`; its classifier becomes an identity, so its head ends in
            the features that classifier took (pooled, after any hidden head layers).
        num_classes: Classes trained on, one proxy each.
        embed_dim: Width of the embedding. Defaults to 512.
        temperature: Of the cosine logits. Defaults to 0.2.
        embedding: What :meth:`forward_embedding` returns: ``"pooled"``, the backbone's
            pooled convolutional features before any hidden head layer; ``"features"``, what
            its classifier took (B, F); or ``"projection"``, the projected vector (B,
            embed_dim). Defaults to ``"projection"``, how older runs rebuild.

    Example:
        >>> net = EmbeddingNetwork(create_model("convnet", 10, 1, 28), num_classes=5, embed_dim=16)
        >>> net.forward_embedding(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        backbone: Network,
        num_classes: int,
        embed_dim: int = EMBED_DIM,
        temperature: float = TEMPERATURE,
        embedding: str = "projection",
    ) -> None:
        if embedding not in EMBEDDINGS:
            raise CnnkitError(f"embedding {embedding!r} is not one of {', '.join(EMBEDDINGS)}; pick one of those")
        super().__init__()
        old = backbone.get_classifier()
        path = next(name for name, module in backbone.named_modules() if module is old)
        replace_module(backbone, path, nn.Identity())
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.projection = nn.Linear(old.in_features, embed_dim)
        self.classifier = CosineClassifier(embed_dim, num_classes, temperature)
        self.embedding = embedding

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.projection(self.backbone.forward_head(x)))  # (B, K) scaled cosines

    def get_classifier(self) -> CosineClassifier:
        return self.classifier

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) input -> (B, D) L2-normalised: the ``embedding`` choice's vector (module docstring)."""
        hidden = pooled_layer(self.backbone) if self.embedding == "pooled" else None
        if hidden is not None:
            return functional.normalize(self.backbone.input_of(hidden, x), dim=1)
        features = self.backbone(x)  # (B, F) pooled, the backbone's classifier an identity
        return functional.normalize(self.projection(features) if self.embedding == "projection" else features, dim=1)

    def reset_classifier(self, num_classes: int) -> None:
        """New proxies for ``num_classes`` classes, at the same width and temperature."""
        old = self.classifier
        self.classifier = CosineClassifier(old.in_features, num_classes, old.temperature)


def pooled_layer(backbone: nn.Module) -> nn.Linear | None:
    """The backbone's first linear layer after its last convolution (a hidden head layer), or None if it has none.

    Modules register in forward order in every cnnkit architecture, so this is the first
    layer of the head that is not the (replaced) classifier.
    """
    found, convolved = None, False
    for module in backbone.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            found, convolved = None, True
        elif isinstance(module, nn.Linear) and convolved and found is None:
            found = module
    return found  # an MLP has no convolution: its features are all hidden layers


@register_model
def embedding(
    num_classes: int,
    in_channels: int = 3,
    img_size: int = 32,
    backbone: str = "convnet",
    backbone_kwargs: dict[str, Any] | None = None,
    embed_dim: int = EMBED_DIM,
    temperature: float = TEMPERATURE,
    embedding: str = "projection",
) -> EmbeddingNetwork:
    """What ``cnnkit train --task embed`` trains: a registered ``backbone`` under a normalised-softmax head."""
    body = create_model(backbone, num_classes, in_channels, img_size, **(backbone_kwargs or {}))
    return EmbeddingNetwork(body, num_classes, embed_dim, temperature, embedding)
