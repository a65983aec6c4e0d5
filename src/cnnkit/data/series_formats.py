"""Parsers for the files time series come in: UCR-2018 ``.tsv``, aeon/sktime ``.ts``, CSV and NPY.

Each parser returns a :class:`RawSeries`: one float32 array (C, L_i) per series, its
label as text and the row it came from, so every error names the file and the row.
One rule for missing values holds in every format: NaN (``?`` in ``.ts``, an empty cell
in CSV) at the end of a series is padding, so the series is that much shorter (UCR-2018
pads its unequal-length sets this way); anywhere else, and inf anywhere, is an error.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError

FORMATS = {".tsv": "ucr-tsv", ".ts": "aeon-ts", ".csv": "csv", ".npy": "npy"}
_STD_FLOOR = 1e-8  # a constant series (std 0) is only centred, as aeon's and UCR's z-normalisation do
_TS_BOOLEANS = {"timestamps", "missing", "univariate", "equallength", "targetlabel"}
_TS_TAGS = _TS_BOOLEANS | {"problemname", "dimension", "dimensions", "serieslength", "classlabel", "data"}


@dataclass
class RawSeries:
    """Series read from one file, before padding into one tensor.

    Attributes:
        file: The file they were read from.
        series: One float32 array (C, L_i) per series, trailing padding removed.
        labels: The class of each series as text (``"1.0"`` written as ``"1"``).
        rows: Where each series is in the file: a 1-based line for text, an index for NPY.
        declared_classes: The classes the file's header lists (``.ts``), else None.
    """

    file: Path
    series: list[np.ndarray]
    labels: list[str]
    rows: list[int]
    declared_classes: list[str] | None = None

    def where(self, index: int) -> str:
        """``file: row 12`` for the series at ``index``, to name it in a message."""
        kind = "series" if self.file.suffix == ".npy" else "line"
        return f"{self.file}: {kind} {self.rows[index]}"


def read_series_file(file: Path) -> RawSeries:
    """Read one file by its suffix (``.tsv``, ``.ts``, ``.csv``, or an ``X.npy`` with ``y.npy`` beside it)."""
    readers = {".tsv": read_ucr_tsv, ".ts": read_ts, ".csv": read_csv, ".npy": read_npy}
    if file.suffix.lower() not in readers:
        raise CnnkitError(f"{file}: not a series file; use .tsv (UCR), .ts (aeon), .csv or X.npy with y.npy")
    raw = readers[file.suffix.lower()](file)
    if not raw.series:
        raise CnnkitError(f"{file}: holds no series; write one series per row")
    return raw


def canonical_label(text: str) -> str:
    """A label as text, numbers written one way: ``"1.0"`` and ``"1"`` are one class, ``"-1"`` stays."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def trim_padding(values: np.ndarray, where: str) -> np.ndarray:
    """(C, L) -> (C, L') without the trailing steps where every channel is NaN; raises on any NaN or inf left."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    present = ~np.isnan(values).all(axis=0)  # (L,) steps where some channel has a value
    length = int(present.nonzero()[0][-1]) + 1 if present.any() else 0
    if length == 0:
        raise CnnkitError(f"{where}: the series has no values (all NaN); remove the row")
    bad = (~finite[:, :length]).nonzero()
    if len(bad[0]):
        kind = "NaN" if np.isnan(values[bad[0][0], bad[1][0]]) else "inf"
        raise CnnkitError(
            f"{where}: {kind} at step {int(bad[1][0]) + 1} of channel {int(bad[0][0]) + 1}; only trailing NaN "
            "(padding of a shorter series) is allowed: fill or interpolate missing values"
        )
    return values[:, :length]


def _numbers(cells: list[str], where: str) -> np.ndarray:
    """Text cells -> float32 (L,); an empty cell or ``?`` is NaN (missing)."""
    cleaned = ["nan" if cell.strip() in ("", "?") else cell for cell in cells]
    try:
        return np.array(cleaned, dtype=np.float32)
    except ValueError:
        bad = next(cell for cell in cleaned if not _is_number(cell))
        raise CnnkitError(f"{where}: value {bad.strip()!r} is not a number") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _lines(file: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines; an unreadable or empty file is one clear error."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CnnkitError(f"{file}: cannot be read as UTF-8 text ({error.__class__.__name__})") from None
    lines = [(number, line.rstrip("\r\n")) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise CnnkitError(f"{file}: the file is empty; write one series per row")
    return lines


def _table(file: Path, rows: list[tuple[int, list[str]]], label_column: int) -> RawSeries:
    """Rows of cells (one univariate series each, label in ``label_column``) -> series; ragged rows are an error."""
    width = len(rows[0][1])
    raw = RawSeries(file, [], [], [])
    for number, cells in rows:
        where = f"{file}: line {number}"
        if len(cells) != width:
            raise CnnkitError(
                f"{where}: {len(cells)} fields where line {rows[0][0]} has {width}; pad shorter series with NaN"
            )
        if width < 2:
            raise CnnkitError(f"{where}: a label and no values; write the label, then the series")
        label = cells[label_column].strip()
        if not label or label.lower() == "nan":
            raise CnnkitError(f"{where}: the label is missing")
        values = _numbers(cells[:label_column] + cells[label_column + 1 :], where)
        raw.series.append(trim_padding(values[None, :], where))
        raw.labels.append(canonical_label(label))
        raw.rows.append(number)
    return raw


def read_ucr_tsv(file: Path) -> RawSeries:
    """A UCR-2018 ``Name_TRAIN.tsv`` or ``Name_TEST.tsv``: tab-separated, the label first, NaN padding."""
    return _table(file, [(number, line.split("\t")) for number, line in _lines(file)], 0)


def read_csv(file: Path) -> RawSeries:
    """One series per row; the label is the column named ``label`` when there is a header, else the first."""
    lines = _lines(file)
    rows = [(number, cells) for (number, _), cells in zip(lines, csv.reader(line for _, line in lines))]
    header = rows[0][1]
    names = [cell.strip().lower() for cell in header]
    label_column = names.index("label") if "label" in names else 0
    values = header[:label_column] + header[label_column + 1 :]
    if "label" in names or not all(_is_number(cell) or not cell.strip() for cell in values):
        rows = rows[1:]  # a header row: names, not numbers
    if not rows:
        raise CnnkitError(f"{file}: a header and no series; write one series per row")
    return _table(file, rows, label_column)


def _ts_header(file: Path, lines: list[tuple[int, str]]) -> tuple[dict[str, str], int]:
    """The ``@tag value`` lines (keys lowercase) and the index in ``lines`` of the first data line."""
    header: dict[str, str] = {}
    for index, (number, line) in enumerate(lines):
        text = line.strip()
        if text.startswith("#"):
            continue
        if not text.startswith("@"):
            raise CnnkitError(f"{file}: line {number}: data before the @data line; end the header with @data")
        tag, _, value = text[1:].partition(" ")
        tag, value = tag.lower(), re.sub(r"\s+", " ", value.strip())
        if tag not in _TS_TAGS:
            raise CnnkitError(f"{file}: line {number}: unknown header tag @{tag}")
        if tag in _TS_BOOLEANS and value.lower() not in ("true", "false"):
            raise CnnkitError(f"{file}: line {number}: @{tag} needs true or false, not {value!r}")
        if tag == "data":
            return header, index + 1
        header[tag] = value
    raise CnnkitError(f"{file}: malformed .ts header: no @data line before the series")


def _ts_declared(file: Path, header: dict[str, str]) -> tuple[list[str], int | None, int | None]:
    """The declared classes, channels (None when undeclared) and equal length (None when unequal or undeclared)."""
    if header.get("timestamps", "false").lower() == "true":
        raise CnnkitError(f"{file}: @timeStamps true is not supported; write the values without time stamps")
    if header.get("targetlabel", "false").lower() == "true":
        raise CnnkitError(f"{file}: @targetLabel true is a regression set; cnnkit classifies (@classLabel true ...)")
    words = header.get("classlabel", "").split(" ")
    if words[0].lower() != "true" or len(words) < 2:
        raise CnnkitError(f"{file}: malformed .ts header: need '@classLabel true <class> <class> ...'")
    declared = [header.get("dimensions", header.get("dimension", ""))]
    if header.get("univariate", "").lower() == "true":
        declared.append("1")
    length = header.get("serieslength", "") if header.get("equallength", "").lower() == "true" else ""
    for text in [*declared, length]:
        if text and not text.isdigit():
            raise CnnkitError(f"{file}: malformed .ts header: {text!r} where a count belongs")
    channels = {int(text) for text in declared if text}
    if len(channels) > 1:
        raise CnnkitError(f"{file}: malformed .ts header: @univariate true with @dimensions {max(channels)}")
    return [canonical_label(word) for word in words[1:]], next(iter(channels), None), int(length) if length else None


def read_ts(file: Path) -> RawSeries:
    """An aeon/sktime ``.ts`` file: ``@`` header, then ``v,v,...:v,v,...:label`` per case (channels split by ``:``)."""
    lines = _lines(file)
    header, start = _ts_header(file, lines)
    classes, channels, length = _ts_declared(file, header)
    raw = RawSeries(file, [], [], [], declared_classes=classes)
    for number, line in lines[start:]:
        where = f"{file}: line {number}"
        *parts, label = line.strip().split(":")
        if not parts:
            raise CnnkitError(f"{where}: no ':' before the class label; write v,v,...:label")
        if channels is None:
            channels = len(parts)
        if len(parts) != channels:
            raise CnnkitError(f"{where}: {len(parts)} channels where the file has {channels}")
        cells = [part.split(",") for part in parts]
        if len({len(channel) for channel in cells}) > 1:
            raise CnnkitError(f"{where}: channels of unequal length; pad the shorter ones with '?'")
        if length is not None and len(cells[0]) != length:
            raise CnnkitError(f"{where}: {len(cells[0])} values where @seriesLength says {length}")
        label = canonical_label(label)
        if label not in classes:
            raise CnnkitError(f"{where}: unknown label {label!r}; the header's @classLabel lists {' '.join(classes)}")
        values = np.stack([_numbers(channel, where) for channel in cells])  # (C, L)
        raw.series.append(trim_padding(values, where))
        raw.labels.append(label)
        raw.rows.append(number)
    return raw


def _load_npy(file: Path) -> np.ndarray:
    if not file.is_file():
        raise CnnkitError(f"{file}: not found; put X.npy (N, L) or (N, C, L) and y.npy (N,) in one folder")
    try:
        return np.load(file, allow_pickle=False)
    except ValueError:
        raise CnnkitError(f"{file}: holds Python objects or is not a .npy array; save a numeric array") from None
    except OSError as error:
        raise CnnkitError(f"{file}: cannot be read as a .npy array ({error.__class__.__name__})") from None


def _npy_values(file: Path) -> np.ndarray:
    """A ``.npy`` of series, (N, L) or (N, C, L) numbers, as float32 (N, C, L)."""
    values = _load_npy(file)
    if values.ndim not in (2, 3) or values.dtype.kind not in "fiu" or 0 in values.shape:
        raise CnnkitError(f"{file}: shape {values.shape} ({values.dtype}); save numbers as (N, L) or (N, C, L)")
    return values.astype(np.float32).reshape(len(values), -1, values.shape[-1])


def read_npy(file: Path) -> RawSeries:
    """``X.npy`` (N, L) or (N, C, L), with the labels in ``y.npy`` (N,) beside it; never unpickled."""
    label_file = file.with_name(file.name.replace("X", "y", 1))
    values, labels = _npy_values(file), _load_npy(label_file)
    if labels.ndim != 1 or len(labels) != len(values) or labels.dtype.kind not in "iuUf":
        raise CnnkitError(f"{label_file}: shape {labels.shape} ({labels.dtype}); save {len(values)} labels as (N,)")
    raw = RawSeries(file, [], [], [])
    for index, (series, label) in enumerate(zip(values, labels.tolist())):
        raw.series.append(trim_padding(series, f"{file}: series {index}"))
        raw.labels.append(canonical_label(str(label)))
        raw.rows.append(index)
    return raw


def pad_series(series: Sequence[np.ndarray], length: int = 0) -> np.ndarray:
    """(C, L_i) arrays -> float32 (N, C, max(length, L_i)): zeros after each series' own length."""
    values = np.zeros((len(series), series[0].shape[0], max([length, *(s.shape[1] for s in series)])), np.float32)
    for row, one in zip(values, series):
        row[:, : one.shape[1]] = one
    return values


