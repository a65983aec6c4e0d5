"""The similarity-search index: embedding, incremental builds, exact and FAISS search, and refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.checkpoint import save_checkpoint
from cnnkit.deploy.index import Embedder, SearchIndex, build_index, load_embedder, open_index
from cnnkit.deploy.index import approximate as approximate_module
from cnnkit.deploy.index.approximate import build_approximate, recall_at_k, search_exact
from cnnkit.deploy.index.builder import class_label
from cnnkit.deploy.index.embedder import TracedEmbedding, inference_network, trace_embedding
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
from cnnkit.models import create_model

needs_faiss = pytest.mark.skipif(find_spec("faiss") is None, reason="FAISS comes with pip install -e '.[test]'")


@pytest.fixture(scope="module")
def convnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (seeded) convnet checkpoint at 32x32 RGB: its features are fixed, and it takes no training."""
    torch.manual_seed(0)
    spec = ModelSpec("convnet", 3, 3, 32)
    info = CheckpointInfo(spec, ["a", "b", "c"], Preprocessing(32, 3, (0.5,) * 3, (0.25,) * 3), {})
    path = tmp_path_factory.mktemp("model") / "convnet.safetensors"
    save_checkpoint(path, create_model("convnet", 3, 3, 32), info)
    return path


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_build_index_writes_unit_vectors_labels_and_report(convnet_checkpoint, shapes_folder, tmp_path):
    index = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    assert len(index) == 36 and index.vectors.shape == (36, index.dim)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    assert sorted(set(index.labels)) == ["circle", "square", "triangle"]
    assert index.paths == sorted(index.paths) and index.root == shapes_folder.resolve()
    report = json.loads((tmp_path / "out" / "shapes" / "index.json").read_text())["retrieval"]
    assert set(report) >= {"recall@1", "recall@2", "recall@4", "recall@8", "map@r"} and report["queries"] == 36
    assert report["recall@1"] <= report["recall@8"]
    assert index.meta["changes"] == {"added": 36, "changed": 0, "removed": 0, "unchanged": 0, "skipped": 0}


def test_build_index_rebuild_embeds_only_new_and_changed(convnet_checkpoint, shapes_folder, tmp_path, monkeypatch):
    first = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    kept_row = first.paths.index("square/square_002.jpg")
    kept_vector = np.array(first.vectors[kept_row])
    (shapes_folder / "circle" / "circle_000.jpg").unlink()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(shapes_folder / "circle" / "circle_001.png")
    Image.new("RGB", (40, 40), (10, 200, 10)).save(shapes_folder / "triangle" / "new.png")
    embedded: list[int] = []
    original = Embedder.embed_folder

    def counted(self, root, files=None):
        embedded.append(len(files))
        return original(self, root, files)

    monkeypatch.setattr(Embedder, "embed_folder", counted)
    second = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    assert second.meta["changes"] == {"added": 1, "changed": 1, "removed": 1, "unchanged": 34, "skipped": 0}
    assert embedded == [2] and len(second) == 36 and "circle/circle_000.jpg" not in second.paths
    np.testing.assert_array_equal(second.vectors[second.paths.index("square/square_002.jpg")], kept_vector)
    assert len(list((tmp_path / "out" / "shapes").glob("vectors-*.npy"))) == 1  # the previous build's files are gone


@needs_faiss
def test_build_index_interrupted_keeps_the_previous_build_and_leaves_nothing(
    convnet_checkpoint, shapes_folder, tmp_path, monkeypatch
):
    build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    before = _snapshot(tmp_path / "out" / "shapes")
    Image.new("RGB", (40, 40)).save(shapes_folder / "circle" / "new.png")

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("cnnkit.deploy.index.builder._report", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    assert _snapshot(tmp_path / "out" / "shapes") == before and len(open_index(tmp_path / "out" / "shapes")) == 36
    with pytest.raises(KeyboardInterrupt):
        build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="fresh")
    assert not (tmp_path / "out" / "fresh").exists()


