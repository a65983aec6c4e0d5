"""An index directory on disk, and :class:`SearchIndex`, the opened index that answers queries.

A directory holds ``index.json`` (format, cnnkit version, the model's identity and
preprocessing, the indexed root, the report) and, named by a build id it points to, the
vectors (``vectors-<id>.npy``: (N, D) L2-normalised float16 or float32, memory-mapped on open),
the file list (``files-<id>.json``: relative paths, sizes, mtimes, class labels) and, for a
large index, the FAISS index (``faiss-<id>.index``). A rebuild writes new files under a new
id and then replaces ``index.json`` in one atomic rename, so a reader (the service) sees the
old index or the new one, never a mix, and an interrupted build leaves the old one whole.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from cnnkit.data.archive import file_sha256
from cnnkit.deploy.index.approximate import ApproximateIndex, search_exact
from cnnkit.deploy.index.embedder import Embedder, load_embedder
from cnnkit.errors import CnnkitError

INDEX_FORMAT = "cnnkit.index/1"
INDEX_FILE = "index.json"
MOVED_SAMPLE = 64  # files checked (evenly spaced) on open to tell an index whose folder moved


def _version() -> str:
    from cnnkit import __version__

    return __version__


def _rebuild_hint(meta: dict, directory: Path, folder: str | None = None) -> str:
    model = meta.get("model", {})
    flag = " --pretrained" if model.get("kind") == "pretrained" else ""
    return (
        f"rebuild it with `cnnkit index {model.get('source', 'MODEL')}{flag} {folder or meta.get('root', 'FOLDER')} "
        f"--out {directory.parent} --name {directory.name}`"
    )


def read_meta(directory: Path) -> dict:
    """``index.json`` of an index directory; a folder that is not a cnnkit index is a :class:`CnnkitError`."""
    path = directory / INDEX_FILE
    if not path.is_file():
        what = "not found" if not directory.exists() else f"not a cnnkit index (no {INDEX_FILE})"
        raise CnnkitError(f"index {directory} {what}; build one with `cnnkit index MODEL FOLDER --out DIR --name NAME`")
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {INDEX_FORMAT}")
    except (OSError, ValueError, AttributeError) as error:
        raise CnnkitError(f"{path} is not a readable cnnkit index ({error}); rebuild it with `cnnkit index`") from None
    return meta


class SearchIndex:
    """The vectors of a folder's images, the files they came from, and the model that made them.

    Attributes:
        directory: The index directory.
        root: The indexed folder; ``paths`` are relative to it.
        paths: The file of each row of ``vectors``.
        labels: Each file's class subfolder, or None when the folder has no class subfolders.
        vectors: (N, D) unit vectors, memory-mapped copy-on-write: the file is never written (float16 or float32).
        meta: ``index.json``: model identity, preprocessing, approximate search and retrieval report.

    Example:
        >>> index = open_index("runs/index_photos")
        >>> scores, rows = index.search(index.embedder().embed_images(["query.jpg"]), k=5)
        >>> [index.paths[i] for i in rows[0]]
    """

    def __init__(self, directory: Path, meta: dict, files: dict, vectors: np.ndarray, approximate=None) -> None:
        self.directory = directory
        self.meta = meta
        self.root = Path(meta["root"])
        self.paths: list[str] = files["paths"]
        self.sizes: list[int] = files["sizes"]
        self.mtimes_ns: list[int] = files["mtimes_ns"]
        self.labels: list[str] | None = files.get("labels")
        self.vectors = vectors
        self.approximate: ApproximateIndex | None = approximate
        self._embedder: Embedder | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def file(self, row: int) -> Path:
        """The indexed file of ``row`` (for thumbnails: only files of the index, by position)."""
        return self.root / self.paths[row]

    def search(self, queries: np.ndarray, k: int = 10, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar indexed vectors to each unit vector of ``queries`` (Q, D), best first.

        Args:
            queries: (Q, D) L2-normalised vectors from this index's :meth:`embedder`.
            k: Neighbours per query, cut to the index size. Defaults to 10.
            exact: Search exactly even when the index has a FAISS index. Defaults to False.

        Returns:
            Cosine similarities (Q, k) float32 and row indices (Q, k) int64 into ``paths`` (every one valid).
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise CnnkitError(
                f"queries of shape {tuple(queries.shape)} do not fit index {self.directory} of {self.dim}-d vectors; "
                "embed them with index.embedder()"
            )
        if k < 1:
            raise CnnkitError(f"k must be at least 1; got {k}")
        if self.approximate is None or exact:
            return search_exact(self.vectors, queries, k)
        scores, rows = self.approximate.search(queries, k)
        short = (rows < 0).any(1)  # the probed cells held fewer than k vectors: answer those queries exactly
        if short.any():
            scores[short], rows[short] = search_exact(self.vectors, queries[short], k)
        return scores, rows

    def embedder(self, device: str = "cpu") -> Embedder:
        """The model the index was built with, loaded once; refused when its weights changed since the build."""
        if self._embedder is None:
            identity = self.meta["model"]
            source = identity["source"]
            kind = identity["kind"]
            if kind == "checkpoint" and not Path(source).is_file():
                raise CnnkitError(
                    f"index {self.directory} was built with the checkpoint {source}, which is gone; "
                    f"{_rebuild_hint(self.meta, self.directory)}"
                )
            if kind == "checkpoint" and file_sha256(Path(source)) != identity["sha256"]:
                raise CnnkitError(
                    f"index {self.directory} was built by another model: {source} has changed since "
                    f"(retrained or replaced); {_rebuild_hint(self.meta, self.directory)}"
                )
            embedder = load_embedder(source, pretrained=kind == "pretrained", device=device)
            check_same_model(self.meta, embedder.identity, self.directory)
            self._embedder = embedder
        return self._embedder


def check_same_model(meta: dict, identity: dict, directory: Path) -> None:
    """Refuse to mix vectors of two models: ``identity`` must be the one the index at ``directory`` was built by."""
    built = meta["model"]
    if (built["name"], built["sha256"]) != (identity["name"], identity["sha256"]):
        raise CnnkitError(
            f"index {directory} was built by another model ({built['name']} from {built['source']}, "
            f"sha256 {built['sha256'][:12]}), not {identity['name']} from {identity['source']} "
            f"(sha256 {identity['sha256'][:12]}); give that model, or another --name for a new index"
        )


def _check_files_present(meta: dict, files: dict, directory: Path) -> None:
    """An index whose folder moved or was emptied is one clear error, not neighbours that cannot be shown."""
    root = Path(meta["root"])
    paths = files["paths"]
    if not root.is_dir():
        raise CnnkitError(
            f"the folder index {directory} was built from, {root}, is gone (moved or deleted); "
            f"{_rebuild_hint(meta, directory, 'FOLDER')} (FOLDER: where the images are now)"
        )
    rows = sorted({round(i * (len(paths) - 1) / (MOVED_SAMPLE - 1)) for i in range(MOVED_SAMPLE)}) if paths else []
    missing = [paths[i] for i in rows if not (root / paths[i]).is_file()]
    if missing:
        raise CnnkitError(
            f"the files of index {directory} moved: {len(missing)} of {len(rows)} checked are missing under {root} "
            f"(e.g. {missing[0]}); {_rebuild_hint(meta, directory, 'FOLDER')} (FOLDER: where the images are now)"
        )


def open_index(path: str | Path) -> SearchIndex:
    """Open an index directory written by :func:`cnnkit.deploy.index.build_index`.

    The vectors are memory-mapped read-only (nothing is loaded until searched); the FAISS
    index, when the index has one, is read whole.

    Raises:
        CnnkitError: not an index, built by another cnnkit version, or its files moved.
    """
    directory = Path(path).expanduser()
    meta = read_meta(directory)
    if meta.get("cnnkit") != _version():
        raise CnnkitError(
            f"index {directory} was built by cnnkit {meta.get('cnnkit')}, this is cnnkit {_version()}: "
            f"its vectors may differ; {_rebuild_hint(meta, directory)}"
        )
    try:
        files = json.loads((directory / meta["files"]).read_text())
        vectors = np.load(directory / meta["vectors"], mmap_mode="c", allow_pickle=False)  # copy-on-write
    except (OSError, ValueError, KeyError) as error:
        raise CnnkitError(f"index {directory} is damaged ({error}); {_rebuild_hint(meta, directory)}") from None
    if vectors.ndim != 2 or len(vectors) != len(files["paths"]):
        raise CnnkitError(
            f"index {directory} is damaged: {len(files['paths'])} files but vectors of shape {vectors.shape}; "
            f"{_rebuild_hint(meta, directory)}"
        )
    _check_files_present(meta, files, directory)
    approximate = None
    if meta.get("approximate"):
        approximate = ApproximateIndex.read(directory / meta["approximate"]["file"], meta["approximate"])
    return SearchIndex(directory, meta, files, vectors, approximate)


def allocate_vectors(directory: Path, count: int, dim: int, dtype: str) -> tuple[np.ndarray, str]:
    """A new, writable ``.npy`` file (count, D) of ``dtype`` under a fresh build id, filled by the caller in place."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"vectors-{os.urandom(6).hex()}.npy"
    return np.lib.format.open_memmap(directory / name, mode="w+", dtype=dtype, shape=(count, dim)), name


