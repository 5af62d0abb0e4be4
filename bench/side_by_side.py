"""Two GRPO policies of a run's 04 one after another on the stage's threads, against the same
two side by side (`run.train_jobs`: a process each, threads / 2 threads each), in turns.

    .venv/bin/python bench/side_by_side.py [--run tiny] [--profile params/tiny.yaml] \\
        [--steps 20] [--rounds 2]

Trains 04's headline policy and its exclude-easiest ablation (as the profile sets them) from
the run's 04 starting copy, `--steps` optimizer steps each, into a scratch folder (the run is
not touched), `--rounds` times each way, alternating; prints the seconds of each and the
ratio (one after another / side by side) of each round: the machine is shared, so only
ratios of neighbouring measurements say anything. Both ways give the same policies (the
tests check it bit for bit at one thread); this measures only the time.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from synergy import grpo, parallel, stages
from synergy.runs import Run

ROOT = Path(__file__).resolve().parents[1]


def jobs(cfg, plan, folder: Path, tag: str) -> list[parallel.Job]:
    headline = next((b for b in cfg.betas if b > 0), cfg.betas[0])
    out = []
    for mode in grpo.modes(cfg)[:2]:
        out.append(parallel.Job(f"{tag}-{mode}", grpo.train_policy, {
            "cfg": cfg, "init_path": str(plan.init_path), "dataset": plan.datasets[mode],
            "beta": headline, "mode": mode, "folder": str(folder / tag), "progress": False}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="tiny")
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    cfg = grpo.GRPOStageConfig.from_profile(args.profile)
    cfg = dataclasses.replace(cfg, run_name=args.run, output_root=str(ROOT / cfg.output_root),
                              n_train_questions=args.steps * cfg.prompts_per_step)
    run = Run.of(cfg)
    if not (run.dir(stages.GRPO) / "init_model").is_dir():
        raise SystemExit(f"run {args.run!r} has no 04 starting copy: run its 04 first")
    threads = torch.get_num_threads() if cfg.threads == 0 else cfg.threads
    torch.set_num_threads(threads)
    plan = grpo.training_plan(cfg, run, progress=False)
    print(f"{len(grpo.modes(cfg)[:2])} policies x {args.steps} steps, {threads} threads; "
          f"side by side: {parallel.workers_for(0, 2, threads)} processes")
    scratch = Path(tempfile.mkdtemp(prefix="side_by_side-"))
    ratios = []
    try:
        for r in range(args.rounds):
            times = {}
            for setting, name in ((1, "one after another"), (0, "side by side")):
                tag = f"r{r}-{setting}"
                t0 = time.perf_counter()
                parallel.run(jobs(cfg, plan, scratch, tag), setting, progress=False)
                times[name] = time.perf_counter() - t0
                print(f"round {r + 1}: {name}: {times[name]:.1f} s", flush=True)
            ratios.append(times["one after another"] / times["side by side"])
            print(f"round {r + 1}: ratio {ratios[-1]:.2f}x", flush=True)
        print(f"ratios {', '.join(f'{x:.2f}x' for x in ratios)}; median "
              f"{statistics.median(ratios):.2f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
