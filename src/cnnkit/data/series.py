"""Time series ready for a 1-D model: one float32 tensor (N, C, L), and the train/val/test split of a set.

:func:`load_series` reads a UCR-2018 ``Name_TRAIN.tsv``/``Name_TEST.tsv`` pair, an aeon
``.ts`` pair or file, a CSV or ``X.npy`` + ``y.npy`` (parsers in
:mod:`cnnkit.data.series_formats`). The splits mirror :class:`cnnkit.data.imageset.DataSplits`:
a set's own TEST file is the test split, validation is carved from TRAIN by the same
stratified split as image folders (:func:`cnnkit.data.imageset.stratified_split`: a hash
of each series' source, so it depends on the files alone, never on a seed or the order
the rows are read in).

Unequal lengths are padded by one rule: zeros after each series' own length, which
``lengths`` records. The 1-D models end in global average pooling, so a series of any
length fits them; zeros after z-normalisation are the series' mean.

Example:
    >>> splits = load_series("GunPoint/", normalize=True)
    >>> splits.train.values.shape, splits.classes
    (torch.Size([45, 1, 150]), ['1', '2'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnkit.data.imageset import stratified_split
from cnnkit.data.series_formats import FORMATS, RawSeries, pad_series, read_series_file, znormalize_values
from cnnkit.errors import CnnkitError

PADDING = "zeros after each series' length"
NORMALIZATION = "z-normalised per series and channel over its length"


@dataclass
class SeriesSet:
    """Series ready for the model, with their true lengths, labels and where each came from.

    Attributes:
        values: float32 (N, C, L), zero after each series' length (``PADDING``).
        lengths: int64 (N,), each series' own number of steps (all L for equal-length sets).
        labels: int64 (N,).
        classes: Class names; ``labels`` index into it.
        sources: One provenance string per series, ``Name_TRAIN.tsv:12`` (file and line or index).
    """

    values: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> torch.Tensor:
        """The tensor batches are taken from, named alike for every kind of data (``ImageSet.inputs``)."""
        return self.values

    def subset(self, indices: Sequence[int] | torch.Tensor) -> SeriesSet:
        """The series at ``indices``, copied."""
        index = torch.as_tensor(indices, dtype=torch.long)
        sources = [self.sources[i] for i in index.tolist()]
        return SeriesSet(self.values[index], self.lengths[index], self.labels[index], self.classes, sources)

    def slice(self, start: int, stop: int) -> SeriesSet:
        """Series ``start:stop`` as a view: no values are copied."""
        return SeriesSet(
            self.values[start:stop],
            self.lengths[start:stop],
            self.labels[start:stop],
            self.classes,
            self.sources[start:stop],
        )


@dataclass
class SeriesSplits:
    """The three splits of one series set, and the facts a run records about how they were read.

    Attributes:
        name: The set's name (``GunPoint`` for ``GunPoint_TRAIN.tsv``).
        train, val, test: The splits.
        split_rule: How the splits were made, in words.
        files: The files read, TRAIN first.
        format: ``ucr-tsv``, ``aeon-ts``, ``csv`` or ``npy``.
        normalize: Whether each series was z-normalised (``NORMALIZATION``).
        warnings: Things worth saying that are not errors.
        skipped: Always empty, as :class:`~cnnkit.data.imageset.DataSplits` has it: a bad row is an error, not skipped.
    """

    name: str
    train: SeriesSet
    val: SeriesSet
    test: SeriesSet
    split_rule: str
    files: list[str]
    format: str
    normalize: bool = False
    warnings: list[str] = field(default_factory=list)
    skipped: list = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def channels(self) -> int:
        return self.train.values.shape[1]

    @property
    def length(self) -> int:
        """Padded length L, the longest series of any split."""
        return self.train.values.shape[2]

    def facts(self) -> dict[str, Any]:
        """What a run stores about its data, JSON-ready: enough to read new series the same way."""
        lengths = torch.cat([self.train.lengths, self.val.lengths, self.test.lengths])
        return {
            "name": self.name,
            "format": self.format,
            "files": self.files,
            "channels": self.channels,
            "length": self.length,
            "min_length": int(lengths.min()),
            "padding": PADDING,
            "normalize": self.normalize,
            "normalization": NORMALIZATION if self.normalize else "none",
            "split_rule": self.split_rule,
        }


def znormalize(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each series and channel minus its mean, over its std, both over its own length; padding stays zero.

    Args:
        values: (N, C, L) series, padded after ``lengths``.
        lengths: (N,) true lengths.

    Returns:
        (N, C, L) float32; a constant channel becomes zeros (centred, not divided by 0).

    Example:
        >>> znormalize(torch.tensor([[[1.0, 3.0, 0.0]]]), torch.tensor([2]))
        tensor([[[-1.,  1.,  0.]]])
    """
    return torch.from_numpy(znormalize_values(values.numpy(), lengths.numpy()))


