"""Mechanics every trainer shares: a training folder keyed by content, resume from the last
checkpoint, the JSONL training log, and saving the final model atomically.

SFT (`sft.train`), GRPO (`grpo.train`) and the combination strategies all train through
these, so a run interrupted anywhere resumes the same way and logs the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from synergy.files import atomic_path, read_json, write_json, write_text

# Experiment trackers TRL reports to (its `report_to`), beside the run's own JSONL logs.
ReportTo = Literal["none", "tensorboard", "wandb", "mlflow", "trackio"]
# transformers' learning-rate schedules that need no extra arguments (`lr_scheduler_type`).
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                      "constant_with_warmup", "inverse_sqrt"]
KEY_FILE = "key.json"
# What a checkpoint holds beyond the model: needed to resume, only in the newest one.
RESUME_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "scaler.pt")
DONE_FILE = "done.json"


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL log; a torn last line (interrupted write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def log_callback(path: str | Path, run: str | None = None):
    """A TrainerCallback appending every training log to `path` (one JSON line per log,
    with `step` and, when given, `run`). After a resume, rows logged past the checkpoint
    are dropped: they are logged again."""
    from transformers import TrainerCallback

    path = Path(path)

    class JsonlLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= state.global_step]
            write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Every training log, not the end-of-training summary (train_runtime ...).
            if not logs or "train_runtime" in logs:
                return
            row = {**({"run": run} if run else {}), "step": state.global_step,
                   **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    return JsonlLog()


def keep_last_optimizer():
    """A TrainerCallback that keeps the optimizer / scheduler / RNG state in the newest
    checkpoint only: every checkpoint stays loadable as a model (for selection by
    validation), and the newest can resume training."""
    from transformers import TrainerCallback

    class KeepLastOptimizer(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            for old in checkpoints(Path(args.output_dir).parent)[:-1]:
                for pattern in RESUME_STATE:
                    for f in old.glob(pattern):
                        f.unlink()

    return KeepLastOptimizer()


def finished(run_dir: str | Path, key: str, model: str | Path) -> dict[str, Any] | None:
    """The record of a finished training in `run_dir` with this content key whose final
    `model` is whole and unchanged (`reuse.reusable`: a damaged one is set aside), else None."""
    from synergy import reuse

    return reuse.reusable(Path(run_dir) / DONE_FILE, key, model)


def prepare(run_dir: str | Path, key: str) -> Path | None:
    """Make `run_dir` ready to train under content `key`; return the checkpoint to resume
    from (None: start at step 1). Checkpoints of another key are deleted, never resumed; a
    checkpoint a kill left half-written is removed, a damaged one set aside, and training
    resumes from the newest whole one."""
    run_dir = Path(run_dir)
    key_file = run_dir / KEY_FILE
    if key_file.exists() and read_json(key_file).get("key") != key:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(key_file, {"key": key})
    (run_dir / DONE_FILE).unlink(missing_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    return resume_point(run_dir)


def resume_point(run_dir: str | Path) -> Path | None:
    """The newest checkpoint training can resume from (trainer state, optimizer and a whole
    model); newer ones that cannot are cleared out of the way."""
    import warnings

    from synergy.files import CorruptArtifact, check_files, set_aside

    for ckpt in reversed(checkpoints(run_dir)):
        if not (ckpt / "trainer_state.json").exists():  # written last: the save was cut
            shutil.rmtree(ckpt)
            continue
        problem = check_files(ckpt)
        if problem:
            set_aside(ckpt, problem)
            continue
        if not (ckpt / "optimizer.pt").exists():
            # Only the newest keeps its optimizer (`keep_last_optimizer`): the newer ones
            # are gone, so no checkpoint can resume; the steps are retrained as they were.
            warnings.warn(f"{ckpt.parent}: no checkpoint with optimizer state to resume "
                          "from; training again from step 1", CorruptArtifact, stacklevel=2)
            shutil.rmtree(ckpt.parent)
            ckpt.parent.mkdir()
            return None
        return ckpt
    return None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints in step order (`checkpoints/checkpoint-<step>`)."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_model(trainer, processing, out: str | Path) -> Path:
    """The trained model and its tokenizer/processor, written atomically to `out`."""
    with atomic_path(out) as tmp:
        trainer.save_model(str(tmp))
        processing.save_pretrained(str(tmp))
    return Path(out)


def mark_done(run_dir: str | Path, record: dict[str, Any], model: str | Path) -> dict[str, Any]:
    """Record a finished training (its key, and the fingerprint of its final `model` that
    `finished` checks) and drop its checkpoints."""
    from synergy import reuse

    record = reuse.seal(Path(run_dir) / DONE_FILE, record["key"], model, **record)
    shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
    return record
