"""Scale-out on CPU: SFT and GRPO trained by two processes (gloo) through `accelerate
launch`, the notebook's launcher, process-count aware batching, and the GPU-only paths
(unsloth, vLLM rollouts) failing before any work with the extra they need."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SMOKE
from synergy import grpo, grpo_trainer, sft, sft_trainer, stages, training
from synergy.config import ConfigError, load_profile, profile_section
from synergy.training import read_jsonl

CPU_CONFIG = ROOT / "accelerate" / "cpu.yaml"
UPSTREAM = (stages.WORLD, stages.STRATIFY, stages.DISTILL)


def run_launched(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file accelerate/cpu.yaml ARGS` (two processes, gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "lib"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(CPU_CONFIG), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def two_process_profile(smoke_series, tmp_path_factory) -> Path:
    """The smoke run's upstream stages (00-02) copied to a fresh root, and a profile whose
    SFT trains one teacher for one epoch (16 traces, global batch 8: 2 steps)."""
    root = tmp_path_factory.mktemp("two-processes")
    for stage in UPSTREAM:
        shutil.copytree(smoke_series / "smoke" / stage.name, root / "smoke" / stage.name)
    profile = yaml.safe_load(SMOKE.read_text())
    profile["run"]["output_root"] = str(root)
    profile["sft"].update(teachers=["careful"], scale_sweep={}, easy_share_sweep=[],
                          max_steps=-1, epochs=1.0, n_traces=16, batch_size=8, grad_accum=1)
    profile["grpo"].update(betas=[0.01])
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def written_once(folder: Path) -> None:
    """No temporary folder of an atomic write left behind (a non-main process writing)."""
    assert not [p for p in folder.rglob(".*") if p.is_dir()], list(folder.rglob(".*"))


def saved_digest(path: Path) -> str:
    from synergy.training import weights_digest
    from transformers import AutoModelForCausalLM

    return weights_digest(AutoModelForCausalLM.from_pretrained(path))


def test_sft_on_two_processes(two_process_profile):
    done = run_launched("-m", "synergy", "train", "sft", "--profile", str(two_process_profile),
                        "--quiet")
    assert "2 steps on 2 process(es), global batch 8" in done.stdout
    run_dir = two_process_profile.parent / "smoke" / stages.SFT.name / "train" / "careful"
    record = json.loads((run_dir / "trained.json").read_text())
    # The profile's global batch (8) split over the processes: one epoch of 16 traces is
    # 2 steps; had each process taken the whole batch, it would have been 1.
    assert (record["num_processes"], record["per_device_train_batch_size"],
            record["global_batch"], record["steps"]) == (2, 4, 8, math.ceil(16 / 8))
    replicas = record["replica_weights"]
    assert len(set(replicas["end"])) == 1  # the same final weights on both ranks
    assert all(a != b for a, b in zip(replicas["start"], replicas["end"]))  # both trained
    # Written once, by the main process: one log line per step, the model of each
    # checkpoint once (what both replicas hold), the resume state in the newest only.
    assert [r["step"] for r in read_jsonl(run_dir / "log.jsonl")] == [1, 2]
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2"]
    assert saved_digest(ckpts[-1]) == replicas["end"][0]
    assert sorted(p.name for p in ckpts[-1].glob("rng_state*")) == ["rng_state_0.pth",
                                                                     "rng_state_1.pth"]
    assert not list(ckpts[0].glob("optimizer.pt"))
    written_once(run_dir.parent.parent)


def test_grpo_on_two_processes(two_process_profile):
    """`grpo.train_models` (what `synergy train grpo` runs) on two processes, through
    tests/launched_grpo.py, which swaps the format reward for one that varies."""
    run_launched(str(ROOT / "tests" / "launched_grpo.py"), str(two_process_profile))
    cfg = grpo.GRPOStageConfig.from_profile(two_process_profile)
    stage_dir = two_process_profile.parent / "smoke" / stages.GRPO.name
    run_dir = stage_dir / "runs" / grpo.run_label(0.01, cfg.exclude_easiest)
    record = json.loads((run_dir / "done.json").read_text())
    # verl's batches hold across processes: 2 prompts x 4 rollouts per optimizer step,
    # 4 prompts x 4 rollouts per generation, micro-batches of 4 on each process.
    batching = grpo_trainer.trl_batching(cfg, 2)
    assert record["num_processes"] == 2
    assert record["global_batch"] == batching["completions_per_step"] == 8
    assert record["generation_batch_size"] == batching["completions_per_generation"] == 16
    assert record["per_device_train_batch_size"] == cfg.micro_batch
    assert record["steps"] == grpo_trainer.optimizer_steps(cfg.n_train_questions, cfg) == 4
    replicas = record["replica_weights"]
    assert len(set(replicas["end"])) == 1 and replicas["start"][0] != replicas["end"][0]
    assert saved_digest(run_dir / "model") == replicas["end"][0]
    assert [r["step"] for r in read_jsonl(run_dir / "curves.jsonl")] == [1, 2, 3, 4]
    written_once(stage_dir)
    # The static filter sampled data parallel into the run's one cache: each of the 8
    # questions x 4 rollouts once.
    rows = [json.loads(line) for f in (stage_dir.parent / "cache" / "samples").rglob("*.jsonl")
            for line in f.read_text().splitlines()]
    drawn = [(r["key"], r["index"]) for r in rows]
    assert len(drawn) == len(set(drawn)) == cfg.n_train_questions * cfg.num_generations


def test_notebook_launcher_starts_the_processes(tmp_path):
    """The notebook path: `training.launch` forks `num_processes` processes that form one
    gloo group (an all-reduce sums their ranks)."""
    code = f"""
