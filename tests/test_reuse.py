"""Nothing stale is reused, nothing damaged is used, and a run folder stands on its own.

On copies of the smoke run (`smoke_series`):
- each upstream param is changed in turn and exactly the downstream artifacts that depend
  on it (SFT models, GRPO policies, merges) must be recomputed: the stages' own reuse keys
  (`sft.plan_models`, `grpo.run_key`, `merging.merge_key`) against the keys their records
  hold, after rerunning the upstream stages the param belongs to; one case runs 03 for real;
- damaged artifacts (a truncated model, a truncated sample shard) are named, set aside and
  recomputed to the same result;
- a run folder moved elsewhere, with the original out of reach, reruns every stage from its
  new place and reuses everything it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMOKE, built
from synergy import distill, grpo, merging, models, reuse, sft, stages, stratify, world
from synergy.config import load_profile, profile_section
from synergy.files import CorruptArtifact, read_json
from synergy.runs import Run

pytestmark = pytest.mark.slow


def config(stage, root: Path, **changes):
    cls = stages.find(stage).config
    values = profile_section(load_profile(SMOKE), cls.SECTION, SMOKE)
    return cls.from_mapping({**values, "output_root": str(root), **changes}, str(SMOKE))


def copy_run(smoke_series: Path, tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    shutil.copytree(smoke_series / "smoke", root / "smoke", symlinks=True)
    return root


def recorded(record: Path) -> str | None:
    return read_json(record)["key"] if record.exists() else None


def recomputed(root: Path, changes: dict[str, dict]) -> set[str]:
    """What a rerun would recompute after `changes` ({section: {key: value}}): stages 01
    and 02 are rerun for real when their params change (later keys read what they write);
    then every SFT model, policy and merge whose reuse key differs from its record's, and
    every merge of a parent that is recomputed."""
    run = Run(root, "smoke")
    cfgs = {s: config(s, root, **changes.get(s, {}))
            for s in ("stratify", "distill", "sft", "grpo", "merging")}
    if "stratify" in changes:
        stratify.run(cfgs["stratify"], progress=False)
    if "stratify" in changes or "distill" in changes:
        distill.run(cfgs["distill"], progress=False)
    out = set()
    base = run.model("world").path
    sft_dir, grpo_dir = run.dir(stages.SFT), run.dir(stages.GRPO)
    suffix = stratify.config_of(run).prompt_suffix
    for unit in sft.plan_models(cfgs["sft"], distill.load(str(root), "smoke").traces, base,
                                suffix):
        if unit.key != recorded(sft_dir / "train" / unit.spec.name / "done.json"):
            out.add(f"sft:{unit.spec.name}")
    gcfg = cfgs["grpo"]
    init = grpo.starting_copy(run.model(gcfg.init_model).path, grpo_dir)
    _, datasets, _ = grpo.training_set(gcfg, run, init, progress=False)
    dataset = datasets[gcfg.exclude_easiest]
    for beta in gcfg.betas:
        label = grpo.run_label(beta, gcfg.exclude_easiest)
        if grpo.run_key(gcfg, beta, init, dataset) != recorded(grpo_dir / "runs" / label
                                                              / "done.json"):
            out.add(f"rl:{label}")
    mcfg = cfgs["merging"]
    parents = {role: run.model(spec).path for role, spec in
               (("sft", mcfg.sft_model), ("rl", mcfg.rl_model), ("base", mcfg.base_model))}
    retrained = {"sft": f"sft:{Path(parents['sft']).name}",
                 "rl": f"rl:{Path(parents['rl']).parent.name}"}
    for method in mcfg.methods:
        for ratio in mcfg.sft_ratios:
            name = merging.merge_name(method, ratio)
            key = merging.merge_key(merging.mergekit_config(
                method, ratio, parents["sft"], parents["rl"], parents["base"],
                density=mcfg.density, dtype=mcfg.dtype), mcfg.seed)
            if out & set(retrained.values()) or key != recorded(
                    run.dir(stages.MERGING) / "merges" / name / "merge.json"):
                out.add(f"merge:{name}")
    return out


SFT_ALL = {"sft:careful", "sft:lowquality", "sft:careful_n8_easy0"}
RL_ALL = {"rl:rl-beta0-static", "rl:rl-beta0.01-static"}
MERGES = {f"merge:{m}-{r:g}" for m in ("linear", "slerp", "ties") for r in (0.0, 0.5, 1.0)}
TIES = {m for m in MERGES if m.startswith("merge:ties")}

CASES = [
    # 01's thresholds relabel the traces' levels, which choose the SFT data: the stale reuse
    # the issue names. Policies (world questions, the base as start) do not read levels.
    ({"stratify": {"level_min_correct": [4, 2, 1, 0]}}, SFT_ALL | MERGES),
    ({"stratify": {"prompt_suffix": "Answer briefly."}}, SFT_ALL | MERGES),
    # A teacher's traces: only the models trained on them.
    ({"distill": {"lowquality_error_rate": 0.6}}, {"sft:lowquality"}),
    ({"distill": {"teacher_samples": 2}}, set()),  # no SFT model trains on `sampled`
    ({"sft": {"lr": 0.002}}, SFT_ALL | MERGES),
    ({"sft": {"max_steps": 3}}, SFT_ALL | MERGES),
    ({"sft": {"eval_samples": 3, "report_to": "tensorboard", "n_examples": 3}}, set()),
    ({"sft": {"scale_sweep": {"careful": [12]}}}, {"sft:careful_n12_easy0"}),  # a new model
    ({"grpo": {"learning_rate": 2e-4}}, RL_ALL | MERGES),
    ({"grpo": {"n_train_questions": 6}}, RL_ALL | MERGES),
    ({"grpo": {"prompt_suffix": "Think."}}, RL_ALL | MERGES),
    ({"grpo": {"eval_temperature": 0.5, "save_steps": 1}, "run": {"threads": 1}}, set()),
    ({"merging": {"density": 0.7}}, TIES),
    ({"merging": {"eval_samples": 3, "synergy_margin": 0.1}}, set()),
]


@pytest.mark.parametrize("changes, expected", CASES,
                         ids=[",".join(f"{s}.{k}" for s, c in ch.items() for k in c)
                              for ch, _ in CASES])
def test_exactly_the_dependent_artifacts_are_recomputed(smoke_series, tmp_path, changes,
                                                        expected):
    root = copy_run(smoke_series, tmp_path)
    assert recomputed(root, {}) == set()  # unchanged: everything reused
    assert recomputed(root, changes) == expected


def test_world_params_change_the_world_and_so_every_model(smoke_series, tmp_path):
    wcfg = config("world", tmp_path)
    for key, value in (("train_steps", 31), ("lr", 0.002), ("num_layers", 3),
                       ("check_fraction", 0.2)):
        assert dataclasses.replace(wcfg, **{key: value}).world_id() != wcfg.world_id()
    # A key added later is out of the id at the value earlier worlds trained with (their
    # caches stay valid): the id of check_fraction 0 is that of params without the key.
    assert wcfg.check_fraction == 0
    assert wcfg.world_id() == "world-" + reuse.key(
        {**{k: v for k, v in reuse.own_params(wcfg).items() if k != "check_fraction"},
         "trainer": world.TRAINER_VERSION}, code=world.WORLD_CODE)[:12]
    assert dataclasses.replace(wcfg, run_name="other", output_root="/x").world_id() == \
        wcfg.world_id()


def test_thresholds_retrain_sft_for_real(smoke_series, tmp_path):
    """The issue's case end to end: new thresholds, rerun 01 -> 02 -> 03."""
    root = copy_run(smoke_series, tmp_path)
    changes = {"level_min_correct": [4, 2, 1, 0]}
    stratify.run(config("stratify", root, **changes), progress=False)
    distill.run(config("distill", root), progress=False)
    res = sft.run(config("sft", root), progress=False)
    assert not res.runs["reused"].any()
    assert set(res.results["careful"]["level"]) == {4}  # the new labels reach the evaluation
    again = sft.run(config("sft", root), progress=False)
    assert again.runs["reused"].all()


