"""Decoded-image cache: each image folder is decoded and resized once, into a memory-mapped uint8 file.

Later epochs and later runs read pixels straight from the page cache instead of decoding
JPEGs again. An entry is a directory ``<cache>/images/<key>/`` holding ``pixels.u8`` (raw
uint8 rows of shape (H, W, C), channels last) and ``meta.json``. The key hashes the file
list with sizes and modification times, the preprocessing and the row order, so any change
to the files builds a fresh entry.

Safety: an entry is built in a private temporary directory and published with one atomic
rename, so an interrupted build never leaves a half-written entry that could be read. A
lock file makes a second run that starts at the same time wait for the first build and
reuse it instead of decoding everything twice. Files are memory-mapped copy-on-write:
nothing a run does can change an entry on disk.

Space: an entry's size is known before decoding (N x H x W x C bytes), so a build that
would not fit the cache disk is refused up front, and the file is allocated before any
worker writes to it: a full disk is an error with a message, never a worker killed by
SIGBUS. A failed build leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from cnnkit.data.decode import MAX_PIXELS, ImageDecodeError, capture_warnings, decode_resized, to_array
from cnnkit.errors import CnnkitError

CACHE_VERSION = 2  # 2: meta.json records Pillow's warnings per file ("notes")
PIXELS = "pixels.u8"
META = "meta.json"
CHUNK = 128  # files per task: large enough to amortise process hand-offs, small enough to balance cores
# A build leaves this much (at most a tenth of the free space) on the cache disk: it never fills the disk.
FREE_SPACE_MARGIN = 256 << 20
Entry = TypeVar("Entry")  # what a cache opens: DecodedImages here, the audio cache's clips
SPACE_ADVICE = "free space there, lower --img-size, or set $CNNKIT_CACHE_DIR to a folder on a larger disk"


def cache_root() -> Path:
    """``$CNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit``."""
    if configured := os.environ.get("CNNKIT_CACHE_DIR"):
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnkit"


@dataclass
class DecodedImages:
    """The decoded rows of one folder, in the order asked for, with the files that could not be decoded.

    Attributes:
        images: uint8 tensor (N, C, H, W), a channels-last view of the memory-mapped file.
        kept: For each row of ``images``, its index in the list of files asked for.
        failures: (index in the file list, reason) for each file left out.
        all_gray: Every decoded image was grayscale.
        notes: (index in the file list, warning) for each warning Pillow raised while decoding a kept file.
    """

    images: torch.Tensor
    kept: list[int]
    failures: list[tuple[int, str]]
    all_gray: bool
    notes: list[tuple[int, str]]


def fingerprint(header: str, root: Path, files: Sequence[str], follow_links: bool = True) -> str:
    """SHA-256 of ``header`` and each file's name, size and modification time: it changes when any file does."""
    digest = hashlib.sha256(header.encode())
    for rel in files:
        try:
            status = (root / rel).stat() if follow_links else (root / rel).lstat()
            digest.update(f"\0{rel}\0{status.st_size}\0{status.st_mtime_ns}".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"\0{rel}\0missing".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def cache_key(root: Path, files: Sequence[str], img_size: int, channels: int | None, resize: str) -> str:
    """Hash of everything that decides an entry's bytes: files (names, sizes, mtimes), order and preprocessing."""
    header = f"{CACHE_VERSION}:{MAX_PIXELS}:{img_size}:{channels}:{resize}:{root.resolve()}"
    return fingerprint(header, root, files)[:32]


def _decode_chunk(
    pixels_path: str, shape: tuple[int, ...], root: str, rows: list[tuple[int, str]], img_size: int, resize: str
) -> tuple[list[tuple[int, str]], list[int], list[tuple[int, str]]]:
    """Decode files into their rows of the shared file; returns (failures, rows that were colour, warnings)."""
    pixels = np.memmap(pixels_path, np.uint8, "r+", shape=shape)
    channels = shape[-1]
    failures, colour, notes = [], [], []
    with capture_warnings():  # one thread per worker process, or the caller's thread
        for row, rel in rows:
            path = os.path.join(root, rel)
            found: list[str] = []
            try:
                image = decode_resized(path, img_size, resize, notes=found)
            except ImageDecodeError as error:
                failures.append((row, str(error).replace(path, "file")))
                continue
            notes += [(row, note) for note in found]
            if image.mode != "L":
                colour.append(row)
            pixels[row] = to_array(image, channels).transpose(1, 2, 0)
    pixels.flush()
    return failures, colour, notes


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork starts workers in milliseconds; the workers only run Pillow and NumPy, never torch.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


@contextlib.contextmanager
def staged(entry: Path, marker: str = META) -> Iterator[Path]:
    """A private folder beside ``entry`` to build it in, published as ``entry`` by one rename if the block succeeds.

    The folder is removed in any case, so a failed or interrupted build leaves nothing that
    could be read; when another run published an entry holding ``marker`` first, its copy stands.
    """
    staging = entry.with_name(f"{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        yield staging
        try:
            os.rename(staging, entry)
        except OSError:
            if not (entry / marker).exists():  # not a build that finished first: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build(
    entry: Path, root: Path, files: Sequence[str], img_size: int, channels: int | None, resize: str, workers: int
) -> None:
    """Decode every file into a temporary directory, drop failed rows, and publish it as ``entry``."""
    with staged(entry) as staging:
        stored_channels = channels or 3
        shape = (len(files), img_size, img_size, stored_channels)
        pixels_path = staging / PIXELS
        _allocate(pixels_path, int(np.prod(shape)))
        rows = list(enumerate(files))
        chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
        failures: list[tuple[int, str]] = []
        notes: list[tuple[int, str]] = []
        colour: set[int] = set()
        args = (str(pixels_path), shape, str(root))
        if workers > 1 and len(chunks) > 1:
            with _pool(workers) as pool:
                results = list(pool.map(_decode_chunk, *zip(*[(*args, c, img_size, resize) for c in chunks])))
        else:
            results = [_decode_chunk(*args, c, img_size, resize) for c in chunks]
        for chunk_failures, chunk_colour, chunk_notes in results:
            failures += chunk_failures
            colour.update(chunk_colour)
            notes += chunk_notes
        failed = {row for row, _ in failures}
        kept = [row for row in range(len(files)) if row not in failed]
        all_gray = not colour and bool(kept)
        out_channels = 1 if channels is None and all_gray else stored_channels
        _compact(pixels_path, shape, kept, out_channels)
        meta = {
            "version": CACHE_VERSION,
            "shape": [len(kept), img_size, img_size, out_channels],
            "kept": kept,
            "failures": failures,
            "all_gray": all_gray,
            "notes": notes,
        }
        (staging / META).write_text(json.dumps(meta))
        for name in (PIXELS, META):
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())


