"""Reliability of the core: reuse keys, verified reuse, damaged artifacts set aside, temporary
folders of killed writes cleaned up, checkpoints resumed only when whole, self-contained run
names. Fast: tiny models built here, no notebook runs (the slow end-to-end checks are in
test_kills.py and test_reuse.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from synergy import evaluation, files, reuse, training
from synergy.config import ConfigError
from synergy.files import CorruptArtifact


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A saved ~10k-parameter Qwen2 with the world's tokenizer (built in a second)."""
    from synergy import world

    cfg = world.WorldConfig(run_name="t", threads=1, train_jobs=1, output_root=str(tmp_path_factory.mktemp("o")),
                            kind="text",
                            seed=0, min_steps=1, max_steps=2, max_value=19,
                            n_eval_questions=4, eval_seed=1, vocab_size=300, hidden_size=8,
                            num_layers=1, num_heads=2, intermediate_size=8, max_positions=64,
                            train_steps=1, batch_size=2, lr=1e-3, warmup_steps=0,
                            trace_fraction=0.5, long_fraction=0.0, check_fraction=0.0, log_every=1)
    tok = world.build_tokenizer(cfg.vocab_size, world.tokenizer_corpus(cfg, n=50))
    path = tmp_path_factory.mktemp("model") / "model"
    world.build_model(cfg, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep: float = 0.5) -> None:
    with path.open("r+b") as fh:
        fh.truncate(int(path.stat().st_size * keep))


# --- the reuse key --------------------------------------------------------------------------

def test_key_follows_params_content_models_and_code(tiny_model, tmp_path):
    rows = pd.DataFrame({"qid": ["a", "b"], "level": [4, 5], "response": ["x", "y"]})
    base = reuse.key({"lr": 0.1}, reads={"rows": rows}, models={"m": tiny_model},
                     code=("torch",))
    assert base == reuse.key({"lr": 0.1}, reads={"rows": rows.copy()},
                             models={"m": copy_model(tiny_model, tmp_path / "copy")},
                             code=("torch",))  # content, not where it lives
    assert base != reuse.key({"lr": 0.2}, reads={"rows": rows}, models={"m": tiny_model},
                             code=("torch",))
    # Any cell of any column: a level alone (the stale SFT model) changes the key.
    assert base != reuse.key({"lr": 0.1}, reads={"rows": rows.assign(level=[4, 4])},
                             models={"m": tiny_model}, code=("torch",))
    assert base != reuse.key({"lr": 0.1}, reads={"rows": rows.assign(extra=1)},
                             models={"m": tiny_model}, code=("torch",))
    assert base != reuse.key({"lr": 0.1}, reads={"rows": rows.iloc[::-1]},
                             models={"m": tiny_model}, code=("torch",))
    other = copy_model(tiny_model, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert base != reuse.key({"lr": 0.1}, reads={"rows": rows}, models={"m": other},
                             code=("torch",))
    assert base != reuse.key({"lr": 0.1}, reads={"rows": rows}, models={"m": tiny_model},
                             code=("torch", "trl"))


def test_own_params_drops_where_the_run_lives_and_names_only_real_keys():
    from synergy import sft

    cfg = sft_cfg()
    params = reuse.own_params(cfg, sft.NOT_IN_KEY)
    assert "run_name" not in params and "output_root" not in params and "lr" in params
    with pytest.raises(ValueError, match="nope"):
        reuse.own_params(cfg, ["nope"])


def test_images_are_part_of_a_prompt_key(tmp_path):
    from PIL import Image

    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    text = evaluation.prompt_key("Which shape is larger?")
    assert evaluation.prompt_key("Which shape is larger?", []) == text
    with_red = evaluation.prompt_key("Which shape is larger?", [red])
    assert with_red not in (text, evaluation.prompt_key("Which shape is larger?", [blue]))
    red.save(tmp_path / "a.png")
    blue.save(tmp_path / "b.png")
    assert evaluation.prompt_key("q", [str(tmp_path / "a.png")]) != evaluation.prompt_key(
        "q", [str(tmp_path / "b.png")])


# --- verified reuse -------------------------------------------------------------------------

def test_reusable_only_for_the_same_key_and_a_whole_artifact(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "m")
    record = tmp_path / "m.json"
    assert reuse.reusable(record, "k", model) is None  # nothing finished yet
    reuse.seal(record, "k", model, seconds=1.5)
    assert reuse.reusable(record, "k", model)["seconds"] == 1.5
    assert reuse.reusable(record, "other", model) is None and model.is_dir()  # stale: kept


@pytest.mark.parametrize("damage, names", [
    (lambda m: truncate(m / "model.safetensors"), "model.safetensors"),
    (lambda m: (m / "config.json").write_text('{"model_type": "qw'), "config.json"),
    (lambda m: (m / "model.safetensors").unlink(), "no weight files"),
    (lambda m: (m / "config.json").unlink(), "no config.json"),
    # Same size, other bytes: only the fingerprint sees it.
    (lambda m: (m / "tokenizer_config.json").write_text(
        (m / "tokenizer_config.json").read_text().replace("<|im_end|>", "<|im_END|>")),
     "content differs"),
])
def test_damaged_artifact_is_named_set_aside_and_not_used(tiny_model, tmp_path, damage, names):
    model = copy_model(tiny_model, tmp_path / "m")
    reuse.seal(tmp_path / "m.json", "k", model)
    damage(model)
    with pytest.warns(CorruptArtifact, match=names) as caught:
        assert reuse.reusable(tmp_path / "m.json", "k", model) is None
    assert str(model) in str(caught[0].message)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".m.corrupt-")]
    assert len(aside) == 1 and not model.exists() and not (tmp_path / "m.json").exists()


