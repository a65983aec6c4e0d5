"""Run directories: unnamed runs started together each get their own ``trainN``."""

import threading
from pathlib import Path

from cnnkit.rundir import new_run_dir


def test_new_run_dir_takes_the_next_number_when_another_command_took_it_first(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir_after_a_rival(self, *args, **kwargs):
        if self.name == "train" and not self.exists():  # another command claims it between listing and mkdir
            real_mkdir(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir_after_a_rival)
    assert new_run_dir(tmp_path, None, "train") == tmp_path / "train2"


def test_new_run_dir_gives_concurrent_callers_distinct_directories(tmp_path):
    count = 8
    start, made, errors = threading.Barrier(count), [], []

    def claim() -> None:
        start.wait()
        try:
            made.append(new_run_dir(tmp_path / "runs", None, "train").name)
        except Exception as error:  # reported by the assertion below, whatever it is
            errors.append(error)

    threads = [threading.Thread(target=claim) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(made) == sorted(["train", *(f"train{n}" for n in range(2, count + 1))])
