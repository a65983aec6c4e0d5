"""Index scale: build throughput against a hand-written torchvision loop, and query latency exact vs FAISS.

Part 1, build: writes ``--images`` photo-sized JPEGs in class folders, decodes them once into the
image cache (no forward pass), then times a build from the warm cache (``build_index`` with a loaded
embedder, so model loading is not counted: batch norms folded, NHWC, compute's auto precision)
against the loop a PyTorch user writes: torchvision's ``ImageFolder`` with
``Resize``/``CenterCrop``/``ToTensor``/``Normalize``, a ``DataLoader`` with ``--workers`` processes,
and the same weights as loaded (fp32, eager, batch norms in place, NCHW) under ``no_grad``. Both run
with the same torch threads. Target (issue 19): at least 3x the loop's images/s. Also prints the
smallest and mean cosine between the two pipelines' vectors, so both are seen to compute the same thing.

Part 2, queries: for each size in ``--sizes``, ``--dims``-d synthetic unit vectors drawn around
``--clusters`` random centres (real embeddings cluster by content; uniform random vectors have no
neighbours worth finding), written to a memory-mapped ``.npy`` as an index holds them. Times
``--queries`` single-vector queries (held out of the index) with exact search
(:func:`cnnkit.deploy.index.approximate.search_exact`) and with the FAISS IVF-Flat index that
``cnnkit index --approximate`` builds (nprobe tuned to recall@10 >= 0.95 on the index's own
vectors), and prints p50/p99 latency, the resident memory after each, FAISS's build time and
throughput and recall@10 on the held-out queries. Target at 10^6: recall@10 >= 0.95 and >= 10x
faster. The defaults (1000 photos; 10^4 and 10^5 vectors of 1280-d, 10^6 of 128-d) take about
four minutes on two idle cores.

    python benchmarks/index_scale.py
    python benchmarks/index_scale.py --images 40 --photo-size 320x240 --sizes 5000 --dims 64 --queries 20  # seconds
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnkit.data.cache import decode_cached
from cnnkit.deploy.index import build_index, load_embedder
from cnnkit.deploy.index.approximate import build_approximate, recall_at_k, search_exact
from cnnkit.deploy.index.embedder import Embedder


def resident_megabytes() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def write_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0, classes: int = 4) -> None:
    """Photo-like JPEGs in ``classes`` folders: smooth colour fields (noise upscaled) with fine noise, quality 90."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        path = folder / f"class{index % classes}" / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def plain_network(model: str) -> torch.nn.Module:
    """The network as a user loads it: fp32, NCHW, batch norms in place, in eval mode."""
    if Path(model).exists():
        from cnnkit.checkpoint import load_model, resolve_checkpoint

        return load_model(resolve_checkpoint(Path(model)), torch.device("cpu"))[0].eval()
    from cnnkit.models.pretrained import IMAGENET_CLASSES, create_pretrained

    return create_pretrained(model, IMAGENET_CLASSES).eval()


def torchvision_loop(
    network: torch.nn.Module, embedder: Embedder, folder: Path, workers: int, batch_size: int
) -> tuple[np.ndarray, list[str]]:
    """The hand-written loop: ImageFolder, torchvision transforms, a DataLoader, fp32 eager under no_grad."""
    from torchvision import datasets, transforms

    prep = embedder.preprocessing
    transform = transforms.Compose(
        [
            transforms.Resize(prep.img_size),
            transforms.CenterCrop(prep.img_size),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    outputs = []
    with torch.no_grad():
        for batch, _ in loader:
            outputs.append(torch.nn.functional.normalize(network.forward_embedding(batch), dim=1).numpy())
    paths = [str(Path(path).relative_to(folder)) for path, _ in dataset.samples]
    return np.concatenate(outputs), paths


def build_rows(args: argparse.Namespace, tmp: Path) -> None:
    photos = tmp / "photos"
    width, height = (int(side) for side in args.photo_size.split("x"))
    write_photos(photos, args.images, (width, height))
    embedder = load_embedder(args.model, pretrained=not Path(args.model).exists(), precision=args.precision)
    network = plain_network(args.model)
    prep = embedder.preprocessing
    files = sorted(str(path.relative_to(photos)) for path in photos.rglob("*.jpg"))
    decode_cached(photos, files, prep.img_size, prep.channels, prep.resize, os.cpu_count() or 1)  # warms the cache
    start = time.perf_counter()
    index = build_index(embedder, photos, out=tmp / "indexes", name="timed")
    ours = args.images / (time.perf_counter() - start)
    start = time.perf_counter()
    theirs_vectors, theirs_paths = torchvision_loop(network, embedder, photos, args.workers, args.batch_size)
    theirs = args.images / (time.perf_counter() - start)
    assert theirs_paths == index.paths, "the two pipelines listed the photos differently"
    cosines = np.sum(theirs_vectors * np.asarray(index.vectors, dtype=np.float32), axis=1)
    verdict = "met" if ours >= 3 * theirs else "missed"
    print(
        f"build, {args.images} JPEGs of {args.photo_size}, {embedder.identity['name']} at {prep.img_size}, "
        f"{torch.get_num_threads()} threads: cnnkit index (warm cache, {embedder.settings.precision}) {ours:.1f} "
        f"images/s, torchvision loop ({args.workers} workers, fp32) {theirs:.1f} images/s: {ours / theirs:.2f}x "
        f"(target 3x: {verdict}); cosine between their vectors min {cosines.min():.4f}, mean {cosines.mean():.4f}",
        flush=True,
    )


def clustered_vectors(path: Path, count: int, dim: int, centres: np.ndarray, seed: int) -> np.ndarray:
    """``count`` unit vectors around ``centres`` written in chunks to a memory-mapped ``.npy`` (cos to centre ~0.78)."""
    rng = np.random.default_rng(seed)
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, dim))
    for start in range(0, count, 65536):
        rows = min(65536, count - start)
        points = centres[rng.integers(0, len(centres), rows)] + 0.8 * rng.normal(size=(rows, dim)) / np.sqrt(dim)
        vectors[start : start + rows] = points / np.linalg.norm(points, axis=1, keepdims=True)
    vectors.flush()
    return np.load(path, mmap_mode="c")


