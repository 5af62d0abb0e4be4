"""Files written atomically and read back with errors that name them.

Every artifact is written to a temporary sibling and renamed, so an interrupted run never
leaves half a file; a missing or damaged file is an `ArtifactError` naming its path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


class ArtifactError(RuntimeError):
    """An upstream artifact is missing or unreadable."""


def content_hash(obj: Any, length: int = 12) -> str:
    """Stable hash of a JSON-able object (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


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