def is_series(path: str | Path) -> bool:
    """Whether ``path`` is a series file or a folder holding a TRAIN/TEST pair or ``X.npy`` (for a dispatcher)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.suffix.lower() in FORMATS
    return path.is_dir() and (bool(_pairs(path)) or (path / "X.npy").is_file())


def has_test_file(path: str | Path) -> bool:
    """Whether the series at ``path`` come with their own TEST file (a pair folder, or a ``_TRAIN`` file)."""
    return _resolve(Path(path).expanduser())[1] is not None


def load_series(
    path: str | Path, val_split: float = 0.1, test_split: float = 0.2, normalize: bool = False
) -> SeriesSplits:
    """Read a series set as train/val/test splits.

    Args:
        path: A folder with ``Name_TRAIN.tsv`` + ``Name_TEST.tsv`` (or ``.ts``, ``.csv``), or ``X.npy`` +
            ``y.npy``; or one such file (a ``_TRAIN`` file brings its ``_TEST`` sibling).
        val_split: Share of TRAIN held out for validation, stratified. Defaults to 0.1.
        test_split: Share held out for testing when there is no TEST file. Defaults to 0.2.
        normalize: Z-normalise each series and channel over its own length. Defaults to False.

    Returns:
        The splits; every split has the same channels and padded length, and labels index TRAIN's classes.
    """
    path = Path(path).expanduser()
    for flag, share in (("val_split", val_split), ("test_split", test_split)):
        if not 0 <= share < 1:
            raise CnnkitError(f"{flag} {share}: use a share from 0 to below 1 (0.1 is usual)")
    train_file, test_file = _resolve(path)
    sets = [read_series_file(train_file)] + ([read_series_file(test_file)] if test_file else [])
    classes = _classes(sets)
    _check_consistent(sets)
    length = max(series.shape[1] for raw in sets for series in raw.series)
    whole = [_pad(raw, classes, length) for raw in sets]
    if normalize:
        for part in whole:
            part.values = znormalize(part.values, part.lengths)
    if test_file:
        val_idx, train_idx = stratified_split(whole[0].labels, whole[0].sources, [val_split])
        train, val, test = whole[0].subset(train_idx), whole[0].subset(val_idx), whole[1]
        rule = f"the set's own TEST file; val {val_split:.0%} of TRAIN, stratified by hash"
    else:
        test_idx, val_idx, train_idx = stratified_split(whole[0].labels, whole[0].sources, [test_split, val_split])
        train, val, test = (whole[0].subset(part) for part in (train_idx, val_idx, test_idx))
        rule = f"stratified by hash: test {test_split:.0%}, val {val_split:.0%}"
    missing = sorted(set(classes) - {classes[i] for i in test.labels.tolist()}) if test_file else []
    warnings = [f"{test_file}: no series of class {', '.join(missing)}"] if missing else []
    name = train_file.stem.removesuffix("_TRAIN") if train_file.suffix != ".npy" else train_file.parent.name
    files = [str(file) for file in (train_file, test_file) if file]
    return SeriesSplits(name, train, val, test, rule, files, FORMATS[train_file.suffix.lower()], normalize, warnings)


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """The ``Name_TRAIN.<ext>`` files in ``folder`` that have a ``Name_TEST.<ext>`` beside them."""
    trains = sorted(file for file in folder.glob("*_TRAIN.*") if file.suffix.lower() in (".tsv", ".ts", ".csv"))
    return [(file, _test_of(file)) for file in trains if _test_of(file).is_file()]


def _test_of(train_file: Path) -> Path:
    return train_file.with_name(train_file.name.replace("_TRAIN.", "_TEST.", 1))


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """The TRAIN file (or the only file) and the TEST file, if there is one."""
    if path.is_file():
        if path.suffix.lower() == ".npy" and not path.name.startswith("X"):
            raise CnnkitError(f"{path}: pass the values file X.npy (its labels in y.npy beside it)")
        test = _test_of(path) if "_TRAIN." in path.name else None
        return path, test if test and test.is_file() else None
    if not path.is_dir():
        raise CnnkitError(f"{path}: no such file or folder; pass a series file or a folder of them")
    pairs = _pairs(path)
    if len(pairs) > 1:
        names = ", ".join(train.name for train, _ in pairs)
        raise CnnkitError(f"{path}: holds several TRAIN/TEST pairs ({names}); pass one TRAIN file")
    if pairs:
        return pairs[0]
    if (path / "X.npy").is_file():
        return path / "X.npy", None
    raise CnnkitError(f"{path}: no Name_TRAIN.tsv/Name_TEST.tsv pair (or .ts, .csv) and no X.npy with y.npy")


def _label_order(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)  # numbers in numeric order: "2" before "10"
    except ValueError:
        return (1, 0.0, label)


def _classes(sets: list[RawSeries]) -> list[str]:
    """TRAIN's classes and any its ``.ts`` header declares, numbers in numeric order; TEST may add none."""
    train = sets[0]
    classes = sorted(train.declared_classes or set(train.labels), key=_label_order)
    for raw in sets[1:]:
        for index, label in enumerate(raw.labels):
            if label not in classes:
                raise CnnkitError(
                    f"{raw.where(index)}: class {label!r} is not in {train.file.name} "
                    f"(classes {', '.join(classes)}); TRAIN must hold every class"
                )
    return classes


