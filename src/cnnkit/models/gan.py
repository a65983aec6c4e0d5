"""``dcgan``: a class-conditional DCGAN-family generator and discriminator, and the one way noise and pixels meet it.

A :class:`ConditionalGAN` holds three networks: ``generator`` (trained), ``generator_ema``
(an exponential moving average of the generator's weights: what sampling, export and the
quality figures use) and ``discriminator``. ``model(noise, labels)`` runs the EMA generator,
so an exported or loaded model is the one that makes the images.

Shapes: noise (B, latent_dim) float32 and labels (B,) int64 in [0, K) -> images (B, C, H, W)
float32 in [-1, 1]; ``discriminator(images, labels) -> (B,)`` scores (higher: more real).

Loss and stabilisers, and why (the trainer in ``cnnkit.training.generate`` applies the loss):

- hinge loss (Lim & Ye 2017; SNGAN, BigGAN): the discriminator stops pushing on samples it
  already scores beyond the margin, so its gradients to the generator stay bounded; with
  spectral norm it is the combination Miyato et al. 2018 found most stable across settings.
- spectral norm on every discriminator weight but the class embedding (Miyato et al. 2018):
  the discriminator is 1-Lipschitz per layer, so it cannot become sharp enough to starve the
  generator of gradient, at the cost of one power iteration per layer and step (no gradient
  penalty's second backward). Left off the embedding, the digits' best Fréchet distance fell
  from 285 to 221 and recall rose from 0.08 to 0.21 (40 epochs, otherwise the defaults).
- projection discriminator (Miyato & Koyama 2018): the class enters as the inner product of a
  class embedding with the pooled features, ``linear(h) + <embed(y), h>``, which conditions
  far better than concatenating a one-hot and needs no auxiliary classifier loss (AC-GAN's
  tendency to generate only easily classified images).
- the class in the generator twice: a class embedding beside the noise at its input (Mirza &
  Osindero 2014), which conditions from the first steps, and class-conditional batch norm
  (de Vries et al. 2017; BigGAN), whose per-class gains and biases shape each resolution.
- the batch's spread as one more discriminator channel at 4x4 (minibatch standard deviation,
  Karras et al. 2018), so a generator that makes one image per class can be told apart.
- EMA of the generator's weights (Karras et al. 2018; Yazici et al. 2019): averaging the
  oscillating iterates gives visibly steadier, better samples for free at inference; its batch
  norms' statistics are measured for the averaged weights (:meth:`ConditionalGAN.recompute_ema_statistics`).

Layout (DCGAN, Radford et al. 2016): a linear layer makes a 4x4 map, stride-2 transposed
convolutions double it to ``img_size`` (a power of two, 8 to 128: the 8x8 digits, 28 px
Fashion-MNIST resized to 32); the discriminator (SNGAN's standard CNN) has a 3x3 convolution
at each size and a stride-2 4x4 one that halves it, back to 4x4.
Channels are ``width`` at full resolution, doubling per halving up to ``8 * width``. ``cnnkit
train`` picks the width by image side and records it (:func:`cnnkit.tasks.generate.default_width`);
the builder's own default, 64, is what checkpoints written without a recorded width were trained with.
``forward`` uses only Gemm, Gather, Concat, BatchNormalization, ConvTranspose, Conv, Relu and
Tanh, all in ONNX opset 17.

Example:
    >>> gan = create_model("dcgan", num_classes=10, in_channels=1, img_size=8).eval()
    >>> gan(latent_noise(4, gan.latent_dim, seed=0), torch.arange(4)).shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from cnnkit.errors import CnnkitError
from cnnkit.models.registry import register_model

SIZES = tuple(2**power for power in range(3, 8))  # 8 .. 128: img_size a dcgan is built for
BASE = 4  # side of the generator's first map and the discriminator's last
MAX_WIDTH_FACTOR = 8  # channels stop doubling at 8 * width (DCGAN's deepest layer)


def latent_noise(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The one way noise is drawn: (count, latent_dim) float32 standard normal from a CPU generator seeded ``seed``.

    The same seed gives the same noise on every machine and device, so the same images.
    """
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] (B, C, H, W) -> uint8 pixels, rounded (the inverse of :func:`from_uint8`)."""
    return ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (B, C, H, W) -> float32 in [-1, 1], as ``Preprocessing(mean=0.5, std=0.5).normalize`` gives."""
    return images.float() / 127.5 - 1.0