def latencies(search, queries: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Top-10 rows of each query searched alone, with the p50 and p99 latency in milliseconds."""
    found, seconds = [], []
    for query in queries:
        start = time.perf_counter()
        _, rows = search(query[None], 10)
        seconds.append(time.perf_counter() - start)
        found.append(rows[0])
    return np.array(found), 1000 * float(np.percentile(seconds, 50)), 1000 * float(np.percentile(seconds, 99))


def query_rows(args: argparse.Namespace, tmp: Path) -> None:
    sizes = [int(float(value)) for value in args.sizes.split(",")]
    dims = [int(value) for value in args.dims.split(",")]
    dims = dims + dims[-1:] * (len(sizes) - len(dims))  # the last length for the sizes beyond
    print(f"queries: {args.queries} single-vector queries, {args.clusters} clusters, {torch.get_num_threads()} threads")
    print(f"{'vectors':>9} {'dim':>5} {'search':>7} {'p50 ms':>9} {'p99 ms':>9} {'RSS MB':>8} {'recall@10':>9}  notes")
    largest = max(sizes)
    for size, dim in zip(sizes, dims):
        centres = np.random.default_rng(args.seed).normal(size=(args.clusters, dim)) / np.sqrt(dim)
        vectors = clustered_vectors(tmp / f"vectors-{size}.npy", size, dim, centres, args.seed + 1)
        queries = np.array(clustered_vectors(tmp / "queries.npy", args.queries, dim, centres, args.seed + 2))
        exact, exact_p50, exact_p99 = latencies(functools.partial(search_exact, vectors), queries)
        print(
            f"{size:>9} {dim:>5} {'exact':>7} {exact_p50:>9.2f} {exact_p99:>9.2f} "
            f"{resident_megabytes():>8.0f} {1.0:>9.3f}",
            flush=True,
        )
        start = time.perf_counter()
        approximate = build_approximate(vectors)
        built = time.perf_counter() - start
        found, p50, p99 = latencies(approximate.search, queries)
        recall = recall_at_k(found, exact)
        info = approximate.info
        notes = (
            f"FAISS IVF-Flat {info['nlist']} cells, nprobe {info['nprobe']}, built in {built:.1f} s "
            f"({size / built:.0f} vectors/s); "
            f"{exact_p50 / p50:.1f}x faster"
        )
        if size == largest:
            met = recall >= 0.95 and exact_p50 >= 10 * p50
            notes += f"; target (recall >= 0.95, >= 10x): {'met' if met else 'missed'}"
        print(
            f"{size:>9} {dim:>5} {'FAISS':>7} {p50:>9.2f} {p99:>9.2f} "
            f"{resident_megabytes():>8.0f} {recall:>9.3f}  {notes}",
            flush=True,
        )
        vectors = approximate = None  # unmapped before the next size, so its memory is not counted there
        (tmp / f"vectors-{size}.npy").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", help="pretrained architecture, run or checkpoint")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--photo-size", default="640x480", help="WIDTHxHEIGHT of the written JPEGs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="the loop's DataLoader processes")
    parser.add_argument("--batch-size", type=int, default=64, help="the loop's batch size")
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="index sizes, comma-separated")
    parser.add_argument(
        "--dims", default="1280,1280,128", help="vector length per size (EfficientNet-Lite0's features: 1280)"
    )
    parser.add_argument("--precision", default="auto", help="cnnkit index's precision: auto, fp32 or bf16")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="build,queries", help="which parts, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts.split(","):
            {"build": build_rows, "queries": query_rows}[part](args, Path(tmp))


if __name__ == "__main__":
    main()