def _allocate(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes reserved on disk: no space raises ENOSPC here, not SIGBUS in a worker."""
    with open(path, "wb") as handle:
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
                return
            except OSError as error:
                if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # file systems without it: a sparse file
                    raise
        handle.truncate(size)


def format_size(size: float) -> str:
    """Bytes for a message: ``7.1 MB``, ``3.6 TB`` (powers of 1000, as disk tools report them)."""
    units = ("bytes", "KB", "MB", "GB", "TB", "PB")
    power = 0
    while size >= 1000 and power < len(units) - 1:
        size /= 1000
        power += 1
    return f"{size:.0f} bytes" if power == 0 else f"{size:.1f} {units[power]}"


def _check_space(base: Path, count: int, img_size: int, channels: int) -> int:
    """Refuse a build of ``count`` images that would not fit on the cache disk; returns the bytes it needs."""
    needed = count * img_size * img_size * channels
    free = shutil.disk_usage(base).free
    margin = min(FREE_SPACE_MARGIN, free // 10)
    if needed > free - margin:
        kept = f", of which cnnkit leaves {format_size(margin)} free" if needed <= free else ""
        raise CnnkitError(
            f"the image cache needs {format_size(needed)} for {count} images at {img_size}x{img_size}x{channels} "
            f"(--img-size {img_size}), but {base} has {format_size(free)} free{kept}; {SPACE_ADVICE}"
        )
    return needed


def _build_failure(base: Path, needed: int, error: BaseException) -> CnnkitError:
    """One line for a build that stopped: what happened, the space it needed and had, and what to do."""
    if isinstance(error, BrokenProcessPool):
        what = "a decoding process was killed, by a lack of memory or a full disk"
    elif isinstance(error, MemoryError):
        what = "out of memory"
    elif isinstance(error, OSError) and error.errno == errno.ENOSPC:
        what = "the disk is full"
    else:
        what = str(getattr(error, "strerror", None) or error)
    free = shutil.disk_usage(base).free if base.is_dir() else 0
    return CnnkitError(
        f"building the image cache in {base} failed: {what} ({format_size(needed)} needed, "
        f"{format_size(free)} free now); {SPACE_ADVICE}"
    )


def _compact(pixels_path: Path, shape: tuple[int, ...], kept: list[int], channels: int) -> None:
    """Move kept rows to the front (keeping ``channels``) and cut the file to size, in bounded-memory blocks."""
    if len(kept) == shape[0] and channels == shape[-1]:
        return
    pixels = np.memmap(pixels_path, np.uint8, "r+", shape=shape)
    block = max(1, (64 << 20) // max(1, int(np.prod(shape[1:]))))
    for start in range(0, len(kept), block):  # kept is increasing, so rows only ever move forwards in the file
        rows = kept[start : start + block]
        chunk = np.array(pixels[rows][..., :channels])  # (b, H, W, channels)
        flat = pixels.reshape(-1)
        offset = start * int(np.prod(shape[1:3])) * channels
        flat[offset : offset + chunk.size] = chunk.reshape(-1)
    pixels.flush()
    del pixels
    with open(pixels_path, "r+b") as handle:
        handle.truncate(len(kept) * shape[1] * shape[2] * channels)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (POSIX); elsewhere the atomic rename alone keeps entries whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_entry(entry: Path) -> DecodedImages | None:
    try:
        meta = json.loads((entry / META).read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        shape = tuple(meta["shape"])
        if (entry / PIXELS).stat().st_size != int(np.prod(shape)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if shape[0] == 0:
        pixels = torch.zeros(shape, dtype=torch.uint8)
    else:
        pixels = torch.from_numpy(np.memmap(entry / PIXELS, np.uint8, "c", shape=shape))
    failures = [(int(row), str(reason)) for row, reason in meta["failures"]]
    notes = [(int(row), str(note)) for row, note in meta["notes"]]
    kept = [int(i) for i in meta["kept"]]
    return DecodedImages(pixels.permute(0, 3, 1, 2), kept, failures, bool(meta["all_gray"]), notes)


def decode_cached(
    root: Path,
    files: Sequence[str],
    img_size: int,
    channels: int | None,
    resize: str,
    workers: int,
    cache: Path | None = None,
) -> DecodedImages:
    """Decode ``files`` (relative to ``root``) at ``img_size``, through the cache.

    With ``channels=None`` the rows are grayscale when every image is, otherwise RGB.
    The first call decodes in ``workers`` processes; later calls with the same files and
    preprocessing only map the file.
    """
    base = (cache or cache_root()) / "images"
    entry = base / cache_key(root, files, img_size, channels, resize)

    def build() -> None:
        needed = _check_space(base, len(files), img_size, channels or 3)
        try:
            _build(entry, root, files, img_size, channels, resize, workers)
        except (OSError, MemoryError, BrokenProcessPool) as error:
            raise _build_failure(base, needed, error) from None

    return open_or_build(entry, _open_entry, build)


def open_or_build(entry: Path, open_entry: Callable[[Path], Entry | None], build: Callable[[], None]) -> Entry:
    """The cache entry at ``entry``, opened if whole, else built once under a lock (a second run waits and reuses it).

    ``open_entry`` returns None for a missing, damaged or other-version entry, which is
    replaced; ``build`` publishes the entry atomically. The image and audio caches share this.
    """
    found = open_entry(entry)
    if found is not None:
        return found
    lock = entry.with_name(entry.name + ".lock")
    with locked(lock):
        found = open_entry(entry)  # built by a run that held the lock before us
        if found is not None:
            return found
        if entry.exists():  # an entry from another cnnkit version or damaged: replace it
            shutil.rmtree(entry)
        for stale in entry.parent.glob(f"{entry.name}.tmp-*"):  # left by an interrupted build of this key
            shutil.rmtree(stale, ignore_errors=True)
        try:
            build()
        except BaseException:
            # Nothing of a failed build stays; a run waiting on this lock builds (entries are published atomically).
            lock.unlink(missing_ok=True)
            raise
    found = open_entry(entry)
    if found is None:
        raise OSError(f"the cache entry {entry} could not be read back after building it")
    return found
