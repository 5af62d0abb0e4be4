"""The training sets: SFT trace sets (s1K, s1K-1.1, Eureka-Distill) and RL query sets
(MM-Eureka), as chat rows.

Rows: qid, question, answer, messages (the user turn, plus the assistant's trace), images,
source. Bad rows are skipped and reported as for benchmarks (`row_rules.Loaded`), by the same
shared rules (`row_rules.good_rows`, `row_rules.within_limits`, `row_rules.check_skipped`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from synergy import row_rules, sources
from synergy.files import ArtifactError

_THINK = re.compile(r"<think>.*?\S.*?</think>", re.DOTALL)  # a non-empty trace


def _user_text(question: str, suffix: str | None) -> str:
    return f"{question} {suffix}".strip() if suffix else question  # as generation.chat_prompt


def _trace(thinking: str, attempt: str) -> str:
    return f"<think>\n{thinking.strip()}\n</think>\n\n{attempt.strip()}"


def _trace_set(raw: pd.DataFrame, name: str, qids: list[str | None],
               make_row: Callable[[pd.Series, str], dict], source_id: str,
               source: str | Path, max_skipped_share: float) -> row_rules.Loaded:
    rows, skipped = row_rules.good_rows(raw, name, qids, make_row)
    table = pd.DataFrame(rows, columns=["qid", "question", "answer", "messages", "images",
                                        "source"])
    table, skipped = row_rules.within_limits(table, skipped, name, row_rules.Limits())
    row_rules.check_skipped(name, table, skipped, len(raw), source, max_skipped_share)
    return row_rules.Loaded(table, source_id, skipped)


def load_s1(source: str | Path, teacher: str = "deepseek", split: str = "train",
            prompt_suffix: str | None = None, *,
            max_skipped_share: float = 0.02) -> row_rules.Loaded:
    """s1K-1.1 (teacher "deepseek" or "gemini") or s1K (Gemini only) as chat-format SFT rows.

    `answer` is the set's `solution` (a reference solution, not always a short answer).
    Rows are numbered `<set>-0000`, ... in file order (the sets carry no id).
    """
    raw, _, source_id = sources.read_source(source, split)
    if "thinking_trajectories" in raw.columns:
        row_rules.require_columns(raw, ("question", "solution", "attempt"), "s1K")
        if teacher != "gemini":
            raise ArtifactError(f"s1K holds Gemini traces only; teacher '{teacher}' needs s1K-1.1")
        tag, thinking_col, attempt_col = "s1K", "thinking_trajectories", "attempt"
    else:
        if teacher not in ("deepseek", "gemini"):
            raise ArtifactError(f"teacher must be 'deepseek' or 'gemini', not '{teacher}'")
        thinking_col, attempt_col = f"{teacher}_thinking_trajectory", f"{teacher}_attempt"
        row_rules.require_columns(raw, ("question", "solution", thinking_col, attempt_col),
                                  "s1K-1.1")
        tag = "s1K-1.1"

    def row(r: pd.Series, qid: str) -> dict:
        thinking = r[thinking_col]
        if thinking_col == "thinking_trajectories":
            if row_rules.is_missing(thinking) or len(thinking) != 1:
                raise row_rules.BadRow("expected one thinking trajectory")
            thinking = thinking[0]
        if row_rules.is_missing(thinking) or row_rules.is_missing(r[attempt_col]):
            raise row_rules.BadRow(f"no {teacher} trace")
        question = row_rules.question_text(r["question"])
        return {"qid": qid, "question": question, "answer": row_rules.answer_text(r["solution"]),
                "messages": [{"role": "user", "content": _user_text(question, prompt_suffix)},
                             {"role": "assistant",
                              "content": _trace(str(thinking), str(r[attempt_col]))}],
                "images": [], "source": f"{tag}/{teacher}"}

    raw = raw.reset_index(drop=True)
    return _trace_set(raw, tag, [f"{tag}-{i:04d}" for i in range(len(raw))], row, source_id,
                      source, max_skipped_share)


def _image_ref(part: dict) -> str | None:
    ref = part.get("image") or part.get("image_url")
    return ref.get("url") if isinstance(ref, dict) else ref


def _turns(r: pd.Series) -> list[dict]:
    """The chat turns of a row: `message` (a JSON string, MM-Eureka) or `messages` (a list)."""
    value = r.get("message")
    if row_rules.is_missing(value):
        value = r.get("messages")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise row_rules.BadRow(f"`message` is not JSON ({exc})") from exc
    if (row_rules.is_missing(value) or isinstance(value, dict)
            or not all(isinstance(t, dict) for t in value)):
        raise row_rules.BadRow("no chat turns")
    return list(value)


def _parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None or isinstance(content, dict):
        raise row_rules.BadRow(f"turn content {content!r} is neither text nor a list of parts")
    return [p for p in content if isinstance(p, dict)]


def _user_turn(turns: list[dict], r: pd.Series, base: Path | None) -> tuple[str, list]:
    """(question text, images) of the one user turn; images `file://...` resolve from `base`."""
    users = [t for t in turns if t.get("role") == "user"]
    if len(users) != 1:
        raise row_rules.BadRow(f"expected one user turn, found {len(users)}")
    parts = _parts(users[0].get("content"))
    question = "\n".join(str(p.get("text", "")) for p in parts if p.get("type") == "text").strip()
    if not question:
        raise row_rules.BadRow("no question text")
    refs = [_image_ref(p) for p in parts if p.get("type") in ("image", "image_url")]
    if any(ref is None for ref in refs):
        # TRL's layout: {"type": "image"} placeholders, the images in an `images` column.
        stored = [] if row_rules.is_missing(r.get("images")) else list(r["images"])
        if len(stored) != len(refs):
            raise row_rules.BadRow(f"{len(refs)} image placeholder(s) but {len(stored)} "
                                   "stored image(s)")
        return question, [row_rules.resolve_image(v, base) for v in stored]
    return question, [row_rules.resolve_image(ref, base) for ref in refs]


def content_id(r: pd.Series, prefix: str) -> str | None:
    """`<prefix>-<hash>` of a row's question text and image references (as written, or
    the stored images' bytes), or None when the row has no readable user turn (its row
    function then says why)."""
    try:
        users = [t for t in _turns(r) if t.get("role") == "user"]
        parts = _parts(users[0].get("content")) if len(users) == 1 else []
    except row_rules.BadRow:
        return None
    text = "\n".join(str(p.get("text", "")) for p in parts if p.get("type") == "text").strip()
    if not text:
        return None
    refs = [_image_ref(p) for p in parts if p.get("type") in ("image", "image_url")]
    if any(ref is None for ref in refs):
        refs = [_image_key(v) for v in ([] if row_rules.is_missing(r.get("images"))
                                        else r["images"])]
    digest = hashlib.sha256(json.dumps([text, refs], default=str).encode("utf-8")).hexdigest()
    return f"{prefix}-{digest[:16]}"


def _image_key(value: Any) -> str:
    """A stored image as text for `content_id`: its bytes' hash, or its path."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return hashlib.sha256(value["bytes"]).hexdigest()
    if isinstance(value, dict):
        return str(value.get("path"))
    if hasattr(value, "tobytes"):  # a PIL image
        return hashlib.sha256(value.tobytes()).hexdigest()
    return str(value)


