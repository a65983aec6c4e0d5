"""Nothing that can run code is ever loaded; malformed weights files give one clear error each."""

import json
import os
import struct

import pytest
import safetensors.torch
import torch

from cnnkit.checkpoint import read_checkpoint
from cnnkit.errors import CnnkitError
from cnnkit.safeload import load_tensors, require_safe_torch


class CreatesMarker:
    """Unpickling this object runs ``os.mkdir(marker)``: the shape of every pickle exploit."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def raw_safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": CreatesMarker(marker)}, path)
    with pytest.raises(CnnkitError, match=r"refused to load .*evil\.pt.*never unpickles"):
        load_tensors(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: a plain unpickle does run it
    assert marker.exists()


def test_plain_state_dict_pt_file_loads(tmp_path):
    weights = {"conv.weight": torch.randn(3, 1, 3, 3), "conv.bias": torch.zeros(3)}
    torch.save(weights, tmp_path / "model.pth")
    loaded = load_tensors(tmp_path / "model.pth")
    assert all(torch.equal(loaded[key], weights[key]) for key in weights)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CnnkitError, match="does not hold a dict of tensors"):
        load_tensors(tmp_path / "list.pt")


def test_valid_safetensors_round_trip(tmp_path):
    weights = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    safetensors.torch.save_file(weights, tmp_path / "w.safetensors")
    loaded = load_tensors(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[key], weights[key]) for key in weights)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: struct.pack("<Q", 10_000) + b"{}", r"header claims 10,000 bytes but the file holds 10 bytes"),
        (lambda: b"\x01\x02", r"only 2 bytes, truncated or empty"),
        (lambda: struct.pack("<Q", 4) + b"nope", r"header is not JSON"),
        (
            lambda: raw_safetensors(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                bytes(12),
            ),
            r"tensors 'a' and 'b' overlap",
        ),
        (
            lambda: raw_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
            r"tensor 'a' spans bytes 0-16 but the data section holds 8 bytes",
        ),
        (
            lambda: raw_safetensors({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
            r"tensor 'a' has 8 bytes but its shape needs 12",
        ),
        (
            lambda: safetensors.torch.save({"w": torch.tensor([1.0, float("nan")])}),
            r"tensor 'w' holds NaN or infinite values",
        ),
        (
            lambda: safetensors.torch.save({"w": torch.tensor([float("inf")])}),
            r"tensor 'w' holds NaN or infinite values",
        ),
    ],
    ids=["header-longer-than-file", "tiny", "not-json", "overlap", "past-end", "wrong-size", "nan", "inf"],
)
def test_malformed_safetensors_give_a_clear_error(tmp_path, build, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(build())
    with pytest.raises(CnnkitError, match=message):
        load_tensors(path)


def test_truncated_checkpoint_is_refused_by_name(digits_run, tmp_path):
    whole = (digits_run / "best.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(CnnkitError, match=r"cut\.safetensors is not a cnnkit checkpoint.*truncated"):
        read_checkpoint(cut)


def test_old_torch_with_weights_only_bypass_is_refused():
    with pytest.raises(CnnkitError, match=r"torch 2\.5\.1.*upgrade to torch>=2\.6"):
        require_safe_torch("2.5.1+cpu")
    require_safe_torch("2.6.0")
    require_safe_torch(torch.__version__)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CnnkitError, match=r"must be a \.safetensors, \.pt or \.pth"):
        load_tensors(tmp_path / "w.bin")
    with pytest.raises(CnnkitError, match="not found"):
        load_tensors(tmp_path / "missing.pt")