def test_missing_artifact_with_a_record_is_recomputed(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "m")
    reuse.seal(tmp_path / "m.json", "k", model)
    import shutil

    shutil.rmtree(model)
    with pytest.warns(CorruptArtifact, match="missing"):
        assert reuse.reusable(tmp_path / "m.json", "k", model) is None


def test_damaged_dataset_is_detected(tmp_path):
    import datasets

    path = files.save_dataset(datasets.Dataset.from_dict({"x": list(range(2000))}),
                              tmp_path / "ds")
    assert reuse.check_dataset(path) is None
    truncate(next(path.glob("*.arrow")))
    assert "unreadable dataset" in reuse.check_dataset(path)
    with pytest.raises(files.ArtifactError, match=str(path)):
        files.load_dataset_dir(path).to_pandas()


def test_damaged_sample_shard_is_set_aside_and_redrawn(tmp_path):
    cache = evaluation.SampleCache(tmp_path)
    rows = [{"key": "k", "index": i, "text": f"t{i}", "n_tokens": 2, "truncated": False}
            for i in range(3)]
    cache.add(rows[:2])
    cache.add(rows[2:])
    first, second = sorted(tmp_path.glob("part-*.jsonl"))
    truncate(second, 0.6)  # a torn last row
    with pytest.warns(CorruptArtifact, match=second.name):
        again = evaluation.SampleCache(tmp_path)
    assert sorted(again.samples) == [("k", 0), ("k", 1)]  # the whole shard's rows are redrawn
    assert not second.exists() and any(p.name.startswith(f".{second.name}.corrupt-")
                                       for p in tmp_path.iterdir())
    first.write_text(json.dumps({"key": "k", "index": 0}) + "\n")  # a row without its text
    with pytest.warns(CorruptArtifact, match="without"):
        assert evaluation.SampleCache(tmp_path).samples == {}


# --- temporary folders of interrupted writes --------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_folders_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / "a" / f".levels.tmp-{dead_pid()}-x1y2" / "levels"
    live = tmp_path / f".traces.tmp-{os.getpid()}-z9"
    aside = tmp_path / ".model.corrupt-20250101T000000Z"
    for folder in (dead, live, aside):
        folder.mkdir(parents=True)
    removed = files.clean_interrupted(tmp_path)
    assert removed == [dead.parent] and not dead.parent.exists()
    assert live.exists() and aside.exists()


def test_atomic_write_names_its_temporary_folder_by_process(tmp_path):
    with files.atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.parent.name.startswith(f".x.json.tmp-{os.getpid()}-")
        tmp.write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    with files.atomic_path(tmp_path / "d") as tmp:  # replacing a folder leaves nothing behind
        tmp.mkdir()
    with files.atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "x.json"]
    assert (tmp_path / "d" / "f").read_text() == "new"


