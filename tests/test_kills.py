"""Nothing is lost on a kill: every stage's command, SIGKILLed mid-stage, then run again.

Each test (01, 02, 03, 04, 05, 06) starts `python -m synergy run --stages NN`, waits until the stage has finished
some of its units (sample shards, models, checkpoints, merges), SIGKILLs the runner and
every process it started (its notebook kernel: the whole job, as in an OOM kill or a
preempted job), and runs the same command again. It then checks what the second run
recomputed (nothing that was finished; at most the unit in flight) and that every final
artifact equals the uninterrupted smoke run's (`smoke_series`), byte for byte where the
artifact is a model. The stages run in order in one output root, each on the previous
one's resumed artifacts, so a later stage also checks that the earlier ones came out whole.
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
import pytest
import yaml
from conftest import ROOT, SMOKE
from synergy import models, reuse
from synergy.files import load_dataset_dir, read_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kills(smoke_series, tmp_path_factory):
    """(profile, run folder, reference run folder): a fresh output root holding only the
    smoke run's 00_world (its world reused through the run's own copy, no shared cache)."""
    root = tmp_path_factory.mktemp("kills") / "outputs"
    shutil.copytree(smoke_series / "smoke" / "00_world", root / "smoke" / "00_world")
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


def test_01_stratify(kills, tmp_path):
    _, run, ref = kills
    cache = run / "01_stratify" / "cache"
    folder, before, _ = killed_then_resumed(
        kills, "01", lambda: finished_shards(cache), tmp_path)
    assert before and redrawn(run, before) == set()  # every finished sample kept
    assert set().union(*shards(cache).values()) == set().union(*shards(ref / "01_stratify"
                                                                        / "cache").values())
    assert same_dataset(folder / "levels", ref / "01_stratify" / "levels")


def test_02_distill(kills, tmp_path):
    _, run, ref = kills
    cache = run / "cache" / "samples"
    folder, before, _ = killed_then_resumed(
        kills, "02", lambda: finished_shards(cache), tmp_path)
    assert any(name.startswith("cache") for name in before)
    assert redrawn(run, before) == set()
    assert same_dataset(folder / "traces", ref / "02_distill" / "traces")
    same_csv(folder / "pool.csv", ref / "02_distill" / "pool.csv")


def test_03_sft(kills, tmp_path):
    _, run, ref = kills
    second = run / "03_sft" / "train" / "lowquality" / "checkpoints" / "checkpoint-1"
    folder, _, _ = killed_then_resumed(
        kills, "03", lambda: saved(second), tmp_path)
    runs = pd.read_csv(folder / "runs.csv").set_index("name")
    # The model finished before the kill is reused; the one in flight resumes from its
    # checkpoint; the one not started trains from step 1.
    assert runs.at["careful", "reused"]
    assert not runs.at["lowquality", "reused"]
    assert runs.at["lowquality", "resumed_from"] in ("checkpoint-1", "checkpoint-2")
    assert pd.isna(runs.at["careful_n8_easy0", "resumed_from"])
    steps = [r["step"] for r in map(json.loads, (folder / "train" / "lowquality" / "log.jsonl")
                                    .read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2]  # each step logged once across the two runs
    same_models(runs.index, folder / "models", ref / "03_sft" / "models")
    same_csv(folder / "per_level.csv", ref / "03_sft" / "per_level.csv")


def test_04_grpo(kills, tmp_path):
    _, run, ref = kills
    policy = run / "04_grpo" / "runs" / "rl-beta0.01-static"
    folder, _, _ = killed_then_resumed(
        kills, "04",
        lambda: saved(policy / "checkpoints" / "checkpoint-2"), tmp_path)
    records = {r["label"]: r for r in read_json(folder / "manifest.json")["runs"]}
    assert records["rl-beta0-static"]["reused"]
    assert records["rl-beta0.01-static"]["resumed_from"] in ("checkpoint-2", "checkpoint-4")
    same_models(records, folder / "runs", ref / "04_grpo" / "runs", "model")
    same_csv(folder / "per_level.csv", ref / "04_grpo" / "per_level.csv")


def test_05_strategies(kills, tmp_path):
    """05 killed once two strategy models are finished: they are reused, the rest trained,
    and every model and table equals an uninterrupted 05 on the same upstream artifacts."""
    profile, run, _ = kills
    # The reference: an uninterrupted 05 on a copy of this root (01-04 resumed above).
    ref_root = tmp_path / "reference" / "outputs"
    shutil.copytree(run, ref_root / run.name, ignore=shutil.ignore_patterns("05_strategies"))
    ref_profile = yaml.safe_load(profile.read_text())
    ref_profile["run"]["output_root"] = str(ref_root)
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump(ref_profile))
    run_again(command(tmp_path / "reference.yaml", "05"), tmp_path / "reference.log")
    ref = ref_root / run.name / "05_strategies"

    runs_dir = run / "05_strategies" / "runs"
    folder, _, _ = killed_then_resumed(
        kills, "05", lambda: len(list(runs_dir.glob("*/done.json"))) >= 2, tmp_path)
    table = pd.read_csv(folder / "runs.csv")
    assert 2 <= table["reused"].sum() < len(table)  # finished models kept, the rest trained
    same_models(table["label"], runs_dir, ref / "runs", "model")
    same_csv(folder / "per_level.csv", ref / "per_level.csv")


def test_06_merging(kills, tmp_path):
    _, run, ref = kills
    merges = run / "06_merging" / "merges"
    folder, _, _ = killed_then_resumed(
        kills, "06", lambda: len(list(merges.glob("*/merge.json"))) >= 3, tmp_path)
    table = pd.read_csv(folder / "merges.csv")
    assert 3 <= table["reused"].sum() < len(table)  # finished merges kept, the rest made
    same_models(table["model"], merges, ref / "06_merging" / "merges", "model")
    same_csv(folder / "per_level.csv", ref / "06_merging" / "per_level.csv")