def test_build_index_float16_rebuild_recomputes_and_searches(convnet_checkpoint, shapes_folder, tmp_path):
    exact = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    reference = np.array(exact.vectors)
    half = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes", dtype="float16")
    assert half.vectors.dtype == np.float16 and half.meta["changes"]["added"] == 36  # another dtype: all again
    np.testing.assert_allclose(half.vectors, reference, atol=2e-3)
    assert half.search(reference[:3], k=1)[1][:, 0].tolist() == [0, 1, 2]


def test_build_index_and_search_leave_the_folder_untouched(convnet_checkpoint, shapes_folder, tmp_path):
    before = _snapshot(shapes_folder)
    index = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes", approximate="on")
    index.search(index.embedder().embed_images([shapes_folder / "circle" / "circle_000.jpg"]), k=3)
    build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    assert _snapshot(shapes_folder) == before


def test_search_exact_matches_brute_force(convnet_checkpoint, shapes_folder, tmp_path):
    index = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    queries = index.embedder().embed_images([shapes_folder / "square" / "square_003.png", Image.new("RGB", (30, 30))])
    scores, rows = index.search(queries, k=5)
    brute = queries @ np.asarray(index.vectors).T  # (2, 36)
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert rows[0, 0] == index.paths.index("square/square_003.png")
    assert scores.shape == rows.shape == (2, 5)


def test_embed_images_equals_embed_folder(convnet_checkpoint, shapes_folder):
    embedder = load_embedder(convnet_checkpoint)
    vectors, paths, skipped = embedder.embed_folder(shapes_folder)
    row = paths.index("triangle/triangle_004.jpg")
    one = embedder.embed_images([(shapes_folder / paths[row]).read_bytes()])
    np.testing.assert_allclose(one[0], vectors[row], atol=1e-5)
    assert skipped == [] and vectors.dtype == np.float32


