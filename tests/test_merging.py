"""Merging: endpoint merges equal their parents, merges are reused, 06 runs on smoke."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import SMOKE, perturbed_copy
from safetensors.torch import load_file

from synergy import merging
from synergy.runs import ArtifactError


@pytest.fixture(scope="module")
def parents(smoke_world, tmp_path_factory):
    """(base, "sft", "rl"): the smoke base and two perturbed copies of it."""
    _, base = smoke_world
    tmp = tmp_path_factory.mktemp("parents")
    return base, perturbed_copy(base, tmp / "sft", 1), perturbed_copy(base, tmp / "rl", 2)


def weights(folder):
    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.parametrize("method", ["linear", "slerp"])
@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_endpoint_merge_equals_parent(parents, tmp_path, method, ratio):
    base, sft, rl = parents
    config = merging.mergekit_config(method, ratio, str(sft), str(rl), str(base),
                                     density=0.5, dtype="float32")
    path, reused, _ = merging.ensure_merge(config, tmp_path / "m", shard_params=10**8, seed=0)
    assert not reused
    merged, parent = weights(path), weights(sft if ratio == 1 else rl)
    assert merged.keys() == parent.keys()
    for name, tensor in parent.items():
        assert (merged[name] - tensor).abs().max().item() < 1e-6, name
    assert (path / "tokenizer.json").exists() and (path / "chat_template.jinja").exists()


def test_vision_language_merge_keeps_its_processor(smoke_world, tmp_path):
    from synergy.generation import HFEngine
    from synergy.vlm import build_tiny_vlm

    _, base = smoke_world
    a, b = (build_tiny_vlm(base, tmp_path / n, seed=i) for i, n in enumerate("ab"))
    config = merging.mergekit_config("linear", 1.0, str(a), str(b), str(b), density=0.5,
                                     dtype="float32")
    path, _, _ = merging.ensure_merge(config, tmp_path / "m", shard_params=10**8, seed=0)
    assert (path / "preprocessor_config.json").exists()
    merged, parent = weights(path), weights(a)
    assert merged.keys() == parent.keys()
    assert all((merged[k] - parent[k]).abs().max() < 1e-6 for k in parent)
    assert HFEngine.from_path(path).processor is not None


def test_midpoint_linear_is_the_average(parents, tmp_path):
    base, sft, rl = parents
    config = merging.mergekit_config("linear", 0.25, str(sft), str(rl), str(base),
                                     density=0.5, dtype="float32")
    path, _, _ = merging.ensure_merge(config, tmp_path / "m", shard_params=10**8, seed=0)
    merged, a, b = weights(path), weights(sft), weights(rl)
    for name in a:
        assert (merged[name] - (0.25 * a[name] + 0.75 * b[name])).abs().max() < 1e-5


def test_merge_reused_unless_config_or_inputs_change(parents, tmp_path):
    base, sft, rl = parents
    config = merging.mergekit_config("ties", 0.5, str(sft), str(rl), str(base),
                                     density=0.5, dtype="float32")
    folder = tmp_path / "m"
    assert not merging.ensure_merge(config, folder, shard_params=10**8, seed=0)[1]
    assert merging.ensure_merge(config, folder, shard_params=10**8, seed=0)[1]
    other = merging.mergekit_config("ties", 0.5, str(sft), str(rl), str(base),
                                    density=0.7, dtype="float32")
    assert not merging.ensure_merge(other, folder, shard_params=10**8, seed=0)[1]
    moving = perturbed_copy(sft, tmp_path / "moving", 3)
    config = merging.mergekit_config("ties", 0.5, str(moving), str(rl), str(base),
                                     density=0.5, dtype="float32")
    assert not merging.ensure_merge(config, folder, shard_params=10**8, seed=0)[1]
    perturbed_copy(sft, moving, 4)  # same config text, new weights: merge again
    assert not merging.ensure_merge(config, folder, shard_params=10**8, seed=0)[1]
    assert merging.ensure_merge(config, folder, shard_params=10**8, seed=0)[1]


def test_stage_models_reads_every_manifest_spelling(tmp_path):
    stage = tmp_path / "run" / "03_sft"
    for name in ("a", "b", "c", "d"):
        (stage / name).mkdir(parents=True)
    manifest = {"artifact_id": "x", "models": {"a": str(stage / "a")},
                "model_paths": {"b": {"path": "b"}}, "model_path": str(stage / "c"),
                "long_model_path": "d", "evaluated": {"base": "/elsewhere"}}
    (stage / "manifest.json").write_text(json.dumps(manifest))
    found = merging.stage_models(str(tmp_path), "run", "03_sft")
    assert found == {"a": str(stage / "a"), "b": str(stage / "b"), "sft": str(stage / "c"),
                     "long": str(stage / "d")}
    path, uid = merging.resolve_parent("03_sft", str(tmp_path), "run")
    assert path == str(stage / "c") and uid == "x:sft"
    assert merging.resolve_parent("03_sft:b", str(tmp_path), "run")[0] == str(stage / "b")
    with pytest.raises(ArtifactError, match="no model 'zz'"):
        merging.resolve_parent("03_sft:zz", str(tmp_path), "run")
    manifest["models"] = {"gone": str(stage / "gone")}
    (stage / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="missing"):
        merging.stage_models(str(tmp_path), "run", "03_sft")


def test_bare_stage_name_means_the_main_model(tmp_path):
    grpo, sft = tmp_path / "run" / "04_grpo", tmp_path / "run" / "03_sft"
    for folder, names in ((grpo, ["rl-beta0", "rl-beta0.005"]),
                          (sft, ["base", "careful", "lowquality", "careful_n8_easy0"])):
        for name in names:
            (folder / name).mkdir(parents=True)
    (grpo / "manifest.json").write_text(json.dumps({
        "artifact_id": "g", "model_paths": {n: str(grpo / n) for n in ["rl-beta0",
                                                                        "rl-beta0.005"]},
        "runs": [{"label": "rl-beta0.005"}, {"label": "rl-beta0"}]}))
    (sft / "manifest.json").write_text(json.dumps({
        "artifact_id": "s", "base_model_path": str(sft / "base"),
        "model_paths": {n: str(sft / n) for n in ["careful_n8_easy0", "lowquality", "careful"]},
        "runs": [{"name": "careful_n8_easy0", "role": "easy_sweep"},
                 {"name": "lowquality", "role": "main"}, {"name": "careful", "role": "main"}]}))
    assert merging.resolve_parent("04_grpo", str(tmp_path), "run")[0] == str(grpo / "rl-beta0.005")
    assert merging.resolve_parent("03_sft", str(tmp_path), "run")[0] == str(sft / "lowquality")
    assert merging.stage_models(str(tmp_path), "run", "03_sft")["base"] == str(sft / "base")


def test_missing_upstream_stage_names_the_stage(tmp_path):
    with pytest.raises(ArtifactError, match="04_grpo has not run.*--stages 04"):
        merging.resolve_parent("04_grpo", str(tmp_path), "run")


def test_synergy_check():
    rows = [("sft", [0.2, 0.6]), ("rl", [0.5, 0.3]), ("linear-0.5", [0.35, 0.45]),
            ("ties-0.5", [0.6, 0.6]), ("slerp-0.5", [0.7, 0.1])]
    table = pd.DataFrame([{"model": m, "level": f"L{i + 1}", "accuracy": a}
                          for m, accs in rows for i, a in enumerate(accs)])
    check = merging.synergy_check(table, ["linear-0.5", "ties-0.5", "slerp-0.5"],
                                  margin=0.01).set_index("model")
    assert not check.at["linear-0.5", "synergy"]
    assert check.at["ties-0.5", "synergy"] and check.at["ties-0.5", "above_both"] == "L1"
    assert not check.at["slerp-0.5", "synergy"]
    assert check.at["slerp-0.5", "below_both"] == "L2"


@pytest.mark.slow
def test_notebook_06_on_smoke(merge_root):
    from synergy import pipeline

    pipeline.run_stage(pipeline.find_stage("06"), SMOKE, {"output_root": str(merge_root)},
                       log_output=False)
    stage = merging.load_stage(str(merge_root), "smoke")
    profile = yaml.safe_load(SMOKE.read_text())["merging"]
    assert len(stage["merges"]) == len(profile["methods"]) * len(profile["sft_ratios"])
    assert {"base", "sft", "rl", "linear-0.5"} <= set(stage["per_level"]["model"])
    manifest = json.loads((merge_root / "smoke" / "06_merging" / "manifest.json").read_text())
    assert manifest["upstream"]["sft"] == "fake-03_sft:sft"
    assert (merge_root / "smoke" / "06_merging" / "06_merging.html").stat().st_size > 10_000
