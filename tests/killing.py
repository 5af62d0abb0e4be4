"""Helpers of the kill tests (test_kills.py: 01-03, test_kills_training.py: 04-06).

A kill test starts `python -m synergy run --stages NN`, waits until the stage has finished
some of its units (sample shards, models, checkpoints, merges), SIGKILLs the runner and
every process it started (its notebook kernel: the whole job, as in an OOM kill or a
preempted job), and runs the same command again. It then checks what the second run
recomputed (nothing that was finished; at most the unit in flight) and that every final
artifact equals the uninterrupted smoke run's (`smoke_series`), byte for byte where the
artifact is a model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from conftest import ROOT, SMOKE
from synergy import models, reuse, stages
from synergy.files import load_dataset_dir


def kill_root(smoke_series: Path, tmp_path_factory, upstream: tuple[str, ...]):
    """(profile, run folder, reference run folder): a fresh output root holding only the
    smoke run's folders of the `upstream` stages (its world reused through the run's own
    copy of 00_world, no shared cache, no sample cache)."""
    root = tmp_path_factory.mktemp("kills") / "outputs"
    for stage in upstream:
        folder = stages.find(stage).name
        shutil.copytree(smoke_series / "smoke" / folder, root / "smoke" / folder)
    profile = yaml.safe_load(SMOKE.read_text())
    profile["run"]["output_root"] = str(root)
    path = root.parent / "smoke.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path, root / "smoke", smoke_series / "smoke"


def command(profile: Path, stage: str) -> list[str]:
    return [sys.executable, "-m", "synergy", "run", "--profile", str(profile), "--stages", stage,
            "--quiet"]


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children before their parents' parents."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        parent_pid = todo.pop()
        kids = [p for p, parent in parents.items() if parent == parent_pid]
        out += kids
        todo += kids
    return out[::-1]


def kill_when(cmd: list[str], ready, log: Path, timeout: float = 300) -> float:
    """Run `cmd`; as soon as `ready()` holds, SIGKILL it and every process it started (the
    notebook kernel runs in a session of its own): the whole job dies at once, as in an OOM
    kill or a preempted job. Returns the seconds it ran."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            while not ready():
                assert proc.poll() is None, f"finished before the kill point:\n{log.read_text()}"
                assert time.perf_counter() - t0 < timeout, "kill point never reached"
                time.sleep(0.01)
        finally:
            for pid in [*descendants(proc.pid), proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
    return time.perf_counter() - t0


def run_again(cmd: list[str], log: Path) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]


def finished_shards(folder: Path) -> list[Path]:
    """Sample shards written to the end (not those still in a write's temporary folder)."""
    return [p for p in folder.rglob("part-*.jsonl")
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def shards(folder: Path) -> dict[str, set]:
    """{shard name: {(key, index)}} of every finished sample shard under `folder`."""
    return {str(shard.relative_to(folder)): {
        (r["key"], r["index"]) for r in map(json.loads, shard.read_text().splitlines())}
        for shard in finished_shards(folder)}


def no_leftovers(run: Path) -> None:
    """No temporary folder of a killed write survives the next run."""
    assert [p for p in run.rglob("*.tmp-*")] == []


def saved(checkpoint: Path) -> bool:
    """The trainer finished saving the checkpoint (its state, written last, parses)."""
    try:
        return "global_step" in json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False


def same_dataset(a: Path, b: Path) -> bool:
    return reuse.digest(load_dataset_dir(a).to_pandas()) == \
        reuse.digest(load_dataset_dir(b).to_pandas())


def same_csv(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


def same_models(names, mine: Path, reference: Path, inner: str = "") -> None:
    """Each named model folder under `mine` has the fingerprint of the reference's."""
    for name in names:
        assert models.fingerprint(mine / name / inner) == \
            models.fingerprint(reference / name / inner), name


def killed_then_resumed(kills, stage: str, ready, tmp_path) -> tuple[Path, dict, float]:
    profile, run, _ = kills
    cmd = command(profile, stage)
    seconds = kill_when(cmd, ready, tmp_path / "killed.log")
    folder = next(run.glob(f"{stage}_*"))
    assert not (folder / "manifest.json").exists()  # killed mid-stage
    before = shards(run)
    run_again(cmd, tmp_path / "again.log")
    assert (folder / "manifest.json").exists()
    no_leftovers(run)
    return folder, before, seconds


def redrawn(run: Path, before: dict) -> set:
    """Samples the second run drew that the killed one had already saved (must be none)."""
    done = set().union(*before.values()) if before else set()
    new = [s for name, s in shards(run).items() if name not in before]
    return done & set().union(*new) if new else set()