def test_search_exact_in_chunks_equals_one_block(monkeypatch):
    vectors = torch.nn.functional.normalize(torch.randn(500, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    queries = vectors[:7].numpy()
    whole = search_exact(vectors.numpy(), queries, 6)
    monkeypatch.setattr(approximate_module, "EXACT_CHUNK_VALUES", 8 * 64)  # 64 rows a chunk, 8 chunks
    chunked = search_exact(vectors.numpy().astype(np.float16), queries, 6)
    np.testing.assert_array_equal(chunked[1], whole[1])
    np.testing.assert_allclose(chunked[0], whole[0], atol=2e-3)


@needs_faiss
def test_build_approximate_reaches_target_recall_on_clustered_vectors():
    vectors = _clustered(4000)
    index = build_approximate(vectors)
    assert index.info["recall@10"] >= approximate_module.TARGET_RECALL
    _, exact = search_exact(vectors, vectors[:50], 10)
    _, found = index.search(vectors[:50], 10)
    assert recall_at_k(found, exact) >= 0.9  # measured on other queries than the tuning sample


def _clustered(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    points = centres[rng.integers(0, 40, count)] + 0.3 * rng.normal(size=(count, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@needs_faiss
def test_search_answers_exactly_where_faiss_finds_too_few():
    vectors = _clustered(4000)
    approximate = build_approximate(vectors)
    approximate.index.nprobe = 1  # one cell of ~40 vectors cannot give 200 neighbours
    files = {"paths": [f"{i}.png" for i in range(4000)], "sizes": [], "mtimes_ns": []}
    index = SearchIndex(Path("."), {"root": "."}, files, vectors, approximate)
    scores, rows = index.search(vectors[:5], k=200)
    np.testing.assert_array_equal(rows, search_exact(vectors, vectors[:5], 200)[1])
    assert (rows >= 0).all() and scores.shape == (5, 200)


@needs_faiss
def test_build_index_approximate_on_records_recall(convnet_checkpoint, shapes_folder, tmp_path):
    build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes", approximate="on")
    stored = json.loads((tmp_path / "out" / "shapes" / "index.json").read_text())["approximate"]
    assert stored["kind"] == "faiss-ivf-flat" and 0 <= stored["recall@10"] <= 1 and stored["nprobe"] >= 1
    reopened = open_index(tmp_path / "out" / "shapes")
    query = np.asarray(reopened.vectors[:1], dtype=np.float32)
    assert reopened.approximate is not None and reopened.search(query, k=1)[1][0, 0] == 0


def test_open_index_refuses_another_cnnkit_version(convnet_checkpoint, shapes_folder, tmp_path):
    build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    meta_path = tmp_path / "out" / "shapes" / "index.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "cnnkit": "0.0.1"}))
    with pytest.raises(CnnkitError, match=r"built by cnnkit 0\.0\.1.*rebuild it"):
        open_index(tmp_path / "out" / "shapes")


def test_open_index_refuses_moved_files(convnet_checkpoint, shapes_folder, tmp_path):
    build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    shutil.move(shapes_folder / "square", tmp_path / "elsewhere")
    with pytest.raises(CnnkitError, match=r"files of index .* moved"):
        open_index(tmp_path / "out" / "shapes")
    shutil.move(shapes_folder, tmp_path / "gone")
    with pytest.raises(CnnkitError, match="is gone"):
        open_index(tmp_path / "out" / "shapes")
    notes: list[str] = []
    rebuilt = build_index(convnet_checkpoint, tmp_path / "gone", out=tmp_path / "out", name="shapes", say=notes.append)
    assert len(rebuilt) == 24 and "another folder" in notes[0]  # the rebuild the message asks for works


def test_index_embedder_refuses_a_changed_checkpoint(convnet_checkpoint, shapes_folder, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(convnet_checkpoint, checkpoint)
    index = build_index(checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    with open(checkpoint, "ab") as stream:
        stream.write(b" ")  # retrained, as far as the bytes say
    with pytest.raises(CnnkitError, match="built by another model"):
        index.embedder()


def test_build_index_refuses_vectors_of_another_model(convnet_checkpoint, shapes_folder, tmp_path):
    build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    embedder = load_embedder(convnet_checkpoint)
    other = Embedder(embedder.model, embedder.preprocessing, {**embedder.identity, "sha256": "0" * 64}, embedder.device)
    with pytest.raises(CnnkitError, match="built by another model"):
        build_index(other, shapes_folder, out=tmp_path / "out", name="shapes")


def test_build_index_refuses_to_write_inside_the_folder(convnet_checkpoint, shapes_folder):
    before = _snapshot(shapes_folder)
    with pytest.raises(CnnkitError, match="inside the indexed folder"):
        build_index(convnet_checkpoint, shapes_folder, out=shapes_folder, name="index")
    assert _snapshot(shapes_folder) == before


def test_build_index_refuses_an_empty_folder(convnet_checkpoint, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(CnnkitError, match="no images found"):
        build_index(convnet_checkpoint, tmp_path / "empty", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_index_skips_undecodable_files(convnet_checkpoint, shapes_folder, tmp_path):
    (shapes_folder / "circle" / "broken.jpg").write_bytes(b"not a jpeg")
    index = build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out", name="shapes")
    assert "circle/broken.jpg" not in index.paths and len(index) == 36
    assert index.meta["changes"]["skipped"] == 1 and index.meta["skipped"][0]["path"] == "circle/broken.jpg"


def test_load_embedder_asks_for_pretrained_with_an_architecture_name():
    with pytest.raises(CnnkitError, match="--pretrained"):
        load_embedder("efficientnet_lite0")


@pytest.mark.parametrize(
    ("rel", "label"), [("cat/1.jpg", "cat"), ("1.jpg", None), ("train/cat/1.jpg", "cat"), ("cat/a/b/1.png", "cat")]
)
def test_class_label_is_the_class_subfolder(rel, label):
    assert class_label(rel) == label


def test_build_index_without_class_subfolders_has_no_labels(convnet_checkpoint, tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    for value in range(3):
        Image.new("RGB", (20, 20), (value * 80, 0, 0)).save(folder / f"{value}.png")
    index = build_index(convnet_checkpoint, folder, out=tmp_path / "out")
    assert index.labels is None and index.meta["retrieval"] is None and len(index) == 3
    assert index.directory == tmp_path / "out" / "index_loose"


@pytest.mark.slow
def test_build_index_concurrent_builds_take_turns(convnet_checkpoint, shapes_folder, tmp_path, monkeypatch):
    embedder = load_embedder(convnet_checkpoint, precision="fp32")
    original = Embedder.embed_folder

    def slow(self, root, files=None):
        time.sleep(0.3)  # without the lock the other build reads the (still missing) index meanwhile
        return original(self, root, files)

    monkeypatch.setattr(Embedder, "embed_folder", slow)
    out = tmp_path / "out"
    built: list[SearchIndex] = []
    threads = [
        threading.Thread(target=lambda: built.append(build_index(embedder, shapes_folder, out=out, name="shapes")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    changes = sorted((index.meta["changes"]["added"], index.meta["changes"]["unchanged"]) for index in built)
    assert changes == [(0, 36), (36, 0)]  # the second waited, then reused the first's vectors
    assert len(open_index(out / "shapes")) == 36 and len(list((out / "shapes").glob("vectors-*.npy"))) == 1


@pytest.mark.parametrize("name", ["convnet", pytest.param("efficientnet_lite0", marks=pytest.mark.slow)])
def test_inference_network_folds_batch_norms_keeping_vectors(name):
    torch.manual_seed(0)
    network = create_model(name, 3, 3, 32).eval()
    with torch.no_grad():  # statistics and scales (some negative) that make folding matter
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(-1.5, 1.5)
    prep = Preprocessing(32, 3, (0.5,) * 3, (0.25,) * 3)
    cpu = torch.device("cpu")
    folded = inference_network(network, cpu)
    traced = inference_network(network, cpu, trace_input=(3, 32, 32))
    assert isinstance(traced, TracedEmbedding)
    for model in (folded, traced.network):
        assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    pixels = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    reference = Embedder(network, prep, {}, cpu).embed_pixels(pixels)
    np.testing.assert_allclose(Embedder(folded, prep, {}, cpu).embed_pixels(pixels), reference, atol=1e-4)
    np.testing.assert_allclose(Embedder(traced, prep, {}, cpu).embed_pixels(pixels), reference, atol=1e-4)
    assert not torch.jit.onednn_fusion_enabled()  # the fuser was on only around the traced calls


class _Untraceable(torch.nn.Module):
    """A model whose embedding a trace gets wrong (a constant of the example) or cannot record at all."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "raises" and torch.jit.is_tracing():
            raise RuntimeError("untraceable")
        return torch.tensor(x.flatten(1).tolist()) if self.how == "constant" else x.flatten(1)


@pytest.mark.parametrize("how", ["constant", "raises"])
def test_trace_embedding_falls_back_to_eager_silently(how):
    network = _Untraceable(how)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = trace_embedding(network, torch.randn(3, 3, 8, 8))
    assert kept is network and not caught


def test_embedder_bf16_vectors_stay_close_to_fp32(convnet_checkpoint, shapes_folder):
    files = sorted(shapes_folder.rglob("*.jpg"))[:8]
    fp32, _, _ = load_embedder(convnet_checkpoint, precision="fp32").embed_files(files)
    bf16_embedder = load_embedder(convnet_checkpoint, precision="bf16")
    assert bf16_embedder.settings.precision == "bf16"
    assert not isinstance(bf16_embedder.model, TracedEmbedding)  # the fused graph is fp32 only
    bf16, _, _ = bf16_embedder.embed_files(files)
    assert bf16.dtype == np.float32 and (np.sum(fp32 * bf16, axis=1) >= 0.99).all()
