"""``build_index``: embed a folder's images into an index directory, re-embedding only what changed.

A rebuild compares each file's size and modification time with the previous build's list:
unchanged files keep their vectors, new and changed files are embedded (through the image
cache), deleted files are dropped. Vectors from another model are never mixed in (the build
is refused); vectors from another folder, cnnkit version, dtype or preprocessing are all recomputed.
The indexed folder is only read. Two builds of the same index directory at once take turns
(a lock file beside it, the image cache's lock): the second waits, then finds the first's vectors
current and reuses them, so neither publishes over the other half-way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.cache import locked
from cnnkit.data.folder import SPLIT_FOLDERS
from cnnkit.deploy.index.approximate import build_approximate, wants_approximate
from cnnkit.deploy.index.embedder import Embedder, empty_folder_error, list_folder_images, load_embedder
from cnnkit.deploy.index.store import (
    INDEX_FORMAT,
    SearchIndex,
    allocate_vectors,
    check_same_model,
    discard_build,
    open_index,
    publish_index,
    read_meta,
)
from cnnkit.errors import CnnkitError
from cnnkit.tasks.embed.metrics import retrieval_metrics

DTYPES = ("float32", "float16")
METRICS_SAMPLE = 20_000  # leave-one-out queries at most (a random sample beyond): N^2 scores cost minutes at 10^5
SPLIT_NAMES = frozenset(name for names in SPLIT_FOLDERS.values() for name in names)


def class_label(rel: str) -> str | None:
    """The class subfolder of a relative path (inside ``train/``, ``val/``, ``test/`` when present), or None."""
    parts = Path(rel).parts
    if len(parts) > 2 and parts[0] in SPLIT_NAMES:
        return parts[1]
    return parts[0] if len(parts) > 1 else None


def _stat(root: Path, rel: str) -> tuple[int, int]:
    status = (root / rel).stat()
    return status.st_size, status.st_mtime_ns


def _reusable(
    directory: Path, embedder: Embedder, root: Path, dtype: str, say: Callable[[str], None]
) -> tuple[dict[str, int], np.ndarray | None, list[str]]:
    """The previous build's rows to keep (path -> row), its vectors and its file list; nothing when none is reusable."""
    if not (directory / "index.json").is_file():
        return {}, None, []
    meta = read_meta(directory)
    check_same_model(meta, embedder.identity, directory)
    from cnnkit import __version__

    differences = {
        "folder": (meta.get("root"), str(root)),
        "cnnkit version": (meta.get("cnnkit"), __version__),
        "dtype": (meta.get("dtype"), dtype),
        "preprocessing": (meta.get("preprocessing"), json.loads(json.dumps(embedder.preprocessing.to_dict()))),
    }
    changed = [name for name, (built, now) in differences.items() if built != now]
    if changed:
        say(f"note: {directory} was built with another {' and '.join(changed)}: every image is embedded again")
        return {}, None, []
    try:
        files = json.loads((directory / meta["files"]).read_text())
        vectors = np.load(directory / meta["vectors"], mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, KeyError):
        say(f"note: {directory} is damaged: every image is embedded again")
        return {}, None, []
    kept = {}
    for row, (rel, size, mtime) in enumerate(zip(files["paths"], files["sizes"], files["mtimes_ns"])):
        try:
            if _stat(root, rel) == (size, mtime):
                kept[rel] = row
        except OSError:
            continue
    return kept, vectors, files["paths"]


def build_index(
    model: str | Path | Embedder,
    folder: str | Path,
    out: str | Path = "runs",
    name: str | None = None,
    pretrained: bool = False,
    dtype: str = "float32",
    approximate: str = "auto",
    device: str = "cpu",
    say: Callable[[str], None] | None = None,
) -> SearchIndex:
    """Embed every image under ``folder`` (any depth) into the index directory ``out/name``, incrementally.

    Args:
        model: A run directory, a checkpoint, an architecture name with ``pretrained``, or an :class:`Embedder`.
        folder: The images; class subfolders (optionally inside train/val/test) give labels and a retrieval report.
        out: Folder holding the index directory. Defaults to ``runs``.
        name: Index directory name. Defaults to ``index_<folder name>``, so re-running updates the same index.
        pretrained: ``model`` is an architecture: use its ImageNet weights. Defaults to False.
        dtype: ``float32``, or ``float16`` for half the disk and memory (scores within ~1e-3). Defaults to float32.
        approximate: ``auto`` (a FAISS index from :data:`~cnnkit.deploy.index.approximate.APPROXIMATE_THRESHOLD`
            vectors), ``on`` or ``off``. Defaults to ``auto``.
        device: Where the model runs. Defaults to ``cpu``.
        say: Receives progress lines. Defaults to None (silent).

    Returns:
        The opened index; ``index.meta["changes"]`` counts added, changed, removed and unchanged files.

    Example:
        >>> index = build_index("efficientnet_lite0", "photos", pretrained=True)
        >>> index.meta["changes"]
        {'added': 120, 'changed': 0, 'removed': 0, 'unchanged': 0, 'skipped': 0}
    """
    say = say or (lambda _: None)
    if dtype not in DTYPES:
        raise CnnkitError(f"--dtype must be float32 or float16; got {dtype!r}")
    wants_approximate(0, approximate)  # checks the value before any work
    root = Path(folder).expanduser().resolve()
    files = list_folder_images(root)
    if not files:
        raise empty_folder_error(root)
    directory = Path(out).expanduser() / (name or f"index_{root.name}")
    if directory.resolve().is_relative_to(root):
        raise CnnkitError(
            f"the index directory {directory} lies inside the indexed folder {root}, which cnnkit only reads; "
            "give an --out outside it"
        )
    embedder = model if isinstance(model, Embedder) else load_embedder(model, pretrained=pretrained, device=device)
    with locked(directory.with_name(directory.name + ".lock")):
        return _build(embedder, root, files, directory, dtype, approximate, say)