def _widths(stages: int, width: int) -> list[int]:
    """Channels at 4x4, 8x8, ... img_size: ``width`` at full size, doubling per halving up to 8 * width."""
    return [width * 2 ** min(stages - level, int(math.log2(MAX_WIDTH_FACTOR))) for level in range(stages + 1)]


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias are looked up per class: (B, C, H, W), labels (B,) -> (B, C, H, W)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)  # starts as plain batch norm
        nn.init.zeros_(self.bias.weight)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gain, bias = self.gain(labels)[:, :, None, None], self.bias(labels)[:, :, None, None]  # (B, C, 1, 1)
        return self.norm(features) * gain + bias


class Generator(nn.Module):
    """Noise (B, latent_dim) and labels (B,) -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, num_classes: int, channels: int, img_size: int, latent_dim: int, width: int) -> None:
        super().__init__()
        widths = _widths(int(math.log2(img_size // BASE)), width)
        self.base_channels = widths[0]
        self.embed = nn.Embedding(num_classes, latent_dim)  # the class, beside the noise, from the first layer on
        self.project = nn.Linear(2 * latent_dim, widths[0] * BASE * BASE)
        self.first_norm = ConditionalBatchNorm(widths[0], num_classes)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(wide, narrow, 4, stride=2, padding=1, bias=False)  # doubles H and W
            for wide, narrow in itertools.pairwise(widths)
        )
        self.norms = nn.ModuleList(ConditionalBatchNorm(narrow, num_classes) for narrow in widths[1:])
        self.to_image = nn.Conv2d(widths[-1], channels, 3, padding=1)
        self.activation = nn.ReLU()

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([noise, self.embed(labels)], dim=1)  # (B, 2 * latent_dim)
        features = self.project(inputs).unflatten(1, (self.base_channels, BASE, BASE))  # (B, 8w, 4, 4)
        features = self.activation(self.first_norm(features, labels))
        for up, norm in zip(self.ups, self.norms):
            features = self.activation(norm(up(features), labels))  # (B, C_i, 2H, 2W)
        return torch.tanh(self.to_image(features))  # (B, C, img_size, img_size)


class Discriminator(nn.Module):
    """Images (B, C, H, W) in [-1, 1] and labels (B,) -> (B,) scores: a spectrally normalised projection network."""

    def __init__(self, num_classes: int, channels: int, img_size: int, width: int) -> None:
        super().__init__()
        widths = _widths(int(math.log2(img_size // BASE)), width)[::-1]  # full size first
        self.from_image = spectral_norm(nn.Conv2d(channels, widths[0], 3, padding=1))
        self.downs = nn.ModuleList(
            nn.Sequential(  # SNGAN's standard CNN: a 3x3 convolution at each size, then a 4x4 one that halves it
                spectral_norm(nn.Conv2d(narrow, narrow, 3, padding=1)),
                nn.LeakyReLU(0.1),
                spectral_norm(nn.Conv2d(narrow, wide, 4, stride=2, padding=1)),
            )
            for narrow, wide in itertools.pairwise(widths)
        )
        self.last = spectral_norm(nn.Conv2d(widths[-1] + 1, widths[-1], 3, padding=1))  # at 4x4, + the batch's spread
        self.activation = nn.LeakyReLU(0.1)  # SNGAN's slope: a dead unit would block the generator's gradient
        self.score = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = nn.Embedding(num_classes, widths[-1])  # the projection's class vectors

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = self.activation(self.from_image(images))
        for down in self.downs:
            features = self.activation(down(features))  # (B, C_i, H/2, W/2)
        spread = features.std(dim=0, unbiased=False).mean().expand(len(features), 1, BASE, BASE)  # (B, 1, 4, 4)
        features = self.activation(self.last(torch.cat([features, spread], dim=1)))  # (B, 8w, 4, 4)
        pooled = features.sum(dim=(2, 3))  # (B, 8w): global sum pooling, as in the projection paper
        return self.score(pooled).squeeze(1) + (self.embed(labels) * pooled).sum(1)  # (B,)


class ConditionalGAN(nn.Module):
    """A generator, its EMA copy and a discriminator; ``forward`` runs the EMA generator.

    Args:
        num_classes: Classes the generator is conditioned on.
        channels: Image channels (1 or 3).
        img_size: Side of the square images: a power of two from 8 to 128.
        latent_dim: Noise dimensions. Defaults to 128.
        width: Channels at full resolution (doubling per halving, up to 8x). Defaults to 64.

    The EMA copy stays in eval mode whatever ``train()`` is told: it is never trained, and
    its batch norms use the statistics measured for its own weights.
    """

    def __init__(self, num_classes: int, channels: int, img_size: int, latent_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        if img_size not in SIZES:
            raise CnnkitError(
                f"dcgan builds images of side {', '.join(map(str, SIZES))} (a power of two), not {img_size}; "
                "pass --img-size one of those"
            )
        if num_classes < 1 or latent_dim < 1 or width < 1:
            given = f"{num_classes}, {latent_dim}, {width}"
            raise CnnkitError(f"dcgan needs num_classes, latent_dim and width of at least 1, not {given}")
        self.num_classes, self.channels, self.img_size, self.latent_dim = num_classes, channels, img_size, latent_dim
        self.generator = Generator(num_classes, channels, img_size, latent_dim, width)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.discriminator = Discriminator(num_classes, channels, img_size, width)
        self.generator_ema.eval()

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Noise (B, latent_dim) float32 and labels (B,) int64 -> (B, C, H, W) in [-1, 1], by the EMA generator."""
        return self.generator_ema(noise, labels)

    def train(self, mode: bool = True) -> ConditionalGAN:
        super().train(mode)
        self.generator_ema.eval()
        return self

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """Move every EMA weight ``1 - decay`` of the way to the generator's (batch-norm statistics: below)."""
        for average, live in zip(self.generator_ema.parameters(), self.generator.parameters()):
            average.lerp_(live, 1.0 - decay)

    @torch.no_grad()
    def recompute_ema_statistics(self, noise: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        """Set the EMA generator's batch-norm statistics to exact averages over ``noise`` (N, latent_dim), ``labels``.

        The live generator's running statistics describe its own weights, not the averaged
        ones, so the EMA copy measures its own (BigGAN's "standing statistics"); fixed noise
        keeps it deterministic. The copy is back in eval mode afterwards.
        """
        norms = [module for module in self.generator_ema.modules() if isinstance(module, nn.BatchNorm2d)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches below
        self.generator_ema.train()
        for start in range(0, len(noise), batch_size):
            self.generator_ema(noise[start : start + batch_size], labels[start : start + batch_size])
        for norm in norms:
            norm.momentum = 0.1  # BatchNorm2d's default, which the generator's norms keep
        self.generator_ema.eval()


@register_model(task="generate")
def dcgan(
    num_classes: int, in_channels: int = 3, img_size: int = 32, latent_dim: int = 128, width: int = 64
) -> ConditionalGAN:
    """A class-conditional DCGAN (hinge loss, spectral norm, projection discriminator, conditional batch norm, EMA).

    Args:
        num_classes: Classes to generate.
        in_channels: Image channels. Defaults to 3.
        img_size: Image side, a power of two from 8 to 128. Defaults to 32.
        latent_dim: Noise dimensions. Defaults to 128.
        width: Channels at full resolution. Defaults to 64.
    """
    return ConditionalGAN(num_classes, in_channels, img_size, latent_dim, width)
