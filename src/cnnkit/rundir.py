"""Run directories: ``runs/train``, ``runs/train2``, ... never overwriting an earlier run."""

from __future__ import annotations

import re
from pathlib import Path

from cnnkit.errors import CnnkitError


def new_run_dir(out: str | Path, name: str | None, prefix: str) -> Path:
    """Create ``out/name``; without a name, the first free of ``prefix``, ``prefix2``, ``prefix3``, ...

    A named directory that already holds files is refused, so no earlier run is overwritten.
    Unnamed directories are claimed by ``mkdir`` itself, which fails for all but one of
    the processes that try the same name at once: the others move on to the next number,
    so commands started together each get their own directory.
    """
    out = Path(out).expanduser()
    if name is not None:
        run_dir = out / name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise CnnkitError(f"run directory {run_dir} already exists; pick another --name or remove it")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    out.mkdir(parents=True, exist_ok=True)
    taken = {int(m.group(1) or 1) for p in out.iterdir() if (m := re.fullmatch(rf"{re.escape(prefix)}(\d*)", p.name))}
    number = 1
    while True:
        if number not in taken:
            run_dir = out / (prefix if number == 1 else f"{prefix}{number}")
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:  # another command took it between the listing and now
                pass
        number += 1
