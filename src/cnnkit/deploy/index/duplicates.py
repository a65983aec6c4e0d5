"""Near-duplicates by embedding: resized, re-encoded and slightly cropped copies that byte hashes miss.

``cnnkit check DATA --near-duplicates`` embeds every image of the folder (through the image
cache, as an index build does), finds each image's nearest neighbours by exact cosine
similarity (:func:`cnnkit.tasks.embed.metrics.nearest`) and reports every pair at or above
the threshold; a pair in two different splits (``train/`` and ``test/``) is a leak. Files
are only read.

The default threshold, 0.80 for the pretrained EfficientNet-Lite0, was measured on 27 real
photos (scikit-image's sample photos and the ones scikit-learn and matplotlib ship) and 8
kinds of copy (resized to 1/2 and 1/4, JPEG quality 60 and 30, centre crops of 90% and 80%,
a corner crop of 85%, crop + resize + JPEG 70): at 0.80 it finds 95% of the 192 copies of
photos at least 200 px a side, and none of 7,020 pairs of different photos reaches 0.56.
Tiny images of one domain are harder: two different Fashion-MNIST images (28x28) of one
class score over 0.80 in 13% of pairs, so the report says when a large share of the images
have a near-duplicate, and ``--threshold`` (0.93 there) or a model trained on the data
(``--model RUN``) is the remedy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cnnkit.data.folder import SPLIT_FOLDERS
from cnnkit.data.imageset import SkippedFile
from cnnkit.deploy.index.embedder import load_embedder
from cnnkit.errors import CnnkitError
from cnnkit.tasks.embed.metrics import nearest

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_THRESHOLD = 0.80  # measured as the module docstring says
NEIGHBOURS = 10  # pairs looked for per image: an image with more copies than this still shows in 10 pairs
SHOWN_PAIRS = 20  # pairs printed on the console; --json lists all
# More images than this share with all NEIGHBOURS neighbours over the threshold: copies rarely come in tens,
# so the model likely cannot tell these images apart (Fashion-MNIST at 0.80 with the default model).
CROWDED_SHARE = 0.05
SPLIT_OF_FOLDER = {name: split for split, names in SPLIT_FOLDERS.items() for name in names}
SPLIT_ORDER = list(SPLIT_FOLDERS)  # a pair names its training image first: "train/a.jpg ~ test/b.jpg"


def split_of(rel: str) -> str | None:
    """The split (``train``, ``val``, ``test``) a relative path lies in, or None outside split folders."""
    parts = Path(rel).parts
    return SPLIT_OF_FOLDER.get(parts[0]) if len(parts) > 1 else None


@dataclass
class NearDuplicate:
    """Two images whose embeddings are at least the threshold apart in cosine similarity."""

    first: str
    second: str
    score: float
    splits: tuple[str | None, str | None]
    identical: bool  # the same bytes: today's exact-hash check reports these too

    @property
    def leak(self) -> bool:
        """In two different splits, so an evaluation split holds a copy of a training image."""
        return None not in self.splits and self.splits[0] != self.splits[1]

    def describe(self) -> str:
        kind = "identical files" if self.identical else "near-duplicate"
        text = f"{kind} {self.first} ~ {self.second} (cosine {self.score:.3f})"
        if self.leak:
            return f"leak: {text} across splits ({self.splits[0]} and {self.splits[1]}): scores will be optimistic"
        return text


@dataclass
class NearDuplicateReport:
    """Every near-duplicate pair of a folder, best first, and the model and threshold that found them."""

    root: str
    model: str
    threshold: float
    images: int
    pairs: list[NearDuplicate] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    crowded: int = 0  # images whose NEIGHBOURS nearest all reach the threshold

    @property
    def leaks(self) -> list[NearDuplicate]:
        return [pair for pair in self.pairs if pair.leak]

    @property
    def note(self) -> str | None:
        """A warning when so many images have many near-duplicates that the threshold is likely too low here."""
        if self.crowded > CROWDED_SHARE * self.images:
            return (
                f"{self.crowded} of {self.images} images have {NEIGHBOURS} or more near-duplicates: {self.model} may "
                f"not tell these images apart at cosine {self.threshold:.2f}; raise --threshold or give a model "
                "trained on them (--model RUN)"
            )
        return None

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "model": self.model,
            "threshold": self.threshold,
            "images": self.images,
            "pairs": [{**asdict(pair), "splits": list(pair.splits), "leak": pair.leak} for pair in self.pairs],
            "leaks": len(self.leaks),
            "skipped": [asdict(item) for item in self.skipped],
            "crowded": self.crowded,
            "note": self.note,
        }

    def lines(self) -> list[str]:
        """The console report: a summary, the leaks first, at most :data:`SHOWN_PAIRS` pairs, and the note.

        Unreadable files are only counted: the scan that runs before lists each with its reason.
        """
        shown = sorted(self.pairs, key=lambda pair: not pair.leak)[:SHOWN_PAIRS]
        unreadable = f" ({len(self.skipped)} unreadable file(s) left out)" if self.skipped else ""
        lines = [
            f"near-duplicates by {self.model} (cosine >= {self.threshold:.2f}): {len(self.pairs)} pair(s) among "
            f"{self.images} images, {len(self.leaks)} across splits{unreadable}",
            *(f"warning: {pair.describe()}" for pair in shown),
        ]
        if len(shown) < len(self.pairs):
            lines.append(f"... and {len(self.pairs) - len(shown)} more pair(s); --json lists them all")
        if self.note:
            lines.append(f"note: {self.note}")
        return lines


def _pair_order(rel: str) -> tuple[int, str]:
    split = split_of(rel)
    return (SPLIT_ORDER.index(split) if split else len(SPLIT_ORDER), rel)


def _embedder(model: str | Path, device: str):
    from cnnkit.models.registry import list_models

    if Path(model).expanduser().exists() or str(model) not in list_models():
        return load_embedder(model, device=device)
    if str(model) not in list_models(pretrained=True):
        raise CnnkitError(
            f"--model {model} has no pretrained weights to embed with; give a run, a checkpoint, or one of "
            f"{', '.join(list_models(pretrained=True))}"
        )
    return load_embedder(model, pretrained=True, device=device)


def find_near_duplicates(
    root: str | Path,
    model: str | Path = DEFAULT_MODEL,
    threshold: float = DEFAULT_THRESHOLD,
    digests: Mapping[str, str] | None = None,
    device: str = "cpu",
    say: Callable[[str], None] | None = None,
) -> NearDuplicateReport:
    """Find the pairs of images under ``root`` (any depth) that are copies of each other by embedding.

    Args:
        root: The dataset folder; nothing in it is written.
        model: A run, a checkpoint, or an architecture with pretrained weights. Defaults to ``efficientnet_lite0``.
        threshold: Smallest cosine similarity of a pair. Defaults to 0.80 (measured for the default model).
        digests: SHA-256 of each relative path (``cnnkit check``'s scan), to mark byte-identical pairs.
            Defaults to None (none marked).
        device: Where the model runs. Defaults to ``cpu``.
        say: Receives a progress line. Defaults to None (silent).

    Returns:
        The pairs, most similar first; each says whether it crosses splits (a leak).

    Raises:
        CnnkitError: the folder is missing or holds no images, the model cannot be loaded, or the threshold
            is outside (0, 1].

    Example:
        >>> report = find_near_duplicates("photos")
        >>> [(pair.first, pair.second, pair.leak) for pair in report.pairs]
    """
    if not 0 < threshold <= 1:
        raise CnnkitError(f"--threshold must be a cosine similarity in (0, 1]; got {threshold}")
    root = Path(root).expanduser()
    embedder = _embedder(model, device)
    if say:
        say(f"embedding the images of {root} with {embedder.identity['name']} to find near-duplicates")
    vectors, paths, skipped = embedder.embed_folder(root)
    report = NearDuplicateReport(str(root), embedder.identity["name"], threshold, len(paths), skipped=skipped)
    if len(paths) < 2:
        return report
    vectors = torch.from_numpy(vectors)
    scores, rows = nearest(vectors, vectors, NEIGHBOURS, skip_self=True)  # (N, k) each, best first
    if scores.shape[1] == NEIGHBOURS:
        report.crowded = int((scores[:, -1] >= threshold).sum())
    digests = digests or {}
    found: dict[tuple[int, int], float] = {}
    for row, column in (scores >= threshold).nonzero().tolist():
        pair = tuple(sorted((row, int(rows[row, column]))))
        found[pair] = max(found.get(pair, -1.0), float(scores[row, column]))
    for (first, second), score in sorted(found.items(), key=lambda item: (-item[1], item[0])):
        a, b = sorted((paths[first], paths[second]), key=_pair_order)
        identical = a in digests and digests.get(a) == digests.get(b)
        report.pairs.append(NearDuplicate(a, b, round(score, 4), (split_of(a), split_of(b)), identical))
    return report