def discard_build(directory: Path, vectors_name: str, remove_directory: bool = False) -> None:
    """Remove an unpublished build's files (and ``directory`` itself when the build created it and it is now empty)."""
    build_id = vectors_name.removeprefix("vectors-").removesuffix(".npy")
    for name in (vectors_name, f"files-{build_id}.json", f"faiss-{build_id}.index", f".{INDEX_FILE}.{build_id}"):
        (directory / name).unlink(missing_ok=True)
    if remove_directory and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def publish_index(directory: Path, meta: dict, files: dict, approximate: ApproximateIndex | None = None) -> None:
    """Write the file list (and FAISS index) beside ``meta["vectors"]``, then replace ``index.json`` atomically.

    The previous build's files are removed only after the new ``index.json`` is in place; a
    reader holding them open (memory-mapped) keeps reading them until it reopens.
    """
    build_id = meta["vectors"].removeprefix("vectors-").removesuffix(".npy")
    try:
        previous = read_meta(directory)
    except CnnkitError:  # none, or damaged: nothing of it to clean up by name
        previous = {}
    meta = {**meta, "files": f"files-{build_id}.json", "approximate": None}
    (directory / meta["files"]).write_text(json.dumps(files))
    if approximate is not None:
        meta["approximate"] = {**approximate.info, "file": f"faiss-{build_id}.index"}
        approximate.write(directory / meta["approximate"]["file"])
    staging = directory / f".{INDEX_FILE}.{build_id}"
    staging.write_text(json.dumps(meta, indent=2))
    os.replace(staging, directory / INDEX_FILE)
    stale = [previous.get("vectors"), previous.get("files"), (previous.get("approximate") or {}).get("file")]
    for name in filter(None, stale):
        if name not in (meta["vectors"], meta["files"]):
            with contextlib.suppress(OSError):  # published already: a leftover file must not undo it
                (directory / name).unlink(missing_ok=True)
