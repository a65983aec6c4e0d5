"""Exact neighbours and Recall@K / MAP@R against a brute-force reference written from the definitions."""

import numpy as np
import pytest
import torch

from cnnkit.models import create_model
from cnnkit.tasks.embed import metrics
from cnnkit.tasks.embed.metrics import nearest, retrieval_metrics


def brute_force(vectors: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    scores = (vectors @ vectors.T).numpy()
    np.fill_diagonal(scores, -np.inf)
    labels = labels.numpy()
    recall, precisions = [], []
    for query in range(len(labels)):
        order = np.argsort(-scores[query], kind="stable")
        correct = labels[order] == labels[query]
        relevant = int((labels == labels[query]).sum()) - 1
        recall.append(correct[0])
        first = correct[:relevant]
        precisions.append((np.cumsum(first) / np.arange(1, relevant + 1) * first).sum() / relevant)
    return float(np.mean(recall)), float(np.mean(precisions))


@pytest.mark.parametrize("block_values", [10**9, 700])  # one block, and many small blocks
def test_retrieval_metrics_match_brute_force(monkeypatch, block_values):
    monkeypatch.setattr(metrics, "SCORE_BLOCK_VALUES", block_values)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (120,), generator=generator)
    vectors = torch.nn.functional.normalize(torch.randn(120, 6, generator=generator) + labels[:, None], dim=1)
    recall_at_1, map_at_r = brute_force(vectors, labels)
    found = retrieval_metrics(vectors, labels)
    assert found["recall@1"] == pytest.approx(recall_at_1)
    assert found["map@r"] == pytest.approx(map_at_r, abs=1e-6)
    assert found["recall@1"] <= found["recall@2"] <= found["recall@4"] <= found["recall@8"]
    assert found["queries"] == 120


def test_retrieval_metrics_leave_out_singleton_classes():
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    found = retrieval_metrics(vectors, torch.tensor([0, 0, 1]), ks=(1,))
    assert found == {"recall@1": 1.0, "map@r": 1.0, "queries": 2}


def test_nearest_skip_self_never_returns_the_query(monkeypatch):
    monkeypatch.setattr(metrics, "SCORE_BLOCK_VALUES", 50)
    vectors = torch.nn.functional.normalize(torch.randn(40, 5), dim=1)
    scores, indices = nearest(vectors, vectors, k=3, skip_self=True)
    assert indices.shape == (40, 3)
    assert not (indices == torch.arange(40)[:, None]).any()
    reference = (vectors @ vectors.T).fill_diagonal_(-2).topk(3, dim=1)
    assert torch.equal(indices, reference.indices)
    assert torch.allclose(scores, reference.values)


def test_forward_embedding_is_the_classifier_input():
    model = create_model("convnet", num_classes=3, in_channels=1, img_size=8).eval()
    images = torch.randn(2, 1, 8, 8)
    embedding = model.forward_embedding(images)
    classifier = model.get_classifier()
    assert embedding.shape == (2, classifier.in_features)
    torch.testing.assert_close(classifier(embedding), model(images))


def test_forward_embedding_on_many_threads_returns_each_callers_own():
    from concurrent.futures import ThreadPoolExecutor

    model = create_model("convnet", num_classes=3, in_channels=1, img_size=8).eval()
    batches = [torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) for seed in range(64)]
    with torch.inference_mode():
        expected = [model.forward_embedding(images) for images in batches]
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(model.forward_embedding, batches))
    for mine, reference in zip(found, expected):
        torch.testing.assert_close(mine, reference)
