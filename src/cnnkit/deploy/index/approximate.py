"""Exact and approximate nearest-neighbour search over an index's unit vectors.

Exact search is :func:`cnnkit.tasks.embed.metrics.nearest` (blocked matrix products), run over
the memory-mapped vectors in row chunks so a float16 index is converted a chunk at a time.
Large indexes also get a FAISS inverted-file index (IVF-Flat, inner product): the vectors
are clustered into ``nlist`` cells by k-means and a query scans only the ``nprobe`` cells
nearest to it. ``nprobe`` is chosen at build time, doubling from 1 until recall@10 against
exact search on a sample of the index's own vectors reaches :data:`TARGET_RECALL`, and that
measured recall is stored and printed. How ``nlist`` and the training sample are chosen, and
why the build takes seconds, is in :func:`build_approximate`. IVF-Flat rather than HNSW: its recall is tuned by one
number at query time against a measured target, and it keeps no graph links beside each vector
(HNSW's extra memory).

Why :data:`APPROXIMATE_THRESHOLD`: an exact query costs N x D multiply-adds and grows linearly
with N, while FAISS's cost grows with sqrt(N) but needs a k-means build first. Measured with
``benchmarks/index_scale.py --parts queries --sizes 1e4,1e5 --queries 30`` (1280-d clustered vectors,
2 shared cores at load 8, so slow): exact p50 24 ms at 10^4 and 179 ms at 10^5, FAISS 0.8 and
0.5 ms, FAISS's build then 12 s and 305 s (4 sqrt(N) cells); with :func:`build_approximate`'s rule
(sqrt(N) cells) it took 5 s at 10^4 and 21 s at 10^5 x 1280-d, 26 s at 10^6 x 128-d (2 cores at load
5 to 7; a few seconds idle). Below 10^5 exact search answers within ~100 ms even on that machine,
needs no build and has no recall to lose; from 10^5 it is past an interactive budget and the build
pays for itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.errors import CnnkitError
from cnnkit.tasks.embed.metrics import nearest

APPROXIMATE_THRESHOLD = 100_000  # vectors; at or above it --approximate auto builds a FAISS index
TARGET_RECALL = 0.95  # recall@10 against exact search that nprobe is raised to reach
RECALL_SAMPLE = 500  # index vectors used as queries when measuring recall
# nprobe is tuned to reach TARGET_RECALL + this on the sample: the fewest cells that just reach the target on
# the sample missed it on other queries (0.91 on held-out ones at 10^4 x 1280-d, nprobe 19 of 100 cells).
TUNING_MARGIN = 0.02
TRAIN_PER_CELL = 64  # k-means training vectors per cell (FAISS warns below 39 and subsamples above 256)
KMEANS_ITERATIONS = 10  # the cells only route queries: more iterations barely move recall at a tuned nprobe
EXACT_CHUNK_VALUES = 1 << 28  # vector values converted to float32 per exact-search chunk (1 GB)


def wants_approximate(count: int, mode: str) -> bool:
    """Whether an index of ``count`` vectors gets a FAISS index: ``on``, ``off``, or ``auto`` (by size)."""
    if mode not in ("auto", "on", "off"):
        raise CnnkitError(f"--approximate must be auto, on or off; got {mode!r}")
    return mode == "on" or (mode == "auto" and count >= APPROXIMATE_THRESHOLD)


def search_exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of ``queries`` (Q, D) among ``vectors`` (N, D): scores, indices (Q, k)."""
    k = min(k, len(vectors))
    found = torch.from_numpy(np.asarray(queries, dtype=np.float32))
    chunk = max(1, EXACT_CHUNK_VALUES // max(1, vectors.shape[1]))
    best_scores = torch.full((len(found), 0), float("-inf"))
    best_indices = torch.zeros((len(found), 0), dtype=torch.long)
    for start in range(0, len(vectors), chunk):
        rows = torch.from_numpy(np.asarray(vectors[start : start + chunk], dtype=np.float32))  # (c, D)
        scores, indices = nearest(found, rows, k)
        merged = torch.cat([best_scores, scores], 1)
        order = merged.topk(min(k, merged.shape[1]), dim=1).indices
        best_scores = merged.gather(1, order)
        best_indices = torch.cat([best_indices, indices + start], 1).gather(1, order)
    return best_scores.numpy(), best_indices.numpy()


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise CnnkitError(
            "approximate search needs FAISS: run `pip install 'cnnkit[search]'` (faiss-cpu), or pass --approximate off"
        ) from None
    return faiss


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours (Q, k) that ``found`` (Q, k) also returned."""
    if exact.size == 0:
        return float("nan")
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return hits / exact.size


class ApproximateIndex:
    """A FAISS IVF-Flat index on inner product over unit vectors, with its tuned ``nprobe``."""

    def __init__(self, index: Any, info: dict) -> None:
        self.index = index
        self.info = info
        self.index.nprobe = int(info["nprobe"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scores and indices (Q, k) of ``queries`` (Q, D); positions FAISS could not fill are -1."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))

    def write(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def read(cls, path: Path, info: dict) -> ApproximateIndex:
        """Read a FAISS index file (FAISS's own binary format: no code runs when it loads)."""
        return cls(_faiss().read_index(str(path)), info)


def cell_count(count: int) -> int:
    """``nlist`` for ``count`` vectors: sqrt(N) cells, and never fewer than :data:`TRAIN_PER_CELL` vectors a cell.

    Why sqrt(N) rather than FAISS's 4 sqrt(N) to 16 sqrt(N): a query scans ``nlist`` centroids and then
    ``nprobe / nlist`` of the N vectors, so sqrt(N) balances the two, and the build (k-means, then every
    vector assigned to its nearest centroid) costs a sixteenth and a quarter as much.
    """
    return max(1, min(count // TRAIN_PER_CELL, round(np.sqrt(count))))


def build_approximate(vectors: np.ndarray, seed: int = 0) -> ApproximateIndex:
    """Cluster ``vectors`` (N, D) into an IVF-Flat index; pick the smallest ``nprobe`` that reaches the target recall.

    The build rule, chosen by its cost: ``nlist`` is :func:`cell_count` (sqrt(N)); k-means is trained on
    :data:`TRAIN_PER_CELL` vectors per cell (a random sample; FAISS's guidance is 30 to 256) for
    :data:`KMEANS_ITERATIONS` iterations, so training costs 2 x 64 x nlist^2 x D x 10 flops and adding
    2 x N x nlist x D: 1.6e11 + 0.8e11 at 10^5 x 1280-d (1.6e11 + 2.6e11 at 10^6 x 128-d), seconds on two
    cores, where the 4 sqrt(N) cells used before cost 2.6e12 + 3.2e11 at 10^5 x 1280-d (305 s measured).
    ``nprobe`` is then searched on the built index, which is never rebuilt: doubling from 1 until recall@10
    reaches :data:`TARGET_RECALL` plus :data:`TUNING_MARGIN`, then bisected between the last miss and the
    first hit, so a query scans the fewest cells that reach it.
    The recall is measured with :data:`RECALL_SAMPLE` of the index's own vectors as queries (ones k-means
    was not trained on where there are enough, as new queries are not), each query's own row left out of
    both answers.
    """
    faiss = _faiss()
    count, dim = vectors.shape
    nlist = cell_count(count)
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(count, size=min(count, TRAIN_PER_CELL * nlist), replace=False))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    index.cp.max_points_per_centroid = TRAIN_PER_CELL  # the sample is already this size: FAISS subsamples no further
    index.train(np.ascontiguousarray(vectors[train_rows], dtype=np.float32))
    chunk = max(1, EXACT_CHUNK_VALUES // max(1, dim))
    for start in range(0, count, chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
    untrained = np.setdiff1d(np.arange(count), train_rows)  # centroids were pulled towards the training rows
    pool = untrained if len(untrained) >= RECALL_SAMPLE else np.arange(count)
    sample = np.sort(rng.choice(pool, size=min(len(pool), RECALL_SAMPLE), replace=False))
    queries = np.asarray(vectors[sample], dtype=np.float32)
    k = min(10, count - 1)
    _, exact = search_exact(vectors, queries, k + 1)
    exact = _without_self(exact, sample, k)

    def recall_with(nprobe: int) -> float:
        index.nprobe = nprobe
        _, found = index.search(queries, k + 1)
        return recall_at_k(_without_self(found, sample, k), exact)

    wanted = min(1.0, TARGET_RECALL + TUNING_MARGIN)
    missed, nprobe = 0, 1
    recall = recall_with(nprobe)
    while recall < wanted and nprobe < nlist:
        missed, nprobe = nprobe, min(nlist, nprobe * 2)
        recall = recall_with(nprobe)
    while nprobe - missed > 1 and recall >= wanted:  # the smallest nprobe in (missed, nprobe] that reaches it
        middle = (missed + nprobe) // 2
        middle_recall = recall_with(middle)
        if middle_recall >= wanted:
            nprobe, recall = middle, middle_recall
        else:
            missed = middle
    info = {"kind": "faiss-ivf-flat", "nlist": nlist, "nprobe": nprobe, "recall@10": recall, "sample": len(sample)}
    return ApproximateIndex(index, info)


def _without_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``found`` (Q, k + 1) without the query's own index (or its last entry), cut to (Q, k)."""
    kept = [[i for i in neighbours if i != row][:k] for neighbours, row in zip(found.tolist(), rows.tolist())]
    return np.array(kept, dtype=np.int64).reshape(len(rows), k)