import torch.distributed as dist
from pathlib import Path
from synergy import training

def work(out):
    state = training.process_state()
    t = __import__("torch").tensor([float(state.process_index + 1)])
    dist.all_reduce(t)
    Path(out, f"rank{{state.process_index}}").write_text(f"{{state.num_processes}} {{t.item()}}")

training.launch(work, ({str(tmp_path)!r},), 2)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "lib")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"rank0": "2 3.0",
                                                                   "rank1": "2 3.0"}


# --- batching per process count (pure) ------------------------------------------------------

def smoke(section, cls, **over):
    return cls.from_mapping({**profile_section(load_profile(SMOKE), section, SMOKE), **over},
                            "test")


def test_global_batch_is_split_over_the_processes():
    cfg = smoke("sft", sft.SftConfig, batch_size=8, grad_accum=2)
    assert sft_trainer.training_args(cfg, 16, num_processes=1).per_device_train_batch_size == 4
    assert sft_trainer.training_args(cfg, 16, num_processes=2).per_device_train_batch_size == 2
    with pytest.raises(ValueError, match="does not split"):
        sft_trainer.training_args(cfg, 16, num_processes=3)
    with pytest.raises(ConfigError, match="sft.batch_size"):
        smoke("sft", sft.SftConfig, batch_size=8, grad_accum=2, num_processes=3)
    g = smoke("grpo", grpo.GRPOStageConfig)
    one, two = (grpo_trainer.training_args(g, 0.0, num_processes=n) for n in (1, 2))
    assert (one.per_device_train_batch_size, one.gradient_accumulation_steps) == (4, 2)
    assert (two.per_device_train_batch_size, two.gradient_accumulation_steps) == (4, 1)
    assert two.steps_per_generation == 2 * two.gradient_accumulation_steps
    with pytest.raises(ConfigError, match="grpo.micro_batch"):
        smoke("grpo", grpo.GRPOStageConfig, num_processes=4)


def test_ddp_timeout_reaches_the_trainers():
    assert sft_trainer.training_args(smoke("sft", sft.SftConfig), 16, num_processes=1).ddp_timeout \
        == 1800
    paper = grpo.GRPOStageConfig.from_profile(ROOT / "params" / "paper.yaml")
    assert paper.ddp_timeout_s == 10800
    assert grpo_trainer.training_args(paper, 0.005, num_processes=8).ddp_timeout == 10800
    with pytest.raises(ConfigError, match="sft.ddp_timeout_s"):
        smoke("sft", sft.SftConfig, ddp_timeout_s=0)
    with pytest.raises(ConfigError, match="ddp_timeout_s"):
        smoke("grpo", grpo.GRPOStageConfig, ddp_timeout_s="long")


def test_join_process_group_passes_the_timeout(tmp_path, monkeypatch):
    """Under a launcher's environment the first join creates the process group with the
    timeout (here a real one-member gloo group: the arguments are those of the launch)."""
    import datetime

    import torch.distributed as dist
    from accelerate import PartialState

    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    calls, real = [], dist.init_process_group

    def record(backend=None, **kwargs):
        calls.append({"backend": backend, **kwargs})
        real(backend=backend, init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1,
             timeout=kwargs["timeout"])

    monkeypatch.setattr(dist, "init_process_group", record)
    saved = dict(PartialState._shared_state)
    PartialState._shared_state.clear()
    try:
        state = training.join_process_group(7200)
        assert state.is_main_process and training.process_state() is not None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        PartialState._shared_state.clear()
        PartialState._shared_state.update(saved)
    assert len(calls) == 1  # the later process_state shares the group
    assert calls[0]["backend"] == "gloo" and calls[0]["world_size"] == 2
    assert calls[0]["timeout"] == datetime.timedelta(seconds=7200)