def test_a_stage_start_cleans_the_run(tmp_path):
    from synergy import report, stages
    from synergy.runs import stage_run

    leftover = tmp_path / "r" / "03_sft" / "models" / f".careful.tmp-{dead_pid()}-ab"
    leftover.mkdir(parents=True)
    cfg = report.ReportConfig(run_name="r", output_root=str(tmp_path), seed=0, threads=1, train_jobs=1, n_examples=1,
                              top_tokens=1, margin=0.0, long_ratio=2.0, long_run="")
    with stage_run(cfg, stages.REPORT):
        pass
    assert not leftover.exists()


# --- checkpoints --------------------------------------------------------------------------------

def fake_checkpoint(run_dir: Path, step: int, model: Path, state=True, optimizer=True) -> Path:
    ckpt = copy_model(model, run_dir / "checkpoints" / f"checkpoint-{step}")
    if state:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if optimizer:
        (ckpt / "optimizer.pt").write_bytes(b"x")
    return ckpt


def test_resume_from_the_newest_whole_checkpoint(tiny_model, tmp_path):
    run = tmp_path / "run"
    training.prepare(run, "k")
    fake_checkpoint(run, 2, tiny_model, optimizer=False)
    good = fake_checkpoint(run, 4, tiny_model)
    fake_checkpoint(run, 6, tiny_model, state=False)  # killed while saving: removed
    damaged = fake_checkpoint(run, 8, tiny_model)
    truncate(damaged / "model.safetensors")
    (run / "checkpoints" / "checkpoint-4-merged").mkdir()  # LoRA merges are not checkpoints
    with pytest.warns(CorruptArtifact, match="checkpoint-8"):
        assert training.prepare(run, "k") == good
    assert [c.name for c in training.checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    # Another key never resumes from these checkpoints.
    assert training.prepare(run, "other") is None and training.checkpoints(run) == []


def test_no_resumable_checkpoint_trains_from_step_one(tiny_model, tmp_path):
    run = tmp_path / "run"
    training.prepare(run, "k")
    fake_checkpoint(run, 2, tiny_model, optimizer=False)
    fake_checkpoint(run, 4, tiny_model, state=False)
    with pytest.warns(CorruptArtifact, match="from step 1"):
        assert training.prepare(run, "k") is None
    assert training.checkpoints(run) == []


def fake_deepspeed_state(ckpt: Path, step: int, latest: str | None = None,
                         files: tuple[str, ...] = ("mp_rank_00_model_states.pt",
                                                   "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")):
    """What DeepSpeed saves beside a checkpoint's model instead of optimizer.pt."""
    folder = ckpt / f"global_step{step}"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"x")
    (ckpt / training.DEEPSPEED_LATEST).write_text(latest or folder.name)
    return folder


