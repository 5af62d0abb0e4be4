"""The image world: the start only in the image, its tiny VLM base, and its files in the real
sets' schemas read back by the real loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synergy import data, stages, task, trace_sets, world
from synergy.files import ArtifactError
from synergy.runs import Run, write_manifest
from synergy.verify import is_correct

ROOT = Path(__file__).resolve().parents[1]
SMOKE_VLM = ROOT / "params" / "smoke-vlm.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def image_cfg(root: Path, **changes) -> world.WorldConfig:
    values = {**world.WorldConfig.from_profile(SMOKE_VLM).to_dict(), "output_root": str(root),
              **changes}
    return world.WorldConfig.from_mapping(values, "test")


def test_the_start_is_only_in_the_image():
    qs = task.eval_questions(image_cfg(ROOT))
    frame = task.questions_frame(qs, "image")
    assert all(t.startswith(f"{task.HIDDEN_START} ") and str(q.start) not in t.split()[0]
               for q, t in zip(qs, frame["question"]))
    assert frame["answer"].tolist() == [str(q.answer) for q in qs]
    # Marks: `value` black squares of MARK x MARK pixels; every start looks different.
    images = [np.asarray(task.start_image(v).convert("L")) for v in range(10)]
    assert [int((im < 128).sum()) // task.MARK ** 2 for im in images] == list(range(10))
    assert len({im.tobytes() for im in images}) == 10
    assert [len(x) for x in frame["images"]] == [1] * len(qs)
    with pytest.raises(ValueError, match="hides its start in an image"):
        task.parse_question(frame["question"][0])


def test_a_model_blind_to_the_image_scores_little():
    """The best image-blind model (Bayes on the generator) against one that reads it (1.0)."""
    for profile in (SMOKE_VLM, ROOT / "params" / "tiny.yaml"):
        cfg = world.WorldConfig.from_profile(profile)
        qs = task.eval_questions(cfg)
        one_step = [q for q in qs if q.steps == 1]
        assert task.blind_accuracy(one_step, cfg.max_value) < 0.3
        assert task.blind_accuracy(qs, cfg.max_value) < 0.6
    # By hand: "? +9" may start anywhere in 0..9; from 0 the generator picks among two
    # operators (no "-"), from 1..9 among three, so 0 is likeliest: (1/18) / (1/18 + 9/27).
    q = task.Question(3, (("+", 9),))
    assert task.blind_accuracy([q], 19) == pytest.approx(1 / 7)


def test_task_files_load_through_the_real_loaders(tmp_path):
    cfg = image_cfg(tmp_path)
    files = world.write_task_files(cfg, tmp_path / "task")
    evals = task.eval_questions(cfg)

    bench, _, skipped = data.load_named_benchmark("mathvision", files["mathvision"])
    assert len(bench) == len(evals) and skipped.empty
    assert bench["answer"].tolist() == [str(q.answer) for q in evals]
    assert bench["question"].tolist() == [task.image_text(q) for q in evals]
    assert all(Path(x[0]).name == f"start-{q.start}.png" and Path(x[0]).is_file()
               for x, q in zip(bench["images"], evals))

    queries, _, skipped = trace_sets.load_mm_eureka(files["mm_eureka"])
    assert skipped.empty and len(queries) > 3 * len(evals)
    assert not set(queries["qid"]) & set(bench["qid"])  # training questions are fresh
    assert all(m == [{"role": "user", "content": q}]
               for m, q in zip(queries["messages"], queries["question"]))

    traces, _, skipped = trace_sets.load_eureka_distill(files["eureka_distill"])
    assert skipped.empty and traces["qid"].tolist() == queries["qid"].tolist()
    replies = [m[-1]["content"] for m in traces["messages"]]
    assert all(is_correct(r, a) for r, a in zip(replies, traces["answer"]))
    assert all(len(x) == 1 for x in traces["images"])
    raw = json.loads(files["eureka_distill"].read_text().splitlines()[0])
    assert set(raw) == {"id", "message", "answer"} and isinstance(raw["message"], str)


def test_world_source_is_the_image_worlds_file_or_a_clear_error(tmp_path):
    for kind in ("text", "image"):
        cfg = image_cfg(tmp_path, kind=kind, run_name=kind)
        run = Run.of(cfg)
        write_manifest(run.dir(stages.WORLD), cfg, started="now")
        assert data.world_source("some/file.jsonl", run, "mm_eureka") == "some/file.jsonl"
        with pytest.raises(ArtifactError, match=f"world.kind is 'image' .*'{kind}'"):
            data.world_source("world", run, "mathvision")
        with pytest.raises(ArtifactError, match="no 'mmstar' file"):
            data.world_source("world", run, "mmstar")
    world.write_task_files(cfg, run.dir(stages.WORLD) / world.TASK_FOLDER)
    assert data.world_source("world", run, "eureka_distill").is_file()
    table = data.load_benchmark("mathvision:world", run).table
    assert len(table) == cfg.n_eval_questions


def test_kinds_have_their_own_world_ids_and_check_head_sizes(tmp_path):
    from synergy.config import ConfigError

    text = image_cfg(tmp_path, kind="text")
    assert text.world_id() == image_cfg(tmp_path / "elsewhere", kind="text").world_id()
    assert image_cfg(tmp_path).world_id() != text.world_id()
    with pytest.raises(ConfigError, match="world.hidden_size"):
        image_cfg(tmp_path, hidden_size=48, num_heads=2)  # heads of 24 dimensions


def test_image_base_trains_and_saves_a_vision_language_model(tmp_path):
    import torch
    from synergy import models

    cfg = image_cfg(tmp_path, train_steps=2, batch_size=4, warmup_steps=1, log_every=1)
    path, reused = world.ensure_world(cfg, progress=False)
    assert not reused and models.is_vision_language(path / "model")
    model, processor = models.load(path / "model")
    assert hasattr(processor, "image_processor") and processor.image_token_id is not None
    q = task.eval_questions(cfg)[0]
    batch = world.training_batch(cfg, processor, [q], [task.direct_answer(q)])
    assert (batch["input_ids"] == processor.image_token_id).sum() == 4  # 56 x 56 pixels
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == task.direct_answer(q) + world.IM_END
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
