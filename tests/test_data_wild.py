"""Loaders on real-looking files with bad rows: one reader, options in the text, skipped rows."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from PIL import Image

from synergy import data, sources, trace_sets
from synergy.runs import ArtifactError
from synergy.verify import is_correct


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
    path.write_text('{"question": "q", "solution": 3.10, "deepseek_thinking_trajectory": "t", '
                    '"deepseek_attempt": "3.10"}\n')
    table = trace_sets.load_s1(path).table
    assert table["answer"].tolist() == ["3.10"]


def test_clear_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"missing\.jsonl: no such file"):
        sources.read_table(tmp_path / "missing.jsonl")
    (tmp_path / "t.csv").write_text("qid,question,answer\n1,q,3\n")
    with pytest.raises(ArtifactError, match=r"t\.csv: unsupported format \(use \.parquet"):
        sources.read_table(tmp_path / "t.csv")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ArtifactError, match=r"bad\.parquet: unreadable"):
        sources.read_table(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"qid": 1}\n{"qid": 2, "quest\n')
    with pytest.raises(ArtifactError, match=r"bad\.jsonl: unreadable \(line 2: "):
        sources.read_table(tmp_path / "bad.jsonl")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match=r"list\.json: unreadable \(expected records"):
        sources.read_table(tmp_path / "list.json")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ArtifactError, match=r"empty\.jsonl: the table has no rows"):
        data.load_table(tmp_path / "empty.jsonl")
    with pytest.raises(ArtifactError, match=r"gone\.parquet: no such file or folder"):
        sources.read_source(f"{tmp_path.name}/gone.parquet")  # a relative path, not a hub id
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"qid": ["1"]}).save_to_disk(str(saved))
    for arrow in saved.glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    with pytest.raises(ArtifactError, match=r"saved: unreadable save_to_disk folder"):
        sources.read_source(saved)


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


# --- benchmarks: good rows kept, bad rows skipped with reasons ------------------------------

IMG = Image.new("RGB", (4, 4), "red")


def write_png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    IMG.save(path)
    return str(path)


def to_parquet(columns: dict, path: Path, features: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = datasets.Features(features) if features else None
    datasets.Dataset.from_dict(columns, features=feats).to_parquet(str(path))
    return path


def skipped_of(skipped: pd.DataFrame) -> list[tuple[str, str]]:
    return [(q, r.split(" (")[0]) for q, r in zip(skipped["qid"], skipped["reason"])]


def test_mathvision_paper_copy_with_bad_rows(tmp_path):
    """The paper's parquet + unzipped images, with a level column beside MathVision's own."""
    root = tmp_path / "MathVision_with_difficulty_level"
    for k in ("1", "2", "3", "5", "6", "7"):
        write_png(root / "images" / f"{k}.jpg")
    path = to_parquet({
        "id": ["1", "2", "3", "4", "5", "6", "1", "7"],
        "question": ["How many? <image1>", "Length? <image1>", "Which? <image1>", "Which?",
                     "How many?", "Pick.", "How many? <image1>", "Area?"],
        "options": [["3", "4", "5"], [], list("ABCDE"), ["3", "4"], ["1", "2"], ["1", "2", "3"],
                    ["3", "4", "5"], []],
        "image": [f"images/{k}.jpg" for k in ("1", "2", "3", "4", "5", "6", "1", "7")],
        "answer": ["B", "3.10", "C", "A", None, "F", "B", "12"],
        "level": [1, 2, 3, 4, 5, 1, 1, 2],  # the dataset's own
        "difficulty_level": [1, 2, 3, 4, 5, 1, 1, None],  # the paper's
    }, root / "test.parquet")
    df, upstream, skipped = data.load_named_benchmark("mathvision", path, max_skipped_share=0.7)
    assert df["qid"].tolist() == ["1", "2", "3"]
    assert df["answer"].tolist() == ["B", "3.10", "C"] and df["level"].tolist() == [1, 2, 3]
    assert df["mathvision_level"].tolist() == [1, 2, 3]
    assert list(skipped.columns) == ["benchmark", "qid", "reason"]
    assert set(skipped["benchmark"]) == {"mathvision"}
    assert skipped_of(skipped) == [
        ("4", "image 'images/4.jpg' not found"), ("5", "no answer"),
        ("6", "multiple-choice answer 'F' is not a letter of the choices ['1', '2', '3']"),
        ("1", "duplicate id"), ("7", "no level in column 'difficulty_level'")]
    with pytest.raises(ArtifactError, match=r"^mathvision: 5 of 8 rows skipped \(62\.5%\), above "
                                            r"max_skipped_share=2\.0%; first reasons: 4: image"):
        data.load_named_benchmark("mathvision", path)


def test_mathvista_annot_json_with_bad_rows(tmp_path):
    """annot_testmini.json: records keyed by pid; answers are option TEXT for multi_choice."""
    for k in range(1, 9):
        if k != 7:
            write_png(tmp_path / "images" / f"{k}.jpg")

    def row(pid, question_type, answer, choices=None, **extra):
        return {"pid": pid, "question": f"Question {pid}?", "image": f"images/{pid}.jpg",
                "choices": choices, "unit": None, "precision": None, "answer": answer,
                "question_type": question_type, "answer_type": "text", "metadata": {},
                "query": "Hint: ...", **extra}

    annot = {r["pid"]: r for r in [
        row("1", "multi_choice", "dog", ["cat", "dog", "bird"]),
        row("2", "free_form", "3.10", unit="cm", precision=2.0, answer_type="float"),
        row("3", "free_form", "007", answer_type="integer"),
        row("4", "multi_choice", "3", ["3", "3", "4"]),
        row("5", "multi_choice", "fish", ["cat", "dog"]),
        row("6", "free_form", None),
        row("7", "free_form", "1"),
        row("8", "multi_choice", "dog", None)]}
    path = tmp_path / "annot_testmini.json"
    # As the file writes them: 3.10 and 2.0 are JSON numbers.
    path.write_text(json.dumps(annot).replace('"3.10"', "3.10"))
    df, _, skipped = data.load_named_benchmark("mathvista", path, max_skipped_share=0.7)
    assert df["qid"].tolist() == ["1", "2", "3"]
    assert df["answer"].tolist() == ["B", "3.10", "007"]
    assert df["precision"].tolist() == [None, 2.0, None]
    assert df["unit"].tolist() == [None, "cm", None]
    assert df["answer_type"].tolist() == ["text", "float", "integer"]
    assert skipped_of(skipped) == [
        ("4", "answer '3' matches 2 of the choices ['3', '3', '4']; need exactly one"),
        ("5", "answer 'fish' matches 0 of the choices ['cat', 'dog']; need exactly one"),
        ("6", "no answer"), ("7", "image 'images/7.jpg' not found"),
        ("8", "multi_choice question without choices")]


def test_mathverse_parquet_with_bad_rows(tmp_path):
    """testmini.parquet with image paths (the paper's copy unzips images beside it)."""
    for k in ("1", "2", "4", "5", "6"):
        write_png(tmp_path / "images" / f"{k}.png")
    path = to_parquet({
        "sample_index": ["1", "2", "3", "4", "5", "6", "1", "8"],
        "problem_index": ["1", "1", "2", "3", "4", "5", "1", "6"],
        "problem_version": ["Text Dominant", "Vision Only", "Text Only", "Text Lite",
                            "Text Dominant", "Text Dominant", "Text Dominant", "Vision Intensive"],
        "question": ["Find x.\nChoices:\nA:1\nB:2", "", "Find y.", "Find x in the figure.",
                     "Pick.\nChoices:\nA:1\nB:2", "Find z.", "Find x.\nChoices:\nA:1\nB:2",
                     "Find w."],
        "image": ["images/1.png", "images/2.png", "", "images/4.png", "images/5.png",
                  "images/6.png", "images/1.png", "images/8.png"],
        "answer": ["B", "B", "1e3", "A", "C", "", "B", "2"],
        "question_type": ["multi-choice", "multi-choice", "free-form", "multi-choice",
                          "multi-choice", "free-form", "multi-choice", "free-form"],
        "question_for_eval": ["q"] * 8,
    }, tmp_path / "testmini.parquet")
    df, _, skipped = data.load_named_benchmark("mathverse", path, max_skipped_share=0.7)
    assert df["qid"].tolist() == ["1", "2", "3"]
    assert df["answer"].tolist() == ["B", "B", "1e3"]
    assert df["choices"].tolist() == [["1", "2"], None, None]
    assert df["question"][1] == "Answer the question shown in the image."
    assert [len(i) for i in df["images"]] == [1, 1, 0]
    assert skipped_of(skipped) == [
        ("4", "multiple-choice options not found in the question text"),
        ("5", "multiple-choice answer 'C' is not a letter of the choices ['1', '2']"),
        ("6", "no answer"), ("1", "duplicate id"), ("8", "image 'images/8.png' not found")]
    # Scoring by letter or by option text works with the parsed options.
    assert is_correct("<think>x</think> \\boxed{2}", df["answer"][0], df["choices"][0])
    assert is_correct("<think>x</think> \\boxed{B}", df["answer"][0], df["choices"][0])
    assert not is_correct("<think>x</think> \\boxed{1}", df["answer"][0], df["choices"][0])


def test_mathverse_answer_written_as_one_options_text_gets_its_letter(tmp_path):
    """The real testmini writes some golds as the option's text ('090^\\circ T', 'False'):
    the one option with that text (as written, or up to space, case, `$` and a closing
    period) gives the letter; text matching several options, or none, is skipped."""
    path = to_parquet({
        "sample_index": ["1", "2", "3", "4", "5"],
        "question": ["Bearing?\nChoices:\nA:270^\\circ T\nB:090^\\circ T",
                     "True?\nChoices:\nA:True\nB:False",
                     "Which?\n(A) $x$ (B) $y$.",
                     "Which?\n(A) yes (B) Yes",
                     "Which?\n(A) 1 (B) 2"],
        "image": [""] * 5,
        "answer": ["090^\\circ T", "False", " y. ", "YES", "3"],
        "question_type": ["multi-choice"] * 5,
    }, tmp_path / "testmini.parquet")
    df, _, skipped = data.load_named_benchmark("mathverse", path, max_skipped_share=0.5)
    assert df["qid"].tolist() == ["1", "2", "3"] and df["answer"].tolist() == ["B", "B", "B"]
    assert skipped_of(skipped) == [
        ("4", "answer 'YES' matches 2 of the choices ['yes', 'Yes']; need exactly one"),
        ("5", "multiple-choice answer '3' is not a letter of the choices ['1', '2']")]


@pytest.mark.parametrize("answer, choices, key", [
    ("False", ["True", "False"], "B"),
    ("  $\\frac{1}{2}$. ", ["1", "\\frac{1}{2}"], "B"),
    ("the  Circle", ["The circle", "A square"], "A"),
    ("Yes", ["Yes", "yes"], "A"),  # as written first: one option matches exactly
    ("YES", ["Yes", "yes"], None),  # two once normalised
    ("3", ["1", "2"], None), ("A", None, None),
])
def test_option_key(answer, choices, key):
    assert data.option_key(answer, choices) == key


MMMU_FEATURES = {"id": datasets.Value("string"), "question": datasets.Value("string"),
                 "options": datasets.Value("string"), "answer": datasets.Value("string"),
                 "question_type": datasets.Value("string"),
                 **{f"image_{k}": datasets.Image() for k in range(1, 3)}}


def test_mmmu_subject_folder_with_bad_rows(tmp_path):
    rows = [  # id, question, options, answer, type, images
        ("validation_Math_1", "<image 1> Which?", "['1', '2', '3']", "B", "multiple-choice", 1),
        ("validation_Math_2", "<image 1> Value?", "[]", "007", "open", 1),
        ("validation_Math_3", "<image 1> Which?", "['1', '2'", "A", "multiple-choice", 1),
        ("validation_Math_4", "<image 1> Which?", "['1', '2', '3']", "E", "multiple-choice", 1),
        ("validation_Math_5", "<image 1> vs <image 2>?", "['a', 'b']", "A",
         "multiple-choice", 1),
        ("validation_Math_6", "<image 1> Value?", "[]", None, "open", 1),
    ]
    cols = dict(zip(("id", "question", "options", "answer", "question_type"),
                    map(list, zip(*[r[:5] for r in rows]))))
    cols |= {"image_1": [IMG] * len(rows), "image_2": [None] * len(rows)}
    root = tmp_path / "MMMU"
    to_parquet(cols, root / "Math" / "validation-00000-of-00001.parquet", MMMU_FEATURES)
    df, _, skipped = data.load_named_benchmark("mmmu", root, max_skipped_share=0.7)
    assert df["qid"].tolist() == ["validation_Math_1", "validation_Math_2"]
    assert df["answer"].tolist() == ["B", "007"] and df["choices"][0] == ["1", "2", "3"]
    assert skipped_of(skipped) == [
        ("validation_Math_3", "options \"['1', '2'\" is not a list"),
        ("validation_Math_4",
         "multiple-choice answer 'E' is not a letter of the choices ['1', '2', '3']"),
        ("validation_Math_5", "text refers to ['image_2'] but they are empty"),
        ("validation_Math_6", "no answer")]


def test_mmstar_parquet_with_bad_rows(tmp_path):
    path = to_parquet({
        "index": [0, 1, 2, 3, 4, 0],
        "question": ["Color?\nOptions: A: red, B: blue",
                     "Count?\nOptions: A: 1, B: 2, C: 3, D: 4", "What is shown?",
                     "Count?\nOptions: A: 1, B: 2, C: 3, D: 4", "Color?\nOptions: A: red, B: blue",
                     "Shape?\nOptions: A: round, B: square"],
        "image": [IMG] * 6, "answer": ["A", "D", "A", "E", None, "B"],
        "category": ["x"] * 6, "l2_category": ["y"] * 6, "meta_info": [{"source": "s"}] * 6,
    }, tmp_path / "mmstar.parquet")
    df, _, skipped = data.load_named_benchmark("mmstar", path, max_skipped_share=0.7)
    assert df["qid"].tolist() == ["0", "1"] and df["answer"].tolist() == ["A", "D"]
    assert df["choices"].tolist() == [["red", "blue"], ["1", "2", "3", "4"]]
    assert df["question"][0] == "Color?\nOptions: A: red, B: blue"  # shown as written
    assert skipped_of(skipped) == [
        ("2", "options not found in the question text"),
        ("3", "multiple-choice answer 'E' is not a letter of the choices ['1', '2', '3', '4']"),
        ("4", "no answer"), ("0", "duplicate id")]
    assert is_correct("<think>x</think> \\boxed{blue}", "B", df["choices"][0])
    assert is_correct("<think>x</think> \\boxed{red}", df["answer"][0], df["choices"][0])


def test_a_source_without_good_rows_names_the_file(tmp_path):
    path = to_parquet({"index": [0, 1], "question": ["What?", "Why?"], "image": [IMG, IMG],
                       "answer": ["A", "B"]}, tmp_path / "mmstar.parquet")
    with pytest.raises(ArtifactError, match=r"mmstar\.parquet: no good mmstar rows \(2 of 2 "
                                            r"skipped: 0: options not found"):
        data.load_named_benchmark("mmstar", path, max_skipped_share=1.0)


def test_hub_id_offline_says_to_use_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for load, hub_id in ((lambda s: data.load_named_benchmark("mathvista", s), "AI4Math/MathVista"),
                         (trace_sets.load_mm_eureka, "FanqingM/MM-Eureka-Dataset"),
                         (trace_sets.load_eureka_distill, "JierunChen/Eureka-Distill")):
        with pytest.raises(ArtifactError, match=f"{hub_id}: could not load.*Hub access is "
                                                "needed.*pass a local copy"):
            load(hub_id)


# --- trace sets and RL query sets: same rule ----------------------------------------------

def test_s1_bad_rows_skipped(tmp_path):
    rows = [{"question": "1+1?", "solution": "2", "deepseek_thinking_trajectory": "t",
             "deepseek_attempt": "\\boxed{2}"},
            {"question": "2+2?", "solution": "4", "deepseek_thinking_trajectory": None,
             "deepseek_attempt": "\\boxed{4}"},
            {"question": "3+3?", "solution": "", "deepseek_thinking_trajectory": "t",
             "deepseek_attempt": "\\boxed{6}"}]
    path = write_jsonl(tmp_path / "s1k11.jsonl", rows)
    table, upstream, skipped = trace_sets.load_s1(path, max_skipped_share=0.7)
    assert table["qid"].tolist() == ["s1K-1.1-0000"] and upstream.startswith("file:")
    assert skipped_of(skipped) == [("s1K-1.1-0001", "no deepseek trace"),
                                   ("s1K-1.1-0002", "no answer")]
    assert set(skipped["benchmark"]) == {"s1K-1.1"}
    with pytest.raises(ArtifactError, match=r"^s1K-1\.1: 2 of 3 rows skipped \(66\.7%\)"):
        trace_sets.load_s1(path)


def eureka_message(text: str, images=(), reply: str | None = None) -> str:
    content = [{"type": "image", "image": f"file://{i}"} for i in images]
    turns = [{"role": "user", "content": content + [{"type": "text", "text": text}]}]
    if reply is not None:
        turns.append({"role": "assistant", "content": reply})
    return json.dumps(turns)


def mm_eureka_rows() -> list[dict]:
    return [
        {"id": 1, "message": eureka_message("Find the area.", ["imgs/a.png"]), "answer": "12"},
        {"id": 2, "message": eureka_message("Find x."), "answer": "3.10"},
        {"id": 3, "message": "[{not json", "answer": "1"},
        {"id": 4, "message": eureka_message("Find y.", ["imgs/missing.png"]), "answer": "1"},
        {"id": 5, "message": eureka_message("Find z."), "answer": None},
        {"id": 1, "message": eureka_message("Again."), "answer": "2"},
        {"id": 6, "message": json.dumps([{"role": "user", "content": "a"},
                                         {"role": "user", "content": "b"}]), "answer": "1"},
    ]


MM_EUREKA_SKIPPED = [("3", "`message` is not JSON"), ("4", "image 'file://imgs/missing.png' "
                     "not found"), ("5", "no answer"), ("1", "duplicate id"),
                     ("6", "expected one user turn, found 2")]


@pytest.mark.parametrize("layout", ["jsonl", "parquet", "save_to_disk"])
def test_mm_eureka_any_local_copy_with_bad_rows(tmp_path, layout):
    write_png(tmp_path / "imgs" / "a.png")
    rows = mm_eureka_rows()
    if layout == "jsonl":
        source = write_jsonl(tmp_path / "eureka.jsonl", rows)
    elif layout == "parquet":
        source = tmp_path / "eureka.parquet"
        pd.DataFrame(rows).astype({"answer": "string"}).to_parquet(source)
    else:
        source = tmp_path
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
            str(source))
    table, _, skipped = trace_sets.load_mm_eureka(source, prompt_suffix="Think.",
                                                  max_skipped_share=0.8)
    assert table["qid"].tolist() == ["1", "2"] and table["answer"].tolist() == ["12", "3.10"]
    assert table["messages"][0] == [{"role": "user", "content": "Find the area. Think."}]
    assert table["images"][0] == [str(tmp_path / "imgs" / "a.png")] and table["images"][1] == []
    assert skipped_of(skipped) == MM_EUREKA_SKIPPED


