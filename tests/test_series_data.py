"""Series readers on tiny files written here: UCR tsv, aeon .ts, CSV, NPY; padding, z-normalisation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnkit.data.series import PADDING, is_series, load_series, znormalize
from cnnkit.errors import CnnkitError

NAN = float("nan")


def write_tsv(path, rows):
    path.write_text("".join("\t".join(str(cell) for cell in row) + "\n" for row in rows))
    return path


def ucr_pair(folder, train=None, test=None):
    """Two classes, length 5; the last TRAIN series of each class is NaN-padded to length 3 (as UCR pads)."""
    folder.mkdir(exist_ok=True)
    train = train or [
        [1, 1, 2, 3, 4, 5],
        [1, 2, 2, 2, 2, 2],
        [1, 0, 1, 0, NAN, NAN],
        [2, 5, 4, 3, 2, 1],
        [2, 9, 8, 7, 6, 5],
        [2, 1, 1, 1, NAN, NAN],
    ]
    test = test or [[1, 1, 2, 3, 4, 6], [2, 6, 4, 3, 2, 1]]
    write_tsv(folder / "Toy_TRAIN.tsv", train)
    write_tsv(folder / "Toy_TEST.tsv", test)
    return folder


TS_HEADER = """# a comment line
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true walk run
@data
"""


def test_load_series_reads_a_ucr_pair_with_nan_padding(tmp_path):
    splits = load_series(ucr_pair(tmp_path / "toy"), val_split=0.0)
    assert splits.name == "Toy" and splits.format == "ucr-tsv" and splits.classes == ["1", "2"]
    assert splits.train.values.shape == (6, 1, 5) and splits.test.values.shape == (2, 1, 5)
    assert splits.train.values.dtype == torch.float32 and len(splits.val) == 0
    assert splits.train.lengths.tolist() == [5, 5, 3, 5, 5, 3] and splits.test.labels.tolist() == [0, 1]
    assert splits.train.values[2, 0].tolist() == [0, 1, 0, 0, 0]  # padded by the one rule: zeros after its length
    assert splits.train.sources[2] == "Toy_TRAIN.tsv:3" and splits.test.sources[1] == "Toy_TEST.tsv:2"
    facts = splits.facts()
    assert facts["padding"] == PADDING and facts["min_length"] == 3 and facts["normalize"] is False
    json.dumps(facts)  # stored with the run: JSON-ready


def test_load_series_carves_validation_from_train_stratified_and_deterministic(tmp_path):
    rows = [[label, *np.arange(4) + i] for label in (1, 2) for i in range(10)]
    folder = ucr_pair(tmp_path / "toy", train=rows, test=[[1, 0, 1, 2, 3]])
    first, again = load_series(folder, val_split=0.2), load_series(folder, val_split=0.2)
    assert first.val.labels.tolist() == [0, 0, 1, 1] and len(first.train) == 16
    assert first.val.sources == again.val.sources and not set(first.val.sources) & set(first.train.sources)
    assert "TEST" in first.split_rule


def test_load_series_reads_a_multivariate_unequal_ts_file_with_missing_padding(tmp_path):
    ts = tmp_path / "Toy_TRAIN.ts"
    ts.write_text(TS_HEADER + "1,2,3,4:5,6,7,8:walk\n1,2,?:3,4,?:run\n9,9,9,9:1,1,1,1:run\n")
    splits = load_series(ts, val_split=0.0, test_split=0.0)
    assert splits.format == "aeon-ts" and splits.classes == ["run", "walk"]  # sorted, whatever the header's order
    assert splits.train.values.shape == (3, 2, 4) and splits.train.lengths.tolist() == [4, 2, 4]
    assert splits.train.values[1].tolist() == [[1, 2, 0, 0], [3, 4, 0, 0]]
    assert splits.train.labels.tolist() == [1, 0, 0] and splits.channels == 2


def test_load_series_reads_csv_with_a_label_column_or_the_first_column(tmp_path):
    named = tmp_path / "named.csv"
    named.write_text("t0,t1,label,t2\n1,2,a,3\n4,5,b,6\n7,8,a,\n")
    splits = load_series(named, val_split=0.0, test_split=0.0)
    assert splits.classes == ["a", "b"] and splits.train.values[1, 0].tolist() == [4, 5, 6]
    assert splits.train.lengths.tolist() == [3, 3, 2]
    plain = tmp_path / "plain.csv"
    plain.write_text("1.0,0.5,0.25\n2,1.5,1.25\n")
    splits = load_series(plain, val_split=0.0, test_split=0.0)
    assert splits.classes == ["1", "2"] and splits.train.values[:, 0].tolist() == [[0.5, 0.25], [1.5, 1.25]]


@pytest.mark.parametrize("shape", [(6, 10), (6, 3, 10)])
def test_load_series_reads_npy_univariate_and_multivariate(tmp_path, shape):
    values = np.random.default_rng(0).normal(size=shape).astype(np.float64)
    np.save(tmp_path / "X.npy", values)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    splits = load_series(tmp_path, val_split=0.0, test_split=0.0)
    channels = shape[1] if len(shape) == 3 else 1
    assert splits.format == "npy" and splits.train.values.shape == (6, channels, 10)
    assert splits.classes == ["0", "1", "2"]
    assert np.allclose(splits.train.values.numpy(), values.reshape(6, channels, 10), atol=1e-6)
    assert is_series(tmp_path) and is_series(tmp_path / "X.npy") and not is_series(tmp_path / "nothing")


def test_load_series_without_a_test_file_carves_test_and_val(tmp_path):
    np.save(tmp_path / "X.npy", np.arange(100, dtype=np.float32).reshape(20, 5))
    np.save(tmp_path / "y.npy", np.array(["a", "b"] * 10))
    splits = load_series(tmp_path, val_split=0.2, test_split=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    assert sorted(splits.train.sources + splits.val.sources + splits.test.sources) == sorted(
        f"X.npy:{i}" for i in range(20)
    )


def test_znormalize_uses_each_series_and_channels_own_length():
    values = torch.tensor([[[1.0, 2.0, 3.0, 0.0], [5.0, 5.0, 5.0, 0.0]], [[2, 4, 6, 8], [1.0, -1.0, 1.0, -1.0]]])
    out = znormalize(values, torch.tensor([3, 4]))
    reference = (values[0, 0, :3] - values[0, 0, :3].mean()) / values[0, 0, :3].std(unbiased=False)
    assert torch.allclose(out[0, 0, :3], reference) and out[0, 0, 3] == 0  # padding stays zero
    assert torch.equal(out[0, 1], torch.zeros(4))  # a constant channel is centred, not divided by zero
    assert torch.allclose(out[1].mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(out[1].std(-1, unbiased=False), torch.ones(2))


def test_load_series_normalize_is_recorded(tmp_path):
    splits = load_series(ucr_pair(tmp_path / "toy"), val_split=0.0, normalize=True)
    assert splits.facts()["normalize"] is True and "z-normalised" in splits.facts()["normalization"]
    assert torch.allclose(splits.test.values.mean(-1), torch.zeros(2, 1), atol=1e-6)
    third = splits.train.values[2, 0]
    assert torch.allclose(third[:3].mean(), torch.tensor(0.0), atol=1e-6) and third[3:].tolist() == [0, 0]


def bad_interior_nan(tmp_path):
    return ucr_pair(tmp_path, train=[[1, 1, NAN, 3], [2, 1, 2, 3]], test=[[1, 1, 2, 3]])


def bad_inf(tmp_path):
    return ucr_pair(tmp_path, train=[[1, 1, 2, 3], [2, 1, "inf", 3]], test=[[1, 1, 2, 3]])


def bad_ragged(tmp_path):
    return ucr_pair(tmp_path, train=[[1, 1, 2, 3], [2, 1, 2]], test=[[1, 1, 2, 3]])


def bad_lengths(tmp_path):
    return ucr_pair(tmp_path, train=[[1, 1, 2, 3], [2, 1, 2, 3]], test=[[1, 1, 2, 3, 4]])


def bad_test_class(tmp_path):
    return ucr_pair(tmp_path, train=[[1, 1, 2, 3], [2, 1, 2, 3]], test=[[1, 1, 2, 3], [3, 1, 2, 3]])


def bad_word(tmp_path):
    return ucr_pair(tmp_path, train=[[1, 1, 2, 3], [2, 1, "x7", 3]], test=[[1, 1, 2, 3]])


def bad_empty(tmp_path):
    folder = ucr_pair(tmp_path)
    (folder / "Toy_TEST.tsv").write_text("\n")
    return folder


def bad_all_nan(tmp_path):
    return ucr_pair(tmp_path, train=[[1, 1, 2, 3], [2, NAN, NAN, NAN]], test=[[1, 1, 2, 3]])


def bad_channels(tmp_path):
    (tmp_path / "Toy_TRAIN.ts").write_text(TS_HEADER.replace("@dimensions 2\n", "") + "1,2:3,4:walk\n1,2:run\n")
    return tmp_path / "Toy_TRAIN.ts"


def bad_test_channels(tmp_path):
    (tmp_path / "Toy_TRAIN.ts").write_text(TS_HEADER + "1,2:3,4:walk\n")
    (tmp_path / "Toy_TEST.ts").write_text(TS_HEADER.replace("@dimensions 2", "@dimensions 1") + "1,2:walk\n")
    return tmp_path


def bad_ts_label(tmp_path):
    (tmp_path / "a.ts").write_text(TS_HEADER + "1,2:3,4:walk\n1,2:3,4:jump\n")
    return tmp_path / "a.ts"


def bad_ts_no_data(tmp_path):
    (tmp_path / "a.ts").write_text(TS_HEADER.replace("@data\n", ""))
    return tmp_path / "a.ts"


def bad_ts_no_labels(tmp_path):
    (tmp_path / "a.ts").write_text(TS_HEADER.replace("@classLabel true walk run", "@classLabel false") + "1,2:3,4\n")
    return tmp_path / "a.ts"


def bad_ts_boolean(tmp_path):
    (tmp_path / "a.ts").write_text(TS_HEADER.replace("@missing true", "@missing maybe") + "1,2:3,4:walk\n")
    return tmp_path / "a.ts"


def bad_ts_unequal_channels(tmp_path):
    (tmp_path / "a.ts").write_text(TS_HEADER + "1,2,3:3,4:walk\n")
    return tmp_path / "a.ts"


def bad_npy_objects(tmp_path):
    np.save(tmp_path / "X.npy", np.array([[1.0, 2.0]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.array([0]))
    return tmp_path


def bad_npy_labels(tmp_path):
    np.save(tmp_path / "X.npy", np.zeros((3, 4), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    return tmp_path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (bad_interior_nan, r"Toy_TRAIN\.tsv: line 1: NaN at step 2 of channel 1; only trailing NaN"),
        (bad_inf, r"Toy_TRAIN\.tsv: line 2: inf at step 2"),
        (bad_ragged, r"Toy_TRAIN\.tsv: line 2: 3 fields where line 1 has 4"),
        (bad_lengths, r"Toy_TEST\.tsv: series of length 4 where Toy_TRAIN\.tsv has 3"),
        (bad_test_class, r"Toy_TEST\.tsv: line 2: class '3' is not in Toy_TRAIN\.tsv"),
        (bad_word, r"Toy_TRAIN\.tsv: line 2: value 'x7' is not a number"),
        (bad_empty, r"Toy_TEST\.tsv: the file is empty"),
        (bad_all_nan, r"Toy_TRAIN\.tsv: line 2: the series has no values"),
        (bad_channels, r"Toy_TRAIN\.ts: line 10: 1 channels where the file has 2"),
        (bad_test_channels, r"Toy_TEST\.ts: line 10: 1 channels where .*Toy_TRAIN\.ts: line 10 has 2"),
        (bad_ts_label, r"a\.ts: line 11: unknown label 'jump'; the header's @classLabel lists walk run"),
        (bad_ts_no_data, r"a\.ts: malformed \.ts header: no @data line"),
        (bad_ts_no_labels, r"a\.ts: malformed \.ts header: need '@classLabel true"),
        (bad_ts_boolean, r"a\.ts: line 4: @missing needs true or false"),
        (bad_ts_unequal_channels, r"a\.ts: line 10: channels of unequal length"),
        (bad_npy_objects, r"X\.npy: holds Python objects"),
        (bad_npy_labels, r"y\.npy: shape \(2,\) \(int64\); save 3 labels"),
    ],
)
def test_load_series_refuses_bad_input_in_one_line_naming_file_and_row(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(CnnkitError, match=message) as caught:
        load_series(path)
    assert "\n" not in str(caught.value)


def test_load_series_refuses_a_folder_with_two_pairs_or_none(tmp_path):
    ucr_pair(tmp_path)
    (tmp_path / "Other_TRAIN.ts").write_text(TS_HEADER)
    (tmp_path / "Other_TEST.ts").write_text(TS_HEADER)
    with pytest.raises(CnnkitError, match=r"several TRAIN/TEST pairs.*pass one TRAIN file"):
        load_series(tmp_path)
    assert load_series(tmp_path / "Toy_TRAIN.tsv").name == "Toy"  # one TRAIN file brings its TEST
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnkitError, match=r"no Name_TRAIN\.tsv/Name_TEST\.tsv pair"):
        load_series(tmp_path / "empty")


def test_load_series_refuses_a_share_out_of_range_and_a_csv_with_only_a_header(tmp_path):
    with pytest.raises(CnnkitError, match=r"val_split 1\.5: use a share from 0 to below 1"):
        load_series(ucr_pair(tmp_path / "toy"), val_split=1.5)
    (tmp_path / "head.csv").write_text("label,t0,t1\n")
    with pytest.raises(CnnkitError, match=r"head\.csv: a header and no series"):
        load_series(tmp_path / "head.csv")
