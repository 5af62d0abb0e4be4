"""GRPO steps with the log-prob passes in length groups against one padded pass, in turns.

    .venv/bin/python bench/grpo_groups.py [--run outputs/tiny] [--profile params/tiny.yaml] \\
        [--init 04_grpo/init_model] [--steps 12] [--rounds 2] [--groups 1 3]

Trains `--steps` GRPO steps of 04's settings (the profile's `grpo` keys, its first beta)
from `--init` (a model folder inside the run: 04's starting copy, or a trained policy such
as 04_grpo/runs/rl-beta0.005/model, whose rollouts are the end of training's) on the run's
first training questions, once per `grpo_trainer.LOGPS_GROUPS` value per round, in turns.
Every training sees the same questions and starts from the same weights, so the rollouts of
the first step are the same: its logged loss should agree up to float rounding.
Prints each training's seconds per step, the first logged loss and the ratio against the
first group count of the round. The machine is shared: only the ratios of neighbouring
measurements say anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from synergy import grpo, grpo_trainer, quiet_libraries
from synergy.models import tokenizer_of
from synergy.runs import thread_count

ROOT = Path(__file__).resolve().parents[1]


def first_loss(folder: Path) -> float | None:
    """The first logged training loss of a training folder's `curves.jsonl`."""
    for line in (folder / "curves.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            return float(row["loss"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(ROOT / "outputs" / "tiny"))
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--init", default="04_grpo/init_model")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 3])
    a = ap.parse_args()
    quiet_libraries()
    import torch

    torch.set_num_threads(thread_count(0))
    run = Path(a.run)
    cfg = grpo.GRPOStageConfig.from_profile(a.profile)
    init = run / a.init
    train = pd.read_csv(run / "04_grpo" / "train_questions.csv")
    train = train[train["kept"]] if "kept" in train else train
    n = a.steps * cfg.prompts_per_step
    from transformers import AutoTokenizer

    tokenizer = tokenizer_of(AutoTokenizer.from_pretrained(init))
    dataset = grpo.training_dataset(train.head(n), tokenizer, cfg.prompt_suffix)
    args = grpo_trainer.training_args(cfg, cfg.betas[0], num_processes=1)
    args.max_steps = a.steps
    print(f"{a.steps} GRPO steps from {init} ({torch.get_num_threads()} threads), "
          f"groups {a.groups}")
    for r in range(a.rounds):
        base = None
        for g in a.groups:
            grpo_trainer.LOGPS_GROUPS = g
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "policy"
                t0 = time.perf_counter()
                grpo_trainer.train(init, dataset, args, out, key=f"bench-{r}-{g}",
                                   label=f"groups {g}", progress=False)
                per_step = (time.perf_counter() - t0) / a.steps
                loss = first_loss(out)
            base = base or per_step
            print(f"round {r + 1}  groups {g}: {per_step:.3f} s/step  first loss "
                  f"{loss:+.5f}  ratio {base / per_step:.2f}x", flush=True)


if __name__ == "__main__":
    main()
