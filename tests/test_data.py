"""Benchmark normalizers, level detection and trace loaders on tiny fakes in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image
from synergy import data, trace_sets
from synergy.files import ArtifactError
from synergy.verify import is_correct

IMG = Image.new("RGB", (4, 4), "red")


def write_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    IMG.save(path)
    return path


def to_parquet(columns: dict, path: Path, features: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = datasets.Features(features) if features else None
    datasets.Dataset.from_dict(columns, features=feats).to_parquet(str(path))
    return path


def mathvision(tmp_path: Path, **extra) -> Path:
    cols = {"id": ["1", "2", "3"],
            "question": ["Which shape? <image1>", "How many? <image1>", "Area? <image1>"],
            "options": [["A", "B", "C", "D", "E"], ["3", "4", "5"], []],
            "image": ["images/1.jpg", "images/2.jpg", "images/3.jpg"],
            "decoded_image": [IMG, IMG, IMG], "answer": ["C", "B", "12"],
            "solution": ["", "", ""], "level": [1, 3, 5], "subject": ["a", "b", "c"], **extra}
    return to_parquet(cols, tmp_path / "mathvision.parquet")


def test_mathvision_letters_choices_images(tmp_path):
    df, upstream, _ = data.load_named_benchmark("mathvision", mathvision(tmp_path))
    assert list(df.columns[:6]) == ["qid", "question", "answer", "choices", "images", "benchmark"]
    assert df["answer"].tolist() == ["C", "B", "12"]
    assert df["choices"][1] == ["3", "4", "5"] and df["choices"][2] is None
    assert df["question"][0].endswith("Options: A, B, C, D, E")  # options drawn in the image
    assert "\nA. 3\nB. 4\nC. 5" in df["question"][1]
    assert all(isinstance(ims[0], Image.Image) for ims in df["images"])
    assert df["qid"].is_unique and upstream.startswith("mathvision:file:")


def test_mathvision_own_level_is_not_the_papers(tmp_path):
    df, _, _ = data.load_named_benchmark("mathvision", mathvision(tmp_path))
    assert "level" not in df.columns and df["mathvision_level"].tolist() == [1, 3, 5]
    # A paper copy that only has the dataset's `level` must fail and explain the trap ...
    copy = mathvision(tmp_path / "MathVision_with_difficulty_level")
    with pytest.raises(ArtifactError, match="MathVision's own `level`"):
        data.load_named_benchmark("mathvision", copy)
    # ... unless the caller states that this `level` is the paper's.
    df, _, _ = data.load_named_benchmark("mathvision", copy, level_column="level")
    assert df["level"].tolist() == [1, 3, 5]


def test_level_detected_from_other_column_and_explicit_override(tmp_path):
    path = mathvision(tmp_path, difficulty=["L2", "L4", "L5"], paper=["5", "5", "1"])
    df, _, _ = data.load_named_benchmark("mathvision", path)
    assert df["level"].tolist() == [2, 4, 5]
    df, _, _ = data.load_named_benchmark("mathvision", path, level_column="paper")
    assert df["level"].tolist() == [5, 5, 1]
    with pytest.raises(ArtifactError, match=r"no level column 'nope'; have \[.*'difficulty'"):
        data.load_named_benchmark("mathvision", path, level_column="nope")
    bad = mathvision(tmp_path / "bad", difficulty=["easy", "L4", "L5"])
    with pytest.raises(ArtifactError, match="'difficulty'.*values other than"):
        data.load_named_benchmark("mathvision", bad)


def test_mathvista_answer_text_to_letter(tmp_path):
    write_png(tmp_path / "images" / "1.jpg")
    write_png(tmp_path / "images" / "2.jpg")
    annot = {"1": {"pid": "1", "question": "Which is largest?", "image": "images/1.jpg",
                   "choices": ["cat", "dog", "bird"], "unit": None, "precision": None,
                   "answer": "dog", "question_type": "multi_choice", "answer_type": "text",
                   "metadata": {}, "query": "Hint: ..."},
             "2": {"pid": "2", "question": "Length?", "image": "images/2.jpg", "choices": None,
                   "unit": "cm", "precision": 1.0, "answer": "1.5", "question_type": "free_form",
                   "answer_type": "float", "metadata": {}, "query": "Hint: ...",
                   "difficulty_level": 3}}
    annot["1"]["difficulty_level"] = 1
    path = tmp_path / "annot_testmini.json"
    path.write_text(json.dumps(annot))
    df, _, _ = data.load_named_benchmark("mathvista", path)
    assert df["answer"].tolist() == ["B", "1.5"]
    assert df["choices"][0] == ["cat", "dog", "bird"] and df["choices"][1] is None
    assert df["images"][0] == [str(tmp_path / "images" / "1.jpg")]
    assert df["unit"][1] == "cm" and df["precision"][1] == 1.0 and df["level"].tolist() == [1, 3]
    assert df["unit"][0] is None and df["precision"][0] is None
    assert df["answer_type"].tolist() == ["text", "float"]
    annot["1"]["answer"] = "fish"  # a bad row: skipped, and 1 of 2 is above the threshold
    path.write_text(json.dumps(annot))
    with pytest.raises(ArtifactError, match=r"^mathvista: 1 of 2 rows skipped \(50.0%\).*"
                                            r"1: answer 'fish' matches 0 of the choices"):
        data.load_named_benchmark("mathvista", path)


def test_mathverse_save_to_disk_folder(tmp_path):
    cols = {"sample_index": ["1", "2", "3"], "problem_index": ["1", "1", "2"],
            "problem_version": ["Text Dominant", "Vision Only", "Text Only"],
            "question": ["Find x.\nChoices:\nA:1\nB:2", "", "Find y."],
            "image": [IMG, IMG, None], "answer": ["B", "B", "5"],
            "question_type": ["multi-choice", "multi-choice", "free-form"],
            "question_for_eval": ["Find x. A:1 B:2", "Find x. A:1 B:2", "Find y."]}
    folder = tmp_path / "mathverse"
    datasets.DatasetDict({"testmini": datasets.Dataset.from_dict(cols)}).save_to_disk(str(folder))
    df, _, _ = data.load_named_benchmark("mathverse", folder)
    assert df["answer"].tolist() == ["B", "B", "5"]
    assert df["question"][1] == "Answer the question shown in the image."  # not question_for_eval
    assert [len(i) for i in df["images"]] == [1, 1, 0] and "level" not in df.columns
    with pytest.raises(ArtifactError, match=r"no split 'test'; have \['testmini'\]"):
        data.load_named_benchmark("mathverse", folder, "test")


MMMU_FEATURES = {"id": datasets.Value("string"), "question": datasets.Value("string"),
                 "options": datasets.Value("string"), "answer": datasets.Value("string"),
                 "question_type": datasets.Value("string"),
                 **{f"image_{k}": datasets.Image() for k in range(1, 8)}}


def mmmu_rows(ids, questions, options, answers, types, images):
    return {"id": ids, "question": questions, "options": options, "answer": answers,
            "question_type": types, **{f"image_{k}": [row.get(k) for row in images]
                                       for k in range(1, 8)}}


def test_mmmu_parquet_folder_split_and_images(tmp_path):
    root = tmp_path / "mmmu"
    to_parquet(mmmu_rows(["validation_Math_1", "validation_Math_2"],
                         ["Compare <image 1> and <image 2>.", "Value of x? <image 1>"],
                         ["['left', 'right', \"it's equal\"]", "[]"], ["C", "['3', '3.0']"],
                         ["multiple-choice", "open"], [{1: IMG, 2: IMG}, {1: IMG}]),
               root / "Math" / "validation-00000-of-00001.parquet", MMMU_FEATURES)
    to_parquet(mmmu_rows(["dev_Math_1"], ["Dev <image 1>"], ["['a', 'b']"], ["A"],
                         ["multiple-choice"], [{1: IMG}]),
               root / "Math" / "dev-00000-of-00001.parquet", MMMU_FEATURES)
    df, upstream, _ = data.load_named_benchmark("mmmu", root)
    assert df["qid"].tolist() == ["validation_Math_1", "validation_Math_2"]  # dev left out
    assert df["choices"][0] == ["left", "right", "it's equal"] and df["answer"][0] == "C"
    assert df["question"][0].endswith("\nC. it's equal")
    assert df["choices"][1] is None and df["answer"][1] == "['3', '3.0']"
    assert [len(i) for i in df["images"]] == [2, 1] and upstream.endswith(":validation")
    with pytest.raises(ArtifactError,
                       match=r"no parquet files of split 'test'; found splits \['dev', 'validation'\]"):
        data.load_named_benchmark("mmmu", root, "test")


def test_mmmu_bad_rows_name_the_question(tmp_path):
    path = to_parquet(mmmu_rows(["q1"], ["See <image 2>."], ["['a', 'b']"], ["A"],
                                ["multiple-choice"], [{1: IMG}]), tmp_path / "t.parquet",
                      MMMU_FEATURES)
    with pytest.raises(ArtifactError, match=r"q1: text refers to \['image_2'\]"):
        data.load_named_benchmark("mmmu", path)
    path = to_parquet(mmmu_rows(["q2"], ["Pick."], ["['a', 'b']"], ["C"],
                                ["multiple-choice"], [{1: IMG}]), tmp_path / "u.parquet",
                      MMMU_FEATURES)
    with pytest.raises(ArtifactError, match=r"q2: multiple-choice answer 'C' is not a letter"):
        data.load_named_benchmark("mmmu", path)


def mmstar(path: Path, answers=("A", "D")) -> Path:
    return to_parquet({"index": [0, 1],
                       "question": ["Color?\nOptions: A: red, B: blue", "Count?\nOptions: A: 1, "
                                    "B: 2, C: 3, D: 4"],
                       "image": [IMG, IMG], "answer": list(answers),
                       "category": ["x", "y"], "l2_category": ["x1", "y1"]}, path)


def test_mmstar_options_from_the_text(tmp_path):
    path = mmstar(tmp_path / "mmstar.parquet")
    df, upstream, skipped = data.load_named_benchmark("mmstar", path, "val")
    assert df["qid"].tolist() == ["0", "1"] and df["answer"].tolist() == ["A", "D"]
    assert df["choices"].tolist() == [["red", "blue"], ["1", "2", "3", "4"]]  # from the text
    assert set(df["benchmark"]) == {"mmstar"} and skipped.empty
    assert upstream == f"mmstar:file:{path.resolve()}"
    # Stages save tables with datasets: PIL images convert through from_dict (not from_pandas).
    ds = datasets.Dataset.from_dict(df.to_dict("list"))
    assert isinstance(ds[0]["images"][0], Image.Image)
    with pytest.raises(ArtifactError, match=r"1: multiple-choice answer 'four' is not a letter"):
        data.load_named_benchmark("mmstar", mmstar(tmp_path / "bad.parquet", ("A", "four")))


def test_clear_errors_for_bad_sources(tmp_path):
    with pytest.raises(ArtifactError, match="no such file or folder"):
        data.load_named_benchmark("mmstar", f"{tmp_path}/missing.parquet")
    path = to_parquet({"index": [0], "question": ["q"], "image": [IMG]}, tmp_path / "m.parquet")
    with pytest.raises(ArtifactError, match=r"MMStar: missing column\(s\) \['answer'\]; have "
                                            r"\['index', 'question', 'image'\]"):
        data.load_named_benchmark("mmstar", path)
    with pytest.raises(ArtifactError, match="unknown benchmark 'mathvisio'"):
        data.load_named_benchmark("mathvisio", path)
    twice = mmstar(tmp_path / "two" / "a.parquet")
    mmstar(tmp_path / "two" / "b.parquet")
    with pytest.raises(ArtifactError,
                       match=r"2 of 4 rows skipped.*0: duplicate id.*1: duplicate id"):
        data.load_named_benchmark("mmstar", twice.parent)
    # A hub id offline (HF_DATASETS_OFFLINE=1 in conftest) fails naming the id.
    with pytest.raises(ArtifactError, match="Lin-Chen/MMStar:.*Hub access is needed"):
        data.load_named_benchmark("mmstar", "Lin-Chen/MMStar")


def test_verify_accepts_normalized_letter_gold(tmp_path):
    df, _, _ = data.load_named_benchmark("mathvision", mathvision(tmp_path))
    gold, choices = df["answer"][1], df["choices"][1]  # "B" of ["3", "4", "5"]
    assert is_correct("<think>count</think> \\boxed{B}", gold, choices)
    assert is_correct("<think>count</think> \\boxed{4}", gold, choices)
    assert not is_correct("<think>count</think> \\boxed{C}", gold, choices)


def test_s1_traces(tmp_path):
    path = to_parquet({"question": ["1+1?", "2+2?"], "solution": ["2", "4"],
                       "cot_type": ["math"] * 2, "gemini_thinking_trajectory": ["g1", "g2"],
                       "gemini_attempt": ["\\boxed{2}", "\\boxed{4}"],
                       "deepseek_thinking_trajectory": ["d1", "d2"],
                       "deepseek_attempt": ["\\boxed{2}", "\\boxed{4}"]}, tmp_path / "s11.parquet")
    df = trace_sets.load_s1(path, prompt_suffix=data.PAPER_PROMPT_SUFFIX).table
    assert df["qid"].tolist() == ["s1K-1.1-0000", "s1K-1.1-0001"] and df["answer"][1] == "4"
    user, assistant = df["messages"][0]
    assert user == {"role": "user", "content": f"1+1? {data.PAPER_PROMPT_SUFFIX}"}
    assert assistant == {"role": "assistant", "content": "<think>\nd1\n</think>\n\n\\boxed{2}"}
    assert df["source"][0] == "s1K-1.1/deepseek" and df["images"][0] == []
    gemini = trace_sets.load_s1(path, teacher="gemini").table
    assert gemini["messages"][1][0]["content"] == "2+2?"
    assert gemini["messages"][1][1]["content"].startswith("<think>\ng2\n")
    old = to_parquet({"question": ["1+1?"], "solution": ["2"], "thinking_trajectories": [["t"]],
                      "attempt": ["\\boxed{2}"]}, tmp_path / "s1.parquet")
    assert trace_sets.load_s1(old, teacher="gemini").table["messages"][0][1]["content"].startswith(
        "<think>\nt\n</think>")
    with pytest.raises(ArtifactError, match="Gemini traces only"):
        trace_sets.load_s1(old)


def test_mm_eureka_queries(tmp_path):
    write_png(tmp_path / "imgs" / "a.png")
    absolute = write_png(tmp_path / "elsewhere" / "b.png")
    message = [{"role": "user", "content": [
        {"type": "image", "image": "file://imgs/a.png"},
        {"type": "image", "image": f"file://{absolute}"},
        {"type": "text", "text": "Find the area."}]}]
    lines = [{"id": 7, "message": json.dumps(message), "answer": "12"}]
    path = tmp_path / "eureka.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    df = trace_sets.load_mm_eureka(path, prompt_suffix="Think.").table
    assert df["qid"].tolist() == ["7"] and df["answer"][0] == "12"
    assert df["messages"][0] == [{"role": "user", "content": "Find the area. Think."}]
    assert df["images"][0] == [str(tmp_path / "imgs" / "a.png"), str(absolute)]
    message[0]["content"][0]["image"] = "file://imgs/missing.png"
    path.write_text(json.dumps({"id": 8, "message": json.dumps(message), "answer": "1"}) + "\n")
    with pytest.raises(ArtifactError, match="eureka.jsonl: no good mm-eureka rows .*"
                                            "8: image 'file://imgs/missing.png' not found"):
        trace_sets.load_mm_eureka(path)