def test_eureka_distill_chat_rows(tmp_path):
    write_png(tmp_path / "imgs" / "a.png")
    trace = "<think>\nThe area is 3 x 4.\n</think>\n\n\\boxed{12}"
    rows = [
        {"id": "e1", "message": eureka_message("Find the area.", ["imgs/a.png"], trace),
         "answer": "12"},
        {"id": "e2", "message": eureka_message("Find x.", [], "<think>x is 7</think> \\boxed{007}"),
         "answer": "007"},
        {"id": "e3", "message": eureka_message("Find y.", [], "\\boxed{2}"), "answer": "2"},
        {"id": "e4", "message": eureka_message("Find z."), "answer": "1"},
        {"id": "e5", "message": json.dumps(json.loads(eureka_message("Find w.", [], trace))
                                           + [{"role": "assistant", "content": trace}]),
         "answer": "12"},
        {"id": "e6", "message": eureka_message("Find v.", [], "<think>  </think> 3"),
         "answer": "3"},
    ]
    path = write_jsonl(tmp_path / "eureka_distill.jsonl", rows)
    table, upstream, skipped = trace_sets.load_eureka_distill(path, prompt_suffix="Think.",
                                                              max_skipped_share=0.7)
    assert list(table.columns) == ["qid", "question", "answer", "messages", "images", "source"]
    assert table["qid"].tolist() == ["e1", "e2"] and table["answer"].tolist() == ["12", "007"]
    assert table["messages"][0] == [{"role": "user", "content": "Find the area. Think."},
                                    {"role": "assistant", "content": trace}]
    assert table["images"][0] == [str(tmp_path / "imgs" / "a.png")]
    assert set(table["source"]) == {"eureka-distill"} and upstream.startswith("file:")
    no_trace = "the assistant turn has no <think> ... </think> trace"
    assert skipped_of(skipped) == [("e3", no_trace), ("e4", "expected one assistant turn, found 0"),
                                   ("e5", "expected one assistant turn, found 2"),
                                   ("e6", no_trace)]