def _text_of(content: Any) -> str:
    return "".join(str(p.get("text", "")) for p in _parts(content) if p.get("type") == "text")


def load_mm_eureka(source: str | Path, prompt_suffix: str | None = None, split: str = "train",
                   *, max_skipped_share: float = 0.02) -> row_rules.Loaded:
    """MM-Eureka queries (no trace: `messages` is the user turn, plus an assistant turn only
    if the row has one). Image paths `file://...` resolve relative to the file's folder; the
    published rows' absolute paths (the builder's machine) are found there by their trailing
    parts (`row_rules.resolve_image`)."""
    raw, base, source_id = sources.read_source(source, split)
    row_rules.require_columns(raw, ("id", "answer"), str(source))
    row_rules.require_one_of(raw, ("message", "messages"), str(source))

    def row(r: pd.Series, qid: str) -> dict:
        turns = _turns(r)
        question, images = _user_turn(turns, r, base)
        messages = [{"role": "user", "content": _user_text(question, prompt_suffix)}]
        messages += [{"role": "assistant", "content": _text_of(t.get("content"))}
                     for t in turns if t.get("role") == "assistant"]
        return {"qid": qid, "question": question, "answer": row_rules.answer_text(r["answer"]),
                "messages": messages, "images": images, "source": "mm-eureka"}

    raw = raw.reset_index(drop=True)
    return _trace_set(raw, "mm-eureka", row_rules.row_ids(raw["id"]), row, source_id, source,
                      max_skipped_share)


def load_eureka_distill(source: str | Path, prompt_suffix: str | None = None,
                        split: str = "train", *,
                        max_skipped_share: float = 0.02) -> row_rules.Loaded:
    """Eureka-Distill-style SFT traces (`JierunChen/Eureka-Distill`; its schema is not
    documented): chat rows as MM-Eureka's (`message` JSON string or `messages` list; user
    text + `file://` images; `answer`), each with exactly one assistant turn holding a
    `<think> ... </think>` trace. A row without `id` (no column, or an empty one) gets its
    content's id (`content_id`), the same in every run and every file order; rows repeating
    a question with the same images share it, and the first is kept. System turns are not
    carried (the stages add their own prompt suffix)."""
    raw, base, source_id = sources.read_source(source, split)
    row_rules.require_columns(raw, ("answer",), str(source))
    row_rules.require_one_of(raw, ("message", "messages"), str(source))

    def row(r: pd.Series, qid: str) -> dict:
        turns = _turns(r)
        question, images = _user_turn(turns, r, base)
        replies = [_text_of(t.get("content")) for t in turns if t.get("role") == "assistant"]
        if len(replies) != 1:
            raise row_rules.BadRow(f"expected one assistant turn, found {len(replies)}")
        if not _THINK.search(replies[0]):
            raise row_rules.BadRow("the assistant turn has no <think> ... </think> trace")
        return {"qid": qid, "question": question, "answer": row_rules.answer_text(r["answer"]),
                "messages": [{"role": "user", "content": _user_text(question, prompt_suffix)},
                             {"role": "assistant", "content": replies[0]}],
                "images": images, "source": "eureka-distill"}

    raw = raw.reset_index(drop=True)
    given = row_rules.row_ids(raw["id"]) if "id" in raw.columns else [None] * len(raw)
    qids = [qid or content_id(r, "eureka-distill") or f"eureka-distill-row-{i}"
            for i, (qid, (_, r)) in enumerate(zip(given, raw.iterrows()))]
    return _trace_set(raw, "eureka-distill", qids, row, source_id, source, max_skipped_share)