def test_deepspeed_checkpoint_resumes_under_deepspeed(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    run = tmp_path / "run"
    training.prepare(run, "k")
    fake_deepspeed_state(fake_checkpoint(run, 2, tiny_model, optimizer=False), 2)
    good = fake_checkpoint(run, 4, tiny_model, optimizer=False)
    fake_deepspeed_state(good, 4)
    # `latest` naming a folder that is missing, or one without its optimizer files: not
    # resumable, so removed like any checkpoint without optimizer state.
    fake_deepspeed_state(fake_checkpoint(run, 6, tiny_model, optimizer=False), 6,
                         latest="global_step7")
    fake_deepspeed_state(fake_checkpoint(run, 8, tiny_model, optimizer=False), 8,
                         files=("mp_rank_00_model_states.pt",))
    with pytest.warns(CorruptArtifact, match="from step 1"):
        assert training.resume_point(run) is None  # checkpoint-8 is the newest: no resume
    for step in (2, 4):
        fake_deepspeed_state(fake_checkpoint(run, step, tiny_model, optimizer=False), step)
    assert training.prepare(run, "k") == run / "checkpoints" / "checkpoint-4"
    assert training.deepspeed_state(good) == good / "global_step4"


def test_deepspeed_state_and_launcher_must_agree(tiny_model, tmp_path, monkeypatch):
    run = tmp_path / "run"
    training.prepare(run, "k")
    ckpt = fake_checkpoint(run, 2, tiny_model, optimizer=False)
    fake_deepspeed_state(ckpt, 2)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(RuntimeError, match=r"checkpoint-2.*saved by DeepSpeed \(global_step2/"):
        training.prepare(run, "k")
    assert ckpt.is_dir()  # kept: the error says how to resume it
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert training.prepare(run, "k") == ckpt
    plain = fake_checkpoint(run, 4, tiny_model)
    with pytest.raises(RuntimeError, match="checkpoint-4.*without DeepSpeed"):
        training.prepare(run, "k")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert training.prepare(run, "k") == plain


def test_older_checkpoints_lose_their_deepspeed_state(tiny_model, tmp_path):
    run = tmp_path / "run"
    training.prepare(run, "k")
    old, new = (fake_checkpoint(run, s, tiny_model, optimizer=False) for s in (2, 4))
    fake_deepspeed_state(old, 2), fake_deepspeed_state(new, 4)
    (old / "rng_state_0.pth").write_bytes(b"x")
    training.keep_last_optimizer().on_save(
        SimpleNamespace(output_dir=str(run / "checkpoints")),
        SimpleNamespace(is_world_process_zero=True), None)
    assert not list(old.glob("global_step*")) and not (old / "latest").exists()
    assert not (old / "rng_state_0.pth").exists() and (old / "model.safetensors").exists()
    assert training.deepspeed_state(new) == new / "global_step4"


def test_finished_training_is_reused_only_with_its_whole_model(tiny_model, tmp_path):
    run, model = tmp_path / "run", copy_model(tiny_model, tmp_path / "model")
    training.prepare(run, "k")
    record = training.mark_done(run, {"key": "k", "steps": 3}, model)
    assert record["fingerprint"] and training.finished(run, "k", model)["steps"] == 3
    assert training.finished(run, "other", model) is None
    truncate(model / "model.safetensors")
    with pytest.warns(CorruptArtifact, match="model.safetensors"):
        assert training.finished(run, "k", model) is None


# --- run names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up", "a\\b", "", " ", " x", ".hidden",
                                  "cache", "nul\0byte"])
def test_a_run_name_is_one_plain_folder_name(name, tmp_path):
    from synergy.runs import Run

    with pytest.raises(ConfigError, match="run name"):
        Run(tmp_path, name)
    with pytest.raises(ConfigError, match="run.run_name"):
        dataclasses.replace(sft_cfg(), run_name=name)


# --- helpers --------------------------------------------------------------------------------

def sft_cfg(**overrides):
    from conftest import SMOKE
    from synergy import sft
    from synergy.config import load_profile, profile_section

    return sft.SftConfig.from_mapping(
        {**profile_section(load_profile(SMOKE), "sft", SMOKE), **overrides}, str(SMOKE))


def test_warnings_are_one_line(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "m")
    reuse.seal(tmp_path / "m.json", "k", model)
    truncate(model / "model.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reuse.reusable(tmp_path / "m.json", "k", model)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


# --- model paths ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["outputs/gone", "./gone", "models/a/b", "~/gone", "gone/",
                                  "C:\\models\\gone", "org/model"])
def test_a_missing_local_path_is_never_sent_to_the_hub(spec, tmp_path, monkeypatch):
    from synergy import models
    from synergy.runs import Run

    (tmp_path / "models").mkdir()
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    run = Run(tmp_path, "r")
    # "org/model" is a hub id in form; offline and not in the hub cache it is missing too.
    monkeypatch.setattr(models, "hub_offline", lambda: True)
    with pytest.raises(files.ArtifactError, match="no such folder"):
        models.resolve(run, spec)
    monkeypatch.setattr(models, "hub_offline", lambda: False)
    if spec == "org/model":
        assert models.resolve(run, spec).artifact_id == "hub:org/model"
    else:
        with pytest.raises(files.ArtifactError, match="no such folder"):
            models.resolve(run, spec)


def test_relative_model_paths_start_at_the_project_root(tiny_model, monkeypatch):
    from synergy import models
    from synergy.config import project_root
    from synergy.runs import Run

    inside = project_root() / "outputs" / ".test-relative-model"
    copy_model(tiny_model, inside)
    try:
        monkeypatch.chdir(project_root() / "notebooks")  # where papermill runs the kernel
        ref = models.resolve(Run(project_root() / "outputs", "r"),
                             "outputs/.test-relative-model")
        assert ref.path == str(inside.resolve())
    finally:
        import shutil

        shutil.rmtree(inside)


