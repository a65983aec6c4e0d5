"""Scan a dataset for files that would crash, corrupt or mislead training, and report them.

``cnnkit check DATA`` and every training run use the same scan: each file under an image
folder is classified (decoded with the one decoding path, symlinks resolved, content
sniffed) and each bad one is listed with its reason. The result is cached, keyed by the
file list with sizes and modification times, so an unchanged folder is scanned once.
Files are only ever read: nothing is modified, moved or deleted.

Warnings stay readable on a console: a few of each kind are shown, and when there are
more, every one is written to a file in the cache (next to the cached scan) that the
summary line names. Folders cnnkit wrote (runs, exports, the cache) are never scanned.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cnnkit.data.cache import cache_root, fingerprint
from cnnkit.data.decode import IMAGE_EXTENSIONS, MAX_PIXELS, ImageDecodeError, capture_warnings, load_image
from cnnkit.data.folder import SPLIT_FOLDERS, ignored_output_warning, is_cnnkit_output, no_images_error
from cnnkit.data.imageset import DataSplits, SkippedFile
from cnnkit.errors import CnnkitError

# A class with this many times fewer training images than the largest gets a warning.
IMBALANCE_RATIO = 10

# Warnings of one kind shown on the console (more go to the full list), and paths shown per duplicate set.
SHOWN_PER_KIND = 3
SHOWN_PATHS = 4

SCAN_VERSION = 2  # 2: console warnings summarised, full list in ``details``

# The scan decodes JPEGs at up to 1/8 of their size (Pillow's draft mode): every byte of the
# compressed data is still read and entropy-decoded, so truncated or corrupt files fail
# as they would at full size, in less time (9.1 s -> 7.2 s on 20,000 photos; reading and
# hashing the bytes are the rest).
SCAN_DRAFT_SIDE = 16

# What a file's first bytes say it is, for files whose name says otherwise.
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
EXTENSION_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


@dataclass
class ScanReport:
    """What a scan found: every image file's verdict, plus warnings about the dataset as a whole."""

    root: str
    files: int = 0
    bad: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hidden: int = 0
    others: int = 0
    digests: dict[str, str] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    full_list: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ScanReport:
        values = dict(values)
        values["bad"] = [SkippedFile(**item) for item in values["bad"]]
        return cls(**values)

    def summary(self) -> str:
        return (
            f"{self.root}: {self.files} image file(s), {len(self.bad)} bad, {len(self.details)} warning(s); "
            f"{self.hidden} hidden and {self.others} non-image file(s) ignored"
        )

    def write_full_list(self) -> None:
        """Write every warning to ``full_list`` when the console shows only some (again if it was deleted)."""
        if self.full_list and not Path(self.full_list).is_file():
            Path(self.full_list).parent.mkdir(parents=True, exist_ok=True)
            Path(self.full_list).write_text("".join(f"{line}\n" for line in self.details), encoding="utf-8")


def _sniff(head: bytes) -> str | None:
    for signature, name in SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.lstrip()[:1] == b"<":
        return "HTML/XML text"
    return None


def _check_file(root: Path, rel: str, decode: bool = True) -> tuple[str | None, str | None, str | None]:
    """Return (reason it is bad, warning, digest of its bytes) for one file under ``root``.

    ``decode=False`` leaves out the decoding check, for callers that decode the file anyway.
    Pillow's warnings about a file that decodes become its warning.
    """
    path = root / rel
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return "broken symlink or symlink loop", None, None
        if not target.is_relative_to(root.resolve()):
            return f"symlink leaves the dataset root (points to {target})", None, None
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"cannot read: {error.strerror or error}", None, None
    if not data:
        return "empty file (0 bytes)", None, None
    found = _sniff(data[:16])
    if found == "HTML/XML text":
        return "not an image: the file holds HTML/XML text", None, None
    notes: list[str] = []
    try:
        if decode:
            load_image(data, min_side=SCAN_DRAFT_SIDE, notes=notes)
    except ImageDecodeError as error:
        return str(error).replace("<bytes>", "file"), None, None
    expected = EXTENSION_FORMATS.get(Path(rel).suffix.lower())
    if found and expected and found != expected:
        notes.insert(0, f"{found} content named {Path(rel).suffix}; read by its content")
    warning = f"{rel}: {'; '.join(notes)}" if notes else None
    return None, warning, hashlib.sha256(data).hexdigest()


def _list_files(root: Path) -> tuple[list[str], int, int, list[str], list[str]]:
    """Image files (relative, sorted), hidden and other files counted, folder links not followed, cnnkit output."""
    images, hidden, others, links, outputs = [], 0, 0, [], []
    for folder, subfolders, names in os.walk(root):
        hidden += sum(1 for name in subfolders if name.startswith(".") or name == "__MACOSX")
        links += [os.path.relpath(os.path.join(folder, d), root) for d in subfolders if os.path.islink(Path(folder, d))]
        visible = sorted(d for d in subfolders if not d.startswith(".") and d != "__MACOSX")
        subfolders[:] = [d for d in visible if not is_cnnkit_output(Path(folder, d))]
        outputs += [os.path.relpath(os.path.join(folder, d), root) for d in visible if d not in subfolders]
        for name in sorted(names):
            if name.startswith("."):
                hidden += 1
            elif Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                images.append(os.path.relpath(os.path.join(folder, name), root))
            else:
                others += 1
    return images, hidden, others, sorted(links), outputs


