"""Merging: endpoint merges equal their parents, merges are reused, 06 runs on smoke."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import SMOKE, perturbed_copy
from safetensors.torch import load_file
from synergy import merging


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


def test_notebook_06_on_smoke(smoke_series):
    from synergy.runs import Run

    res = merging.load(str(smoke_series), "smoke")
    profile = yaml.safe_load(SMOKE.read_text())["merging"]
    assert len(res.merges) == len(profile["methods"]) * len(profile["sft_ratios"])
    assert {"base", "sft", "rl", "linear-0.5"} <= set(res.per_level["model"])
    run = Run(smoke_series, "smoke")
    # The parents are what 03 and 04 actually wrote, found through the registry.
    assert res.manifest["upstream"]["sft"] == f"{run.manifest('03_sft')['artifact_id']}:careful"
    assert res.manifest["upstream"]["rl"].startswith(run.manifest("04_grpo")["artifact_id"])
    assert set(res.manifest["model_paths"]) == set(res.merges["model"])
    assert "between the parents" in merging.statement(res)
    assert (res.dir / "06_merging.html").stat().st_size > 10_000


def test_merges_open_on_the_benchmark_are_judged_on_more_pool_questions(smoke_series, tmp_path,
                                                                       monkeypatch):
    """06 asks `judging.open_pairs` about the merges between the parents against the RL
    model, and evaluates the open ones and the RL model on pool questions no model of the
    run trained on; the report pools them. Which pairs are open is fixed here (the decision
    is tests/test_judging.py's)."""
    import shutil

    from synergy import judging, report, report_roles, stages
    from synergy.runs import Run

    shutil.copytree(smoke_series / "smoke", tmp_path / "smoke")
    asked = []

    def open_pairs(results, pairs, margin):
        asked.append((dict(pairs), margin))
        return {"linear-0.5": "rl"}

    monkeypatch.setattr(judging, "open_pairs", open_pairs)
    cfg = merging.MergingConfig.from_mapping(
        {**merging.MergingConfig.from_profile(SMOKE).to_dict(), "output_root": str(tmp_path),
         "judged_questions": 10}, "test")
    res = merging.run(cfg, progress=False)
    between = [m for m, r in zip(res.merges["model"], res.merges["sft_ratio"]) if 0 < r < 1]
    assert asked == [({m: "rl" for m in between}, cfg.synergy_margin)] and between
    assert set(res.judged) == {"rl", "linear-0.5"}
    assert res.manifest["judged_models"] == ["rl", "linear-0.5"]
    extra = pd.read_csv(res.dir / judging.JUDGED / "questions.csv")
    assert len(extra) == res.manifest["judged_questions"] > 0
    run = Run(tmp_path, "smoke")
    assert not set(extra["qid"]) & (judging.trained_qids(run) | set(res.results["rl"]["qid"]))
    assert set(merging.load(str(tmp_path), "smoke").judged) == {"rl", "linear-0.5"}
    roles = report_roles.role_levels(report.run_levels(run), report.main_models(run))
    answers = report.role_answers(run, roles)
    merge_role = roles.loc[(roles["stage"] == stages.MERGING.name)
                           & (roles["model"] == "linear-0.5"), "role"].iloc[0]
    assert len(answers[merge_role]) == len(res.results["linear-0.5"]) + len(extra)
    # With none open (or judged_questions 0) nothing more is evaluated, and an earlier
    # execution's judged results are gone.
    monkeypatch.setattr(judging, "open_pairs", lambda results, pairs, margin: {})
    again = merging.run(cfg, progress=False)
    assert again.judged == {} and not (again.dir / judging.JUDGED).exists()
    assert again.manifest["judged_questions"] == 0
