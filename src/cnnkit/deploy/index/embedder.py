"""A model as an embedder: images in, L2-normalised vectors out, decoded exactly as in training.

Every model's representation is :meth:`cnnkit.models.network.Network.forward_embedding` (the
classifier's input; an embedding run's model returns its own embedding), so a classification
run, an embedding run and an ImageNet-pretrained architecture all index the same way. A folder
is decoded through the image cache (:func:`cnnkit.data.cache.decode_cached`), so embedding the
training folder again, or indexing it twice, decodes nothing.

The forward pass is the build's cost, so :func:`inference_network` prepares the model for it once:
batch norms folded into the convolutions before them (fewer passes over each feature map), NHWC
memory layout (oneDNN's faster convolutions), in fp32 on the CPU a frozen TorchScript trace run
through oneDNN's graph fuser (fewer, fused kernels: ~1.2x the eager forward pass on
EfficientNet-Lite0 at 224, one thread, the two interleaved in one process), and the batches run
under ``inference_mode`` in the precision :func:`cnnkit.compute.choose_precision` picks (``auto``:
bf16 only on a CPU where bf16 measured faster than fp32). Vectors stay those of the fp32 model:
within 1e-4 per value folded and traced, and a cosine of at least 0.99 per vector in bf16
(``tests/test_index.py`` checks both).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cnnkit.checkpoint import load_model, resolve_checkpoint
from cnnkit.compute import ComputeSettings, autocast, choose_memory_format, resolve, select_device
from cnnkit.data.archive import file_sha256
from cnnkit.data.cache import decode_cached
from cnnkit.data.decode import ImageSource, decode_batches, decode_image
from cnnkit.data.folder import list_images
from cnnkit.data.imageset import SkippedFile
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models.fold import fold_pooled_batch_norms
from cnnkit.tasks.embed.evaluate import embed_images


def list_folder_images(folder: Path) -> list[str]:
    """Every image under ``folder`` at any depth (relative paths, sorted; hidden files and cnnkit output left out)."""
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "not found"
        raise CnnkitError(f"image folder {folder} {what}; give a folder of images (class subfolders optional)")
    files, _, _ = list_images(folder, [""])  # the root as the one "class": every image at any depth
    return [rel for rel, _ in files]


def empty_folder_error(folder: Path) -> CnnkitError:
    """The one line for a folder (to index, or of queries) that holds no image at any depth."""
    return CnnkitError(f"no images found in {folder} (at any depth); give a folder that holds image files")


class Embedder:
    """A model with the preprocessing it was trained with, turning images into unit vectors.

    Args:
        model: A cnnkit network (anything with ``forward_embedding``), in eval mode.
        preprocessing: How a decoded image becomes the model's input.
        identity: What made the vectors: ``kind`` (checkpoint or pretrained), ``name`` (the
            architecture), ``source`` (the checkpoint file or model name) and ``sha256`` (of the
            weights file); an index stores it and refuses queries from another model.
        device: Where the model runs.
        settings: The precision the forward pass runs in. Defaults to None (fp32).

    Example:
        >>> embedder = load_embedder("runs/train")
        >>> embedder.embed_images(["cat.jpg"]).shape
        (1, 128)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        identity: dict,
        device: torch.device,
        settings: ComputeSettings | None = None,
    ):
        self.model = model
        self.preprocessing = preprocessing
        self.identity = identity
        self.device = device
        self.settings = settings or resolve(device, precision="fp32")
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Length D of every vector (found by embedding one blank image the first time it is asked)."""
        if self._dim is None:
            prep = self.preprocessing
            blank = torch.zeros(1, prep.channels, prep.img_size, prep.img_size, dtype=torch.uint8)
            self._dim = int(self.embed_pixels(blank).shape[1])
        return self._dim

    def embed_pixels(self, images: torch.Tensor) -> np.ndarray:
        """Unit vectors (N, D) float32 for uint8 images (N, C, H, W), in bounded batches (a memmap is read in turn)."""
        if not len(images):
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        with torch.inference_mode(), autocast(self.settings):
            vectors = embed_images(self.model, images, self.preprocessing, self.device).numpy()
        self._dim = vectors.shape[1]
        return vectors

    def embed_images(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Unit vectors (N, D) float32 for files, bytes or PIL images, decoded by the one shared path.

        Raises:
            ImageDecodeError: an image cannot be decoded (a :class:`CnnkitError` naming it).
        """
        prep = self.preprocessing
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        arrays = [decode_image(image, prep.img_size, prep.channels, prep.resize) for image in images]
        return self.embed_pixels(torch.from_numpy(np.stack(arrays)))

    def embed_files(
        self, paths: Sequence[str | Path], batch_size: int = 64
    ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """Embed files in batches; files that cannot be decoded are left out and returned with the reason.

        Returns:
            Vectors (N, D) float32 of the decoded files, their paths, and (path, reason) per failure.
        """
        prep = self.preprocessing
        outputs, kept, failures = [], [], []
        for pixels, names, failed in decode_batches(paths, prep.img_size, prep.channels, prep.resize, batch_size):
            kept += names
            failures += failed
            if pixels is not None:
                outputs.append(self.embed_pixels(torch.from_numpy(pixels)))
        vectors = np.concatenate(outputs) if outputs else np.zeros((0, self.dim), dtype=np.float32)
        return vectors, kept, failures

    def embed_folder(
        self, folder: str | Path, files: Sequence[str] | None = None, workers: int | None = None
    ) -> tuple[np.ndarray, list[str], list[SkippedFile]]:
        """Embed every image under ``folder`` (any depth) through the image cache.

        Args:
            folder: The folder; nothing in it is written.
            files: Relative paths to embed instead of every image. Defaults to None (all of them).
            workers: Decoding processes. Defaults to None (all cores).

        Returns:
            Vectors (N, D) float32, the relative path of each row, and the files that could not be decoded.

        Raises:
            CnnkitError: the folder is missing or holds no images.
        """
        root = Path(folder).expanduser()
        files = list_folder_images(root) if files is None else list(files)
        if not files:
            raise empty_folder_error(root)
        prep = self.preprocessing
        decoded = decode_cached(root, files, prep.img_size, prep.channels, prep.resize, workers or os.cpu_count() or 1)
        skipped = [SkippedFile(files[row], reason) for row, reason in decoded.failures]
        if not decoded.kept:
            return np.zeros((0, self.dim), dtype=np.float32), [], skipped
        return self.embed_pixels(decoded.images), [files[row] for row in decoded.kept], skipped


class TracedEmbedding(nn.Module):
    """``network.forward_embedding`` as a frozen TorchScript graph that oneDNN's graph fuser compiles.

    The fuser is switched on only around this graph's calls (it is a process-wide flag), so no
    other TorchScript in the process changes. The eager ``network`` is kept, so the module tree
    stays the folded one callers inspect.
    """

    def __init__(self, network: nn.Module, graph: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.network, self.graph = network, graph

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D), as ``network.forward_embedding`` computes it."""
        previous = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            return self.graph.forward_embedding(x)
        finally:
            torch.jit.enable_onednn_fusion(previous)


def trace_embedding(network: nn.Module, example: torch.Tensor) -> nn.Module:
    """``network`` as a :class:`TracedEmbedding`, or ``network`` itself where tracing fails or changes the vectors.

    Traced on two images of ``example`` (B >= 3, C, H, W), then checked on all of them (another
    batch size, so a batch size baked into the trace is caught): every value of the unit vectors
    within 1e-4 of the eager ones, else the eager network is kept, silently (tracing is a speed-up,
    never a requirement: a model with data-dependent control flow just runs eagerly).
    """
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notes: the check below decides
            graph = torch.jit.trace_module(network, {"forward_embedding": example[:2]}, check_trace=False)
            graph = torch.jit.freeze(graph, preserved_attrs=["forward_embedding"])
            traced = TracedEmbedding(network, graph)
            ours = nn.functional.normalize(traced.forward_embedding(example).float(), dim=1)
            theirs = nn.functional.normalize(network.forward_embedding(example).float(), dim=1)
            same = ours.shape == theirs.shape and bool(torch.allclose(ours, theirs, rtol=0, atol=1e-4))
    except Exception:  # any tracing failure means "run eagerly", never an error
        return network
    return traced if same else network


def inference_network(
    network: nn.Module, device: torch.device, trace_input: tuple[int, int, int] | None = None
) -> nn.Module:
    """A copy of ``network`` in eval mode on ``device`` with its batch norms folded, in NHWC where that is faster.

    Folded: each convolution followed by a batch norm in a ``Sequential`` (PyTorch's
    ``fuse_conv_bn_eval``; EfficientNet-Lite's every block) and the ConvNet's conv -> max-pool ->
    batch-norm blocks (:func:`cnnkit.models.fold.fold_pooled_batch_norms`). The batch norm left in
    place is an identity, so the module tree, and ``forward_embedding``, stay as they were.

    Args:
        network: A cnnkit network; it is not changed.
        device: Where the copy runs.
        trace_input: (C, H, W) of the images it will embed, for an fp32 forward pass on the CPU:
            the copy is then traced (:func:`trace_embedding`: two small forward passes, under a
            second at 224, and the fuser compiles on the first batch of each size; the frozen
            graph holds a second copy of the weights). Defaults to None (eager).
    """
    network = fold_pooled_batch_norms(network.to(device))  # a copy in eval mode: the caller's model is untouched
    for module in network.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for position in range(len(module) - 1):
            conv, norm = module[position], module[position + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None:
                module[position], module[position + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    # NHWC convolutions run faster on oneDNN and cuDNN (compute.choose_memory_format); the cached pixels are NHWC too.
    layout = torch.channels_last if choose_memory_format(device) == "channels_last" else torch.contiguous_format
    network = network.to(memory_format=layout)
    if trace_input is None or device.type != "cpu":
        return network
    example = torch.randn(3, *trace_input, generator=torch.Generator().manual_seed(0))  # normalised-pixel range
    return trace_embedding(network, example.to(memory_format=layout))


def trace_input(preprocessing: Preprocessing, settings: ComputeSettings) -> tuple[int, int, int] | None:
    """The (C, H, W) to trace the forward pass on, or None where it stays eager (the fused graph is fp32 only)."""
    if settings.precision != "fp32":
        return None
    return preprocessing.channels, preprocessing.img_size, preprocessing.img_size


def load_embedder(
    model: str | Path, pretrained: bool = False, device: str = "cpu", precision: str = "auto"
) -> Embedder:
    """A run directory, a ``.safetensors`` checkpoint, or an architecture's ImageNet weights, as an :class:`Embedder`.

    Args:
        model: A run directory (its best checkpoint), a checkpoint file, or with ``pretrained`` an architecture name.
        pretrained: ``model`` is an architecture: use its ImageNet weights. Defaults to False.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. Defaults to ``cpu``.
        precision: ``auto`` (bf16 where it measured faster, else fp32), ``fp32`` or ``bf16``. Defaults to ``auto``.

    Example:
        >>> load_embedder("efficientnet_lite0", pretrained=True).embed_images(["photo.jpg"]).shape
        (1, 1280)
    """
    target = select_device(device)
    settings = resolve(target, precision=precision)
    if pretrained:
        from cnnkit.models.pretrained import (
            IMAGENET_CLASSES,
            create_pretrained,
            pretrained_preprocessing,
            weight_source,
        )

        name = str(model)
        weights = weight_source(name).locate(name)
        prep = pretrained_preprocessing(name)
        network = inference_network(create_pretrained(name, IMAGENET_CLASSES), target, trace_input(prep, settings))
        identity = {"kind": "pretrained", "name": name, "source": name, "sha256": file_sha256(weights)}
        return Embedder(network, prep, identity, target, settings)
    path = Path(model).expanduser()
    if not path.exists():
        from cnnkit.models.registry import list_models

        if str(model) in list_models():
            raise CnnkitError(
                f"{model} is an architecture, not a trained model: add --pretrained for its ImageNet weights, "
                "or give a run directory or checkpoint"
            )
    checkpoint = resolve_checkpoint(path).resolve()
    network, info = load_model(checkpoint, target)
    from cnnkit.models.registry import model_entry

    if model_entry(info.model.name).task == "detect":  # boxes, not a feature vector to search by
        raise CnnkitError(
            f"{model} is a detector ({info.model.name}): index and search embed images with a classifier or an "
            "embed run; evaluate, predict, export and serve take a detector"
        )
    if model_entry(info.model.name).task == "generate":  # noise in, images out: nothing to embed an image with
        raise CnnkitError(
            f"{model} is a generator ({info.model.name}): index and search embed images with a classifier or an "
            "embed run; generate, export and serve take a generator"
        )
    network = inference_network(network, target, trace_input(info.preprocessing, settings))
    digest = file_sha256(checkpoint)
    identity = {"kind": "checkpoint", "name": info.model.name, "source": str(checkpoint), "sha256": digest}
    return Embedder(network, info.preprocessing, identity, target, settings)