def test_launched_processes_wait_ddp_timeout_s(tmp_path):
    """Two processes under `accelerate launch` (gloo): the group each joins has the timeout
    (each rank writes what it reads back from its group to a file of its own)."""
    script = tmp_path / "join.py"
    script.write_text(
        "import pathlib, torch, torch.distributed as dist\n"
        "from synergy import training\n"
        "state = training.join_process_group(77)\n"
        "backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device('cpu'))\n"
        f"pathlib.Path({str(tmp_path)!r}, f'rank{{state.process_index}}').write_text(\n"
        "    f'{state.num_processes} {backend.options._timeout.total_seconds()}')\n"
        "training.leave_process_group()\n")
    run_launched(str(script), timeout=120)
    assert {p.name: p.read_text() for p in tmp_path.glob("rank*")} == {"rank0": "2 77.0",
                                                                      "rank1": "2 77.0"}


@pytest.mark.parametrize("section, module, cls", [("sft", sft, sft.SftConfig),
                                                  ("grpo", grpo, grpo.GRPOStageConfig)])
def test_train_models_joins_first_with_its_timeout(section, module, cls, monkeypatch):
    class Joined(Exception):
        pass

    def join(timeout_s):
        raise Joined(timeout_s)

    monkeypatch.setattr(training, "join_process_group", join)
    with pytest.raises(Joined, match="^1234$"):
        module.train_models(smoke(section, cls, ddp_timeout_s=1234))


def test_paper_grpo_asks_trl_for_vllm_rollouts():
    args = grpo_trainer.training_args(
        grpo.GRPOStageConfig.from_profile(ROOT / "params" / "paper.yaml"), 0.005,
        num_processes=8)
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == \
        (True, "colocate", 0.3)
    assert args.gradient_accumulation_steps == 512 // (8 * 8)


# --- GPU-only paths fail before any work ----------------------------------------------------

@pytest.mark.parametrize("module, cls, section", [(sft, sft.SftConfig, "sft"),
                                                  (grpo, grpo.GRPOStageConfig, "grpo")])
