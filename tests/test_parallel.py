"""Trainings side by side (`synergy.parallel`): the scheduler on small module-level jobs
(spawned workers import them from here). The real stages trained side by side, bit for bit
as one after another: test_grpo.py (04) and test_strategies.py (05)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synergy import parallel
from synergy.progress import progress_bar

pytestmark = pytest.mark.usefixtures("one_thread")


# --- jobs (module level: a spawned worker imports them by name) -----------------------------

def write(folder: str, name: str, value: int, progress: bool = True,
          reuse_only: bool = False):
    """A 'training': its result is a file; done when the file exists."""
    path = Path(folder) / f"{name}.txt"
    if path.exists():
        return {"name": name, "value": int(path.read_text()), "pid": None}
    if reuse_only:
        return None
    for _ in progress_bar(range(3), desc=f"counting {name}", disable=not progress):
        pass
    path.write_text(str(value))
    return {"name": name, "value": value, "pid": os.getpid()}


def add(folder: str, name: str, start: int, value: int, progress: bool = True,
        reuse_only: bool = False):
    """Starts from another job's result (`parallel.From`)."""
    return write(folder, name, start + value, progress, reuse_only)


def fail(folder: str, name: str, progress: bool = True, reuse_only: bool = False):
    if reuse_only:
        return None
    raise ValueError(f"{name} cannot train")


def die(folder: str, name: str, progress: bool = True, reuse_only: bool = False):
    """A worker killed mid-training (out of memory, a kill -9)."""
    if reuse_only:
        return None
    os._exit(9)


def jobs(folder, *extra):
    return [parallel.Job("a", write, {"folder": str(folder), "name": "a", "value": 1}),
            parallel.Job("b", write, {"folder": str(folder), "name": "b", "value": 2}),
            parallel.Job("c", add, {"folder": str(folder), "name": "c", "value": 10,
                                    "start": parallel.From("a", "value")}), *extra]


# --- the scheduler ---------------------------------------------------------------------------

def test_workers_follow_the_setting_the_threads_and_the_jobs():
    assert parallel.workers_for(0, 5, threads=2) == 2   # auto: one per thread
    assert parallel.workers_for(0, 1, threads=2) == 1   # never more than the jobs
    assert parallel.workers_for(3, 5, threads=2) == 3   # as set
    assert parallel.workers_for(1, 5, threads=8) == 1   # one after another


def test_side_by_side_gives_what_one_after_another_gives(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SYNERGY_PROGRESS", "lines")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = parallel.run(jobs(tmp_path / "one"), setting=1)
    two = parallel.run(jobs(tmp_path / "two"), setting=2)
    assert list(two) == ["a", "b", "c"]                   # the jobs' order
    assert {k: v["value"] for k, v in two.items()} == {k: v["value"] for k, v in one.items()} \
        == {"a": 1, "b": 2, "c": 11}                      # c started from a's result
    assert {v["pid"] for v in one.values()} == {os.getpid()}
    assert os.getpid() not in {v["pid"] for v in two.values()}  # in worker processes
    err = capsys.readouterr()
    # The workers' bars are drawn here, one line per state, no cursor movement.
    assert "counting c" in err.err and "3/3" in err.err and "\x1b[A" not in err.err
    assert "training c (side by side: 2 at a time" in err.out


def test_finished_jobs_are_reused_without_starting_a_worker(tmp_path, monkeypatch):
    parallel.run(jobs(tmp_path), setting=1)

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker was started for finished jobs")

    monkeypatch.setattr(parallel.concurrent.futures, "ProcessPoolExecutor", no_pool)
    again = parallel.run(jobs(tmp_path), setting=2, progress=False)
    assert {v["pid"] for v in again.values()} == {None}


def test_a_failing_training_is_named_after_the_others_finish(tmp_path):
    broken = parallel.Job("x", fail, {"folder": str(tmp_path), "name": "x"})
    after = parallel.Job("y", add, {"folder": str(tmp_path), "name": "y", "value": 1,
                                    "start": parallel.From("x", "value")})
    with pytest.raises(parallel.TrainingFailed, match="training x failed: ValueError: x "
                       "cannot train") as info:
        parallel.run(jobs(tmp_path, broken, after), setting=2, progress=False)
    assert "also failed: ['y']" in str(info.value)
    # What the others trained is kept: a rerun reuses it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt"]


def test_a_worker_that_dies_is_named_with_how_to_resume(tmp_path):
    dead = parallel.Job("d", die, {"folder": str(tmp_path), "name": "d"})
    with pytest.raises(parallel.TrainingFailed, match=r"the process training (d|a|b|c) died "
                       r".*run the stage again to resume"):
        parallel.run([dead, *jobs(tmp_path)], setting=2, progress=False)
