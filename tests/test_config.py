"""TrainConfig: each key's rule lives with the key, and Python, YAML and the command line refuse alike."""

import dataclasses
import math

import pytest

from cnnkit.config import Range, TrainConfig, value_problem
from cnnkit.errors import CnnkitError

FIELDS = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    ("limits", "value", "allowed"),
    [
        (Range(float, 0, low_open=True), 1e-9, True),
        (Range(float, 0, low_open=True), 0.0, False),
        (Range(float, 0, low_open=True), math.nan, False),
        (Range(float, 0, low_open=True), math.inf, False),
        (Range(float), -math.inf, False),
        (Range(float, 0, 1, high_open=True), 1.0, False),
        (Range(float, 0, 1), 1.0, True),
        (Range(float, 0), 3, True),  # an int is a fine float
        (Range(int, 1), 2.0, False),  # a float is not an int
        (Range(int, 1), True, False),  # nor a bool
        (Range(int, 1), "3", False),
    ],
)
def test_range_problem_refuses_out_of_range_nonfinite_and_wrong_kind(limits, value, allowed):
    assert (limits.problem(value) is None) is allowed


def test_range_describe_names_the_bounds():
    assert Range(float, 0, low_open=True).describe() == "a finite number > 0"
    assert Range(float, 0, 1, high_open=True).describe() == "a finite number in [0, 1)"
    assert Range(int, 0, 2**32 - 1).describe() == "an integer in [0, 4294967295]"
    assert Range(float, 0, low_open=True).problem(math.nan) == "must be a finite number > 0 (got nan)"


def test_config_every_key_has_help_a_group_and_a_rule_for_numbers():
    for spec in FIELDS.values():
        assert spec.metadata["help"]
        assert spec.metadata["group"] in ("data", "model", "optimisation", "compute", "output")
        if any(kind in str(spec.type) for kind in ("int", "float")):
            assert spec.metadata["range"] or spec.metadata["choices"], spec.name


@pytest.mark.parametrize("key", [name for name, spec in FIELDS.items() if "float" in str(spec.type)])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_config_check_refuses_nan_and_infinity_for_every_float(key, value):
    with pytest.raises(CnnkitError, match=rf"{key} must be a finite number.*\(got -?(nan|inf)\)"):
        TrainConfig(**{key: value}).check()


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"lr": math.nan}, "lr must be a finite number > 0 (got nan)"),
        ({"label_smoothing": 2}, "label_smoothing must be a finite number in [0, 1) (got 2)"),
        ({"weight_decay": -1}, "weight_decay must be a finite number >= 0 (got -1)"),
        ({"lr": "fast"}, "lr must be a finite number > 0 (got 'fast')"),
        ({"epochs": [1, 2]}, "epochs must be an integer >= 1 (got [1, 2])"),
        ({"pretrained": "yes"}, "pretrained must be true or false (got 'yes')"),
        ({"channels": 2}, "channels must be one of 1, 3 or null (got 2)"),
        ({"resize": "crp"}, "resize must be one of crop, squash, pad (got 'crp')"),
        ({"name": 5}, "name must be text or null (got 5)"),
    ],
)
def test_config_from_dict_names_the_source_key_and_rule(values, fragment):
    with pytest.raises(CnnkitError) as error:
        TrainConfig.from_dict(values, "run.yaml")
    assert str(error.value) == f"run.yaml: {fragment}"


def test_config_check_refuses_combinations():
    with pytest.raises(CnnkitError, match="sum to less than 1"):
        TrainConfig(val_split=0.5, test_split=0.5).check()
    with pytest.raises(CnnkitError, match="freeze is used only with finetune"):
        TrainConfig(freeze=1).check()
    TrainConfig(freeze=1, finetune=True).check()


def test_config_load_refuses_a_wrong_type_in_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("epochs: 2\nlr: fast\n")
    with pytest.raises(CnnkitError) as error:
        TrainConfig.load(path)
    assert str(error.value) == f"{path}: lr must be a finite number > 0 (got 'fast')"


def test_config_load_reads_exponents_without_a_dot(tmp_path):
    """YAML 1.1 reads ``3e-3`` as text; a float key takes it as the number it spells."""
    path = tmp_path / "config.yaml"
    path.write_text("lr: 3e-3\nweight_decay: 1e-4\n")
    config = TrainConfig.load(path)
    assert config.lr == 0.003 and config.weight_decay == 0.0001


def test_config_load_syntax_error_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lr: [0.1\n")
    with pytest.raises(CnnkitError) as error:
        TrainConfig.load(path)
    assert "\n" not in str(error.value) and "line 2" in str(error.value) and str(path) in str(error.value)


def test_config_saved_config_loads_back(tmp_path):
    config = TrainConfig(epochs=3, lr=0.01, channels=1, name="mine")
    config.save(tmp_path / "config.yaml")
    assert TrainConfig.load(tmp_path / "config.yaml") == config


def test_config_img_size_bound_is_the_data_layers():
    from cnnkit.data.decode import MAX_IMG_SIZE

    assert FIELDS["img_size"].metadata["range"].high == MAX_IMG_SIZE
    assert value_problem(FIELDS["img_size"], MAX_IMG_SIZE + 1)
