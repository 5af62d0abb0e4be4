"""Rows of a loaded table: the bad-row rules every loader shares (benchmarks in `data`,
trace and query sets in `trace_sets`).

A row that cannot be used raises `BadRow`; its loader skips it, names it with the reason in
the skipped-rows table (`SKIPPED_COLUMNS`, `Loaded.skipped`), and fails with a clear error
only when the skipped share passes `max_skipped_share` (`check_skipped`). `Limits` bounds
what one row may cost (question length, image pixels) before any work.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pandas as pd

from synergy.files import ArtifactError
from synergy.vlm import image_problem


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one row may cost, checked when it is loaded, before any work (01_stratify's
    `max_question_chars` and `max_image_pixels`; these defaults elsewhere): a longer
    question, or an image that is larger or does not decode, makes its row a skipped row
    under `max_skipped_share`. A question's tokens are at most its UTF-8 bytes (byte-level
    BPE), so the character bound bounds its prompt too."""
    question_chars: int = 20_000
    image_pixels: int = 40_000_000


class BadRow(ValueError):
    """One row that cannot be used; its loader skips it and reports the message as the reason."""


class Loaded(NamedTuple):
    """What every benchmark and trace-set loader returns.

    table: the good rows; upstream: the source's id for manifests; skipped: the bad rows,
    one per row, with columns `benchmark` (the benchmark's or trace set's name), `qid`
    and `reason`. Unpack it (`table, upstream, skipped = ...`) or use the fields.
    """
    table: pd.DataFrame
    upstream: str
    skipped: pd.DataFrame


SKIPPED_COLUMNS = ["benchmark", "qid", "reason"]


def no_skips() -> pd.DataFrame:
    """The skipped-rows table of a source that had no bad rows."""
    return pd.DataFrame(columns=SKIPPED_COLUMNS)


def good_rows(raw: pd.DataFrame, name: str, qids: list[str | None],
              make_row: Callable[[pd.Series, str], dict]) -> tuple[list[dict], pd.DataFrame]:
    """The rows `make_row(row, qid)` builds, and the skipped ones (it raised BadRow).

    A repeated id keeps its first row in file order; the repeats are skipped.
    """
    rows, skipped, seen = [], [], set()
    for i, (qid, (_, r)) in enumerate(zip(qids, raw.iterrows(), strict=True)):
        try:
            if qid is None:
                qid = f"row {i}"
                raise BadRow("no id")
            if qid in seen:
                raise BadRow("duplicate id (its first row is kept)")
            seen.add(qid)
            rows.append(make_row(r, qid))
        except BadRow as exc:
            skipped.append((name, qid, str(exc)))
    return rows, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def within_limits(table: pd.DataFrame, skipped: pd.DataFrame, name: str, limits: Limits,
                  base: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows within `limits`, and the skipped ones with those beyond (question length,
    every image's pixels and decoding), each named with its reason."""
    keep, over = [], []
    for i, row in enumerate(table.to_dict("records")):
        problem = None
        question = row.get("question")
        if isinstance(question, str) and len(question) > limits.question_chars:
            problem = (f"question of {len(question):,} characters, above "
                       f"max_question_chars={limits.question_chars:,}")
        images = row.get("images")
        if problem is None and isinstance(images, (list, tuple)):
            for image in images:
                if isinstance(image, str) and base is not None and (base / image).exists():
                    image = base / image  # a common-schema table's own folder
                problem = image_problem(image, limits.image_pixels)
                if problem:
                    break
        if problem:
            over.append((name, str(row.get("qid", f"row {i}")), problem))
        else:
            keep.append(i)
    if not over:
        return table, skipped
    more = pd.DataFrame(over, columns=SKIPPED_COLUMNS)
    return (table.iloc[keep].reset_index(drop=True),
            pd.concat([skipped, more], ignore_index=True) if len(skipped) else more)


def row_ids(values: pd.Series) -> list[str | None]:
    return [None if is_missing(v) else str(v).strip() for v in values]


def check_skipped(name: str, table: pd.DataFrame, skipped: pd.DataFrame, total: int,
                  source: str | Path, max_skipped_share: float) -> None:
    reasons = "; ".join(f"{q}: {r}" for q, r in zip(skipped["qid"][:5], skipped["reason"][:5]))
    if table.empty:
        raise ArtifactError(f"{source}: no good {name} rows ({len(skipped)} of {total} "
                            f"skipped: {reasons})")
    share = len(skipped) / total
    if share > max_skipped_share:
        raise ArtifactError(
            f"{name}: {len(skipped)} of {total} rows skipped ({share:.1%}), above "
            f"max_skipped_share={max_skipped_share:.1%}; first reasons: {reasons} "
            "(pass a larger max_skipped_share to accept them)")


# --- fields of a row ---------------------------------------------------------------------

def require_columns(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ArtifactError(f"{what}: missing column(s) {missing}; have {list(df.columns)}")


def require_one_of(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if not any(c in df.columns for c in columns):
        raise ArtifactError(f"{what}: needs one of the columns {list(columns)}; "
                            f"have {list(df.columns)}")


def is_missing(value: Any) -> bool:
    """None, NaN, pd.NA, a blank string or an empty Image entry."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, dict):
        return value.get("bytes") is None and not value.get("path")
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def resolve_image(value: Any, base: Path | None):
    """A PIL image (from an Image object or stored bytes) or an existing file's path: a
    relative path starts from `base`; an absolute one (or `file:///...`) that does not exist
    here is looked up under `base` by its trailing parts (`_rebased`)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes") is not None:
        try:
            return Image.open(io.BytesIO(value["bytes"]))
        except UnidentifiedImageError as exc:
            raise BadRow(f"stored image is not an image ({exc})") from exc
        except (Image.DecompressionBombError, OSError) as exc:
            raise BadRow(f"stored image is unreadable ({exc})") from exc
    raw = value.get("path") if isinstance(value, dict) else str(value)
    written = Path(raw.removeprefix("file://"))
    path = base / written if not written.is_absolute() and base is not None else written
    if path.exists():
        return str(path)
    if written.is_absolute() and base is not None:
        found = _rebased(written, base)
        if found is not None:
            return str(found)
        raise BadRow(f"image '{raw}' not found (not at {path}, nor under {base} by its "
                     "trailing path parts; unzip the images next to the table)")
    raise BadRow(f"image '{raw}' not found (looked at {path}; "
                 "unzip the images next to the table)")


def _rebased(path: Path, base: Path) -> Path | None:
    """An absolute path written on the machine that built a dataset (MM-Eureka's
    `file:///.../images/geo/1.png`), found under the local folder `base` by its trailing
    parts, the longest that exists: base/.../images/geo/1.png, ..., base/1.png."""
    parts = path.parts[1:]
    for start in range(len(parts)):
        candidate = base.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    return None


def answer_text(value: Any) -> str:
    if is_missing(value):
        raise BadRow("no answer")
    return str(value).strip()


def question_text(value: Any) -> str:
    if is_missing(value):
        raise BadRow("no question text")
    return str(value)
