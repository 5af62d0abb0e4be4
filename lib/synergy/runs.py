"""Run folders, atomic writes and manifests: every artifact is evidence of how it was made.

`outputs/<run>/<stage>/` holds a stage's artifacts and its `manifest.json` (git commit,
params, package versions, seeds, device, timings, upstream artifact ids). Files are written
to a temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from synergy.config import StageConfig

MANIFEST = "manifest.json"
PACKAGES = ["synergy", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
            "evaluate", "math-verify", "tokenizers", "papermill", "plotly", "seaborn",
            "mergekit", "vllm", "numpy", "pandas"]
REPO_ROOT = Path(__file__).resolve().parents[2]


class ArtifactError(RuntimeError):
    """An upstream artifact is missing or unreadable."""


def content_hash(obj: Any, length: int = 12) -> str:
    """Stable hash of a JSON-able object (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def stage_dir(cfg: StageConfig, stage: str) -> Path:
    path = Path(cfg.output_root) / cfg.run_name / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over `path` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupt JSON ({exc})") from exc


def save_dataset(ds, path: str | Path) -> Path:
    """Save a `datasets.Dataset` atomically (a folder, readable with `load_from_disk`)."""
    with atomic_path(path) as tmp:
        ds.save_to_disk(str(tmp))
    return Path(path)


def load_dataset_dir(path: str | Path):
    import datasets

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: dataset not found (did its stage run?)")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for damaged folders
        raise ArtifactError(f"{path}: unreadable dataset ({exc})") from exc


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_manifest(out_dir: str | Path, cfg: StageConfig, *, started: str,
                   upstream: dict[str, str] | None = None, artifact_id: str | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record how the artifacts in `out_dir` were made. Returns the manifest."""
    manifest = {
        "stage": cfg.SECTION,
        "artifact_id": artifact_id or f"{cfg.SECTION}-{content_hash(cfg.to_dict())}",
        "params": cfg.to_dict(),
        "seed": cfg.seed,
        "upstream": upstream or {},
        "git": git_state(),
        "packages": package_versions(),
        "device": device_info(),
        "started": started,
        "finished": now(),
        **(extra or {}),
    }
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(stage_path: str | Path) -> dict[str, Any]:
    path = Path(stage_path) / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{path}: no manifest; run the stage '{Path(stage_path).name}' first")
    return read_json(path)
