"""The paper profile cannot drift from what the CPU tests run: `params/smoke-vlm.yaml` has the
same sections and keys as `params/paper.yaml`, and reads its data through the same loaders."""

from __future__ import annotations

from pathlib import Path

from synergy.config import load_profile

PARAMS = Path(__file__).resolve().parents[1] / "params"


def test_smoke_vlm_has_the_paper_profiles_sections_and_keys():
    paper, smoke = load_profile(PARAMS / "paper.yaml"), load_profile(PARAMS / "smoke-vlm.yaml")
    assert list(smoke) == list(paper)
    for section in paper:
        assert list(smoke[section]) == list(paper[section]), section


def test_smoke_vlm_takes_the_paper_profiles_data_path():
    """Same loader for the benchmark, the trace set and the RL queries; the smoke profile's
    sources are the image world's files in those schemas, its base a vision-language model."""
    paper, smoke = load_profile(PARAMS / "paper.yaml"), load_profile(PARAMS / "smoke-vlm.yaml")

    def scheme(source: str) -> str:
        return source.split(":", 1)[0]

    assert scheme(smoke["stratify"]["benchmark"]) == scheme(paper["stratify"]["benchmark"])
    assert scheme(smoke["grpo"]["train_source"]) == scheme(paper["grpo"]["train_source"])
    assert smoke["distill"]["trace_set"] == paper["distill"]["trace_set"]
    assert smoke["distill"]["teachers"] == paper["distill"]["teachers"]
    assert smoke["sft"]["freeze_vision"] and paper["sft"]["freeze_vision"]
    assert smoke["world"]["kind"] == "image"
    assert smoke["stratify"]["benchmark"].split(":")[1] == "world"
