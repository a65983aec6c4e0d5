import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cnnkit.checkpoint import read_checkpoint, save_checkpoint
from cnnkit.data import load_data


def test_checkpoint_round_trip_gives_identical_predictions(digits_run, tmp_path):
    classifier = cnnkit.load(digits_run)
    images = load_data("digits").test.images[:50]
    arrays = [image.numpy() for image in images]
    before = classifier.predict_proba(arrays)
    tensors, info = read_checkpoint(digits_run / "best.safetensors")
    save_checkpoint(tmp_path / "copy.safetensors", classifier.model, info)
    after = cnnkit.load(tmp_path / "copy.safetensors").predict_proba(arrays)
    np.testing.assert_array_equal(before, after)
    assert all(torch.equal(tensors[k], read_checkpoint(tmp_path / "copy.safetensors")[0][k]) for k in tensors)


def test_predict_agrees_with_evaluate(digits_run):
    classifier = cnnkit.load(digits_run)
    result, skipped = classifier.evaluate("digits", "test")
    test = load_data("digits").test
    predictions = classifier.predict([image.numpy() for image in test.images])
    accuracy = np.mean([p.label == test.classes[label] for p, label in zip(predictions, test.labels.tolist())])
    assert accuracy == pytest.approx(result.accuracy) and not skipped
    assert result.count == 359


def test_predict_ranks_top_k_and_accepts_files(digits_run, tmp_path):
    classifier = cnnkit.load(digits_run)
    image = load_data("digits").test.images[0, 0].numpy()
    Image.fromarray(image).save(tmp_path / "digit.png")
    [from_file] = classifier.predict(str(tmp_path / "digit.png"), top_k=3)
    [from_array] = classifier.predict(image, top_k=3)
    assert from_file.labels == from_array.labels and len(from_file.labels) == 3
    assert from_file.probabilities == sorted(from_file.probabilities, reverse=True)
    assert from_file.source.endswith("digit.png")


def test_predict_files_skips_and_reports_bad_files(digits_run, tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"")
    predictions, failures = cnnkit.load(digits_run).predict_files([tmp_path / "good.png", tmp_path / "bad.png"])
    assert [p.source for p in predictions] == [str(tmp_path / "good.png")]
    assert failures[0][0] == str(tmp_path / "bad.png")


@pytest.mark.slow
def test_evaluate_folder_without_split_uses_every_image(tmp_path, shapes_folder):
    run = cnnkit.train(data=str(shapes_folder), img_size=16, epochs=1, out=str(tmp_path / "runs"), verbose=False)
    other = tmp_path / "other"
    (other / "circle").mkdir(parents=True)
    for i in range(3):
        Image.open(next((shapes_folder / "circle").glob("*.png"))).save(other / "circle" / f"{i}.png")
    result, _ = cnnkit.load(run.dir).evaluate(str(other))
    assert result.count == 3 and result.per_class[0].support == 3
    own, _ = cnnkit.load(run.dir).evaluate()  # the training folder: its recorded test split
    assert own.count == run.test.count


def test_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(cnnkit.CnnkitError, match="not a cnnkit checkpoint"):
        cnnkit.load(tmp_path / "model.safetensors")


def test_a_checkpoint_from_an_older_cnnkit_with_another_layout_names_the_version(digits_run, tmp_path):
    import json

    import safetensors.torch

    from cnnkit.checkpoint import METADATA_KEY

    tensors, info = read_checkpoint(digits_run)
    info.extra["versions"] = {**info.extra.get("versions", {}), "cnnkit": "0.0.9"}
    old_layout = {name.replace("features.0.2.", "features.0.1."): tensor for name, tensor in tensors.items()}
    path = tmp_path / "old.safetensors"
    path.write_bytes(safetensors.torch.save(old_layout, metadata={METADATA_KEY: json.dumps(info.to_dict())}))
    with pytest.raises(cnnkit.CnnkitError, match=r"weights do not fit convnet .*saved by cnnkit 0\.0\.9.*retrain it"):
        cnnkit.load(path, device="cpu")
