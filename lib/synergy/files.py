"""Files written atomically and read back with errors that name them.

Every artifact is written to a temporary sibling and renamed, so an interrupted run never
leaves half a file; a missing or damaged file is an `ArtifactError` naming its path. A
temporary folder left by a killed process (`.<name>.tmp-<pid>-...`) is removed by the next
run (`clean_interrupted`); a finished artifact found damaged (`check_files`: JSON that does
not parse, a safetensors file cut short) is set aside under a name that says so
(`set_aside`), never deleted and never used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

# `.<name>.tmp-<pid>-<random>`: the temporary sibling of an atomic write by process <pid>.
_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[^/]*$")


class ArtifactError(RuntimeError):
    """An upstream artifact is missing or unreadable."""


class CorruptArtifact(UserWarning):
    """A finished artifact was found damaged, set aside and recomputed."""


def content_hash(obj: Any, length: int = 12) -> str:
    """Stable hash of a JSON-able object (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# A full disk, a quota, a read-only filesystem: the write failed for want of room or right.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _named(exc: OSError, path: Path) -> OSError:
    """The same error, naming the artifact that could not be written (not its temporary
    sibling, which is gone)."""
    return OSError(exc.errno, f"{exc.strerror}; could not write", str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over `path` (file or folder).

    A full disk (or quota, or read-only filesystem) is an OSError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name}.tmp-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent)) / path.name
    except OSError as exc:
        raise (_named(exc, path) if exc.errno in _NO_ROOM else exc) from exc
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = tmp.parent / ".old"  # inside the temporary folder: cleaned up with it
            path.rename(old)
            tmp.rename(path)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise _named(exc, path) from exc
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_interrupted(root: str | Path, recursive: bool = True) -> list[Path]:
    """Remove the temporary folders of atomic writes whose process is gone (killed
    mid-write) under `root`; a live writer's are left alone. Returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for folder, dirs, _ in os.walk(root):
        for name in list(dirs):
            m = _TEMP.match(name)
            if m:
                dirs.remove(name)
                if not _alive(int(m.group(1))):
                    shutil.rmtree(Path(folder) / name, ignore_errors=True)
                    removed.append(Path(folder) / name)
        if not recursive:
            break
    return removed


def set_aside(path: str | Path, problem: str) -> Path:
    """Rename a damaged artifact to `.<name>.corrupt-<UTC time>` beside it (kept for a look,
    never read again) and warn naming both; the caller recomputes it."""
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f".{path.name}.corrupt-{stamp}")
    path.rename(aside)
    warnings.warn(f"{path}: {problem}; set aside as {aside.name}, recomputing",
                  CorruptArtifact, stacklevel=2)
    return aside


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
        raise ArtifactError(f"{path}: unreadable dataset ({' '.join(str(exc).split())}); "
                            "rerun the stage that wrote it") from exc


# --- whole files ----------------------------------------------------------------------------

def check_safetensors(path: Path) -> str | None:
    """None for a whole safetensors file; else what is wrong (truncated, bad header)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt"):
            return None
    except (SafetensorError, OSError) as exc:
        return f"{path.name} is damaged ({exc})"


def check_files(path: str | Path) -> str | None:
    """None when every JSON file of the folder parses and every safetensors file is whole
    (a training checkpoint, a LoRA adapter); else the problem."""
    path = Path(path)
    for f in sorted(path.glob("*.json")):
        try:
            json.loads(f.read_text())
        except (ValueError, OSError) as exc:
            return f"{f.name} is not valid JSON ({exc})"
    for f in sorted(path.glob("*.safetensors")):
        problem = check_safetensors(f)
        if problem:
            return problem
    return None