def test_eureka_distill_messages_column_with_images_column(tmp_path):
    """A TRL-style copy: a `messages` list with {"type": "image"} placeholders, an `images`
    column, no `id` (each row gets its content's id)."""
    trace = "<think>3 x 4</think> \\boxed{12}"
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Area?"}]}
    reply = {"role": "assistant", "content": [{"type": "text", "text": trace}]}
    rows = {"messages": [[user, reply]] * 2,
            "images": [[IMG], []], "answer": ["12", "12"]}
    path = to_parquet(rows, tmp_path / "train.parquet")
    table, _, skipped = trace_sets.load_eureka_distill(path, max_skipped_share=0.5)
    qids = [trace_sets.content_id(r, "eureka-distill") for _, r in pd.read_parquet(path).iterrows()]
    assert table["qid"].tolist() == qids[:1] and qids[0] != qids[1]
    assert isinstance(table["images"][0][0], Image.Image)
    assert table["messages"][0][1] == {"role": "assistant", "content": trace}
    assert skipped_of(skipped) == [(qids[1], "1 image placeholder(s) but 0 stored image(s)")]


def test_eureka_distill_without_id_gets_a_stable_content_id(tmp_path):
    """The same row gets the same id in every run and file order: a hash of its question
    text and image references; a repeated question with the same images is a duplicate."""
    write_png(tmp_path / "imgs" / "a.png")
    trace = "<think>3 x 4</think> \\boxed{12}"
    rows = [{"message": eureka_message("Area?", ["imgs/a.png"], trace), "answer": "12"},
            {"message": eureka_message("Area?", [], trace), "answer": "12"},
            {"message": eureka_message("Width?", ["imgs/a.png"], trace), "answer": "3"},
            {"message": eureka_message("Area?", ["imgs/a.png"], "<think>again</think> 12"),
             "answer": "12"},
            {"message": "[{not json", "answer": "1"}]
    first = trace_sets.load_eureka_distill(write_jsonl(tmp_path / "a.jsonl", rows),
                                           max_skipped_share=0.5)
    again = trace_sets.load_eureka_distill(write_jsonl(tmp_path / "b.jsonl", rows[2::-1]),
                                           max_skipped_share=0.5)
    ids = first.table["qid"].tolist()
    assert len(set(ids)) == 3 and all(q.startswith("eureka-distill-") for q in ids)
    assert sorted(again.table["qid"]) == sorted(ids)
    assert dict(zip(again.table["qid"], again.table["question"])) == dict(
        zip(first.table["qid"], first.table["question"]))
    assert skipped_of(first.skipped) == [(ids[0], "duplicate id"),
                                         ("eureka-distill-row-4", "`message` is not JSON")]
    some = [{"id": "e1", **rows[0]}, {"id": None, **rows[2]}]  # an id column with a gap
    table = trace_sets.load_eureka_distill(write_jsonl(tmp_path / "c.jsonl", some)).table
    assert table["qid"].tolist() == ["e1", ids[2]]


