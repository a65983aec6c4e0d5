import pytest
import torch

from cnnkit import compute
from cnnkit.errors import CnnkitError


@pytest.mark.parametrize(
    ("fast_bf16", "expected"), [(True, ("bf16", "channels_last")), (False, ("fp32", "channels_last"))]
)
def test_cpu_choices_follow_the_instruction_set(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(compute, "cpu_has_fast_bf16", lambda: fast_bf16)
    settings = compute.resolve(torch.device("cpu"))
    assert (settings.precision, settings.memory_format) == expected
    assert settings.to_dict()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_explicit_choices_win_and_bad_ones_are_refused():
    settings = compute.resolve(torch.device("cpu"), precision="bf16", memory_format="contiguous")
    assert (settings.precision, settings.memory_format) == ("bf16", "contiguous")
    with pytest.raises(CnnkitError, match="fp16"):
        compute.resolve(torch.device("cpu"), precision="fp16")
    with pytest.raises(CnnkitError, match="unknown precision"):
        compute.resolve(torch.device("cpu"), precision="int4")


def test_bf16_autocast_runs_convolutions_in_bf16_and_fp32_does_not():
    model = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    bf16 = compute.resolve(torch.device("cpu"), precision="bf16")
    with compute.autocast(bf16):
        assert model(x).dtype == torch.bfloat16
    with compute.autocast(compute.resolve(torch.device("cpu"), precision="fp32")):
        assert model(x).dtype == torch.float32
    assert not compute.grad_scaler(bf16).is_enabled()


def test_prepare_model_uses_channels_last_when_chosen():
    settings = compute.resolve(torch.device("cpu"), memory_format="channels_last")
    model = compute.prepare_model(torch.nn.Conv2d(3, 8, 3), settings)
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert compute.prepare_inputs(torch.randn(2, 3, 5, 5), settings).is_contiguous(memory_format=torch.channels_last)