def test_a_damaged_stage_model_is_an_error_naming_it_and_the_stage_to_rerun(tiny_model,
                                                                            tmp_path):
    from synergy import models
    from synergy.runs import Run

    run = Run(tmp_path, "r")
    folder = copy_model(tiny_model, run.root / "03_sft" / "models" / "careful")
    (run.root / "03_sft" / "manifest.json").write_text(json.dumps({
        "artifact_id": "sft-1", "main_model": "careful",
        "model_paths": {"careful": "03_sft/models/careful"}}))
    assert models.resolve(run, "03_sft").path == str(folder)
    truncate(folder / "model.safetensors")
    with pytest.raises(files.ArtifactError,
                       match=r"'careful' is damaged \(model.safetensors.*--stages 03"):
        models.resolve(run, "03_sft:careful")


def test_a_models_identity_leaves_out_the_trainers_files(tiny_model, tmp_path):
    """training_args.bin holds the paths a trainer ran in: the same weights trained
    elsewhere are the same model."""
    from synergy import models

    a, b = copy_model(tiny_model, tmp_path / "a"), copy_model(tiny_model, tmp_path / "b")
    (a / "training_args.bin").write_bytes(b"/runs/a")
    (b / "training_args.bin").write_bytes(b"/elsewhere/b")
    assert models.fingerprint(a) == models.fingerprint(b) == models.fingerprint(tiny_model)


# --- local tables: bad rows by the rule of every loader -------------------------------------

def test_a_local_table_skips_bad_rows_and_names_them(tmp_path):
    from synergy import data

    rows = ['{"qid": "a", "question": "2 +1", "answer": 3.10}',
            '{"qid": "b", "question": "q", "answer": "007"}',
            '{"qid": "c", "question": "q", "answer": 1e3}',
            '{"qid": "d", "question": "q", "answer": null}',
            '{"qid": "e", "question": "q", "answer": "  "}',
            '{"qid": "a", "question": "again", "answer": "4"}',
            '{"qid": null, "question": "q", "answer": "1"}',
            '{"qid": "f", "question": "", "answer": "1"}']
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(files.ArtifactError, match=r"5 of 8 rows skipped.*max_skipped_share"):
        data.load_common(path)
    table, upstream, skipped = data.load_common(path, max_skipped_share=0.7)
    assert table["qid"].tolist() == ["a", "b", "c"]
    assert table["answer"].tolist() == ["3.10", "007", "1e3"]  # as written
    assert dict(zip(skipped["qid"], skipped["reason"])) == {
        "d": "no answer", "e": "no answer", "a": "duplicate id (its first row is kept)",
        "row 6": "no id", "f": "no question text"}
    assert upstream == f"file:{path.resolve()}"
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text('{"qid": "x", "question": "q", "answer": null}\n')
    with pytest.raises(files.ArtifactError, match=r"bad\.jsonl: no good bad\.jsonl rows"):
        data.load_common(only_bad, max_skipped_share=1.0)


def test_a_local_benchmark_reports_its_skipped_rows(tmp_path):
    from synergy import data

    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps({"qid": f"q{i}", "question": "q", "answer": str(i)})
                            + "\n" for i in range(60))
                    + '{"qid": "q1", "question": "dup", "answer": "1"}\n')
    loaded = data.load_benchmark(str(path), run=None, max_skipped_share=0.02)
    assert len(loaded.table) == 60 and loaded.skipped["qid"].tolist() == ["q1"]


def test_thread_count_takes_the_setting_or_the_free_cores(monkeypatch):
    from synergy import runs

    assert runs.thread_count(3) == 3
    cores = len(os.sched_getaffinity(0))
    stat = {"text": "cpu 1 2 3\nprocs_running 1\n"}
    monkeypatch.setattr(runs.Path, "read_text", lambda self: stat["text"])
    monkeypatch.setattr(runs.time, "sleep", lambda s: None)
    assert runs.thread_count(0) == cores          # only this process runs
    stat["text"] = f"procs_running {cores + 5}\n"  # every core busy elsewhere
    assert runs.thread_count(0) == 1
