"""Reuse an expensive artifact only when it is the result asked for, and only when it is whole.

Every stage that keeps work between runs (the world, SFT models, GRPO policies and their
starting copy, merges) goes through the same two rules:

- `key(params, reads=..., models=..., code=...)` is the one reuse key: the stage's own
  params that decide the result (`own_params`), the content of every upstream artifact it
  read (tables hashed cell by cell, never by id or a subset of columns), the fingerprints of
  the models it starts from, and the versions of the packages that compute it.
- `reusable(record, key, artifact)` says whether a finished artifact may be used: its
  record (written by `seal` when the artifact was finished) holds this key, the artifact is
  complete and loadable (`check_model`, `check_dataset`, ...) and its fingerprint is the one
  recorded. A damaged artifact is set aside with a warning naming it (`files.set_aside`) and
  the caller recomputes it: it is never used and never needs deleting by hand.

Samples are reused the same way at a finer grain (`evaluation.SampleCache`: model
fingerprint, sampling spec, seed, prompt and images, sample index).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from synergy.files import (ArtifactError, CorruptArtifact, check_files, content_hash,
                           read_json, set_aside, write_json)

# Params that say where a run lives or how fast it runs, not what it computes. (A different
# thread count can change float sums in the last bits; an artifact is still reused across
# thread counts, as across machines; `train_jobs` only changes how many train at once.)
WHERE = ("run_name", "output_root", "threads", "train_jobs")


# --- the key ------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON-able stand-in for a cell of a table (images and arrays by content)."""
    if isinstance(value, bytes):
        return {"bytes": hashlib.sha256(value).hexdigest()}
    if hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):
        return {"image": hashlib.sha256(value.tobytes()).hexdigest(), "mode": value.mode,
                "size": list(value.size)}  # a PIL image
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def digest(value: Any) -> str:
    """Content id of something a stage read: a pandas DataFrame (every column and cell, in
    order), a `datasets.Dataset`, a file or folder (`files.tree_digest`), or JSON-able data."""
    import pandas as pd

    if hasattr(value, "to_pandas") and not isinstance(value, pd.DataFrame):
        value = value.to_pandas()
    if isinstance(value, pd.DataFrame):
        payload = {"columns": [str(c) for c in value.columns],
                   "rows": value.to_dict("split")["data"]}
    elif isinstance(value, Path):
        return tree_digest(value)
    else:
        payload = value
    blob = json.dumps(payload, sort_keys=True, default=_plain).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tree_digest(path: str | Path) -> str:
    """Content id of a file, or of a folder (every file's relative name and bytes)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def own_params(cfg, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """The config's params that decide its artifacts: all of them but where the run lives
    and `ignore` (a stage's list of params that only choose what is shown, how fast it
    runs, or that reach the key as content instead, e.g. a model spec as its fingerprint)."""
    skip = set(WHERE) | set(ignore)
    unknown = skip - set(cfg.to_dict())
    if unknown:
        raise ValueError(f"own_params: {sorted(unknown)} are not keys of {type(cfg).__name__}")
    return {k: v for k, v in cfg.to_dict().items() if k not in skip}


def key(params: Mapping[str, Any], *, reads: Mapping[str, Any] | None = None,
        models: Mapping[str, str | Path] | None = None, code: Iterable[str] = ()) -> str:
    """The reuse key of one artifact.

    params: the own params that decide it (`own_params`, or the unit's own values);
    reads: every upstream artifact it read, by content (`digest`: DataFrames, datasets,
        files, plain values such as a prompt suffix);
    models: the model folders (or hub ids) it starts from, by `models.fingerprint`;
    code: the packages whose version changes the result (e.g. "trl", "mergekit").
    """
    from synergy.models import fingerprint
    from synergy.runs import package_versions

    return content_hash({"params": dict(params),
                         "reads": {k: digest(v) for k, v in (reads or {}).items()},
                         "models": {k: fingerprint(p) for k, p in (models or {}).items()},
                         "code": package_versions(code)}, 16)


# --- checking a finished artifact ---------------------------------------------------------

def check_model(path: str | Path) -> str | None:
    """None when `path` is a complete, loadable model folder: config.json and every other
    JSON file parse, every safetensors file is whole (its header covers the file), the
    shards a weight index lists exist, and there are weights. Else the problem."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return "no config.json"
    problem = check_files(path)
    if problem:
        return problem
    for index in sorted(path.glob("*.index.json")):
        shards = json.loads(index.read_text()).get("weight_map", {}).values()
        missing = sorted({s for s in shards if not (path / s).is_file()})
        if missing:
            return f"{index.name} lists missing shard(s) {missing}"
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        return "no weight files"
    return None


def check_dataset(path: str | Path) -> str | None:
    """None when `path` is a `save_to_disk` folder that loads and reads to its last row."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
        parts = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
        for part in parts:
            part.data.table.validate(full=True)
    except Exception as exc:  # datasets and pyarrow raise many types for damaged folders
        return f"unreadable dataset ({' '.join(str(exc).split())[:300]})"
    return None


def fingerprint_of(artifact: Path, check: Callable) -> str:
    """What `seal` records: a model's `models.fingerprint`, else every byte of it."""
    from synergy.models import fingerprint

    return fingerprint(artifact) if check is check_model else tree_digest(artifact)


# --- records ------------------------------------------------------------------------------

def seal(record: str | Path, key_: str, artifact: str | Path, check: Callable = check_model,
         **extra: Any) -> dict[str, Any]:
    """Record that `artifact` (just written) is the result of `key_`, with its fingerprint
    (what `reusable` compares), plus `extra` fields. Returns the record."""
    data = {**extra, "key": key_, "fingerprint": fingerprint_of(Path(artifact), check)}
    write_json(record, data)
    return data


def reusable(record: str | Path, key_: str, artifact: str | Path,
             check: Callable = check_model) -> dict[str, Any] | None:
    """The record of `artifact` when it may be reused for `key_`, else None (recompute it).

    None when nothing was finished here, or it was made from other inputs (another key). A
    finished artifact that is missing, incomplete, unloadable (`check`) or not what was
    sealed (fingerprint) is set aside, named in a `CorruptArtifact` warning, with its
    record; the caller then recomputes it."""
    record, artifact = Path(record), Path(artifact)
    if not record.exists():
        return None
    try:
        data = read_json(record)
    except ArtifactError as exc:
        set_aside(record, f"unreadable record ({exc})")
        return None
    if data.get("key") != key_:
        return None
    if not artifact.exists():
        problem = "missing"
    else:
        problem = check(artifact)
        found = fingerprint_of(artifact, check) if problem is None else None
        if found is not None and found != data.get("fingerprint"):
            problem = (f"content differs from what was written (fingerprint {found}, "
                       f"recorded {data.get('fingerprint')})")
    if problem is None:
        return data
    if artifact.exists():
        set_aside(artifact, problem)
    else:
        warnings.warn(f"{artifact}: {problem} although {record.name} records it; recomputing",
                      CorruptArtifact, stacklevel=2)
    record.unlink(missing_ok=True)
    return None