def _cache_key(root: Path, images: list[str], left_out: list[str]) -> str:
    """The files' fingerprint, and the folders left out (links, cnnkit output): each is a warning of the report."""
    header = f"{SCAN_VERSION}:{MAX_PIXELS}:{root.resolve()}:{chr(0).join(left_out)}"
    return fingerprint(header, root, images, follow_links=False)


def _split_and_class(rel: str) -> tuple[str, str]:
    parts = Path(rel).parts
    for split, names in SPLIT_FOLDERS.items():
        if parts[0] in names and len(parts) > 2:
            return split, parts[1]
    return "all", parts[0] if len(parts) > 1 else ""


def _dataset_warnings(root: Path, report: ScanReport, images: list[str], outputs: list[str]) -> list[tuple[str, ...]]:
    """(kind, warning[, shorter console line]) about the dataset: loose images, empty classes, imbalance, duplicates."""
    warnings = []
    bad = {item.path for item in report.bad}
    counts: Counter = Counter()
    by_digest: dict[str, list[str]] = {}
    loose = [rel for rel in images if len(Path(rel).parts) == 1]
    for rel in images:
        split, name = _split_and_class(rel)
        if rel not in bad and name:
            counts[split, name] += 1
        if rel in report.digests:
            by_digest.setdefault(report.digests[rel], []).append(rel)
    if loose:
        warnings.append(
            (
                "loose",
                f"{len(loose)} image(s) lie directly in {root}, outside any class folder (e.g. {loose[0]}): "
                "training reads only one subfolder per class",
            )
        )
    for split in {split for split, _ in counts} | ({"all"} if not counts else set()):
        base = root / (split if split != "all" else "")
        for folder in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            hidden = folder.name.startswith(".") or folder.name in sum(SPLIT_FOLDERS.values(), ())
            rel = str(folder.relative_to(root))
            if not hidden and rel not in outputs and not counts[split, folder.name]:
                warnings.append(("empty", f"empty class folder (no readable images): {rel}"))
    train_counts = {name: n for (split, name), n in counts.items() if split in ("train", "all")}
    warnings += [("imbalance", warning) for warning in imbalance_warnings(train_counts)]
    return warnings + duplicate_warnings(by_digest.values(), lambda path: _split_and_class(path)[0])


def duplicate_warnings(groups: Iterable[list[str]], split_of: Callable[[str], str]) -> list[tuple[str, str, str]]:
    """(kind, warning, shorter console line) for each group of paths with identical bytes (groups of one pass).

    ``split_of`` names a path's split: identical files in two splits are leakage, not mere duplicates.
    """
    warnings = []
    for paths in groups:
        splits = {split_of(p) for p in paths}
        if len(paths) > 1:
            leak = len(splits) > 1
            where = "across splits (leakage: test scores will be optimistic)" if leak else "duplicates"
            head = f"identical files {where}"
            shown = paths[:SHOWN_PATHS]
            short = f"{head} ({len(paths)} files): {', '.join(shown)} and {len(paths) - len(shown)} more"
            full = f"{head}: {', '.join(paths)}"
            warnings.append(("leak" if leak else "duplicate", full, full if len(paths) == len(shown) else short))
    return warnings


def imbalance_warnings(counts: dict[str, int]) -> list[str]:
    """Warn about classes without training images, and about a class far smaller than the largest."""
    missing = sorted(name for name, count in counts.items() if not count)
    present = {name: count for name, count in counts.items() if count}
    warnings = []
    if missing:
        warnings.append(
            f"no training images for class(es) {', '.join(missing)}: the model cannot learn them; "
            "add readable images to their folders or remove the folders"
        )
    if len(present) > 1:
        largest, smallest = max(present, key=present.get), min(present, key=present.get)
        if present[largest] >= IMBALANCE_RATIO * present[smallest]:
            warnings.append(
                f"heavy class imbalance: {largest} has {present[largest]} training images, {smallest} only "
                f"{present[smallest]}; consider --class-weights balanced or --sampler balanced"
            )
    return warnings


def _summarise(warnings: list[tuple[str, ...]], full_list: Path) -> tuple[list[str], bool]:
    """At most :data:`SHOWN_PER_KIND` lines of each kind, the last counting the rest; True when any was left out.

    ``warnings`` holds (kind, warning) or (kind, warning, shorter line for the console).
    """
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for kind, full, *short in warnings:
        by_kind.setdefault(kind, []).append((full, short[0] if short else full))
    shown, cut = [], False
    for lines in by_kind.values():
        keep = lines if len(lines) <= SHOWN_PER_KIND else lines[: SHOWN_PER_KIND - 1]
        shown += [short for _, short in keep]
        cut = cut or len(keep) < len(lines) or any(short != full for full, short in keep)
        if len(keep) < len(lines):
            shown.append(f"... and {len(lines) - len(keep)} more like these; every warning is in {full_list}")
    if cut and not any(line.endswith(str(full_list)) for line in shown):
        shown.append(f"every warning in full: {full_list}")
    return shown, cut


