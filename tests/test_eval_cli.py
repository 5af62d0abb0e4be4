"""`python -m synergy eval`: models addressed by hub id (offline, from a Hugging Face cache
under a temporary HF_HOME) evaluated per level on the run's benchmark with the shared
engine and cache, judged where the rules cannot decide, and shown in the run's report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, SMOKE, perturbed_copy
from fake_openai import FakeOpenAI, judge_reply
from synergy import stages

SECRET = "sk-eval-never-written-987654321"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def to_hub_cache(model_dir: Path, hf_home: Path, repo_id: str) -> None:
    """Lay a saved model out as huggingface_hub's cache holds a downloaded snapshot."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def evaluated(smoke_root, smoke_world, tmp_path_factory):
    """Two hub ids (the smoke base itself, and a perturbed copy) evaluated by the CLI on a
    copy of the smoke run, with a judge on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("eval-cli")
    shutil.copytree(smoke_root / "smoke", tmp / "out" / "smoke",
                    ignore=shutil.ignore_patterns("[0-9][2-9]_*"))
    hf_home = tmp / "hf"
    to_hub_cache(smoke_world[1], hf_home, "test-org/tiny-base")
    to_hub_cache(perturbed_copy(smoke_world[1], tmp / "perturbed", seed=3, scale=0.3), hf_home,
                 "test-org/tiny-other")
    profile = yaml.safe_load(SMOKE.read_text())
    profile["run"]["output_root"] = str(tmp / "out")
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile))
    server = FakeOpenAI(judge_reply)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "lib"), "JUDGE_KEY": SECRET}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "synergy", "eval", "--model", "test-org/tiny-base",
             "--model", "test-org/tiny-other", "--profile", str(tmp / "profile.yaml"),
             "--judge-url", server.url, "--judge-model", "judge-32b",
             "--judge-key-env", "JUDGE_KEY", "--judge-check", "5", "--quiet"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.close()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return tmp, server, done.stdout


def test_hub_ids_are_evaluated_per_level_on_the_run_benchmark(evaluated, smoke_world):
    from synergy.evaluation import evaluate_model, eval_spec, load_results
    from synergy.merging import MergingConfig
    from synergy.runs import Run

    tmp, _, stdout = evaluated
    run = Run(tmp / "out", "smoke")
    table = pd.read_csv(run.external / "per_level.csv")
    assert set(table["model"]) == {"tiny-base", "tiny-other"}
    levels = json.loads((run.root / stages.STRATIFY.name / "manifest.json").read_text())
    assert set(table["level"]) == set(levels["level_counts"]) | {"all"}  # the run's levels
    assert "tiny-other" in stdout
    manifest = json.loads((run.external / "manifest.json").read_text())
    assert manifest["upstream"]["tiny-base"] == "hub:test-org/tiny-base"
    assert manifest["upstream"][stages.STRATIFY.name].startswith("stratify-")
    assert manifest["eval_keys_from"] == "merging"
    # The shared engine and keyed samples: the hub copy of the base answers exactly as the
    # base's own folder does under the same eval keys.
    cfg = MergingConfig.from_profile(tmp / "profile.yaml")
    results = load_results(run.external)
    questions = results["tiny-base"].drop(columns=[
        "samples", "correct", "lengths", "formatted", "n_truncated", "accuracy", "mean_length",
        "format_rate"])
    local = evaluate_model(str(smoke_world[1]), questions, eval_spec(cfg),
                           n_samples=cfg.eval_samples, seed=cfg.seed,
                           cache_root=tmp / "local-cache", progress=False)
    def texts(df):
        return [list(s) for s in df["samples"]]

    assert texts(local) == texts(results["tiny-base"])
    assert texts(results["tiny-other"]) != texts(local)


def test_the_report_shows_them_beside_the_run(evaluated):
    from synergy import report, report_roles
    from synergy.runs import Run

    run = Run(evaluated[0] / "out", "smoke")
    levels = report.run_levels(run)
    assert {"tiny-base", "tiny-other"} <= set(levels.loc[levels["stage"] == "external", "model"])
    roles = report_roles.role_levels(levels, report.main_models(run))
    assert {"external/tiny-base", "external/tiny-other"} <= set(roles["role"])
    assert {"base"} <= set(roles["role"])  # the run's own, from 01


def test_the_judge_is_counted_cached_and_never_keeps_the_key(evaluated):
    tmp, server, stdout = evaluated
    external = tmp / "out" / "smoke" / "external"
    summary = pd.read_csv(external / "judge_summary.csv").set_index("model")
    assert set(summary.index) == {"tiny-base", "tiny-other"}
    assert summary["calls"].iloc[-1] == len(server.requests) > 0
    # The near-random smoke model states hardly any final answer: nearly all are undecided.
    assert (summary["judged"] == summary["undecided"] + summary["decided_checked"]).all()
    assert (summary["decided_checked"] <= 5).all() and (summary["undecided"] > 0).all()
    judged = pd.read_csv(external / "judge" / "tiny-base.csv")
    assert judged["undecided"].sum() == summary.at["tiny-base", "undecided"]
    assert {r["authorization"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert {r["body"]["model"] for r in server.requests} == {"judge-32b"}
    assert not [p for p in tmp.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert "agreement_on_decided" in stdout
