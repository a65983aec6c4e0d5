"""Exact nearest neighbours by cosine similarity, and the retrieval metrics the field reports.

Vectors are L2-normalised, so cosine similarity is a matrix product. Queries go in blocks
sized so one block of scores stays near :data:`SCORE_BLOCK_VALUES` floats, however large
the index: a million vectors are searched exactly in 256 MB at a time.

Recall@K and MAP@R follow Musgrave et al., "A Metric Learning Reality Check" (2020): each
labelled vector is a query against all the others (leave-one-out); Recall@K is the share of
queries with at least one same-class vector among their K nearest, and MAP@R is the mean
average precision over the first R neighbours, R being the number of other vectors of the
query's class, which rewards an embedding that ranks the whole class first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

SCORE_BLOCK_VALUES = 1 << 26  # similarity scores per query block (256 MB as float32)


def score_blocks(
    queries: torch.Tensor, vectors: torch.Tensor, skip_self: bool = False
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first query index, cosine scores (b, M)) for blocks of ``queries`` (N, D) against ``vectors`` (M, D).

    With ``skip_self`` the queries are the vectors themselves (N == M) and each query's own
    score is -inf, so it is never its own neighbour.
    """
    if skip_self and len(queries) != len(vectors):
        raise ValueError(f"skip_self needs the queries to be the vectors; got {len(queries)} and {len(vectors)}")
    block = max(1, SCORE_BLOCK_VALUES // max(1, len(vectors)))
    for start in range(0, len(queries), block):
        scores = queries[start : start + block].float() @ vectors.float().T  # (b, M)
        if skip_self:
            rows = torch.arange(len(scores))
            scores[rows, rows + start] = float("-inf")
        yield start, scores


def nearest(
    queries: torch.Tensor, vectors: torch.Tensor, k: int, skip_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar ``vectors`` (M, D) to each of ``queries`` (N, D), best first: scores and indices (N, k).

    Both inputs must be L2-normalised. ``k`` larger than the vectors available is cut to them.

    Example:
        >>> vectors = torch.nn.functional.normalize(torch.randn(100, 8), dim=1)
        >>> scores, indices = nearest(vectors[:3], vectors, k=1)
        >>> indices.flatten().tolist()
        [0, 1, 2]
    """
    k = min(k, len(vectors) - int(skip_self))
    found_scores, found_indices = [], []
    for _, scores in score_blocks(queries, vectors, skip_self):
        top = scores.topk(k, dim=1)
        found_scores.append(top.values)
        found_indices.append(top.indices)
    if not found_scores:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(found_scores), torch.cat(found_indices)


def retrieval_metrics(
    embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8)
) -> dict[str, float]:
    """Leave-one-out ``recall@K`` for each K in ``ks`` and ``map@r`` of L2-normalised ``embeddings`` (N, D).

    Queries whose class has no other vector cannot be answered and are left out of every
    metric; ``queries`` says how many were counted.

    Example:
        >>> vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]), dim=1)
        >>> retrieval_metrics(vectors, torch.tensor([0, 0, 1, 1]), ks=(1,))
        {'recall@1': 1.0, 'map@r': 1.0, 'queries': 4}
    """
    labels = labels.long()
    class_sizes = torch.bincount(labels)
    relevant_counts = class_sizes[labels] - 1  # R per query: the other vectors of its class
    answerable = relevant_counts > 0
    depth = min(len(embeddings) - 1, max(max(ks), int(relevant_counts.max()) if len(labels) else 0))
    hits = {k: 0 for k in ks}
    average_precision = 0.0
    for start, scores in score_blocks(embeddings, embeddings, skip_self=True):
        block = slice(start, start + len(scores))
        if depth < 1:
            break
        neighbours = scores.topk(depth, dim=1).indices  # (b, depth)
        correct = labels[neighbours] == labels[block, None]  # (b, depth)
        keep = answerable[block]
        for k in ks:
            hits[k] += int(correct[:, :k].any(1)[keep].sum())
        r = relevant_counts[block]
        ranks = torch.arange(1, depth + 1)
        within_r = ranks[None, :] <= r[:, None]  # (b, depth): the first R neighbours of each query
        precision = correct.cumsum(1) / ranks
        per_query = (precision * correct * within_r).sum(1) / r.clamp(min=1)
        average_precision += float(per_query[keep].sum())
    counted = int(answerable.sum())
    metrics = {f"recall@{k}": hits[k] / counted if counted else float("nan") for k in ks}
    metrics["map@r"] = average_precision / counted if counted else float("nan")
    metrics["queries"] = counted
    return metrics
