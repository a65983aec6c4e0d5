import csv
import json
import math

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


def one_pixel_stride():
    """A 3x3 stride-2 convolution that meets a 1-pixel map at a 2-pixel input (the hazard bf16 gets wrong)."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, stride=2, padding=1))


def test_bf16_gradient_hazards_find_a_stride_above_a_one_pixel_map():
    model = one_pixel_stride().train()
    assert compute.bf16_gradient_hazards(model, (1, 2, 2)) == ["2"]
    assert compute.bf16_gradient_hazards(model, (1, 4, 4)) == [] and model.training


def test_auto_avoids_bf16_for_a_hazard_and_an_explicit_bf16_is_kept(monkeypatch):
    monkeypatch.setattr(compute, "cpu_has_fast_bf16", lambda: True)  # the same path on an AVX2-only CPU
    cpu, model = torch.device("cpu"), one_pixel_stride()
    hazard = compute.resolve(cpu, model=model, input_shape=(1, 2, 2))
    assert hazard.precision == "fp32" and "2 are wrong" in hazard.precision_note
    assert compute.resolve(cpu, model=model, input_shape=(1, 4, 4)).precision == "bf16"
    asked = compute.resolve(cpu, "bf16", model=model, input_shape=(1, 2, 2))
    assert asked.precision == "bf16" and "as asked" in asked.precision_note


def test_fall_back_leaves_only_autos_bf16(monkeypatch):
    monkeypatch.setattr(compute, "cpu_has_fast_bf16", lambda: True)
    cpu = torch.device("cpu")
    fp32 = compute.fall_back(compute.resolve(cpu), "step 3 (loss nan)")
    assert fp32.precision == "fp32" and fp32.precision_note == "auto: bf16 until step 3 (loss nan), then fp32"
    assert compute.fall_back(compute.resolve(cpu, "bf16"), "step 3") is None
    assert compute.fall_back(fp32, "step 4") is None


def breaks_in_bf16(num_classes: int, in_channels: int = 3, img_size: int = 32) -> torch.nn.Module:
    """The default ConvNet, with infinite logits under autocast: a model whose bf16 steps are never finite."""
    from cnnkit.models import create_model

    model = create_model("convnet", num_classes, in_channels, img_size)
    model.register_forward_hook(lambda m, inputs, out: out * math.inf if torch.is_autocast_enabled("cpu") else None)
    return model


@pytest.mark.slow
def test_auto_bf16_falls_back_to_fp32_at_a_nonfinite_step_and_explicit_bf16_stops(
    monkeypatch, shapes_folder, tmp_path, capsys
):
    import cnnkit
    from cnnkit.models import registry

    monkeypatch.setattr(compute, "cpu_has_fast_bf16", lambda: True)  # auto picks bf16 on any CPU
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    registry.register_model(breaks_in_bf16)
    common = dict(data=str(shapes_folder), model="breaks_in_bf16", img_size=16, epochs=2, out=str(tmp_path))
    run = cnnkit.train(**common, name="auto")
    environment = json.loads((run.dir / "environment.json").read_text())["compute"]
    assert environment["precision"] == "fp32" and environment["precision_note"].startswith("auto: bf16 until step 1 (")
    assert "the step is repeated and the run goes on in fp32" in capsys.readouterr().out
    steps = list(csv.DictReader((run.dir / "steps.csv").open()))  # the failed bf16 step 1 is repeated, not skipped
    assert [int(row["step"]) for row in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 2
    assert all(row["skipped"] == "0" and math.isfinite(float(row["loss"])) for row in steps)
    assert len(run.history) == 2 and all(math.isfinite(row["train_loss"]) for row in run.history)
    with pytest.raises(cnnkit.CnnkitError, match="training stopped at step 1"):
        cnnkit.train(**common, name="bf16", precision="bf16", verbose=False)


@pytest.mark.slow
def test_resume_after_autos_fall_back_goes_on_in_fp32(monkeypatch, shapes_folder, tmp_path, capsys):
    import cnnkit
    from cnnkit.models import registry

    monkeypatch.setattr(compute, "cpu_has_fast_bf16", lambda: True)  # auto picks bf16 on any CPU
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    registry.register_model(breaks_in_bf16)
    run = cnnkit.train(data=str(shapes_folder), model="breaks_in_bf16", img_size=16, epochs=1, out=str(tmp_path))
    capsys.readouterr()
    resumed = cnnkit.train(resume=run.dir, epochs=2)
    record = json.loads((run.dir / "environment.json").read_text())["resumed"][-1]["compute"]
    assert record["precision"] == "fp32" and "an earlier session of this run" in record["precision_note"]
    assert "the step is repeated" not in capsys.readouterr().out  # bf16 was never tried again
    assert len(resumed.history) == 2 and all(math.isfinite(row["train_loss"]) for row in resumed.history)


@pytest.mark.parametrize(("speedup", "expected"), [(0.55, "fp32"), (3.0, "bf16")])
def test_auto_picks_bf16_only_where_it_measures_faster(monkeypatch, speedup, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(compute, "bf16_speedup", lambda: speedup)
    assert compute.resolve(torch.device("cpu")).precision == expected


def test_bf16_speedup_is_a_positive_ratio_measured_once():
    compute.bf16_speedup.cache_clear()
    ratio = compute.bf16_speedup(size=64, calls=2)
    assert math.isfinite(ratio) and ratio > 0
    assert compute.bf16_speedup(size=64, calls=2) == ratio  # cached: one measurement per process
