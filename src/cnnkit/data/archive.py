"""Dataset archives: downloaded once into the cache, checked, and unpacked safely and atomically.

A :class:`DatasetArchive` names where a dataset's tarball lives and how to know it is the right
one: the SHA-256 of the archive (when its bytes are stable) or of the files it unpacks to (when a
host such as GitHub regenerates the archive). :func:`fetch_archive` downloads through
:func:`cnnkit.data.builtin.download` (a temporary file, so a broken download leaves nothing),
refuses a checksum mismatch, and unpacks with tarfile's ``data`` filter (no absolute paths, no
``..``, no links out of the folder, no devices) into a staging folder that is published with one
rename: an interrupted run never leaves a half-unpacked dataset that a later run would trust.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cnnkit.data.builtin import cache_dir, download
from cnnkit.data.cache import locked, staged
from cnnkit.errors import CnnkitError


@dataclass(frozen=True)
class DatasetArchive:
    """A dataset's official tarball and what proves a copy of it whole.

    Attributes:
        name: The dataset's folder under the download cache (``datasets/<name>``).
        url: Where to download it (``file://`` URLs work too).
        marker: A path inside the unpacked dataset that only a complete copy has.
        archive_sha256: SHA-256 of the archive's bytes, or None where the host regenerates them.
        content_sha256: SHA-256 of the unpacked files under ``content_dir`` (see :func:`content_digest`), or None.
        content_dir: The folder whose files ``content_sha256`` covers, relative to the dataset root.
    """

    name: str
    url: str
    marker: str
    archive_sha256: str | None = None
    content_sha256: str | None = None
    content_dir: str = "."


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def content_digest(folder: Path) -> str:
    """SHA-256 over each file's name and SHA-256, in name order: the same for any archive of the same files."""
    digest = hashlib.sha256()
    for path in sorted(path for path in folder.iterdir() if path.is_file()):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _lift(staging: Path, marker: str) -> None:
    """Make ``staging`` the dataset root: an archive's one top-level folder holding ``marker`` is emptied into it."""
    if (staging / marker).exists():
        return
    entries = list(staging.iterdir())
    if len(entries) != 1 or not (entries[0] / marker).exists():
        raise CnnkitError(f"the archive does not hold {marker}; it is not this dataset (delete it and retry)")
    top = entries[0].rename(staging / f".top-{uuid.uuid4().hex[:8]}")  # a child may share its name
    for child in top.iterdir():
        child.rename(staging / child.name)
    top.rmdir()


def extract_archive(archive: Path, target: Path, dataset: DatasetArchive) -> Path:
    """Unpack a tarball into ``target`` safely and atomically, checking its files; returns ``target``.

    Members with absolute or ``..`` names are refused; tarfile's ``data`` filter refuses links out
    of the folder and devices. The files are checked against ``dataset.content_sha256`` before
    ``target`` appears, so a copy that is there is a checked one.

    Raises:
        CnnkitError: the file is not a readable tarball, a member would land outside ``target``,
            the archive lacks ``dataset.marker``, or its files are not the expected ones.
    """
    with staged(target, dataset.marker) as staging:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar.getmembers():  # the filter would unpack "/x" as "x": refuse it, as ".." is
                    if member.name.startswith(("/", "\\")) or ".." in PurePosixPath(member.name).parts:
                        raise CnnkitError(f"refused to unpack {archive}: member {member.name!r} points outside it")
                tar.extractall(staging, filter="data")
        except tarfile.FilterError as error:
            raise CnnkitError(f"refused to unpack {archive}: {error} (an unsafe archive); delete it") from None
        except (tarfile.TarError, EOFError, OSError) as error:
            raise CnnkitError(f"{archive} is not a readable tar archive ({error}); delete it and retry") from None
        _lift(staging, dataset.marker)
        if dataset.content_sha256 and content_digest(staging / dataset.content_dir) != dataset.content_sha256:
            raise CnnkitError(f"the {dataset.name} files in {archive} are not the expected ones; delete it, retry")
    return target


def fetch_archive(dataset: DatasetArchive) -> Path:
    """The dataset's unpacked folder in the download cache, downloaded, checked and unpacked if not there yet.

    A lock makes a second run wait for the first download instead of fetching it twice. The
    archive is deleted once unpacked (Speech Commands' is 2.3 GB) or when it fails a check.
    """
    target = cache_dir() / dataset.name
    if (target / dataset.marker).exists():
        return target
    with locked(cache_dir() / f"{dataset.name}.lock"):
        if (target / dataset.marker).exists():  # fetched by a run that held the lock before us
            return target
        for stale in cache_dir().glob(f"{dataset.name}.tmp-*"):  # left by an interrupted unpacking
            shutil.rmtree(stale, ignore_errors=True)
        archive = cache_dir() / f"{dataset.name}.tar.gz"
        if not archive.is_file():
            try:
                download(dataset.url, archive)
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                raise CnnkitError(
                    f"{dataset.name} is not on this machine and could not be downloaded from {dataset.url} "
                    f"({getattr(error, 'reason', error)}); download and unpack it yourself and pass --data-dir "
                    f"(or set $CNNKIT_DATA_DIR)"
                ) from None
        try:
            if dataset.archive_sha256 and file_sha256(archive) != dataset.archive_sha256:
                raise CnnkitError(f"the {dataset.name} download from {dataset.url} has the wrong SHA-256; retry")
            if target.exists():  # an earlier copy without its marker: incomplete
                shutil.rmtree(target)
            extract_archive(archive, target, dataset)
        finally:
            archive.unlink()  # unpacked, or failed a check: a retry downloads afresh
    return target
