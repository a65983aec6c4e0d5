"""What ``predict`` and ``search`` read: image (or WAV) files and folders, and how unreadable ones are reported."""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from cnnkit.errors import CnnkitError


def expand_inputs(
    inputs: Sequence[str], extensions: Collection[str] | None = None, noun: str = "image"
) -> tuple[list[Path], bool]:
    """Files as given, folders expanded to their images (recursively, sorted); also whether a folder was seen.

    ``extensions`` (defaults to the image extensions) and ``noun`` say what a folder is searched for:
    an audio model's predict passes the WAV extensions and ``WAV file``.
    """
    from cnnkit.data.decode import IMAGE_EXTENSIONS

    extensions = IMAGE_EXTENSIONS if extensions is None else extensions
    paths, saw_folder = [], False
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            saw_folder = True
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in extensions
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise CnnkitError(f"no {noun}s found in folder {path}")
            paths += found
        elif path.exists():
            paths.append(path)
        else:
            raise CnnkitError(f"{noun} not found: {path}")
    return paths, saw_folder


def report_unreadable(paths: Sequence[Path], failures: Sequence[tuple], read: int, noun: str = "image") -> None:
    """Warn once per file in ``failures`` ((path, reason) pairs) and go on; an error if none of ``paths`` was read.

    A single file given that cannot be read is that file's own error line, not a warning.
    """
    if len(paths) == 1 and failures:
        raise CnnkitError(failures[0][1])
    for path, reason in failures:
        print(f"warning: skipped {noun} {path}: {reason}", file=sys.stderr)
    if not read:
        raise CnnkitError(f"none of the {len(paths)} {noun}s could be read; see the warnings above")
