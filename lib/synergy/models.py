"""The model registry: what a model parameter means, and how a model is loaded.

A model parameter is one of
- `"world"`: the embedded base model of this run (stage 00_world),
- `"<stage>"` or `"<stage>:<name>"` (e.g. `"03_sft"`, `"04_grpo:rl-beta0.005"`): a model a
  stage of this run trained or merged; the bare stage means its `main_model`,
- a local model folder,
- a hub id (`owner/name`), loaded by transformers (needs hub access or a local HF cache).

Stages record their models in one manifest schema, written by `runs.StageRun.set_models`:
`model_paths: {name: path relative to the run folder}` and `main_model: name`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from synergy import stages
from synergy.config import project_root
from synergy.files import ArtifactError

if TYPE_CHECKING:  # a Run resolves its models here: runs imports this module
    from synergy.runs import Run

WORLD = "world"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    spec: str          # the parameter as written
    path: str          # a local folder or a hub id
    artifact_id: str   # upstream id recorded in manifests

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def _stage_of(spec: str) -> tuple[stages.Stage | None, str]:
    stage, _, name = spec.partition(":")
    return stages.by_folder(stage), name


def stage_models(run: Run, stage) -> dict[str, str]:
    """{name: path} of the models a stage recorded (`model_paths`), checked to exist."""
    stage = stages.find(stage)
    manifest = run.manifest(stage)
    out = {}
    for name, rel in (manifest.get("model_paths") or {}).items():
        path = run.resolve(rel)
        problem = "missing" if not path.is_dir() else check_model(path)
        if problem:
            raise ArtifactError(f"{stage.name}: model '{name}' is {problem} at {path}; rerun the "
                                f"stage (it remakes what is damaged): python -m synergy run "
                                f"--run-name {run.name} --stages {stage.number}")
        out[name] = str(path)
    return out


def check_model(path: Path) -> str | None:
    """None for a model folder whose files are whole (config.json present, every JSON file
    parses, every safetensors file complete: `files.check_files`), else what is wrong."""
    from synergy.files import check_files

    problem = "no config.json" if not (path / "config.json").is_file() else check_files(path)
    return f"damaged ({problem})" if problem else None


def main_model(run: Run, stage) -> str:
    """The model a bare stage name means: the manifest's `main_model`."""
    stage = stages.find(stage)
    manifest = run.manifest(stage)
    if not manifest.get("model_paths"):
        raise ArtifactError(f"stage {stage.name} of run '{run.name}' recorded no models")
    return manifest["main_model"]


def looks_like_path(spec: str) -> bool:
    """A spec written as a local path (never sent to the hub): absolute, starting with '.'
    or '~', ending with a separator, more than one '/' or any '\\', or with a first part
    that is a local folder (`outputs/...`)."""
    first = spec.split("/", 1)[0]
    return (spec.startswith(("/", ".", "~")) or spec.endswith("/") or spec.count("/") > 1
            or "\\" in spec or (first != spec and (Path(first).is_dir()
                                                   or (project_root() / first).is_dir())))


def local_path(spec: str) -> Path:
    """A local model path as written: relative paths from the project root (where
    `output_root` starts too), else from the working directory."""
    path = Path(spec).expanduser()
    if path.is_absolute():
        return path
    from_root = project_root() / path
    return from_root if from_root.exists() or not path.exists() else path


def resolve(run: Run, spec: str) -> ModelRef:
    """(path, upstream id) of a model parameter; errors say which stage to run."""
    spec = spec.strip()
    if spec == WORLD:
        spec = stages.WORLD.name
    stage, name = _stage_of(spec)
    if stage is not None:
        if stage not in stages.MODEL_STAGES:
            raise ArtifactError(f"model '{spec}': stage {stage.name} makes no models; "
                                f"models come from {[s.name for s in stages.MODEL_STAGES]}")
        models = stage_models(run, stage)
        name = name or main_model(run, stage)
        if name not in models:
            raise ArtifactError(f"model '{spec}': stage {stage.name} has no model '{name}'; "
                                f"it has {sorted(models)}")
        return ModelRef(spec, models[name], f"{run.manifest(stage)['artifact_id']}:{name}")
    path = local_path(spec)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ArtifactError(f"model '{spec}': {path} is a folder without config.json "
                                "(not a saved model)")
        return ModelRef(spec, str(path.resolve()), f"path:{path.resolve()}")
    if path.exists():
        raise ArtifactError(f"model '{spec}': {path} is a file, not a model folder")
    if _HUB_ID.match(spec) and not looks_like_path(spec):
        if not hub_offline() or in_hub_cache(spec):
            return ModelRef(spec, spec, f"hub:{spec}")
        raise ArtifactError(f"model '{spec}': no such folder {path.resolve()}, and the hub is "
                            "offline (HF_HUB_OFFLINE) with no model of that id in its local "
                            "cache")
    raise ArtifactError(f"model '{spec}': no such folder {path.resolve()} (a missing local "
                        f"path; not 'world', a stage of this run such as "
                        f"'{stages.SFT.name}[:name]', or a hub id owner/name)")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_hub_cache(hub_id: str) -> bool:
    """A hub model whose config is in the local Hugging Face cache (usable offline)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def max_positions(path: str | Path) -> int | None:
    """The longest sequence a model's config allows (`max_position_embeddings`, of the text
    model for a vision-language model); None when the config does not say."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None) or getattr(
        config, "max_position_embeddings", None)


