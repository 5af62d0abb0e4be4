"""Which findings of a run rest on its training seed: the run's later stages again at other
seeds, and the checklist of each beside the run's own.

    .venv/bin/python bench/seed_spread.py --run tiny --seeds 1 2 [--from 02] \\
        [--profile params/tiny.yaml]

Each seed N gets a run `<run>-seed<N>`: the stages of `--run` before `--from` are copied
into it (by default 00 and 01: the same world, base and difficulty levels), its profile is
the given one with `run.seed: N` and that run name (written to `outputs/<run>-seed<N>/
profile.yaml`), and the stages from `--from` on run there as `synergy run` runs them. A seed
whose run already finished its report is read, not rerun (delete its folder to redo it).

Printed: every finding's status in `--run` and at each seed, the rows whose status differs,
and the seconds of each seed's stages. The report's intervals cover the questions and samples
drawn, not training's own randomness (`report.sample_sizes`): this measures the rest. On the
default, a seed costs the stages from 02 on (about 13 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd
import yaml
from synergy import pipeline, stages
from synergy.config import load_profile
from synergy.files import write_text
from synergy.runs import Run

ROOT = Path(__file__).resolve().parents[1]
CHECKLIST = "checklist.csv"


def seed_profile(profile: dict, run_name: str, seed: int) -> tuple[str, dict]:
    """The profile of `run_name` at `seed`: only `run.seed` and `run.run_name` change."""
    name = f"{run_name}-seed{seed}"
    return name, {**profile, "run": {**profile["run"], "run_name": name, "seed": seed}}


def later_stages(first: str) -> tuple[list[stages.Stage], list[stages.Stage]]:
    """(the stages before `first`, `first` and those after it)."""
    start = stages.find(first)
    index = stages.STAGES.index(start)
    return list(stages.STAGES[:index]), list(stages.STAGES[index:])


def copy_upstream(source: Run, target: Run, upstream: list[stages.Stage]) -> None:
    """The stages `upstream` of `source` into `target` (whole folders; missing ones are an
    error naming them: the seed runs would otherwise train them again at their own seed)."""
    missing = [s.name for s in upstream if not source.has_run(s)]
    if missing:
        raise SystemExit(f"run '{source.name}' has not run {missing}: run them first, or "
                         f"start the seeds earlier (--from)")
    for stage in upstream:
        if not target.has_run(stage):
            shutil.copytree(source.dir(stage), target.dir(stage), dirs_exist_ok=True)


def spread(checklists: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Finding x run: each run's status (the first run is the reference), and `differs`:
    whether any run's status differs from the first's. Rows as the first checklist orders
    them; a finding a run lacks reads "missing"."""
    names = list(checklists)
    first = checklists[names[0]]
    table = pd.DataFrame({"finding": first["finding"]})
    for name, checklist in checklists.items():
        status = dict(zip(checklist["finding"], checklist["status"]))
        table[name] = [status.get(f, "missing") for f in table["finding"]]
    table["differs"] = table[names[1:]].ne(table[names[0]], axis=0).any(axis=1)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="tiny", help="the run whose findings are re-seeded")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--from", dest="first", default=stages.DISTILL.name,
                    help="the first stage trained again at each seed (default 02)")
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    args = ap.parse_args()
    profile = load_profile(args.profile)
    output_root = str(ROOT / profile["run"]["output_root"])
    source = Run(output_root, args.run)
    report = stages.REPORT
    upstream, rerun = later_stages(args.first)
    checklists = {args.run: pd.read_csv(source.dir(report) / CHECKLIST)}
    seconds = {}
    for seed in args.seeds:
        name, seeded = seed_profile(profile, args.run, seed)
        target = Run(output_root, name)
        path = target.root / "profile.yaml"
        write_text(path, yaml.safe_dump(seeded, sort_keys=False))
        if not (target.dir(report) / CHECKLIST).exists():
            copy_upstream(source, target, upstream)
            print(f"[seed_spread] {name}: {[s.name for s in rerun]} at seed {seed}", flush=True)
            t0 = time.perf_counter()
            pipeline.run_series(path, [s.name for s in rerun], log_output=False)
            seconds[name] = round(time.perf_counter() - t0, 1)
        checklists[name] = pd.read_csv(target.dir(report) / CHECKLIST)
    table = spread(checklists)
    shown = table.assign(finding=table["finding"].str.slice(0, 60)).set_index("finding")
    with pd.option_context("display.width", 250):
        print(shown.to_string())
    print(f"[seed_spread] findings whose status moves with the seed: "
          f"{int(table['differs'].sum())} of {len(table)}; seconds per seed: {seconds or 'reused'}")


if __name__ == "__main__":
    main()