def test_unsloth_without_cuda_fails_before_any_work(module, cls, section, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = smoke(section, cls, trainer_backend="unsloth", output_root=str(tmp_path))
    for entry in (module.run, module.train_models):
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            entry(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing was started
    with pytest.raises(ConfigError, match="single-GPU"):
        smoke(section, cls, trainer_backend="unsloth", num_processes=2)


def test_import_unsloth_says_which_of_three_things_is_wrong(monkeypatch):
    """Not installed (the install command), too old (no FastVisionModel: the version found
    and the one needed) and failing to import (the underlying error): one line each."""
    monkeypatch.setitem(sys.modules, "unsloth", None)
    with pytest.raises(ImportError) as missing:
        training.import_unsloth()
    assert "unsloth is not installed: pip install -e '.[unsloth]'" in str(missing.value)

    old = types.ModuleType("unsloth")
    old.FastLanguageModel = object
    monkeypatch.setitem(sys.modules, "unsloth", old)
    monkeypatch.setattr(training.metadata, "version", lambda name: "2024.8")
    with pytest.raises(ImportError) as too_old:
        training.import_unsloth()
    assert str(too_old.value).startswith(
        "unsloth 2024.8 is too old (it has no FastVisionModel): this project needs "
        f"{training.UNSLOTH_REQUIREMENT}; pip install -e '.[unsloth]'")

    def failing(name):
        raise NotImplementedError("Unsloth cannot find any torch accelerator?\nmore text")

    monkeypatch.setattr(training.importlib, "import_module", failing)
    with pytest.raises(ImportError) as broken:
        training.import_unsloth()
    assert str(broken.value) == ("unsloth is installed but failed to import: "
                                 "NotImplementedError: Unsloth cannot find any torch accelerator?")

    def missing_dependency(name):
        raise ModuleNotFoundError("No module named 'unsloth_zoo'", name="unsloth_zoo")

    monkeypatch.setattr(training.importlib, "import_module", missing_dependency)
    with pytest.raises(ImportError, match="installed but failed to import: ModuleNotFoundError: "
                                          "No module named 'unsloth_zoo'"):
        training.import_unsloth()
    for error in (missing, too_old, broken):
        assert "\n" not in str(error.value)

    new = types.ModuleType("unsloth")
    new.FastVisionModel = new.FastLanguageModel = object
    monkeypatch.setattr(training.importlib, "import_module", lambda name: new)
    assert training.import_unsloth() is new


def test_the_unsloth_extra_is_its_own_and_matches_the_messages():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["unsloth"] == [training.UNSLOTH_REQUIREMENT]
    assert not any("unsloth" in r for r in extras["gpu"])  # pip would take unsloth 2024.8
    env = yaml.safe_load((ROOT / "environment-unsloth.yml").read_text())
    assert "-e .[unsloth,dev]" in env["dependencies"][-1]["pip"]


def test_vllm_rollouts_without_vllm_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = smoke("grpo", grpo.GRPOStageConfig, vllm_mode="colocate", output_root=str(tmp_path))
    with pytest.raises(ImportError, match=r"grpo.vllm_mode 'colocate' needs vllm.*\[vllm\]"):
        grpo.run(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []


# --- the vLLM engine, against a stand-in for vllm -------------------------------------------

class FakeVLLM:
    """What VLLMEngine uses of vllm: LLM(model, **kwargs) with get_tokenizer and generate,
    and SamplingParams. A sample's text is a pure function of its seed, as a seeded vLLM
    request is; `environ` keeps the environment the engine started in."""

    def __init__(self):
        import types

        fake = self

        class LLM:
            def __init__(self, model, **kwargs):
                from transformers import AutoTokenizer

                fake.kwargs, fake.environ, fake.calls = kwargs, dict(os.environ), []
                self.tokenizer = AutoTokenizer.from_pretrained(model)

            def get_tokenizer(self):
                return self.tokenizer

            def generate(self, requests, params, use_tqdm=True):
                fake.calls.append((requests, params))
                return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
                    text=f"\\boxed{{{p.seed % 3}}}", token_ids=[1] * (1 + p.seed % 7),
                    finish_reason="length" if p.seed % 7 == 6 else "stop")]) for p in params]

        class SamplingParams:
            def __init__(self, **kwargs):
                self.__dict__.update(kwargs)

        self.module = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_engine_keeps_per_sample_seeds_the_cache_and_early_stopping(
        smoke_world, monkeypatch, tmp_path):
    import pandas as pd
    from synergy import generation, stratify

    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setenv(generation.VLLM_ARGS_ENV, '{"tensor_parallel_size": 2}')
    engine = generation.make_engine(smoke_world[1], "vllm", batch_rows=64)
    # The machine's arguments, with this CPU's defaults (float32, a bounded KV cache) added.
    assert fake.kwargs == {"tensor_parallel_size": 2, "dtype": "float32",
                           "kv_cache_memory_bytes": generation.CPU_KV_CACHE_BYTES}
    spec = generation.SamplingSpec(1.0, 1.0, 0, 16)
    out = engine.generate(["p0", "p1"], ["k0", "k1"], 3, 2, spec, seed=7)
    requests, params = fake.calls[-1]
    assert [p.seed for p in params] == [generation.sample_seed(7, k, j)
                                        for k in ("k0", "k1") for j in (3, 4)]
    assert {p.top_k for p in params} == {-1} and {p.n for p in params} == {1}
    assert requests[0] == {"prompt_token_ids": engine.tokenizer(
        "p0", add_special_tokens=False)["input_ids"]}
    assert [c.text for c in out[1]] == [f"\\boxed{{{p.seed % 3}}}" for p in params[2:]]

    # Stratification through vLLM: early stopping gives the levels of drawing all N, and a
    # second pass over the cache draws nothing.
    questions = pd.DataFrame({"qid": [f"q{i}" for i in range(12)],
                              "question": [f"{i} +1" for i in range(12)],
                              "answer": [str(i % 3) for i in range(12)]})
    values = {**profile_section(load_profile(SMOKE), "stratify", SMOKE), "n_samples": 8,
              "level_min_correct": [6, 4, 2, 1, 0], "backend": "vllm"}
    early = stratify.StratifyConfig.from_mapping({**values, "early_stop": True}, "test")
    full = stratify.StratifyConfig.from_mapping({**values, "early_stop": False}, "test")
    a = stratify.level_questions(engine, smoke_world[1], questions, early, tmp_path / "a", False)
    b = stratify.level_questions(engine, smoke_world[1], questions, full, tmp_path / "b", False)
    assert list(a["level"]) == list(b["level"]) and len(set(a["level"])) > 1
    assert a["n_drawn"].sum() < b["n_drawn"].sum()
    before = len(fake.calls)
    again = stratify.level_questions(engine, smoke_world[1], questions, full, tmp_path / "b",
                                     False)
    assert len(fake.calls) == before and list(again["samples"]) == list(b["samples"])


def test_vllm_engine_under_a_launcher_sees_only_its_gpu(smoke_world, monkeypatch):
    from synergy import generation

    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                       "MASTER_ADDR": "127.0.0.1", "CUDA_VISIBLE_DEVICES": "4,5"}.items():
        monkeypatch.setenv(key, value)
    generation.VLLMEngine(smoke_world[1])
    assert fake.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert not {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"} & set(fake.environ)
    assert os.environ["RANK"] == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
