"""The model registry: every form of a model parameter, its errors, and model fingerprints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from synergy import models
from synergy.files import ArtifactError
from synergy.runs import Run


def fake_stage(run: Run, stage: str, names: list[str], main: str, artifact_id: str) -> Path:
    """A stage folder with model folders and a manifest in the registry's one schema."""
    folder = run.root / stage
    for name in names:
        (folder / "models" / name).mkdir(parents=True)
        (folder / "models" / name / "config.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({
        "artifact_id": artifact_id, "main_model": main,
        "model_paths": {n: f"{stage}/models/{n}" for n in names}}))
    return folder


@pytest.fixture
def run(tmp_path) -> Run:
    run = Run(tmp_path, "r")
    fake_stage(run, "00_world", ["base"], "base", "world-1")
    fake_stage(run, "03_sft", ["careful", "lowquality"], "careful", "sft-1")
    fake_stage(run, "04_grpo", ["rl-beta0", "rl-beta0.005"], "rl-beta0.005", "grpo-1")
    return run


def test_every_spec_form(run, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "hub_offline", lambda: False)  # hub ids resolve when online
    world = models.resolve(run, "world")
    assert world.path == str(run.root / "00_world/models/base") and world.artifact_id == "world-1:base"
    assert models.resolve(run, "00_world").path == world.path
    assert models.resolve(run, "03_sft").path.endswith("03_sft/models/careful")  # main model
    ref = models.resolve(run, "03_sft:lowquality")
    assert ref.path.endswith("lowquality") and ref.artifact_id == "sft-1:lowquality"
    assert models.resolve(run, "04_grpo").artifact_id == "grpo-1:rl-beta0.005"
    folder = run.root / "03_sft" / "models" / "careful"
    local = models.resolve(run, str(folder))
    assert local.path == str(folder.resolve()) and local.artifact_id.startswith("path:")
    hub = models.resolve(run, "Qwen/Qwen2.5-VL-7B-Instruct")
    assert hub.path == "Qwen/Qwen2.5-VL-7B-Instruct" and hub.artifact_id.startswith("hub:")
    assert run.model("03_sft:careful") == models.resolve(run, "03_sft:careful")


def test_paths_are_relative_to_the_run_so_a_moved_run_still_works(run, tmp_path):
    moved = Run(tmp_path / "elsewhere", "r")
    shutil.copytree(run.root, moved.root)
    assert models.resolve(moved, "03_sft").path.startswith(str(moved.root))


def test_errors_say_what_to_do(run, tmp_path):
    with pytest.raises(ArtifactError, match=r"06_merging has not run.*--stages 06"):
        models.resolve(run, "06_merging")
    with pytest.raises(ArtifactError, match=r"no model 'zz'.*\['careful', 'lowquality'\]"):
        models.resolve(run, "03_sft:zz")
    with pytest.raises(ArtifactError, match="makes no models"):
        models.resolve(run, "01_stratify")
    with pytest.raises(ArtifactError, match="no such folder"):
        models.resolve(run, "./outputs/nowhere/model")
    with pytest.raises(ArtifactError, match="no such folder"):
        models.resolve(run, "outputs/r/03_sft/models/gone")  # a path, not a hub id
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="without config.json"):
        models.resolve(run, str(empty))
    shutil.rmtree(run.root / "03_sft" / "models" / "lowquality")
    with pytest.raises(ArtifactError, match=r"'lowquality' is missing.*--stages 03"):
        models.resolve(run, "03_sft:lowquality")


def test_labels():
    assert models.labels(["world", "03_sft", "04_grpo:rl-beta0.005"]) == ["base", "sft", "rl"]
    assert models.labels(["03_sft:careful", "03_sft:lowquality", "x/y"]) == \
        ["sft:careful", "sft:lowquality", "y"]


# --- fingerprints ---------------------------------------------------------------------------

def test_model_fingerprint_follows_the_weights(smoke_world, tmp_path):
    from safetensors.torch import load_file, save_file

    src = smoke_world[1]
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    assert models.fingerprint(copy) == models.fingerprint(src)  # content, not location
    (copy / "README.md").write_text("notes")
    assert models.fingerprint(copy) == models.fingerprint(src)
    weights = copy / "model.safetensors"
    tensors = load_file(weights)
    save_file(tensors, weights, metadata={"format": "pt"})  # rewritten, same values
    assert models.fingerprint(copy) == models.fingerprint(src)
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert models.fingerprint(copy) != models.fingerprint(src)


def test_model_fingerprint_sees_a_change_in_the_middle_of_a_large_file(tmp_path):
    from safetensors.torch import save_file

    # Merged or partly trained models can differ only in middle layers of a multi-GB file.
    tensors = {f"layer{i:02d}": torch.zeros(256, 1024) for i in range(12)}  # 12 MiB
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    before = models.fingerprint(folder)
    tensors["layer06"][100, 3] = 1.0
    save_file(tensors, folder / "model.safetensors")
    assert models.fingerprint(folder) != before


def test_model_fingerprint_of_a_hub_id():
    assert models.fingerprint("Qwen/Qwen2.5-7B") == models.fingerprint("Qwen/Qwen2.5-7B")
    assert models.fingerprint("Qwen/Qwen2.5-7B") != models.fingerprint("Qwen/Qwen2.5-3B")


def test_weight_distance(smoke_world, tmp_path):
    from conftest import perturbed_copy

    _, base = smoke_world
    same = models.weight_distance(base, base)
    assert same["relative_distance"] == 0 and same["max_tensor_distance"] == 0
    near = models.weight_distance(perturbed_copy(base, tmp_path / "near", 1, scale=0.01), base)
    far = models.weight_distance(perturbed_copy(base, tmp_path / "far", 1, scale=0.1), base)
    assert 0 < near["relative_distance"] < far["relative_distance"] < 0.2
    assert far["relative_distance"] == pytest.approx(10 * near["relative_distance"], rel=0.05)
    with pytest.raises(ArtifactError, match="no safetensors"):
        models.weight_distance(tmp_path, base)
