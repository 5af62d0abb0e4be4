"""Mechanics every trainer shares: a training folder keyed by content, resume from the last
checkpoint, the JSONL training log, saving the final model atomically, and running on one
process or many.

SFT (`sft_trainer.train`), GRPO (`grpo_trainer.train`) and the combination strategies all train through
these, so a run interrupted anywhere resumes the same way and logs the same way.

Several processes (`accelerate launch -m synergy train <stage>`, or `launch` from a
notebook, which uses accelerate's `notebook_launcher`): every process runs the same
training function; folders, logs, records and the final model are written by the main
process only, the others wait for it where they need what it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Literal

from synergy.files import atomic_path, read_json, write_json, write_text

# Experiment trackers TRL reports to (its `report_to`), beside the run's own JSONL logs.
ReportTo = Literal["none", "tensorboard", "wandb", "mlflow", "trackio"]
# Who builds and steps the model: TRL on transformers, or unsloth's patched kernels (CUDA).
TrainerBackend = Literal["hf", "unsloth"]
# transformers' learning-rate schedules that need no extra arguments (`lr_scheduler_type`).
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                      "constant_with_warmup", "inverse_sqrt"]
KEY_FILE = "key.json"
# What a checkpoint holds beyond the model: needed to resume, only in the newest one.
RESUME_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "scaler.pt")
# DeepSpeed keeps its optimizer state apart: `latest` names the `global_step<N>` folder
# holding its model and optimizer state files (no optimizer.pt).
DEEPSPEED_LATEST = "latest"
DONE_FILE = "done.json"
# How long collectives wait where no section says (`ddp_timeout_s`): TrainingArguments' default.
DDP_TIMEOUT_S = 1800
# A training that finished but whose model is still to be chosen among its checkpoints (SFT).
TRAINED_FILE = "trained.json"


# --- one process or many ------------------------------------------------------------------

def world_size() -> int:
    """How many processes train together: WORLD_SIZE as `accelerate launch`, torchrun and
    `notebook_launcher` set it; 1 in a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def uses_deepspeed() -> bool:
    """Under `accelerate launch` with a DeepSpeed config (accelerate/zero3.yaml)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")


def join_process_group(timeout_s: int):
    """accelerate's `PartialState` of this process. Under a launcher the first call joins
    the process group (gloo on a machine without CUDA; NCCL, or DeepSpeed's, on GPUs) with
    collectives that wait up to `timeout_s` seconds: NCCL's own default (10 minutes) is
    shorter than the barrier after data-parallel long-CoT sampling can wait. Later calls
    share that group whatever their timeout, so what a launcher runs (`train_models`) joins
    first, with its section's `ddp_timeout_s`; TrainingArguments' `ddp_timeout` is the same.
    A plain process joins nothing."""
    import datetime

    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(),
                        timeout=datetime.timedelta(seconds=timeout_s))


def process_state():
    """The `PartialState` this process joined (`join_process_group`); where nothing joined
    before, joined with transformers' default `ddp_timeout`."""
    return join_process_group(DDP_TIMEOUT_S)


def is_main_process() -> bool:
    return world_size() == 1 or process_state().is_main_process


def leave_process_group() -> None:
    """After training under a launcher: wait for every process, then leave the process
    group, so no gloo / NCCL thread is alive at interpreter exit (one rank of a 2-process CPU
    run once aborted there with "terminate called without an active exception" after its
    training had finished). A no-op in a plain process."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _run_and_leave(fn: Callable, *args):
    fn(*args)
    leave_process_group()


def launch(fn: Callable, args: tuple, num_processes: int):
    """`fn(*args)` on `num_processes` processes through accelerate's `notebook_launcher`
    (returns None: the processes leave their results on disk), or here when one process is
    asked for or this process already is one of several (`accelerate launch`).

    `notebook_launcher` forks: nothing may have used CUDA in this process before (the
    stages launch their training before they load any model)."""
    if num_processes <= 1 or world_size() > 1:
        return fn(*args)
    import torch
    from accelerate import notebook_launcher
    from accelerate.utils import patch_environment
    from accelerate.utils.other import get_free_port

    cpu = {} if torch.cuda.is_available() else {"accelerate_use_cpu": "true"}
    with patch_environment(**cpu):
        notebook_launcher(_run_and_leave, (fn, *args), num_processes=num_processes,
                          use_port=str(get_free_port()))
    return None


def on_main(fn: Callable, *args):
    """`fn(*args)` computed by the main process alone; every process gets its result."""
    state = process_state()
    if state.num_processes == 1:
        return fn(*args)
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([fn(*args) if state.is_main_process else None])[0]


def cpu_processes(n: int | None = None) -> bool:
    """Several processes on a machine without CUDA: TrainingArguments needs `use_cpu` to
    join them with gloo (else each process would train alone)."""
    import torch

    return (world_size() if n is None else n) > 1 and not torch.cuda.is_available()


def batch_record(args) -> dict[str, int]:
    """The batch geometry a trainer's arguments give in this process group."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return {"num_processes": args.world_size,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "global_batch": per_step * args.world_size}


def weights_digest(model) -> str:
    """Content hash of a model's parameters as this process holds them."""
    import torch

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def replica_digests():
    """A TrainerCallback that collects every process's `weights_digest` on the main process
    at the start and the end of a data-parallel training (`.digests`: {"start": [...],
    "end": [...]} in rank order): each rank moved when its start and end differ, and the
    replicas ended identical when the ends are one value. None for one process or sharded
    weights (ZeRO-3, FSDP: each process holds a slice)."""
    from transformers import TrainerCallback

    class ReplicaDigests(TrainerCallback):
        digests: dict[str, list[str]] | None = None

        def _gather(self, args, model, when):
            if args.world_size <= 1 or args.deepspeed or args.fsdp or model is None:
                return
            from accelerate.utils import gather_object

            self.digests = {**(self.digests or {}), when: gather_object([weights_digest(model)])}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._gather(args, model, "start")

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._gather(args, model, "end")

    return ReplicaDigests()


# --- trainer backends ---------------------------------------------------------------------

def require_backend(backend: str, num_processes: int = 1) -> None:
    """Fail before any work when `trainer_backend` cannot run on this machine."""
    if backend != "unsloth":
        return
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "trainer_backend 'unsloth' needs a CUDA GPU: unsloth's kernels are Triton GPU "
            "kernels and this machine has no CUDA device. Use trainer_backend: hf here.")
    if max(num_processes, world_size()) > 1:
        raise RuntimeError("trainer_backend 'unsloth' is the single-GPU path: run it with "
                           "num_processes 1 (use trainer_backend: hf with accelerate for "
                           "several GPUs)")
    import_unsloth()