def _build(
    embedder: Embedder,
    root: Path,
    files: list[str],
    directory: Path,
    dtype: str,
    approximate: str,
    say: Callable[[str], None],
) -> SearchIndex:
    """The build itself, run while holding the index directory's lock."""
    kept, previous, previous_paths = _reusable(directory, embedder, root, dtype, say)
    stats = {}
    for rel in files:
        try:
            stats[rel] = _stat(root, rel)
        except OSError:  # removed while listing
            continue
    to_embed = [rel for rel in files if rel in stats and rel not in kept]
    fresh, embedded, skipped = embedder.embed_folder(root, to_embed) if to_embed else (None, [], [])
    fresh_rows = {rel: row for row, rel in enumerate(embedded)}
    paths = [rel for rel in files if rel in kept or rel in fresh_rows]
    if not paths:
        raise CnnkitError(f"none of the {len(files)} images under {root} could be decoded (e.g. {skipped[0].reason})")
    created = not directory.exists()
    vectors, vectors_name = allocate_vectors(directory, len(paths), embedder.dim, dtype)
    try:
        for row, rel in enumerate(paths):  # row order: the sorted file list
            vectors[row] = previous[kept[rel]] if rel in kept else fresh[fresh_rows[rel]]
        vectors.flush()
        previous_set = set(previous_paths)
        changes = {
            "added": sum(1 for rel in embedded if rel not in previous_set),
            "changed": sum(1 for rel in embedded if rel in previous_set),
            "removed": len(previous_set - set(paths) - {s.path for s in skipped}),
            "unchanged": len(kept),
            "skipped": len(skipped),
        }
        labels = [class_label(rel) for rel in paths]
        report = _report(vectors, labels)
        approximate_index = None
        if wants_approximate(len(paths), approximate) and len(paths) > 1:  # one vector has no neighbour to miss
            approximate_index = build_approximate(vectors)
            info = approximate_index.info
            say(
                f"approximate search: FAISS IVF-Flat, {info['nlist']} cells, nprobe {info['nprobe']}, "
                f"recall@10 {info['recall@10']:.3f} against exact search on {info['sample']} sampled queries"
            )
        from cnnkit import __version__

        meta = {
            "format": INDEX_FORMAT,
            "cnnkit": __version__,
            "model": embedder.identity,
            "preprocessing": embedder.preprocessing.to_dict(),
            "root": str(root),
            "count": len(paths),
            "dim": embedder.dim,
            "dtype": dtype,
            "vectors": vectors_name,
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "changes": changes,
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
            "retrieval": report,
        }
        files_record = {
            "paths": paths,
            "sizes": [stats[rel][0] for rel in paths],
            "mtimes_ns": [stats[rel][1] for rel in paths],
            "labels": labels if all(label is not None for label in labels) else None,
        }
        del vectors  # flushed; the published file is reopened read-only
        publish_index(directory, meta, files_record, approximate_index)
    except BaseException:  # Ctrl-C, a full disk: the previous build stays whole and this one leaves nothing
        discard_build(directory, vectors_name, remove_directory=created)
        raise
    return open_index(directory)


def _report(vectors: np.ndarray, labels: list[str | None]) -> dict | None:
    """Leave-one-out Recall@1/2/4/8 and MAP@R when every file has a class and there are two classes or more."""
    if any(label is None for label in labels) or len(set(labels)) < 2:
        return None
    names = sorted(set(labels))
    codes = np.array([names.index(label) for label in labels])
    rows = np.arange(len(labels))
    if len(rows) > METRICS_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(len(rows), METRICS_SAMPLE, replace=False))
    embeddings = torch.from_numpy(np.asarray(vectors[rows], dtype=np.float32))
    metrics = retrieval_metrics(embeddings, torch.from_numpy(codes[rows]))
    if not metrics["queries"]:  # every class has one image: nothing of its class to find
        return None
    return {**metrics, "classes": len(names), "sampled": len(rows) < len(labels)}