def test_damaged_artifacts_are_set_aside_and_recomputed_the_same(smoke_series, tmp_path):
    from synergy import evaluation

    root = copy_run(smoke_series, tmp_path)
    run = Run(root, "smoke")
    cfg = config("sft", root)
    careful = run.dir(stages.SFT) / "models" / "careful"
    merge = run.dir(stages.MERGING) / "merges" / "linear-0.5" / "model"
    base_samples = evaluation.cache_for(run.samples_cache, run.model("world").path,
                                        evaluation.eval_spec(cfg), cfg.seed).root
    shard = sorted(base_samples.glob("part-*.jsonl"))[0]
    expected = {p: models.fingerprint(p) for p in (careful, merge)}
    per_level = {s: pd.read_csv(run.dir(s) / "per_level.csv") for s in (stages.SFT,
                                                                       stages.MERGING)}
    for f in (careful / "model.safetensors", next(merge.glob("*.safetensors")), shard):
        with f.open("r+b") as fh:
            fh.truncate(f.stat().st_size // 2)
    with pytest.warns(CorruptArtifact) as caught:
        res = sft.run(cfg, progress=False)
        merged = merging.run(config("merging", root), progress=False)
    named = " ".join(str(w.message) for w in caught)
    assert str(careful) in named and shard.name in named and str(merge) in named
    runs = res.runs.set_index("name")
    assert not runs.at["careful", "reused"] and runs.at["lowquality", "reused"]
    assert models.fingerprint(careful) == expected[careful]  # retrained to the same weights
    reused = merged.merges.set_index("model")["reused"]
    assert not reused["linear-0.5"] and reused.drop("linear-0.5").all()
    assert models.fingerprint(merge) == expected[merge]
    for stage, table in per_level.items():  # the redrawn samples are the same samples
        pd.testing.assert_frame_equal(pd.read_csv(run.dir(stage) / "per_level.csv"), table)
    aside = [p.name for p in careful.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].startswith(".careful.corrupt-")


def test_a_moved_run_works_from_its_new_place(smoke_series, tmp_path, tmp_path_factory,
                                              worker_id):
    """Copied, then moved, with the original output root (its run and world cache) out of
    reach: every stage reruns from the new place and reuses all the run folder holds."""
    first = copy_run(smoke_series, tmp_path / "a")
    moved = tmp_path / "b" / "outputs"
    moved.parent.mkdir()
    os.rename(first, moved)
    with contextlib.ExitStack() as stack:
        # Every root the run was made in is out of reach: this worker's copy, and the
        # session's shared builds it was copied from (held locked while hidden).
        hidden = hide(stack, smoke_series)
        for name in ("series", "root"):
            hide(stack, stack.enter_context(built(tmp_path_factory, worker_id, name)))
        moved_run_works(moved, hidden)


def hide(stack: contextlib.ExitStack, root: Path) -> Path:
    """`root` renamed away until `stack` closes; the hidden place."""
    hidden = root.with_name(root.name + "-hidden-by-test_reuse")
    os.rename(root, hidden)
    stack.callback(os.rename, hidden, root)
    return hidden


def moved_run_works(moved: Path, hidden: Path) -> None:
    """Every stage reruns from `moved` and reuses all it holds (the first place at
    `hidden`, out of reach)."""
    run = Run(moved, "smoke")
    for manifest in run.root.glob("*/manifest.json"):  # paths recorded: relative
        data = read_json(manifest)
        paths = [*(data.get("model_paths") or {}).values(),
                 *(data.get("evaluated") or {}).values(),
                 *(r["model_path"] for r in data.get("runs", []) if "model_path" in r)]
        assert not [p for p in paths if Path(p).is_absolute()], manifest
    assert world.run(config("world", moved), progress=False).manifest["reused"]
    assert any((moved / "cache").glob("world-*/model"))  # the cache rebuilt from the run
    stratify.run(config("stratify", moved), progress=False)
    distill.run(config("distill", moved), progress=False)
    assert sft.run(config("sft", moved), progress=False).runs["reused"].all()
    assert grpo.run(config("grpo", moved), progress=False).runs["reused"].all()
    assert merging.run(config("merging", moved), progress=False).merges["reused"].all()
    for stage in (stages.STRATIFY, stages.DISTILL):
        assert (run.dir(stage) / "manifest.json").exists()
    for stage in (stages.SFT, stages.GRPO, stages.MERGING):
        pd.testing.assert_frame_equal(
            pd.read_csv(run.dir(stage) / "per_level.csv"),
            pd.read_csv(hidden / "smoke" / stage.name / "per_level.csv"))
