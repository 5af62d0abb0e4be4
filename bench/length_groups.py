"""Training steps with the loss passes in length groups against one padded pass, in turns.

    .venv/bin/python bench/length_groups.py grpo [--run outputs/tiny] [--profile params/tiny.yaml] \\
        [--init 04_grpo/init_model] [--steps 12] [--rounds 2] [--groups 1 3]
    .venv/bin/python bench/length_groups.py sft [--init 03_sft/models/careful] [--steps 30] ...

grpo: `--steps` GRPO steps of 04's settings (the profile's `grpo` keys, its first beta) from
`--init` (a model folder inside the run: 04's starting copy, or a trained policy such as
04_grpo/runs/rl-beta0.005/model, whose rollouts are the end of training's) on the run's
first training questions, once per `grpo_trainer.LOGPS_GROUPS` value per round.
sft: `--steps` steps of 05's hybrid warm-up (the run's `05_strategies/warmup.csv`: each
question as RL's short answer and as the expert's long trace, 05's SFT settings) from
`--init`, once per `sft_trainer.SFT_GROUPS` value per round.

Every training of a round sees the same rows from the same weights, so its first logged
loss should agree up to float rounding. Prints each training's seconds per step, that loss
and the ratio against the round's first group count. The machine is shared: only the
ratios of neighbouring measurements say anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from synergy import grpo, grpo_trainer, quiet_libraries, sft_trainer
from synergy.models import tokenizer_of
from synergy.runs import thread_count
from synergy.strategies import StrategiesConfig
from synergy.strategies.shared import chat_rows, sft_args

ROOT = Path(__file__).resolve().parents[1]
INIT = {"grpo": "04_grpo/init_model", "sft": "03_sft/models/careful"}
STEPS = {"grpo": 12, "sft": 30}


def first_loss(folder: Path) -> float | None:
    """The first logged training loss of a training folder's log (`curves.jsonl` of GRPO,
    `log.jsonl` of SFT)."""
    for name in ("curves.jsonl", "log.jsonl"):
        if (folder / name).exists():
            for line in (folder / name).read_text().splitlines():
                row = json.loads(line)
                if "loss" in row:
                    return float(row["loss"])
    return None


def grpo_training(run: Path, profile: str, init: Path, steps: int):
    """(module constant's owner, its name, train(out) callable) for 04's GRPO."""
    from transformers import AutoTokenizer

    cfg = grpo.GRPOStageConfig.from_profile(profile)
    train = pd.read_csv(run / "04_grpo" / "train_questions.csv")
    train = train[train["kept"]] if "kept" in train else train
    dataset = grpo.training_dataset(train.head(steps * cfg.prompts_per_step),
                                    tokenizer_of(AutoTokenizer.from_pretrained(init)),
                                    cfg.prompt_suffix)
    args = grpo_trainer.training_args(cfg, cfg.betas[0], num_processes=1)
    args.max_steps = steps
    return grpo_trainer, "LOGPS_GROUPS", lambda out: grpo_trainer.train(
        init, dataset, args, out, key=f"bench-{out.parent.name}", label="bench",
        progress=False)


def sft_training(run: Path, profile: str, init: Path, steps: int):
    """The same for 05's hybrid warm-up SFT."""
    cfg = StrategiesConfig.from_profile(profile)
    rows = chat_rows(pd.read_csv(run / "05_strategies" / "warmup.csv"), "")
    args = sft_args(cfg, len(rows), lr=cfg.hybrid_warmup_lr, max_steps=steps)
    args.logging_steps = 1
    return sft_trainer, "SFT_GROUPS", lambda out: sft_trainer.train(
        init, rows, args, out, key="bench", progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trainer", choices=["grpo", "sft"])
    ap.add_argument("--run", default=str(ROOT / "outputs" / "tiny"))
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--init", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 3])
    a = ap.parse_args()
    quiet_libraries()
    import torch

    torch.set_num_threads(thread_count(0))
    run, steps = Path(a.run), a.steps or STEPS[a.trainer]
    init = run / (a.init or INIT[a.trainer])
    owner, name, train = (grpo_training if a.trainer == "grpo" else sft_training)(
        run, a.profile, init, steps)
    print(f"{steps} {a.trainer.upper()} steps from {init} ({torch.get_num_threads()} "
          f"threads), groups {a.groups}")
    for r in range(a.rounds):
        base = None
        for g in a.groups:
            setattr(owner, name, g)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / f"{r}-{g}" / "policy"
                t0 = time.perf_counter()
                train(out)
                per_step = (time.perf_counter() - t0) / steps
                loss = first_loss(out)
            base = base or per_step
            print(f"round {r + 1}  groups {g}: {per_step:.3f} s/step  first loss "
                  f"{loss:+.5f}  ratio {base / per_step:.2f}x", flush=True)


if __name__ == "__main__":
    main()
