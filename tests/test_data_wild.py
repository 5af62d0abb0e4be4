"""Loaders on real-looking files with bad rows: one reader, options in the text, skipped rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from synergy import data, distill
from synergy.runs import ArtifactError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- one table reader --------------------------------------------------------------------

def test_answers_keep_their_literal_text(tmp_path):
    # JSON numbers 3.10 and 1e3 as the file writes them, and the string "007".
    text = '{"qid": 1, "question": "q", "answer": 3.10}\n' \
           '{"qid": 2, "question": "q", "answer": "007"}\n' \
           '{"qid": 3, "question": "q", "answer": 1e3}\n'
    (tmp_path / "t.jsonl").write_text(text)
    (tmp_path / "t.json").write_text("[" + ",".join(text.strip().splitlines()) + "]")
    pd.DataFrame({"qid": ["1", "2", "3"], "question": ["q"] * 3,
                  "answer": ["3.10", "007", "1e3"]}).to_parquet(tmp_path / "t.parquet")
    for suffix in ("jsonl", "json", "parquet"):
        df = data.load_table(tmp_path / f"t.{suffix}")
        assert df["answer"].tolist() == ["3.10", "007", "1e3"], suffix
        assert df["qid"].tolist() == ["1", "2", "3"], suffix


def test_one_reader_for_traces(tmp_path):
    path = tmp_path / "s1k.jsonl"
    path.write_text('{"question": "q", "deepseek_thinking_trajectory": "t", '
                    '"deepseek_attempt": 3.10}\n')
    table = distill.load_trace_table(str(path), ["question", "deepseek_thinking_trajectory",
                                                 "deepseek_attempt"])
    assert table["answer"].tolist() == ["3.10"]


def test_clear_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"missing\.jsonl: no such file"):
        data.read_table(tmp_path / "missing.jsonl")
    (tmp_path / "t.csv").write_text("qid,question,answer\n1,q,3\n")
    with pytest.raises(ArtifactError, match=r"t\.csv: unsupported format \(use \.parquet"):
        data.read_table(tmp_path / "t.csv")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ArtifactError, match=r"bad\.parquet: unreadable"):
        data.read_table(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"qid": 1}\n{"qid": 2, "quest\n')
    with pytest.raises(ArtifactError, match=r"bad\.jsonl: unreadable \(line 2: "):
        data.read_table(tmp_path / "bad.jsonl")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match=r"list\.json: unreadable \(expected records"):
        data.read_table(tmp_path / "list.json")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ArtifactError, match=r"empty\.jsonl: the table has no rows"):
        data.load_table(tmp_path / "empty.jsonl")
    with pytest.raises(ArtifactError, match=r"gone\.parquet: no such file or folder"):
        data.read_source(f"{tmp_path.name}/gone.parquet")  # a relative path, not a hub id


# --- options written inside the question text ------------------------------------------------

OPTION_LAYOUTS = [
    ("Which is larger?\nChoices: (A) 3 (B) 4 (C) 5", ["3", "4", "5"]),
    ("How many?\nA. 3\nB. 4", ["3", "4"]),
    ("Pick one.\n(A) a cat\n(B) a dog\n(C) a bird", ["a cat", "a dog", "a bird"]),
    ("Color?\nOptions: A: red, B: blue", ["red", "blue"]),
    ("As shown in the figure, AB is parallel to CD, then the degree of angle BOD is ()\n"
     "Choices:\nA:35°\nB:40°\nC:45°\nD:50°", ["35°", "40°", "45°", "50°"]),
    ("Which option describe the object relationship in the image correctly?\nOptions: "
     "A: The suitcase is on the book., B: The suitcase is beneath the cat., "
     "C: The suitcase is beneath the bed.",
     ["The suitcase is on the book.", "The suitcase is beneath the cat.",
      "The suitcase is beneath the bed."]),
    ("Which pair?\nOptions: A: 1, 2, B: 3, 4", ["1, 2", "3, 4"]),
    ("Mr. A. Smith measured a tree.\nA. 3 m\nB. 4 m", ["3 m", "4 m"]),
    ("Choices:\n(A) 3\n(B) 4\nAnswer with the option's letter.", ["3", "4"]),
    ("Which one?\nA) yes\nB) no", ["yes", "no"]),
    ("Options: A. f(A) > 0 B. f(B) < 0", ["f(A) > 0", "f(B) < 0"]),
    ("选择：\nA：3\nB：4", ["3", "4"]),
    ("Answer choices: (A) $\\frac{1}{2}$ (B) $\\sqrt{2}$ (C) $\\pi$ (D) 2 (E) 3",
     ["$\\frac{1}{2}$", "$\\sqrt{2}$", "$\\pi$", "2", "3"]),
]

NOT_OPTIONS = [
    "",
    "A. Smith measured the height of a tree. How tall is it?",
    "Points A, B and C are collinear. Find AB.",
    "The ratio A:B is 2:3. Find A.",
    "Ms. A. Jones met Mr. B. Smith at noon. Who arrived first?",
    "Consider (A) and (B).",
    "If f(A) = 2 and f(B) = 3, find f(A) + f(B).",
    "(A) is the only option",
    "Choices:\nA. 3\nC. 5",
]


@pytest.mark.parametrize(("text", "options"), OPTION_LAYOUTS)
def test_options_parsed_from_question_text(text, options):
    assert data.parse_options(text) == options


@pytest.mark.parametrize("text", NOT_OPTIONS)
def test_text_without_options_is_not_parsed(text):
    assert data.parse_options(text) is None