def label(spec: str) -> str:
    """A short name for a model parameter: "world" -> "base", "04_grpo:x" -> "rl",
    a folder or hub id -> its last path part."""
    stage, _ = _stage_of(stages.WORLD.name if spec == WORLD else spec)
    if stage is not None:
        return stage.role or stage.section
    return Path(spec).name or spec


def labels(specs: list[str]) -> list[str]:
    """`label` of each spec; "<label>:<name>" where two specs share a label."""
    short = [label(s) for s in specs]
    return [n if short.count(n) == 1 or ":" not in s else f"{n}:{s.partition(':')[2]}"
            for n, s in zip(short, specs)]


# --- loading ------------------------------------------------------------------------------

def is_vision_language(config) -> bool:
    """A transformers config (or a model folder / hub id) of a vision-language model."""
    if isinstance(config, (str, Path)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config)
    return getattr(config, "vision_config", None) is not None


def load(path: str | Path, device: str | None = None, dtype: str = "auto"):
    """(model, processing class) of a saved model: a causal LM with its tokenizer, or a
    vision-language model with its processor (image-only on CPU installs, see `vlm`), in
    `dtype` ("auto": the checkpoint's)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )

    if is_vision_language(AutoConfig.from_pretrained(path)):
        from synergy.vlm import load_processor

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        processing = load_processor(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        processing = AutoTokenizer.from_pretrained(path)
    return (model.to(device) if device else model), processing


def placement() -> tuple[str, str]:
    """(device, dtype) to score models on (`scoring`): the CUDA device in bfloat16 where the
    GPU has it (the 7B checkpoints are bf16; float32 only on older GPUs), else the CPU in
    float32. Two 7B models in float32 on the CPU are ~60 GiB before any activation."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", "float32"
    return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float32"


def load_for_scoring(path: str | Path):
    """(model in eval mode, processing class), loaded where `placement` says."""
    device, dtype = placement()
    model, processing = load(path, device, dtype)
    return model.eval(), processing


def load_processing(path: str | Path):
    """The tokenizer of a saved model, or its processor for a vision-language model (no
    weights loaded)."""
    from transformers import AutoTokenizer

    if is_vision_language(path):
        from synergy.vlm import load_processor

        return load_processor(path)
    return AutoTokenizer.from_pretrained(path)


def tokenizer_of(processing):
    """The tokenizer of a processing class (a processor or a tokenizer)."""
    return getattr(processing, "tokenizer", processing)


_FINGERPRINTS: dict[tuple, str] = {}
# What a trainer saves beside a model that is not the model (its arguments hold the paths
# it ran in, its state the times): never part of a model's identity.
TRAINER_FILES = ("training_args.bin", "trainer_state.json")


def fingerprint(path: str | Path) -> str:
    """Content id of a model folder: its config, tokenizer and weight files, read whole
    (merged or partly trained models can differ only in the middle of a weight file), not
    the trainer's files saved beside them (`TRAINER_FILES`).
    Remembered for the process while no file of the folder changes (size, mtime, inode)."""
    path = Path(path)
    if not path.is_dir():
        return hashlib.sha256(str(path).encode()).hexdigest()[:12]  # a hub id
    files = [f for f in sorted(path.iterdir()) if f.suffix in (".json", ".safetensors", ".bin",
                                                               ".model")
             and f.name not in TRAINER_FILES and f.is_file()]
    stats = tuple((f.name, st.st_size, st.st_mtime_ns, st.st_ino)
                  for f in files for st in [f.stat()])
    memo = (str(path.resolve()), stats)
    if memo in _FINGERPRINTS:
        return _FINGERPRINTS[memo]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    _FINGERPRINTS[memo] = h.hexdigest()[:12]
    return _FINGERPRINTS[memo]


def load_weights(path: str | Path) -> dict:
    """Every tensor of a saved model folder (its safetensors files, shards included)."""
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    if not tensors:
        raise ArtifactError(f"{path}: no safetensors weights to compare")
    return tensors


def weight_distance(path: str | Path, base: str | Path) -> dict[str, float]:
    """How far a trained model moved from `base`: per tensor ||theta - theta_base|| /
    ||theta_base|| (median and max over tensors) and over all weights together. A 7B model
    fine-tuned at lr 1e-5 moves by a small fraction; a model that retrains the base does
    not, and merges between two such models no longer interpolate."""
    import torch

    mine, theirs = load_weights(path), load_weights(base)
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        raise ArtifactError(f"{path} and {base} share no tensor names")
    rel, num, den = [], 0.0, 0.0
    for name in shared:
        a, b = mine[name].float(), theirs[name].float()
        if a.shape != b.shape:
            raise ArtifactError(f"{path}: tensor {name} is {tuple(a.shape)}, "
                                f"{tuple(b.shape)} in {base}")
        d, n = torch.linalg.vector_norm(a - b).item(), torch.linalg.vector_norm(b).item()
        rel.append(d / max(n, 1e-12))
        num, den = num + d * d, den + n * n
    rel_t = torch.tensor(rel)
    return {"relative_distance": (num / max(den, 1e-24)) ** 0.5,
            "median_tensor_distance": rel_t.median().item(),
            "max_tensor_distance": rel_t.max().item(), "tensors": len(shared)}
