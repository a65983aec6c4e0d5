"""The similarity-search commands: index (embed a folder into an index) and search (nearest images to queries)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnkit.cli.flags import number_type
from cnnkit.cli.inputs import report_unreadable
from cnnkit.config import COUNT
from cnnkit.errors import CnnkitError

SHEET_ROWS = 20  # queries drawn on a contact sheet at most: a taller PNG is no longer read by anyone


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add index and search to the ``cnnkit`` parser."""
    index = commands.add_parser(
        "index",
        help="embed every image of a folder into a similarity-search index",
        description="Embed every image under FOLDER (any depth; class subfolders optional) with a run, a checkpoint "
        "or a pretrained architecture, and write an index directory. Re-running embeds only new and changed files. "
        "The folder is only read.",
    )
    index.add_argument("model", metavar="MODEL", help="run directory, checkpoint, or architecture with --pretrained")
    index.add_argument("folder", metavar="FOLDER")
    index.add_argument("--out", default="runs", help="folder that holds the index directory (default: runs)")
    index.add_argument("--name", help="index directory name under --out (default: index_<folder name>)")
    index.add_argument("--pretrained", action="store_true", help="MODEL is an architecture: use its ImageNet weights")
    index.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16"),
        help="stored vectors; float16 halves disk and memory (default: float32)",
    )
    index.add_argument(
        "--approximate",
        default="auto",
        choices=("auto", "on", "off"),
        help="also build a FAISS index for fast approximate search (default: auto, from 100,000 images)",
    )
    index.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps (default: cpu)")

    search = commands.add_parser(
        "search",
        help="nearest images of an index to query images",
        description="For each query image (files or folders) print the most similar indexed images "
        "with their cosine similarity.",
    )
    search.add_argument("index", metavar="INDEX", help="index directory from `cnnkit index`")
    search.add_argument("queries", nargs="+", metavar="QUERY", help="image files or folders of images")
    search.add_argument("--k", type=number_type(COUNT), default=10, help="neighbours per query (default: 10)")
    search.add_argument("--json", action="store_true", help="print one JSON line per query")
    search.add_argument(
        "--sheet", type=Path, metavar="PNG", help="also draw a contact sheet PNG: each query and its neighbours"
    )
    search.add_argument("--exact", action="store_true", help="search exactly even where the index has a FAISS index")
    search.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps (default: cpu)")


def run_index(args: argparse.Namespace) -> int:
    from cnnkit.deploy.index import build_index

    index = build_index(
        args.model,
        args.folder,
        args.out,
        args.name,
        pretrained=args.pretrained,
        dtype=args.dtype,
        approximate=args.approximate,
        device=args.device,
        say=print,
    )
    meta = index.meta
    for item in meta["skipped"]:
        print(f"warning: skipped {item['path']}: {item['reason']}", file=sys.stderr)
    changes = meta["changes"]
    kind = "approximate (FAISS) and exact" if index.approximate else "exact"
    print(
        f"indexed {len(index)} images of {index.root} in {index.directory} ({index.dim}-d {meta['dtype']}, "
        f"{kind} search): {changes['added']} added, {changes['changed']} changed, {changes['removed']} removed, "
        f"{changes['unchanged']} unchanged, {changes['skipped']} skipped"
    )
    if report := meta["retrieval"]:
        sampled = f", a sample of {report['queries']}" if report["sampled"] else ""
        recalls = "  ".join(f"Recall@{k} {report[f'recall@{k}']:.3f}" for k in (1, 2, 4, 8))
        where = f"leave-one-out over {report['classes']} classes{sampled}"
        print(f"retrieval, {where}: {recalls}  MAP@R {report['map@r']:.3f}")
    return 0


def _query_files(queries: list[str]) -> list[Path]:
    """Files as given, folders expanded to their images (any depth, sorted)."""
    from cnnkit.deploy.index.embedder import list_folder_images

    paths: list[Path] = []
    for item in queries:
        path = Path(item).expanduser()
        if path.is_dir():
            found = list_folder_images(path)
            if not found:
                raise CnnkitError(f"query folder {path} holds no images (at any depth); give image files or folders")
            paths += [path / rel for rel in found]
        elif path.exists():
            paths.append(path)
        else:
            raise CnnkitError(f"query image not found: {path}")
    return paths


def run_search(args: argparse.Namespace) -> int:
    from cnnkit.deploy.index import open_index

    index = open_index(args.index)
    paths = _query_files(args.queries)
    vectors, kept, failures = index.embedder(args.device).embed_files(paths)
    report_unreadable(paths, failures, len(kept), noun="query image")
    scores, rows = index.search(vectors, args.k, exact=args.exact)
    results = [
        (query, [(str(index.file(int(row))), float(score)) for score, row in zip(found, near) if row >= 0])
        for query, found, near in zip(kept, scores, rows)
    ]
    for query, neighbours in results:
        if args.json:
            print(json.dumps({"query": query, "neighbours": [{"path": p, "score": s} for p, s in neighbours]}))
        else:
            print(query)
            for rank, (path, score) in enumerate(neighbours, 1):
                print(f"  {rank:>3}  {score:.4f}  {path}")
    if args.sheet:
        from cnnkit.deploy.index.sheet import draw_contact_sheet

        written = draw_contact_sheet(results[:SHEET_ROWS], args.sheet)
        shown = f" (the first {SHEET_ROWS} of {len(results)} queries)" if len(results) > SHEET_ROWS else ""
        print(f"contact sheet written to {written}{shown}", file=sys.stderr if args.json else sys.stdout)
    return 0


COMMANDS = {"index": run_index, "search": run_search}