def test_mm_eureka_absolute_image_paths_are_rebased_onto_the_local_folder(tmp_path):
    """MM-Eureka's rows name images by absolute `file:///` paths on the machine that built
    the set; here they are found under the file's folder by their trailing parts."""
    write_png(tmp_path / "MM-Eureka" / "images" / "geo" / "1.png")
    write_png(tmp_path / "MM-Eureka" / "2.png")
    built = "/mnt/builder/datasets/MM-Eureka"
    rows = [{"id": 1, "message": eureka_message("A?", [f"{built}/images/geo/1.png"]),
             "answer": "1"},
            {"id": 2, "message": eureka_message("B?", [f"{built}/elsewhere/2.png"]),
             "answer": "2"},
            {"id": 3, "message": eureka_message("C?", [f"{built}/images/geo/3.png"]),
             "answer": "3"},
            {"id": 4, "message": eureka_message("D?", [str(tmp_path / "MM-Eureka" / "2.png")]),
             "answer": "4"}]
    source = write_jsonl(tmp_path / "MM-Eureka" / "train.jsonl", rows)
    table, _, skipped = trace_sets.load_mm_eureka(source, max_skipped_share=0.5)
    here = tmp_path / "MM-Eureka"
    assert table["qid"].tolist() == ["1", "2", "4"]
    assert table["images"].tolist() == [[str(here / "images" / "geo" / "1.png")],
                                        [str(here / "2.png")], [str(here / "2.png")]]
    assert skipped["qid"].tolist() == ["3"] and skipped["reason"][0].startswith(
        f"image 'file://{built}/images/geo/3.png' not found (not at {built}/images/geo/3.png, "
        f"nor under {here} by its trailing path parts;")
