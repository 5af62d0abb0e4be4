"""The multimodal path through every stage: notebooks 00..08 on `params/smoke-vlm.yaml`.

00 trains a tiny Qwen2.5-VL on the image world (the start of each question only in the
image) and writes the world in the real sets' schemas; 01 reads the MathVision file, 02 the
Eureka-Distill file and 04 the MM-Eureka file through `synergy.data`'s loaders, with their
images. The notebooks run cell by cell in this interpreter with the profile's parameters,
as papermill injects them (one import of torch and transformers for the series instead of
one kernel per notebook: the kernels' start-up would cost more than the series).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from synergy import pipeline, stages
from synergy.config import load_profile, profile_section
from synergy.runs import Run

ROOT = Path(__file__).resolve().parents[1]
SMOKE_VLM = ROOT / "params" / "smoke-vlm.yaml"
RUN = "smoke-vlm"


def execute_in_process(stage: stages.Stage, profile: Path, overrides: dict) -> dict:
    """A stage's notebook, code cell by code cell, in this interpreter: the parameters cell,
    then the profile's values for it (papermill's injection), then every other cell."""
    values = {**profile_section(load_profile(profile), stage.section, profile), **overrides}
    cfg = stage.config.from_mapping(values, str(profile))
    pipeline.check_notebook_matches(stage)
    namespace: dict = {}
    for n, cell in enumerate(json.loads(stage.notebook.read_text())["cells"]):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{stage.name}[{n}]", "exec"), namespace)
            if "parameters" in cell["metadata"].get("tags", []):
                namespace.update(cfg.to_dict())
    return namespace


@pytest.fixture(scope="session")
def vlm_series(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """(output root, seconds per stage) after 00..08 ran on smoke-vlm."""
    from synergy.runs import torch_threads

    root = tmp_path_factory.mktemp("vlm-outputs")
    seconds = {}
    with torch_threads(1):
        for stage in stages.STAGES:
            t0 = time.perf_counter()
            execute_in_process(stage, SMOKE_VLM, {"output_root": str(root)})
            seconds[stage.name] = time.perf_counter() - t0
    print(pipeline.time_table(seconds))
    return root, seconds


pytestmark = pytest.mark.slow


def test_images_reach_every_stage(vlm_series):
    from synergy import data, distill, grpo, models, stratify

    root, _ = vlm_series
    run = Run(root, RUN)
    world = run.manifest(stages.WORLD)
    assert world["kind"] == "image" and models.is_vision_language(run.model("world").path)
    assert set(world["task_files"]) == {"mathvision", "mm_eureka", "eureka_distill"}

    # 01: the MathVision loader read the world's file; every question has its image.
    levels = stratify.load(str(root), RUN).levels
    assert run.manifest(stages.STRATIFY)["upstream"]["benchmark"].startswith(
        f"mathvision:file:{run.dir(stages.WORLD)}")
    assert (levels["benchmark"] == "mathvision").all()
    assert all(len(x) == 1 and Path(x[0]).is_file() for x in levels["images"])
    assert len(pd.read_csv(run.dir(stages.STRATIFY) / "skipped_rows.csv")) == 0

    # 02: Eureka-Distill-style traces, each with its image.
    traces = distill.load(str(root), RUN).traces
    assert (traces["source"] == "eureka-distill").all() and len(traces) > 0
    assert all(len(x) == 1 for x in traces["images"])

    # 03: SFT on image rows, the vision tower and merger frozen: weights unchanged.
    sft = run.manifest(stages.SFT)["runs"][0]
    assert sft["train_images"] == sft["train_rows"] and sft["frozen_parameters"] > 0
    assert sft["vision_unchanged"] is True

    # 04: GRPO on MM-Eureka queries with images.
    rl = run.manifest(stages.GRPO)
    assert rl["train_images"] == rl["train_questions_kept"] > 0
    assert rl["upstream"]["train_questions"].startswith("mm_eureka:")
    assert models.is_vision_language(grpo.load(str(root), RUN).runs["model_path"].iloc[0])
    assert data.world_source("world", run, "mm_eureka").is_file()


def test_sft_kept_the_vision_tower_and_trained_the_language_model(vlm_series):
    from safetensors.torch import load_file
    from synergy import vlm

    run = Run(vlm_series[0], RUN)
    base, tuned = Path(run.model("world").path), Path(run.model(stages.SFT.name).path)
    assert vlm.vision_weights_equal(base, tuned) is True
    a, b = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    changed = [k for k in a if not vlm.is_vision_weight(k) and not torch.equal(a[k], b[k])]
    assert changed  # the language model did train


def test_merges_carry_the_vision_weights(vlm_series):
    from synergy import vlm

    run = Run(vlm_series[0], RUN)
    sft = vlm.vision_weights(run.model(stages.SFT.name).path)
    rl = vlm.vision_weights(run.model(stages.GRPO.name).path)
    assert sft and sft.keys() == rl.keys()
    for name in ("linear-0.5", "slerp-0.5", "ties-0.5"):
        merged = vlm.vision_weights(run.model(f"{stages.MERGING.name}:{name}").path)
        assert merged.keys() == sft.keys(), name
    linear = vlm.vision_weights(run.model(f"{stages.MERGING.name}:linear-0.5").path)
    assert all(torch.allclose(linear[k], (sft[k] + rl[k]) / 2, atol=1e-6) for k in sft)


def test_every_evaluating_stage_writes_per_level_and_the_verifier_audit(vlm_series):
    from synergy.evaluation import load_audit

    run = Run(vlm_series[0], RUN)
    for stage in (stages.SFT, stages.GRPO, stages.MERGING, stages.PIVOTAL):
        table = pd.read_csv(run.dir(stage) / "per_level.csv")
        audit = load_audit(run.dir(stage))
        assert set(audit["model"]) == set(table["model"]), stage.name
        assert run.manifest(stage)["verifier_audit"]["samples"] == audit["samples"].sum()
    assert load_audit(run.dir(stages.STRATIFY))["model"].tolist() == ["base"]
    assert len(pd.read_csv(run.dir(stages.PIVOTAL) / "kl_tokens.csv")) > 0
    assert run.has_run(stages.REPORT)


def test_smoke_vlm_series_time(vlm_series):
    """The series' wall time per stage, for the record (make test's whole budget is ten
    minutes on a clean clone)."""
    _, seconds = vlm_series
    assert set(seconds) == {s.name for s in stages.STAGES}
    assert sum(seconds.values()) < 600