# The `unsloth` extra (pyproject.toml; a test checks they agree). unsloth caps trl and
# transformers, so it lives in an environment of its own (environment-unsloth.yml): inside
# the `gpu` extra pip would settle on unsloth 2024.8, which has no FastVisionModel.
UNSLOTH_REQUIREMENT = "unsloth>=2026.10.1,<2026.11"
UNSLOTH_INSTALL = ("pip install -e '.[unsloth]' on a CUDA machine "
                   "(or conda env create -f environment-unsloth.yml)")


def import_unsloth():
    """The unsloth module, or an ImportError of one line saying which of three things is
    wrong: it is not installed, it is too old (no `FastVisionModel`), or it is installed
    but fails to import (the underlying error)."""
    try:
        module = importlib.import_module("unsloth")
    except ModuleNotFoundError as exc:
        if exc.name != "unsloth":  # one of unsloth's own imports is missing
            raise ImportError(f"unsloth is installed but failed to import: {_one_line(exc)}"
                              ) from exc
        raise ImportError("trainer_backend 'unsloth' selected but unsloth is not installed: "
                          f"{UNSLOTH_INSTALL}, or use trainer_backend: hf") from exc
    except Exception as exc:  # unsloth checks the GPU, driver and versions as it imports
        raise ImportError(f"unsloth is installed but failed to import: {_one_line(exc)}"
                          ) from exc
    if not hasattr(module, "FastVisionModel"):
        try:
            found = metadata.version("unsloth")
        except metadata.PackageNotFoundError:
            found = getattr(module, "__version__", "of unknown version")
        raise ImportError(f"unsloth {found} is too old (it has no FastVisionModel): this "
                          f"project needs {UNSLOTH_REQUIREMENT}; {UNSLOTH_INSTALL}")
    return module


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def unsloth_model(path: str | Path, *, max_length: int, lora_r: int, lora_alpha: int,
                  finetune_vision: bool = False, seed: int = 0):
    """(model, processing) loaded by unsloth: `FastVisionModel` for a vision-language model,
    `FastLanguageModel` otherwise; LoRA adapters on every linear layer when `lora_r > 0`,
    else every weight trainable. Call `require_backend("unsloth")` first."""
    from synergy.models import is_vision_language

    unsloth = import_unsloth()

    vision = is_vision_language(path)
    fast = unsloth.FastVisionModel if vision else unsloth.FastLanguageModel
    model, processing = fast.from_pretrained(model_name=str(path), max_seq_length=max_length,
                                             dtype=None, load_in_4bit=False,
                                             full_finetuning=lora_r == 0)
    if lora_r > 0:
        layers = (dict(finetune_vision_layers=finetune_vision, finetune_language_layers=True,
                       finetune_attention_modules=True, finetune_mlp_modules=True) if vision
                  else dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                            "gate_proj", "up_proj", "down_proj"]))
        model = fast.get_peft_model(model, r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                    bias="none", use_gradient_checkpointing="unsloth",
                                    random_state=seed, **layers)
    return model, processing


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL log; a torn last line (interrupted write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def log_callback(path: str | Path, run: str | None = None):
    """A TrainerCallback appending every training log to `path` (one JSON line per log,
    with `step` and, when given, `run`). After a resume, rows logged past the checkpoint
    are dropped: they are logged again."""
    from transformers import TrainerCallback

    path = Path(path)

    class JsonlLog(TrainerCallback):
        # Every process gets the events; the main process alone writes the log.
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= state.global_step]
            write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Every training log, not the end-of-training summary (train_runtime ...).
            if not logs or "train_runtime" in logs or not state.is_world_process_zero:
                return
            row = {**({"run": run} if run else {}), "step": state.global_step,
                   **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    return JsonlLog()


def budget_counter():
    """A TrainerCallback holding what a trainer trained on, counted by the trainer as it
    goes (`counter.add(rollouts=..., rl_completion_tokens=..., sft_tokens=...)`, totals over
    every process) and the optimizer steps it took. Its counts are saved in each
    checkpoint's `trainer_state.json` (transformers' `ExportableState`) and read back on a
    resume, so a resumed training counts the whole run; a resume from a checkpoint without
    them sets `complete` False."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class BudgetCounter(TrainerCallback, ExportableState):
        def __init__(self, counts: dict[str, float] | None = None, complete: bool = True):
            self.counts = dict(counts or {})
            self.complete = complete

        def add(self, **counts: float) -> None:
            for name, n in counts.items():
                self.counts[name] = self.counts.get(name, 0.0) + float(n)

        def state(self) -> dict:
            return {"args": {"counts": dict(self.counts), "complete": self.complete},
                    "attributes": {}}

        def on_train_begin(self, args, state, control, **kwargs):
            saved = state.stateful_callbacks.get(type(self).__name__)
            if state.global_step > 0:  # resumed: continue the checkpoint's counts
                if isinstance(saved, dict) and "counts" in saved.get("args", {}):
                    self.counts = dict(saved["args"]["counts"])
                    self.complete = bool(saved["args"].get("complete", True))
                else:
                    self.counts, self.complete = {}, False
            state.stateful_callbacks[type(self).__name__] = self.state()

        def on_step_end(self, args, state, control, **kwargs):
            self.add(optimizer_steps=1)

        def record(self) -> dict[str, Any]:
            """The counts as a run record stores them (`budget`)."""
            return {**{k: int(v) if float(v).is_integer() else v
                       for k, v in sorted(self.counts.items())}, "complete": self.complete}

    return BudgetCounter()


def checkpoint_budget(checkpoint: str | Path) -> dict[str, Any]:
    """The budget counts a checkpoint was saved with ({} when it has none)."""
    path = Path(checkpoint) / "trainer_state.json"
    saved = read_json(path).get("stateful_callbacks", {}).get("BudgetCounter") \
        if path.exists() else None
    if not isinstance(saved, dict) or "counts" not in saved.get("args", {}):
        return {}
    counts = saved["args"]["counts"]
    return {**{k: int(v) if float(v).is_integer() else v for k, v in sorted(counts.items())},
            "complete": bool(saved["args"].get("complete", True))}


def keep_last_optimizer():
    """A TrainerCallback that keeps the optimizer / scheduler / RNG state in the newest
    checkpoint only: every checkpoint stays loadable as a model (for selection by
    validation), and the newest can resume training."""
    from transformers import TrainerCallback

    class KeepLastOptimizer(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            for old in checkpoints(Path(args.output_dir).parent)[:-1]:
                drop_resume_state(old)

    return KeepLastOptimizer()


def drop_resume_state(ckpt: Path) -> None:
    """Remove what only resuming needs from a checkpoint, DeepSpeed's state included
    (`global_step*` folders and `latest`); the model stays."""
    for pattern in RESUME_STATE:
        for f in ckpt.glob(pattern):
            f.unlink()
    for folder in ckpt.glob("global_step*"):
        if folder.is_dir():
            shutil.rmtree(folder)
    (ckpt / DEEPSPEED_LATEST).unlink(missing_ok=True)


def deepspeed_state(ckpt: str | Path) -> Path | None:
    """The `global_step*` folder a checkpoint's `latest` file names, when it exists and holds
    DeepSpeed's model and optimizer state files; else None."""
    latest = Path(ckpt) / DEEPSPEED_LATEST
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    folder = Path(ckpt) / name
    whole = (name.startswith("global_step") and folder.is_dir()
             and any(folder.glob("*optim_states.pt")) and any(folder.glob("*model_states.pt")))
    return folder if whole else None


def resumable(ckpt: str | Path) -> bool:
    """A checkpoint with optimizer state: `optimizer.pt`, or DeepSpeed's (`deepspeed_state`)."""
    return (Path(ckpt) / "optimizer.pt").is_file() or deepspeed_state(ckpt) is not None


def deepspeed_problem(ckpt: str | Path, deepspeed: bool) -> str | None:
    """Why this run cannot resume from `ckpt`: its optimizer state was saved under DeepSpeed
    and this run is not, or the reverse (each reads only its own); None when they agree."""
    saved = deepspeed_state(ckpt)
    if saved is not None and not deepspeed:
        return (f"{ckpt}: its optimizer state was saved by DeepSpeed ({saved.name}/, named by "
                f"'{DEEPSPEED_LATEST}') and this run is not under DeepSpeed; resume it under "
                "the same launcher (accelerate launch --config_file accelerate/zero3.yaml), "
                f"or delete {Path(ckpt).parent} to train again from step 1")
    if saved is None and deepspeed:
        return (f"{ckpt}: its optimizer state (optimizer.pt) was saved without DeepSpeed and "
                "this run is under DeepSpeed, which resumes only from its own global_step*/ "
                "state; resume it without DeepSpeed, or delete "
                f"{Path(ckpt).parent} to train again from step 1")
    return None


def finished(run_dir: str | Path, key: str, model: str | Path) -> dict[str, Any] | None:
    """The record of a finished training in `run_dir` with this content key whose final
    `model` is whole and unchanged (`reuse.reusable`: a damaged one is set aside), else None."""
    from synergy import reuse

    return reuse.reusable(Path(run_dir) / DONE_FILE, key, model)


def trained(run_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The record (`trained.json`) of a training in `run_dir` with this content key whose
    checkpoints are kept for a model to be chosen among them, else None."""
    path = Path(run_dir) / TRAINED_FILE
    if path.exists() and read_json(path).get("key") == key and checkpoints(run_dir):
        return read_json(path)
    return None


def prepare(run_dir: str | Path, key: str) -> Path | None:
    """Make `run_dir` ready to train under content `key`; return the checkpoint to resume
    from (None: start at step 1). Checkpoints of another key are deleted, never resumed; a
    checkpoint a kill left half-written is removed, a damaged one set aside, and training
    resumes from the newest whole one. With several processes the main process prepares the
    folder while the others wait; every process fails alike when the checkpoint's optimizer
    state is DeepSpeed's and this run is not under DeepSpeed, or the reverse."""
    run_dir = Path(run_dir)
    if is_main_process():
        key_file = run_dir / KEY_FILE
        if key_file.exists() and read_json(key_file).get("key") != key:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(key_file, {"key": key})
        for record in (DONE_FILE, TRAINED_FILE):
            (run_dir / record).unlink(missing_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        resume_point(run_dir)  # clears what cannot be resumed, before the others look
    if world_size() > 1:
        process_state().wait_for_everyone()
    last = checkpoints(run_dir)
    problem = deepspeed_problem(last[-1], uses_deepspeed()) if last else None
    if problem:
        raise RuntimeError(problem)
    return last[-1] if last else None


def resume_point(run_dir: str | Path) -> Path | None:
    """The newest checkpoint training can resume from (trainer state, optimizer state of its
    own or DeepSpeed's, and a whole model); newer ones that cannot are cleared out of the
    way."""
    import warnings

    from synergy.files import CorruptArtifact, check_files, set_aside

    for ckpt in reversed(checkpoints(run_dir)):
        if not (ckpt / "trainer_state.json").exists():  # written last: the save was cut
            shutil.rmtree(ckpt)
            continue
        problem = check_files(ckpt)
        if problem:
            set_aside(ckpt, problem)
            continue
        if not resumable(ckpt):
            # Only the newest keeps its optimizer (`keep_last_optimizer`): the newer ones
            # are gone, so no checkpoint can resume; the steps are retrained as they were.
            warnings.warn(f"{ckpt.parent}: no checkpoint with optimizer state to resume "
                          "from; training again from step 1", CorruptArtifact, stacklevel=2)
            shutil.rmtree(ckpt.parent)
            ckpt.parent.mkdir()
            return None
        return ckpt
    return None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints in step order (`checkpoints/checkpoint-<step>`)."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_model(trainer, processing, out: str | Path) -> Path:
    """The trained model and its tokenizer/processor, written atomically to `out` by the main
    process (every process takes part: ZeRO-3 gathers the weights from all). LoRA adapters
    are merged, so later stages load a plain model."""
    from accelerate.utils import broadcast_object_list

    acc = trainer.accelerator
    writing = atomic_path(out) if acc.is_main_process else contextlib.nullcontext()
    with writing as tmp:
        folder = broadcast_object_list([str(tmp) if tmp else None])[0] \
            if acc.num_processes > 1 else str(tmp)
        model = acc.unwrap_model(trainer.model)
        if hasattr(model, "merge_and_unload"):  # a PEFT model
            if acc.is_main_process:
                model.merge_and_unload().save_pretrained(folder, safe_serialization=True)
        else:
            trainer.save_model(folder)
        if acc.is_main_process:
            processing.save_pretrained(folder)
        acc.wait_for_everyone()
    return Path(out)


def mark_trained(run_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Record a finished training whose checkpoints are kept (a model is yet to be chosen
    among them); the main process writes it."""
    if is_main_process():
        write_json(Path(run_dir) / TRAINED_FILE, record)
    return record


def mark_done(run_dir: str | Path, record: dict[str, Any], model: str | Path) -> dict[str, Any]:
    """Record a finished training (its key, and the fingerprint of its final `model` that
    `finished` checks) and drop its checkpoints (main process)."""
    from synergy import reuse

    if is_main_process():
        record = reuse.seal(Path(run_dir) / DONE_FILE, record["key"], model, **record)
        (Path(run_dir) / TRAINED_FILE).unlink(missing_ok=True)
        shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
    return record


def release(trainer) -> None:
    """Free the trainer's GPU memory (a colocated vLLM engine included) before this process
    evaluates or trains the next policy: a vLLM engine started beside a trainer's reserved
    memory does not find the share it asks for (03 on one GPU). On a CPU the trainer's
    references go and Python's own collector frees the rest (`release_memory`)."""
    import torch

    trainer.vllm_generation = None  # TRL's vLLM engine, when rollouts use one
    trainer.model = trainer.model_wrapped = trainer.ref_model = None
    trainer.optimizer = trainer.lr_scheduler = None
    if torch.cuda.is_available():
        trainer.accelerator.free_memory()  # accelerate's references (and a gc.collect)
    release_memory()


def release_memory() -> None:
    """Return what dropped models and tensors held to the GPU (its cached blocks included)
    before the next model loads. Nothing on a CPU, where Python's own collector frees
    them: a full collection in a stage's process (torch, transformers and TRL imported,
    about 445k objects) took 0.22 s, and with accelerate's each training paid two (05 on
    the smoke profile: 8.6 of its 28.5 s in `gc.collect`, cProfile)."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# A VLM's vision tower and merger (`model.visual.*` in Qwen2.5-VL): "all-linear" would put
# adapters there too, and train what SFT keeps frozen.
LORA_EXCLUDE = r".*\bvisual\b.*"


def lora_config(r: int, alpha: int):
    """PEFT's LoRA on every linear layer but the vision tower's (SFT and GRPO)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear",
                      exclude_modules=LORA_EXCLUDE, task_type="CAUSAL_LM")
