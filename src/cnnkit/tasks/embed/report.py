"""The retrieval report of an embedding run: the numbers the field reports, per class, and what a search returns.

Smaller than a classifier's report (there is no confusion matrix or calibration for classes
the model never saw): Recall@1/2/4/8 and MAP@R of the images each searched against the
others, Recall@1 per class, and a picture of some queries beside their nearest neighbours,
wrong ones marked, so a reader sees which classes the embedding mixes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cnnkit.data import ImageSet
from cnnkit.modelinfo import Preprocessing
from cnnkit.tasks.embed.evaluate import embed_images
from cnnkit.tasks.embed.metrics import nearest, retrieval_metrics
from cnnkit.understand import figures

SHOWN_QUERIES = 8
SHOWN_NEIGHBOURS = 5


def per_class_recall(vectors: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> list[dict]:
    """Recall@1 per class of L2-normalised ``vectors`` (N, D), leave-one-out; a class of one image has none."""
    _, indices = nearest(vectors, vectors, k=1, skip_self=True)
    correct = (labels[indices[:, 0]] == labels).double() if len(labels) > 1 else torch.zeros(len(labels))
    rows = []
    for label, name in enumerate(classes):
        members = labels == label
        count = int(members.sum())
        recall = float(correct[members].mean()) if count > 1 else float("nan")
        rows.append({"class": name, "images": count, "recall@1": recall})
    return rows


def shown_queries(labels: torch.Tensor, limit: int = SHOWN_QUERIES) -> list[int]:
    """Up to ``limit`` query indices taking the classes in turn (each class's first image, then its second, ...)."""
    members = [(labels == label).nonzero().flatten().tolist() for label in labels.unique().tolist()]
    depth = max(map(len, members), default=0)
    return [indices[i] for i in range(depth) for indices in members if i < len(indices)][:limit]


def _plot_neighbours(data: ImageSet, vectors: torch.Tensor, path: Path) -> None:
    """Some queries (rows), the classes in turn, then their nearest images; a neighbour of another class in red."""
    plt = figures.pyplot()
    queries = shown_queries(data.labels)
    scores, indices = nearest(vectors[queries], vectors, k=SHOWN_NEIGHBOURS + 1)  # the query itself among them
    columns = 1 + min(SHOWN_NEIGHBOURS, len(data) - 1)
    figure, axes = plt.subplots(len(queries), columns, figsize=(1.4 * columns, 1.5 * len(queries)), squeeze=False)
    for row, query in enumerate(queries):
        found = [(i, s) for i, s in zip(indices[row].tolist(), scores[row].tolist()) if i != query]
        for column, (index, score) in enumerate([(query, 1.0), *found[: columns - 1]]):
            cell = axes[row][column]
            figures.show_image(cell, data.images[index].cpu())
            label = data.classes[int(data.labels[index])]
            same = int(data.labels[index]) == int(data.labels[query])
            cell.set_title(
                f"query: {label}" if column == 0 else f"{label} {score:.2f}",
                fontsize=7,
                color="black" if same else "red",
            )
    figures.save(figure, path)


def write_retrieval_report(
    model: nn.Module,
    data: ImageSet,
    preprocessing: Preprocessing,
    device: torch.device,
    out_dir: Path,
    title: str = "Retrieval report",
    *,
    tta: bool,
) -> dict:
    """Write ``report.html``, ``report.json`` and ``neighbours.png`` into ``out_dir`` (created if needed).

    Args:
        model: The trained model (any network with ``forward_embedding``).
        data: Labelled images, each searched against the others (an embedding run's held-out test classes).
        preprocessing: The model's preprocessing.
        device: Where to run the model.
        out_dir: Output folder.
        title: Heading of the page. Defaults to ``Retrieval report``.
        tta: Whether embeddings take the test-time flip, as the run's evaluation does.

    Returns:
        The numbers of ``report.json``: the retrieval metrics and Recall@1 per class.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    vectors = embed_images(model, data.images, preprocessing, device, tta=tta)
    results = {
        "count": len(data),
        "test_time_flip": tta,
        **retrieval_metrics(vectors, data.labels),
        "per_class": per_class_recall(vectors, data.labels, data.classes),
        "classes": data.classes,
    }
    (out_dir / "report.json").write_text(json.dumps(results, indent=2))
    if len(data) > 1:
        _plot_neighbours(data, vectors, out_dir / "neighbours.png")
    keys = [key for key in results if key.startswith(("recall@", "map@"))]
    rows = [[row["class"], row["images"], row["recall@1"]] for row in results["per_class"]]
    body = (
        f"<p>{len(data)} images of {len(data.classes)} classes, each a query against all the others "
        "(leave-one-out).</p>"
        + figures.html_table(keys, [[results[key] for key in keys]])
        + "<h2>Recall@1 per class</h2>"
        + figures.html_table(["class", "images", "recall@1"], rows)
        + ("<h2>Queries and their nearest images</h2><img src='neighbours.png'>" if len(data) > 1 else "")
    )
    (out_dir / "report.html").write_text(figures.html_page(title, body))
    return results
