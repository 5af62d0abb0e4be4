"""Reading a raw table from where it lives: a .parquet/.jsonl/.json file, a `save_to_disk`
folder, a folder of parquet files (split by file or folder name), or a hub id loaded with
`datasets` (needs hub access). Benchmarks (`data`) and training sets (`trace_sets`) read
through here and normalize what comes back; nothing here knows a schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from synergy.files import ArtifactError

SPLIT_NAMES = ("train", "dev", "val", "validation", "test", "testmini")


def _is_hub_id(s: str) -> bool:
    return (s.count("/") in (1, 2) and not s.startswith((".", "/", "~"))
            and Path(s).suffix not in TABLE_SUFFIXES and not Path(s).exists())


def read_source(source: str | Path,
                split: str | None = None) -> tuple[pd.DataFrame, Path | None, str]:
    """(raw table, folder that relative image paths start from, upstream id).

    `source`: a .parquet/.jsonl/.json file, a `save_to_disk` folder, a folder of parquet
    files (those of `split` when file or folder names carry splits), or a hub id
    `owner/name[/config]` loaded with `datasets.load_dataset` (needs hub access).
    """
    path = Path(source).expanduser()
    if path.is_file():
        return read_table(path), path.parent, f"file:{path.resolve()}"
    if path.is_dir():
        raw, base, source_id = _read_folder(path, split), path, f"file:{path.resolve()}:{split}"
    elif _is_hub_id(str(source)):
        raw, base, source_id = _read_hub(str(source), split), None, f"hub:{source}:{split}"
    else:
        raise ArtifactError(f"{source}: no such file or folder (and not a hub id owner/name)")
    if raw.empty:
        raise ArtifactError(f"{source}: split '{split}' has no rows")
    return raw, base, source_id


TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")


def read_table(path: str | Path) -> pd.DataFrame:
    """The rows of one .parquet, .jsonl or .json file.

    JSON numbers keep their literal text ("3.10", "007", "1e3" stay as written): gold
    answers are compared as written, and pandas' type inference would turn them into
    3.1, 7 and 1000.0. A .json file is a list of records or an object of records keyed
    by id (MathVista's annot_testmini.json). Parquet keeps the types it was written with.
    """
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise ArtifactError(f"{path}: unsupported format (use {', '.join(TABLE_SUFFIXES)})")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            text = path.read_text(encoding="utf-8")
            df = pd.DataFrame(_json_records(text, path))
    except (ValueError, OSError) as exc:  # pyarrow's errors derive from these
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    if df.empty:
        raise ArtifactError(f"{path}: the table has no rows")
    return df


def _literal_json(text: str) -> Any:
    return json.loads(text, parse_float=str, parse_int=str)


def _json_records(text: str, path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(_literal_json(line))
                except ValueError as exc:
                    raise ValueError(f"line {n}: {exc}") from exc
    else:
        records = _literal_json(text)
        if isinstance(records, dict):
            records = list(records.values())
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("expected records (JSON objects), one per row")
    return records


def _file_split(path: Path) -> str | None:
    for part in (re.split(r"[-_.]", path.stem)[0], path.parent.name):
        if part in SPLIT_NAMES:
            return part
    return None


def _read_folder(path: Path, split: str | None) -> pd.DataFrame:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except (ValueError, OSError) as exc:  # pyarrow's errors derive from these
            raise ArtifactError(f"{path}: unreadable save_to_disk folder ({exc})") from exc
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ArtifactError(f"{path}: no split '{split}'; have {list(ds)}")
            ds = ds[split]
        return ds.to_pandas()
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise ArtifactError(f"{path}: neither a save_to_disk folder nor a folder of parquet files")
    chosen = [f for f in files if _file_split(f) == split]
    if not chosen:
        named = sorted({s for f in files if (s := _file_split(f))})
        if named:  # mixing dev/validation/test files silently would corrupt the benchmark
            raise ArtifactError(f"{path}: no parquet files of split '{split}'; "
                                f"found splits {named}")
        chosen = files
    return pd.concat([read_table(f) for f in chosen], ignore_index=True)


def _read_hub(hub_id: str, split: str | None) -> pd.DataFrame:
    import datasets

    repo, config = "/".join(hub_id.split("/")[:2]), "/".join(hub_id.split("/")[2:])
    try:
        if config:
            configs = [config]
        elif repo == "MMMU/MMMU":  # one config per subject
            configs = datasets.get_dataset_config_names(repo)
        elif repo == "AI4Math/MathVerse":
            configs = ["testmini"]
        else:
            configs = [None]
        parts = [datasets.load_dataset(repo, c, split=split).to_pandas() for c in configs]
    except Exception as exc:
        raise ArtifactError(
            f"{hub_id}: could not load split '{split}' from the Hugging Face hub ({exc}). "
            "Hub access is needed for a hub id (and no local path of that name exists); "
            "otherwise pass a local copy "
            "(a parquet/jsonl/json file, a save_to_disk folder or a folder of parquet files)"
        ) from exc
    return pd.concat(parts, ignore_index=True)
