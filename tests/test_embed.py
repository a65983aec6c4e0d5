"""Embedding training (train --task embed): the normalised-softmax loss, held-out classes, metrics, resume, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_shapes_folder, run_cli

import cnnkit
from cnnkit.checkpoint import read_checkpoint
from cnnkit.data import DataSplits, ImageSet, load_data
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.models.embedding import TEMPERATURE, CosineClassifier, EmbeddingNetwork, pooled_layer
from cnnkit.safeload import load_tensors
from cnnkit.tasks.embed import EmbedTask
from cnnkit.tasks.embed.evaluate import evaluate_embedding
from cnnkit.tasks.embed.holdout import held_out_classes, hold_out
from cnnkit.tasks.embed.metrics import retrieval_metrics
from cnnkit.tasks.embed.report import shown_queries
from cnnkit.training.resume import STATE, read_state

RECALL_KEYS = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r"]
TINY = dict(data="digits", epochs=2, batch_size=64, seed=1, verbose=False)


@pytest.fixture(scope="session")
def embed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch embedding run on the digits (classes 5-9 held out), shared by read-only tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture: a loaded 2-core machine runs a thread pool ~10x slower
    try:
        return cnnkit.train(task="embed", out=str(tmp_path_factory.mktemp("embed-runs")), name="embed", **TINY).dir
    finally:
        torch.set_num_threads(threads)


def test_embed_task_loss_matches_a_hand_computed_normalised_softmax():
    classifier = CosineClassifier(2, 3, temperature=0.5)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]]))  # proxies, any length
    embedding = torch.tensor([[3.0, 4.0]])  # unit vector (0.6, 0.8)
    # cosines to the unit proxies (1, 0), (0, 1), (-1, -1)/sqrt(2), over the temperature 0.5
    logits = [0.6 / 0.5, 0.8 / 0.5, -1.4 / math.sqrt(2) / 0.5]
    expected = -logits[1] + math.log(sum(math.exp(value) for value in logits))  # cross-entropy for class 1
    outputs = classifier(embedding)
    assert torch.allclose(outputs, torch.tensor([logits]), atol=1e-6)
    assert math.isclose(EmbedTask(["a", "b", "c"]).loss(outputs, torch.tensor([1])).item(), expected, rel_tol=1e-6)


def test_embedding_network_embeds_on_the_unit_sphere_and_its_logits_are_scaled_cosines_of_it():
    torch.manual_seed(0)
    net = EmbeddingNetwork(create_model("convnet", 4, 1, 8), num_classes=4, embed_dim=16).eval()
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        vectors, logits = net.forward_embedding(images), net(images)
        proxies = torch.nn.functional.normalize(net.get_classifier().weight, dim=1)
    assert vectors.shape == (3, 16) and torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(logits, vectors @ proxies.T / TEMPERATURE, atol=1e-4)
    net.reset_classifier(6)
    assert isinstance(net.get_classifier(), CosineClassifier) and net(images).shape == (3, 6)


def test_embedding_network_features_embedding_is_the_normalised_backbone_output_and_the_head_stays_for_the_loss():
    torch.manual_seed(0)
    net = EmbeddingNetwork(create_model("convnet", 4, 1, 8), 4, embed_dim=16, embedding="features").eval()
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        features, vectors, logits = net.backbone(images), net.forward_embedding(images), net(images)
        head = net.get_classifier()(net.projection(features))
    assert vectors.shape == (3, net.projection.in_features) and net.projection.in_features != 16
    assert torch.allclose(vectors, torch.nn.functional.normalize(features, dim=1), atol=1e-6)
    assert logits.shape == (3, 4) and torch.allclose(logits, head, atol=1e-5)  # the proxies score the projection


def test_embedding_network_pooled_embedding_is_read_under_the_hidden_head_layer():
    torch.manual_seed(0)
    backbone = create_model("convnet", 4, 1, 28, hidden=32)
    net = EmbeddingNetwork(backbone, 4, embed_dim=16, embedding="pooled").eval()
    hidden = backbone.head[1][0]  # Flatten, Sequential(Linear, BatchNorm1d, ReLU), Dropout, (classifier)
    assert pooled_layer(net.backbone) is hidden
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        flat = backbone.head[0](backbone.forward_features(images))  # (3, 128 * 3 * 3)
        vectors = net.forward_embedding(images)
    assert vectors.shape == (3, hidden.in_features) and hidden.in_features != hidden.out_features
    assert torch.allclose(vectors, torch.nn.functional.normalize(flat, dim=1), atol=1e-6)
    # without a hidden layer, or without convolutions (an MLP), "pooled" reads what "features" reads
    for name in ("convnet", "mlp"):
        pooled, features = (
            EmbeddingNetwork(create_model(name, 4, 1, 28), 4, 16, embedding=choice).eval()
            for choice in ("pooled", "features")
        )
        features.load_state_dict(pooled.state_dict())
        with torch.no_grad():
            assert pooled_layer(pooled.backbone) is None
            assert torch.equal(pooled.forward_embedding(images), features.forward_embedding(images))


def test_embedding_model_without_an_embedding_choice_rebuilds_as_the_projection():
    old = create_model("embedding", 4, 1, 8, embed_dim=16)  # a checkpoint's kwargs from before the choice
    assert old.embedding == "projection" and old.forward_embedding(torch.zeros(2, 1, 8, 8)).shape == (2, 16)
    with pytest.raises(CnnkitError, match="embedding 'pixels' is not one of pooled, features, projection"):
        create_model("embedding", 4, 1, 8, embedding="pixels")


def test_held_out_classes_are_the_last_half_sorted_or_those_named():
    assert held_out_classes(["b", "d", "a", "c", "e"]) == ["d", "c", "e"]  # sorted a..e: c, d, e, in label order
    assert held_out_classes(["cat", "dog", "emu", "fox"], " dog,cat") == ["cat", "dog"]
    with pytest.raises(CnnkitError, match="lacks: yak"):
        held_out_classes(["cat", "dog", "emu", "fox"], "cat,yak")
    with pytest.raises(CnnkitError, match="two seen and two held-out"):
        held_out_classes(["cat", "dog", "emu"])


def _images(labels: list[int], classes: list[str], tag: str) -> ImageSet:
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1)
    return ImageSet(images, torch.tensor(labels), classes, [f"{tag}{i}" for i in range(len(labels))])


def test_hold_out_trains_and_validates_on_seen_classes_and_tests_on_held_out_ones():
    classes = ["a", "b", "c", "d"]
    splits = DataSplits(
        "toy", _images([0, 1, 2, 3, 2], classes, "t"), _images([0, 0, 3, 1], classes, "v"),
        _images([0, 2, 3, 3, 1], classes, "s"), "rule",
    )  # fmt: skip
    held = hold_out(splits, ["c", "d"])
    assert held.classes == held.train.classes == held.val.classes == ["a", "b"]
    assert held.train.sources == ["t0", "t1"] and held.train.labels.tolist() == [0, 1]
    assert held.val.sources == ["v0", "v1", "v3"] and held.test.classes == ["c", "d"]
    assert held.test.sources == ["s1", "s2", "s3"] and held.test.labels.tolist() == [0, 1, 1]
    lonely = DataSplits("toy", splits.train, _images([0, 1, 2], classes, "v"), splits.test, "rule")
    with pytest.raises(CnnkitError, match="a class needs two"):
        hold_out(lonely, ["c", "d"])


def test_shown_queries_take_the_classes_in_turn():
    assert shown_queries(torch.tensor([1, 1, 1, 0, 2, 0]), limit=4) == [3, 0, 4, 5]


def test_train_embed_refuses_embed_flags_without_the_embed_task():
    with pytest.raises(CnnkitError, match="held_out is used only with task embed"):
        cnnkit.train(held_out="1,2", verbose=False)


@pytest.mark.slow
def test_train_embed_writes_recall_metrics_and_a_retrieval_report(embed_run):
    results = json.loads((embed_run / "results.json").read_text())
    assert results["task"] == "embed" and results["test"]["classes"] == ["5", "6", "7", "8", "9"]
    assert all(0 <= results["test"][key] <= 1 for key in RECALL_KEYS)
    recalls = [results["test"][key] for key in RECALL_KEYS[:4]]
    assert recalls == sorted(recalls)  # more neighbours can only find more
    with open(embed_run / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 and "val_recall@1" in rows[0] and "val_map@r" in rows[0]
    best = max(rows, key=lambda row: (float(row["val_recall@1"]), -float(row["val_loss"])))
    assert results["best_epoch"] == int(best["epoch"])  # picked by validation Recall@1, not the loss
    report = json.loads((embed_run / "report" / "report.json").read_text())
    assert report["recall@1"] == results["test"]["recall@1"] and len(report["per_class"]) == 5
    assert (embed_run / "report" / "neighbours.png").exists() and not (embed_run / "confusion_matrix.png").exists()
    _, info = read_checkpoint(embed_run / "best.safetensors")
    assert info.model.kwargs["embedding"] == "pooled"  # new runs search the pooled features under the head


@pytest.mark.slow
def test_train_embed_keeps_held_out_images_out_of_training_and_validation(embed_run):
    split = json.loads((embed_run / "split.json").read_text())
    everything = load_data("digits")
    held_out = {
        source
        for part in (everything.train, everything.val, everything.test)
        for source, label in zip(part.sources, part.labels.tolist())
        if part.classes[label] in {"5", "6", "7", "8", "9"}
    }
    assert split["classes"] == ["0", "1", "2", "3", "4"]
    assert not held_out & set(split["train"] + split["val"])
    assert set(split["test"]) <= held_out and len(split["test"]) == len(everything.test) - sum(
        everything.test.classes[label] not in {"5", "6", "7", "8", "9"} for label in everything.test.labels.tolist()
    )


@pytest.mark.slow
def test_train_embed_batches_hold_only_seen_labels(tmp_path, monkeypatch):
    seen_targets: list[int] = []
    real_loss = EmbedTask.loss

    def loss(self, outputs, targets):
        seen_targets.extend(targets.tolist())
        assert outputs.shape[1] == 3  # proxies for the three seen classes only
        return real_loss(self, outputs, targets)

    monkeypatch.setattr(EmbedTask, "loss", loss)
    run = cnnkit.train(task="embed", held_out="0,1,2,3,4,5,6", out=str(tmp_path), **{**TINY, "epochs": 1})
    assert run.classes == ["7", "8", "9"] and set(seen_targets) == {0, 1, 2}
    assert run.test.classes == ["0", "1", "2", "3", "4", "5", "6"]


@pytest.mark.slow
def test_evaluate_json_of_an_embed_run_reports_recall_and_map_as_the_run_did(embed_run):
    result = run_cli("evaluate", str(embed_run), "--json")
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout)
    test = json.loads((embed_run / "results.json").read_text())["test"]
    assert reported["split"] == "test" and all(reported[key] == test[key] for key in RECALL_KEYS)
    assert reported["classes"] == ["5", "6", "7", "8", "9"]


@pytest.mark.slow
def test_resume_of_an_embed_run_continues_bit_for_bit(tmp_path, one_thread):
    common = dict(task="embed", out=str(tmp_path), save_every=3, **TINY)
    reference = cnnkit.train(name="reference", **common)

    class Killed(BaseException):
        pass

    class KillAtStep5:
        def on_checkpoint(self, run_dir, path, epoch, step):
            if path.name == STATE and step == 6:  # mid-epoch 1 of 10 steps
                raise Killed

    with pytest.raises(Killed):
        cnnkit.train(name="killed", callbacks=[KillAtStep5()], **common)
    assert read_state(tmp_path / "killed").progress.tally.batches == 6
    resumed = cnnkit.train(resume=tmp_path / "killed", verbose=False)
    assert (resumed.dir / "steps.csv").read_text() == (reference.dir / "steps.csv").read_text()
    for name in ("last.safetensors", "best.safetensors"):
        mine, theirs = load_tensors(resumed.dir / name), load_tensors(reference.dir / name)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)
    assert resumed.test.metrics == reference.test.metrics


@pytest.mark.slow
def test_train_embed_bad_flag_combination_gives_one_line(tmp_path):
    result = run_cli("train", "--data", "digits", "--embed-dim", "64", "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["cnnkit: error: embed_dim is used only with task embed"]
    result = run_cli("train", "--task", "embed", "--data", "digits", "--held-out", "5,x", "--out", str(tmp_path))
    assert result.returncode == 2 and "--held-out names class(es) the data lacks: x" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_embed_images_of_a_classifier_run_are_its_normalised_features(digits_run):
    from cnnkit.checkpoint import load_model
    from cnnkit.tasks.embed.evaluate import embed_images

    model, info = load_model(digits_run / "best.safetensors")
    test = load_data("digits").test
    vectors = embed_images(model, test.images[:50], info.preprocessing, torch.device("cpu"))
    with torch.no_grad():
        features = model.forward_embedding(info.preprocessing.normalize(test.images[:50]))
    assert torch.allclose(vectors, torch.nn.functional.normalize(features, dim=1), atol=1e-5)
    assert retrieval_metrics(vectors, test.labels[:50])["queries"] == 50


@pytest.mark.slow
def test_finetuned_embed_run_on_pretrained_weights_rebuilds_from_its_checkpoint(tmp_path, one_thread):
    folder = make_shapes_folder(tmp_path / "shapes", per_class=20)
    make_shapes_folder(tmp_path / "more", per_class=20, seed=5)
    (tmp_path / "more" / "circle").rename(folder / "disc")  # a fourth class: two seen, two held out
    run = cnnkit.train(
        task="embed", data=str(folder), model="efficientnet_lite0", finetune=True, img_size=16, epochs=2,
        batch_size=8, embed_dim=32, out=str(tmp_path / "runs"), verbose=False,
    )  # fmt: skip
    tensors, info = read_checkpoint(run.best_checkpoint)
    assert info.model.name == "embedding" and info.model.kwargs["backbone"] == "efficientnet_lite0"
    assert info.classes == ["circle", "disc"] and tensors["classifier.weight"].shape == (2, 32)
    assert run.test.classes == ["square", "triangle"]
    classifier = cnnkit.load(run.dir)
    prediction = classifier.predict(str(next((folder / "square").iterdir())))[0]
    assert prediction.labels[0] in info.classes  # predict names the nearest seen class
    result, _ = evaluate_embedding(classifier)
    assert result.metrics == run.test.metrics