def znormalize_values(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N, C, L) minus each series' and channel's mean, over its std, over its own length; padding stays zero.

    NumPy, so a torch-free prediction (``cnnkit predict model.onnx``) normalises as training did.
    """
    mask = (np.arange(values.shape[-1]) < lengths[:, None])[:, None, :]  # (N, 1, L)
    count = lengths.astype(np.float64)[:, None, None]  # (N, 1, 1)
    x = values.astype(np.float64) * mask
    mean = x.sum(-1, keepdims=True) / count  # (N, C, 1)
    std = np.sqrt((((x - mean) * mask) ** 2).sum(-1, keepdims=True) / count)
    return ((x - mean) / np.maximum(std, _STD_FLOOR) * mask).astype(np.float32)


def read_series_inputs(file: Path, channels: int, length: int, normalize: bool) -> tuple[np.ndarray, list[str]]:
    """The series of one file as a model reads them, and ``file:row`` for each; no labels needed, no torch.

    Text formats are read by their parsers (a UCR ``.tsv`` row and a CSV row still start with a
    label, a ``.ts`` file still declares its classes: the labels are read and ignored); a ``.npy``
    file is the values alone, (N, L) or (N, C, L). Each series is padded with zeros to the
    training set's padded ``length`` (longer ones keep theirs), as training padded it, and
    z-normalised over its own length when the run was.

    Args:
        file: A ``.tsv``, ``.ts``, ``.csv`` or ``.npy`` file.
        channels: The channels the model reads; a series with other channels is refused in one line.
        length: The run's padded length L.
        normalize: Whether the run z-normalised each series.

    Returns:
        float32 (N, C, max(L, longest)) and one ``file:row`` name per series.
    """
    if file.suffix.lower() == ".npy":
        values = _npy_values(file)
        raw = RawSeries(file, [trim_padding(one, f"{file}: series {i}") for i, one in enumerate(values)], [], [])
        raw.rows = list(range(len(values)))
    else:
        raw = read_series_file(file)
    for index, series in enumerate(raw.series):
        if series.shape[0] != channels:
            raise CnnkitError(f"{raw.where(index)}: {series.shape[0]} channel(s), and the model reads {channels}")
    values = pad_series(raw.series, length)
    if normalize:
        values = znormalize_values(values, np.array([series.shape[1] for series in raw.series]))
    return values, [f"{file}:{row}" for row in raw.rows]
