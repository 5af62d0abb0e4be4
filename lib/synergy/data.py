"""Where stages get their inputs: the embedded world or real benchmarks and models.

A benchmark is a table with at least `qid`, `question`, `answer` (optional `choices`,
`image`, and any metadata). `"world"` means the embedded task's eval split, recorded by this
run's `00_world` stage; anything else is a local JSONL/JSON/parquet file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synergy.runs import ArtifactError, read_manifest

WORLD = "world"
REQUIRED = ("qid", "question", "answer")


def run_root(output_root: str, run_name: str) -> Path:
    return Path(output_root) / run_name


def world_manifest(output_root: str, run_name: str) -> dict:
    return read_manifest(run_root(output_root, run_name) / "00_world")


def world_config(output_root: str, run_name: str):
    from synergy.world import WorldConfig

    return WorldConfig.from_mapping(world_manifest(output_root, run_name)["params"],
                                    "00_world manifest")


def resolve_model(model: str, output_root: str, run_name: str) -> tuple[str, str]:
    """(path or hub id, upstream artifact id) for a model parameter."""
    if model == WORLD:
        manifest = world_manifest(output_root, run_name)
        return manifest["model_path"], manifest["artifact_id"]
    if Path(model).exists():
        return str(Path(model).resolve()), f"path:{Path(model).resolve()}"
    if "/" in model and not model.startswith((".", "/")):
        return model, f"hub:{model}"
    raise ArtifactError(f"model '{model}': neither 'world', an existing path, nor a hub id")


def load_benchmark(benchmark: str, output_root: str, run_name: str) -> tuple[pd.DataFrame, str]:
    """(questions table, upstream artifact id)."""
    if benchmark == WORLD:
        from synergy.world import eval_questions, questions_frame

        cfg = world_config(output_root, run_name)
        return questions_frame(eval_questions(cfg)), cfg.world_id()
    return load_table(benchmark), f"file:{Path(benchmark).resolve()}"


def load_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: benchmark file not found")
    readers = {".jsonl": lambda p: pd.read_json(p, lines=True), ".json": pd.read_json,
               ".parquet": pd.read_parquet}
    if path.suffix not in readers:
        raise ArtifactError(f"{path}: unsupported benchmark format (use .jsonl, .json, .parquet)")
    try:
        df = readers[path.suffix](path)
    except Exception as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ArtifactError(f"{path}: missing column(s) {missing}; have {list(df.columns)}")
    df["answer"] = df["answer"].astype(str)
    return df