def _check_consistent(sets: list[RawSeries]) -> None:
    """Every series has TRAIN's channels; two equal-length splits have one length."""
    channels = sets[0].series[0].shape[0]
    for raw in sets:
        for index, series in enumerate(raw.series):
            if series.shape[0] != channels:
                raise CnnkitError(
                    f"{raw.where(index)}: {series.shape[0]} channels where {sets[0].where(0)} has {channels}"
                )
    lengths = [{series.shape[1] for series in raw.series} for raw in sets]
    if len(sets) == 2 and len(lengths[0]) == len(lengths[1]) == 1 and lengths[0] != lengths[1]:
        raise CnnkitError(
            f"{sets[1].file}: series of length {lengths[1].pop()} where {sets[0].file.name} has "
            f"{lengths[0].pop()}; TRAIN and TEST must have one length (or pad with NaN)"
        )


def _pad(raw: RawSeries, classes: list[str], length: int) -> SeriesSet:
    values = pad_series(raw.series, length)  # (N, C, L)
    lengths = torch.tensor([series.shape[1] for series in raw.series], dtype=torch.long)
    labels = torch.tensor([classes.index(label) for label in raw.labels], dtype=torch.long)
    sources = [f"{raw.file.name}:{row}" for row in raw.rows]
    return SeriesSet(torch.from_numpy(values), lengths, labels, classes, sources)
