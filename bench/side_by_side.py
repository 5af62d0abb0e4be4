"""Two GRPO policies of a run's 04 one after another on the stage's threads, against the same
two side by side (`run.train_jobs`: a process each, threads / 2 threads each), in turns.

    .venv/bin/python bench/side_by_side.py [--run tiny] [--profile params/tiny.yaml] \\
        [--steps 20] [--rounds 2]

Trains 04's policies as the profile plans them (`grpo.train_policies`: the default's headline
policy and its exclude-easiest ablation) from the run's 04 starting copy, `--steps` optimizer
steps each, into runs of a scratch output root (the run is not touched), `--rounds` times each way, alternating; prints the seconds of each and the
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

from synergy import grpo, parallel, quiet_libraries, stages
from synergy.runs import Run, thread_count

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="tiny")
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    quiet_libraries()

    cfg = grpo.GRPOStageConfig.from_profile(args.profile)
    cfg = dataclasses.replace(cfg, run_name=args.run, output_root=str(ROOT / cfg.output_root),
                              n_train_questions=args.steps * cfg.prompts_per_step)
    run = Run.of(cfg)
    if not (run.dir(stages.GRPO) / "init_model").is_dir():
        raise SystemExit(f"run {args.run!r} has no 04 starting copy: run its 04 first")
    threads = thread_count(cfg.threads)
    torch.set_num_threads(threads)
    plan = grpo.training_plan(cfg, run, progress=False)
    n = len(cfg.betas) + len(grpo.modes(cfg)) - 1  # train_policies' plan
    print(f"{n} policies x {args.steps} steps, {threads} threads; side by side: "
          f"{parallel.workers_for(0, n, threads)} processes")
    scratch = Path(tempfile.mkdtemp(prefix="side_by_side-"))
    ratios = []
    try:
        for r in range(args.rounds):
            times = {}
            for setting, name in ((1, "one after another"), (0, "side by side")):
                t0 = time.perf_counter()
                grpo.train_policies(dataclasses.replace(cfg, train_jobs=setting), plan,
                                    Run(scratch, f"r{r}-{setting}"), progress=False)
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
