"""The generation command: ``cnnkit generate RUN --num N --out DIR`` writes a generator's images as class folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnkit.cli.flags import config_type, number_type
from cnnkit.config import COUNT


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add generate to the ``cnnkit`` parser."""
    generate = commands.add_parser(
        "generate",
        help="write a generator run's images as PNG class folders, ready for `cnnkit train --data`",
        description="Write N images per class (or of one class) from a run of `cnnkit train --task generate` to "
        "DIR/<class>/ as PNG files (grayscale for 1-channel runs). The same run, seed and device give the same "
        "files byte for byte. DIR must be new or empty: nothing is ever overwritten.",
    )
    generate.add_argument("run", metavar="RUN", help="run directory or checkpoint of a generator run")
    generate.add_argument("--num", type=number_type(COUNT), required=True, metavar="N", help="images per class")
    generate.add_argument("--class", dest="class_name", metavar="NAME", help="only this class (default: every class)")
    generate.add_argument("--seed", type=config_type("seed"), default=0, metavar="S", help="noise seed (default: 0)")
    generate.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="a new or empty folder for the class folders"
    )
    generate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")


def run_generate(args: argparse.Namespace) -> int:
    from cnnkit.tasks.generate.sampling import class_folder, generate_images

    written = generate_images(args.run, args.num, args.out, args.class_name, args.seed, args.device)
    for name, count in written.items():
        print(f"{name}: {count} images in {args.out / class_folder(name)}")
    classes = f"{len(written)} class{'es' if len(written) > 1 else ''}"
    print(f"wrote {sum(written.values())} images ({classes}, seed {args.seed}) to {args.out}")
    return 0


COMMANDS = {"generate": run_generate}
