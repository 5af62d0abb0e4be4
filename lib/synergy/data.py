"""Where evaluation stages get their questions: the embedded world and real benchmarks (the
bad-row rules they share with the training sets, `trace_sets`: `row_rules`; reading a table
from a file, a folder or the hub: `sources`).

Every benchmark comes out in one schema: `qid`, `question` (the text the model sees, options
formatted in for multiple choice), `answer` (the gold LETTER for multiple choice), `choices`
(list or None), `images` (PIL images or resolved paths), `benchmark`, and `level` when the
source carries the paper's difficulty level. `load_benchmark` takes `"world"`, a local
table, or `"<name>:<path-or-hub-id>[:split]"` with a name from `NORMALIZERS`; the source
`world` there (and in `trace_sets`' stage keys) is the image world's file of
that schema, which 00_world writes (`world_source`).

Difficulty levels (the paper's `JierunChen/<Benchmark>_with_difficulty_level` copies): the
column holding them is not documented, so it is detected among `LEVEL_NAMES`. Trap:
MathVision has its OWN `level` column (1-5, the dataset's), which is not the paper's level,
so detection skips it for MathVision; pass `level_column=` to name the column explicitly.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from synergy import stages, task, world
from synergy.files import ArtifactError
from synergy.row_rules import (
    BadRow, Limits, Loaded, answer_text, check_skipped, good_rows, is_missing, no_skips,
    question_text, require_columns, resolve_image, row_ids, within_limits,
)
from synergy.sources import read_source, read_table

WORLD = "world"
REQUIRED = ("qid", "question", "answer")
PAPER_PROMPT_SUFFIX = ("Please reason step by step within <think> </think> tags, "
                       "and put your final answer within \\boxed{}.")
LETTERS = "ABCDEFGHIJ"
LEVEL_NAMES = ("level", "difficulty_level", "difficulty", "diff_level", "level_difficulty")
# Columns that look like a level but hold something else (see the module docstring).
NOT_PAPER_LEVEL = {"mathvision": ("level",)}
_LETTER = re.compile(r"\(?([A-J])\)?\.?")
_LEVEL = re.compile(r"(?:L|level\s*)?([1-5])(?:\.0)?", re.IGNORECASE)
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def load_benchmark(benchmark: str, run, max_skipped_share: float = 0.02,
                   limits: Limits = Limits()) -> "Loaded":
    """The evaluation questions of a stage (table, upstream id, skipped rows): `world` (the
    run's own task), a local table in the common schema, or `name:source[:split]` with a
    name from NORMALIZERS (bad rows skipped and counted, see `Loaded`); source `world` is
    the image world's file of that schema (`world_source`)."""
    if benchmark == WORLD:
        cfg = world.config_of(run)
        return Loaded(task.questions_frame(task.eval_questions(cfg), cfg.kind),
                      cfg.world_id(), no_skips())
    name, sep, rest = benchmark.partition(":")
    if sep and name.lower() in NORMALIZERS:
        source, split = rest, None
        if ":" in rest:
            source, split = rest.rsplit(":", 1)
        return load_named_benchmark(name.lower(), world_source(source, run, name.lower()),
                                    split, max_skipped_share=max_skipped_share, limits=limits)
    return load_common(benchmark, max_skipped_share, limits)


def world_source(source: str | Path, run, schema: str) -> str | Path:
    """`source` itself, or for "world" the run's image-world file in `schema`'s layout
    ("mathvision", "mm_eureka" or "eureka_distill"), which 00_world writes when its
    `kind` is "image": the loaders then read the world as they read the real sets."""
    if str(source) != WORLD:
        return source
    if schema not in world.TASK_FILES:
        raise ArtifactError(f"source 'world': the image world writes {sorted(world.TASK_FILES)} "
                            f"files, no {schema!r} file")
    path = run.dir(stages.WORLD) / world.TASK_FOLDER / world.TASK_FILES[schema]
    if not path.is_file():
        kind = world.config_of(run).kind
        raise ArtifactError(
            f"source 'world' for {schema}: {path} not found; {stages.WORLD.name} writes it "
            f"when world.kind is 'image' (this run's world is {kind!r})"
            + ("" if kind == "text" else f"; rerun: python -m synergy run --run-name "
               f"{run.name} --stages {stages.WORLD.number}"))
    return path


def load_common(path: str | Path, max_skipped_share: float = 0.02,
                limits: Limits = Limits()) -> "Loaded":
    """A local table already in the common schema (qid, question, answer, ...), by the
    rule of every loader: answers as written, and a row without id, question or answer, or
    with a repeated id, skipped and reported (too many, or none left, is an error)."""
    raw = read_table(path).reset_index(drop=True)
    require_columns(raw, REQUIRED, str(path))

    def row(r: pd.Series, qid: str) -> dict:
        return {**r.to_dict(), "qid": qid, "question": question_text(r["question"]),
                "answer": answer_text(r["answer"])}

    rows, skipped = good_rows(raw, Path(path).name, row_ids(raw["qid"]), row)
    table = pd.DataFrame(rows, columns=list(raw.columns))
    table, skipped = within_limits(table, skipped, Path(path).name, limits, Path(path).parent)
    check_skipped(Path(path).name, table, skipped, len(raw), path, max_skipped_share)
    return Loaded(table, f"file:{Path(path).resolve()}", skipped)


def load_table(path: str | Path, max_skipped_share: float = 0.02) -> pd.DataFrame:
    """The good rows of `load_common` (bad rows skipped by the same rule)."""
    return load_common(path, max_skipped_share).table


# --- helpers shared by the normalizers ----------------------------------------------------

def _images(row: pd.Series, columns: list[str], base: Path | None) -> list:
    return [resolve_image(row[c], base) for c in columns if c in row and not is_missing(row[c])]


def _first_image(row: pd.Series, base: Path | None) -> list:
    """`decoded_image` (the hub's Image column) when present, else the `image` path."""
    return _images(row, ["decoded_image"], base) or _images(row, ["image"], base)


def _choices(value: Any) -> list[str] | None:
    """The options as strings, None for none; a string holding a Python list (MMMU's
    layout) is parsed."""
    if is_missing(value):
        return None
    parsed = value
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = None
    if isinstance(parsed, (str, dict)) or not hasattr(parsed, "__iter__"):
        raise BadRow(f"options {value!r} is not a list")
    return [str(v) for v in parsed] or None


def _gold_letter(answer: Any, choices: list[str] | None, *, by_text: bool = False) -> str:
    """The gold letter: the answer's own letter, else the letter of the one option whose text
    the answer is (`option_key`: MathVerse writes some golds as the option's text). `by_text`
    (MathVista, whose gold is always the option text) skips reading a letter."""
    a = answer_text(answer)
    if not by_text:
        m = _LETTER.fullmatch(a)
        if m and (not choices or LETTERS.index(m.group(1)) < len(choices)):
            return m.group(1)
    hits = _option_hits(a, choices)
    if len(hits) == 1:
        return LETTERS[hits[0]]
    if by_text or hits:
        raise BadRow(f"answer {a!r} matches {len(hits)} of the choices {choices}; "
                     "need exactly one")
    raise BadRow(f"multiple-choice answer {a!r} is not a letter of the choices {choices} "
                 "(nor the text of one of them)")


def option_key(answer: Any, choices: list[str] | None) -> str | None:
    """The letter of the one option whose text is `answer`: compared as written, else as
    `_option_text` normalises both; None when no option or several match."""
    hits = _option_hits(str(answer), choices)
    return LETTERS[hits[0]] if len(hits) == 1 else None


def _option_hits(answer: str, choices: list[str] | None) -> list[int]:
    options = [str(c).strip() for c in choices or []]
    exact = [i for i, c in enumerate(options) if c == answer.strip()]
    if exact:
        return exact
    wanted = _option_text(answer)
    return [i for i, c in enumerate(options) if _option_text(c) == wanted]


def _option_text(text: str) -> str:
    """`text` without what does not change an option: surrounding whitespace and `$`, a
    closing period, runs of spaces, and case."""
    text = text.strip().removesuffix(".").strip().strip("$").strip().removesuffix(".")
    return " ".join(text.split()).casefold()


# --- options written inside the question text (MathVerse, MMStar) ---------------------------

# A marker "(A)" or "A." / "A:" / "A)", after whitespace or a separator (so not "f(A)").
_OPTION_MARK = re.compile(r"(?<![^\s,;:\uff1a])(?:\(([A-J])\)|([A-J])[.:)\uff1a])")
_OPTIONS_HEADER = re.compile(r"(?:options|choices)\s*[:\uff1a]?\s*$", re.IGNORECASE)

def parse_options(text: str) -> list[str] | None:
    """The options written inside a question's text, or None when it lists none.

    Layouts: "(A) 3 (B) 4" anywhere; "A. 3" / "A: 3" / "A) 3" each at the start of a line;
    or inline after an "Options:" / "Choices:" header ("Options: A: red, B: blue", MMStar).
    Letters must run A, B, C, ... in one marker style, at least two options; the last such
    run wins (the options close the question), and the last option ends at its line.
    Prose such as "A. Smith measured ..." or "Mr. A. Jones and B. Smith" is not options.
    """
    marks = list(_OPTION_MARK.finditer(text))
    for i in reversed(range(len(marks))):
        if _letter(marks[i]) != "A":
            continue
        run = [marks[i]]
        for mark in marks[i + 1:]:
            if _style(mark) != _style(run[0]):
                continue  # e.g. "A." inside the text of option "(B)"
            if _letter(mark) != LETTERS[len(run)]:
                break
            run.append(mark)
        if len(run) < 2 or not _laid_out_as_options(text, run):
            continue
        ends = [m.start() for m in run[1:]] + [len(text)]
        options = [text[m.end():end] for m, end in zip(run, ends)]
        options[-1] = options[-1].lstrip(" \t").split("\n")[0]
        options = [o.strip().rstrip(",;").strip() for o in options]
        if all(o.strip(" .,;:") for o in options):  # "Consider (A) and (B)." is prose
            return options
    return None


def _letter(mark: re.Match) -> str:
    return mark.group(1) or mark.group(2)


def _style(mark: re.Match) -> str:
    return "()" if mark.group(1) else mark.group(0)[-1].replace("\uff1a", ":")


def _laid_out_as_options(text: str, run: list[re.Match]) -> bool:
    """Parenthesized letters, or every marker opening a line, or a run after a header."""
    if _style(run[0]) == "()":
        return True
    if all(text[:m.start()].rstrip(" \t").endswith("\n") or not text[:m.start()].strip()
           for m in run):
        return True
    return bool(_OPTIONS_HEADER.search(text[:run[0].start()]))


def format_choices(question: str, choices: list[str] | None) -> str:
    """The question with lettered options appended (as the model sees it)."""
    if not choices:
        return question
    if all(c.strip() == LETTERS[i] for i, c in enumerate(choices)):  # options drawn in the image
        return f"{question}\nOptions: {', '.join(choices)}"
    lines = [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return question + "\nOptions:\n" + "\n".join(lines)


def _frame(rows: list[dict], benchmark: str) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=["qid", "question", "answer", "choices", "images", "benchmark"])
    df = pd.DataFrame(rows)
    df.insert(5, "benchmark", benchmark)
    return df


def _row(qid, question, answer, choices, images, **extra) -> dict:
    return {"qid": str(qid), "question": question, "answer": answer, "choices": choices,
            "images": images, **extra}


def _extras(row: pd.Series, columns: tuple[str, ...]) -> dict:
    return {c: row[c] for c in columns if c in row}


# --- one normalizer per benchmark (raw table in the hub's layout -> common schema) ---------
#
# Each takes the raw table, the folder relative image paths start from, and the column
# holding the paper's level (or None), and returns (good rows in the common schema,
# skipped rows). A row function builds one row or raises BadRow.

def _normalize(raw: pd.DataFrame, benchmark: str, id_column: str,
               make_row: Callable[[pd.Series, str, Path | None], dict], base: Path | None,
               level_column: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    def row(r: pd.Series, qid: str) -> dict:
        out = make_row(r, qid, base)
        if level_column is not None:
            out["level"] = _row_level(r[level_column], level_column)
        return out

    rows, skipped = good_rows(raw, benchmark, row_ids(raw[id_column]), row)
    return _frame(rows, benchmark), skipped


def _mathvision_row(r: pd.Series, qid: str, base: Path | None) -> dict:
    choices = _choices(r["options"])
    answer = _gold_letter(r["answer"], choices) if choices else answer_text(r["answer"])
    return _row(qid, format_choices(question_text(r["question"]), choices), answer, choices,
                _first_image(r, base), subject=r.get("subject"), mathvision_level=r.get("level"))


def normalize_mathvision(raw: pd.DataFrame, base: Path | None = None,
                         level_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    require_columns(raw, ("id", "question", "options", "answer"), "MathVision")
    return _normalize(raw, "mathvision", "id", _mathvision_row, base, level_column)


SCORING_FIELDS = ("question_type", "answer_type", "unit", "precision")


def _mathvista_row(r: pd.Series, qid: str, base: Path | None) -> dict:
    if r["question_type"] == "multi_choice":  # the gold is the option TEXT
        choices = _choices(r["choices"])
        if not choices:
            raise BadRow("multi_choice question without choices")
        answer = _gold_letter(r["answer"], choices, by_text=True)
    else:
        choices, answer = None, answer_text(r["answer"])
    return _row(qid, format_choices(question_text(r["question"]), choices), answer, choices,
                _first_image(r, base), **_scoring_fields(r))


def _scoring_fields(r: pd.Series) -> dict:
    """MathVista's per-question scoring fields, None when absent: the verifier rounds a
    float answer to `precision` (a number, though JSON copies carry it as text)."""
    fields = {c: None if c not in r or is_missing(r[c]) else r[c] for c in SCORING_FIELDS}
    if fields["precision"] is not None:
        try:
            fields["precision"] = float(fields["precision"])
        except (TypeError, ValueError) as exc:
            raise BadRow(f"precision {fields['precision']!r} is not a number") from exc
    return fields


def normalize_mathvista(raw: pd.DataFrame, base: Path | None = None,
                        level_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    require_columns(raw, ("pid", "question", "choices", "answer", "question_type"), "MathVista")
    table, skipped = _normalize(raw, "mathvista", "pid", _mathvista_row, base, level_column)
    for c in SCORING_FIELDS if len(table) else ():  # None when absent, not pandas' NaN
        table[c] = table[c].astype(object).where(table[c].notna(), None)
    return table, skipped


def _mathverse_row(r: pd.Series, qid: str, base: Path | None) -> dict:
    """`question` is what the model sees (options already inside; empty for Vision Only,
    where the whole problem is in the image). `question_for_eval` is the full text for a
    judge and must not be shown to the model."""
    text = "" if is_missing(r["question"]) else str(r["question"]).strip()
    choices = None
    if r["question_type"] == "multi-choice":
        choices = parse_options(text)
        if choices is None and text and r.get("problem_version") != "Vision Only":
            raise BadRow("multiple-choice options not found in the question text")
        answer = _gold_letter(r["answer"], choices)
    else:
        answer = answer_text(r["answer"])
    return _row(qid, text or "Answer the question shown in the image.", answer, choices,
                _images(r, ["image"], base),
                **_extras(r, ("problem_index", "problem_version", "question_type",
                              "question_for_eval")))


def normalize_mathverse(raw: pd.DataFrame, base: Path | None = None,
                        level_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    require_columns(raw, ("sample_index", "question", "answer", "question_type"), "MathVerse")
    return _normalize(raw, "mathverse", "sample_index", _mathverse_row, base, level_column)


def _mmmu_row(r: pd.Series, qid: str, base: Path | None) -> dict:
    """Options are a string holding a Python list; images are image_1..image_7 in tag order."""
    choices = _choices(r["options"])
    multi = r.get("question_type", "multiple-choice") == "multiple-choice"
    answer = _gold_letter(r["answer"], choices) if multi else answer_text(r["answer"])
    question = format_choices(question_text(r["question"]), choices if multi else None)
    present = [f"image_{k}" for k in range(1, 8)
               if f"image_{k}" in r and not is_missing(r[f"image_{k}"])]
    absent = {f"image_{k}" for k in map(int, _IMAGE_TAG.findall(question))} - set(present)
    if absent:
        raise BadRow(f"text refers to {sorted(absent)} but they are empty")
    return _row(qid, question, answer, choices if multi else None, _images(r, present, base),
                **_extras(r, ("question_type", "subfield", "topic_difficulty")))


def normalize_mmmu(raw: pd.DataFrame, base: Path | None = None,
                   level_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    require_columns(raw, ("id", "question", "options", "answer"), "MMMU")
    return _normalize(raw, "mmmu", "id", _mmmu_row, base, level_column)


def _mmstar_row(r: pd.Series, qid: str, base: Path | None) -> dict:
    """The options are inside the question text (shown as is); `choices` parses them out."""
    question = question_text(r["question"])
    choices = parse_options(question)
    if choices is None:
        raise BadRow("options not found in the question text")
    return _row(qid, question, _gold_letter(r["answer"], choices), choices,
                _images(r, ["image"], base), **_extras(r, ("category", "l2_category")))


def normalize_mmstar(raw: pd.DataFrame, base: Path | None = None,
                     level_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    require_columns(raw, ("index", "question", "answer", "image"), "MMStar")
    return _normalize(raw, "mmstar", "index", _mmstar_row, base, level_column)


Normalizer = Callable[[pd.DataFrame, "Path | None", "str | None"],
                      tuple[pd.DataFrame, pd.DataFrame]]
NORMALIZERS: dict[str, tuple[Normalizer, str]] = {  # name -> (normalizer, default split)
    "mathvision": (normalize_mathvision, "test"),
    "mathvista": (normalize_mathvista, "testmini"),
    "mathverse": (normalize_mathverse, "testmini"),
    "mmmu": (normalize_mmmu, "validation"),
    "mmstar": (normalize_mmstar, "val"),
}


# --- the paper's difficulty levels ----------------------------------------------------------

def _level(value: Any) -> int | None:
    m = _LEVEL.fullmatch(str(value).strip())
    return int(m.group(1)) if m else None


def _row_level(value: Any, column: str) -> int:
    if is_missing(value):
        raise BadRow(f"no level in column '{column}'")
    if _level(value) is None:
        raise BadRow(f"level {value!r} in column '{column}' is not 1-5 / L1-L5")
    return _level(value)


def _holds_levels(values: pd.Series) -> bool:
    present = [v for v in values if not is_missing(v)]
    return bool(present) and all(_level(v) is not None for v in present)


def detect_level_column(raw: pd.DataFrame, exclude: tuple[str, ...] = ()) -> str | None:
    """The one column named like a level whose values are 1-5 or L1-L5 (a missing value
    only skips its row); None if no column is named so."""
    named = [c for c in raw.columns if str(c).lower().replace(" ", "_") in LEVEL_NAMES
             and c not in exclude]
    valid = [c for c in named if _holds_levels(raw[c])]
    if len(valid) > 1:
        raise ArtifactError(f"several level columns {valid}: pass level_column= to pick one")
    if named and not valid:
        raise ArtifactError(f"level-like column(s) {named} hold values other than 1-5 / L1-L5 "
                            "(pass level_column= or level_column=None)")
    return valid[0] if valid else None


def level_column_for(raw: pd.DataFrame, benchmark: str, level_column: str | None = "auto",
                     required: bool = False) -> str | None:
    """The raw column holding the paper's level, or None for no level.

    level_column: "auto" detects (skipping MathVision's own `level`), None adds none, a name
    uses that column. With `required`, finding none is an error listing the columns.
    """
    if level_column is None:
        return None
    exclude = NOT_PAPER_LEVEL.get(benchmark, ())
    column = detect_level_column(raw, exclude) if level_column == "auto" else level_column
    if column is not None and column in raw.columns:
        return column
    if column is None and not required:
        return None
    trap = (" (MathVision's own `level` is the dataset's difficulty, not the paper's; "
            "pass level_column='level' only if this copy replaced it)") if exclude else ""
    raise ArtifactError(f"{benchmark}: no level column {column or LEVEL_NAMES!r}; "
                        f"have {list(raw.columns)}{trap}")


def load_named_benchmark(name: str, source: str | Path, split: str | None = None, *,
                         level_column: str | None = "auto",
                         max_skipped_share: float = 0.02, limits: Limits = Limits()) -> Loaded:
    """Benchmark `name` from a local copy or hub id: (normalized table, upstream id, skipped).

    Bad rows (an answer that is no option or matches two, no answer, a missing image,
    unparseable options, a repeated id, no level in a level copy) are skipped and listed
    in `skipped`; more than `max_skipped_share` of the rows skipped is an error. A source
    whose name contains `_with_difficulty_level` (the paper's copies) must yield a level.
    """
    if name not in NORMALIZERS:
        raise ArtifactError(f"unknown benchmark '{name}'; known: {sorted(NORMALIZERS)}")
    normalize, default_split = NORMALIZERS[name]
    raw, base, source_id = read_source(source, split or default_split)
    raw = raw.reset_index(drop=True)
    column = level_column_for(raw, name, level_column,
                              required="_with_difficulty_level" in str(source))
    table, skipped = normalize(raw, base, column)
    table, skipped = within_limits(table, skipped, name, limits)
    check_skipped(name, table, skipped, len(raw), source, max_skipped_share)
    return Loaded(table, f"{name}:{source_id}", skipped)