def check_files(
    root: Path, images: list[str], decode: bool = True, workers: int | None = None
) -> list[tuple[str | None, str | None, str | None]]:
    """(reason it is bad, warning, digest of its bytes) for each file under ``root``, read by parallel threads."""
    from concurrent.futures import ThreadPoolExecutor

    with capture_warnings(), ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda rel: _check_file(root, rel, decode), images))


def scan_folder(
    root: str | Path, use_cache: bool = True, workers: int | None = None, decode: bool = True
) -> ScanReport:
    """Scan an image folder (one subfolder per class, optionally in train/val/test) and report every problem.

    Args:
        root: The dataset folder.
        use_cache: Reuse the result of an earlier scan of the same files (same names,
            sizes and modification times). Defaults to True.
        workers: Threads that decode files; defaults to the number of cores.
        decode: Also decode every file. Training passes False: its image cache decodes
            each file once and reports the failures itself.

    Returns:
        The report: bad files with reasons, dataset warnings (extension mismatches, Pillow's
        warnings, empty classes, duplicates and train/test leakage, class imbalance), counts.
        ``warnings`` holds a few of each kind; ``details`` all of them, also written to
        ``full_list`` (in the cache) when some were left out.

    Raises:
        CnnkitError: the folder is missing or holds no image files.

    Example:
        >>> report = scan_folder("photos")
        >>> [(item.path, item.reason) for item in report.bad]
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CnnkitError(f"data folder not found: {root}; give a folder with one subfolder per class")
    images, hidden, others, links, outputs = _list_files(root)
    if not images:
        raise no_images_error(root)
    key = f"{_cache_key(root, images, links + outputs)}{'' if decode else '-nodecode'}"
    cache = cache_root() / "scans" / f"{key}.json"
    if use_cache and cache.is_file():
        try:
            report = ScanReport.from_dict(json.loads(cache.read_text()))
            report.write_full_list()
            return report
        except (ValueError, TypeError, KeyError):
            pass  # an unreadable cache entry is rescanned and rewritten below
    report = ScanReport(str(root), len(images), hidden=hidden, others=others)
    verdicts = check_files(root, images, decode, workers)
    found = [("output", ignored_output_warning(rel)) for rel in outputs]
    for rel, (reason, warning, digest) in zip(images, verdicts):
        if reason:
            report.bad.append(SkippedFile(rel, reason))
        if warning:
            found.append(("file", warning))
        if digest:
            report.digests[rel] = digest
    found += [("link", f"symlinked folder not followed: {link}") for link in links]
    found += _dataset_warnings(root, report, images, outputs)
    full_list = cache_root() / "scans" / f"{key}-warnings.txt"
    report.details = [warning for _, warning, *_ in found]
    report.warnings, cut = _summarise(found, full_list)
    report.full_list = str(full_list) if cut else None
    report.write_full_list()
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(report.to_dict()))
    return report


def review_splits(splits: DataSplits, scan: ScanReport | None) -> DataSplits:
    """Drop what the scan found bad, list it as skipped, and warn about leakage and imbalance."""
    if scan is not None:
        bad = {item.path: item for item in scan.bad}
        for name in ("train", "val", "test"):
            images = getattr(splits, name)
            setattr(splits, name, images.subset([i for i, s in enumerate(images.sources) if s not in bad]))
        known = {item.path for item in splits.skipped}
        splits.skipped += [item for path, item in bad.items() if path not in known]
        splits.warnings += [w for w in scan.warnings if w not in splits.warnings]
    if not len(splits.train):
        example = f", e.g. {splits.skipped[0].path} ({splits.skipped[0].reason})" if splits.skipped else ""
        raise CnnkitError(
            f"{splits.name}: no readable training images: {len(splits.skipped)} file(s) could not be used{example}; "
            f"`cnnkit check {splits.name}` lists every bad file and why"
        )
    splits.warnings += find_leaks(splits)
    counts = torch.bincount(splits.train.labels, minlength=len(splits.classes)).tolist()
    splits.warnings += [w for w in imbalance_warnings(dict(zip(splits.classes, counts))) if w not in splits.warnings]
    return splits


def find_leaks(splits: DataSplits) -> list[str]:
    """Warn when the same decoded image is in the training split and in val or test."""
    train = {hashlib.sha1(image.numpy().tobytes()).digest(): i for i, image in enumerate(splits.train.images)}
    warnings = []
    for name in ("val", "test"):
        images = getattr(splits, name)
        leaks = [
            (images.sources[i], splits.train.sources[train[key]])
            for i, image in enumerate(images.images)
            if (key := hashlib.sha1(image.numpy().tobytes()).digest()) in train
        ]
        if leaks:
            warnings.append(
                f"{len(leaks)} {name} image(s) also in train (same pixels), e.g. {leaks[0][0]} = {leaks[0][1]}; "
                f"{name} scores will be optimistic: remove the duplicates"
            )
    return warnings
