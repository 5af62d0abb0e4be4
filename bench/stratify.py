"""How fast is stratification sampling, and what does exact early stopping save?

    .venv/bin/python bench/stratify.py [--model DIR] [--questions 60] [--threads 2]

1. Generations per second of the batched engine (all samples of many questions per
   `generate` call) against a naive loop of one call per question per sample, over the same
   questions and samples (goal: batched >= 8x naive). Keyed sampling makes both draw the
   very same samples, which is checked too.
2. Samples drawn with early stopping against a fixed N for round sizes 1, 2, 4, 8 (the most
   samples a question gets per round; fewer when its level could settle sooner), with the
   wall time of each and the number of questions whose level differs from the fixed-N run
   (must be 0: early stopping is exact).

The model defaults to the tiny run's world (`outputs/tiny/00_world/manifest.json`), else the
newest `outputs/cache/world-*/model`. Sampling parameters, N and the level thresholds come
from the profile's `stratify` section; questions are the world's eval split.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from synergy.evaluation import SampleCache, prompt_key, sample_questions
from synergy.generation import HFEngine, chat_prompt
from synergy.stratify import StratifyConfig, assign_levels, level_decided
from synergy.task import eval_questions
from synergy.world import WorldConfig

ROOT = Path(__file__).resolve().parents[1]


def default_model() -> Path:
    manifest = ROOT / "outputs" / "tiny" / "00_world" / "manifest.json"
    if manifest.exists():
        return Path(json.loads(manifest.read_text())["model_path"])
    worlds = sorted((ROOT / "outputs" / "cache").glob("world-*/model"),
                    key=lambda p: p.stat().st_mtime)
    if not worlds:
        sys.exit("no world model found: run `make demo` (stage 00_world) or pass --model")
    return worlds[-1]


def world_config(model: Path, profile: Path) -> WorldConfig:
    """The config the model's world was trained with (else the profile's world section)."""
    meta = model.parent / "world.json"
    if meta.exists():
        return WorldConfig.from_mapping(json.loads(meta.read_text())["params"], str(meta))
    return WorldConfig.from_profile(profile)


def throughput(engine, prompts, keys, cfg) -> pd.DataFrame:
    """Batched vs one-row-per-call generation of the same samples."""
    n = cfg.n_samples
    t0 = time.perf_counter()
    batched = engine.generate(prompts, keys, 0, n, cfg.spec, cfg.seed)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = [[engine.generate([p], [k], j, 1, cfg.spec, cfg.seed)[0][0] for j in range(n)]
             for p, k in zip(prompts, keys)]
    t_naive = time.perf_counter() - t0
    same = sum(a.text == b.text for ra, rb in zip(batched, naive) for a, b in zip(ra, rb))
    rows = len(prompts) * n
    tokens = sum(c.n_tokens for r in batched for c in r)
    table = pd.DataFrame([
        {"engine": f"batched ({engine.batch_rows} rows/call)", "generations": rows,
         "calls": -(-rows // engine.batch_rows), "seconds": t_batched},
        {"engine": "naive (1 row/call)", "generations": rows, "calls": rows,
         "seconds": t_naive}])
    table["gen_per_s"] = table["generations"] / table["seconds"]
    table["tokens_per_s"] = tokens / table["seconds"]
    print(table.to_string(index=False, float_format="%.2f"))
    # A batched call runs until its longest row ends: every row pays for that many steps.
    per_call = max(1, engine.batch_rows // n)
    slots = sum(len(chunk) * n * max(c.n_tokens for r in chunk for c in r)
                for chunk in (batched[i:i + per_call] for i in range(0, len(batched), per_call)))
    print(f"speed-up batched / naive: {t_naive / t_batched:.1f}x (goal >= 8x); "
          f"identical samples: {same}/{rows}")
    print(f"mean tokens per sample: {tokens / rows:.1f}; the batched calls decode "
          f"{slots:,} token slots for {tokens:,} tokens ({tokens / slots:.0%} used)")
    return table


def early_stopping(engine, prompts, answers, cfg, round_sizes) -> pd.DataFrame:
    """Samples and time with exact early stopping against drawing all N per question."""
    n, thresholds = cfg.n_samples, cfg.level_min_correct
    stop = functools.partial(level_decided, n_total=n, min_correct=thresholds)

    def run(round_size, rule):
        with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: everything is drawn
            t0 = time.perf_counter()
            drawn = sample_questions(engine, prompts, answers, cfg.spec, n_samples=n,
                                     round_size=round_size, seed=cfg.seed,
                                     cache=SampleCache(tmp), stop=rule, progress=False)
            seconds = time.perf_counter() - t0
        levels = assign_levels([sum(s["correct"] for s in d) for d in drawn], thresholds)
        return sum(len(d) for d in drawn), seconds, levels

    full_samples, full_seconds, full_levels = run(n, None)
    rows = [{"run": f"fixed {n}", "round_size": n, "samples": full_samples,
             "sample_ratio": 1.0, "seconds": full_seconds, "time_ratio": 1.0,
             "level_mismatches": 0}]
    for r in round_sizes:
        samples, seconds, levels = run(r, stop)
        rows.append({"run": "early stop", "round_size": r, "samples": samples,
                     "sample_ratio": samples / full_samples, "seconds": seconds,
                     "time_ratio": seconds / full_seconds,
                     "level_mismatches": int((levels != full_levels).sum())})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.2f"))
    counts = pd.Series(full_levels).value_counts().sort_index()
    print("levels of the fixed run: " + ", ".join(f"L{k}: {v}" for k, v in counts.items()))
    bad = int(table["level_mismatches"].sum())
    print("early stopping exact: " + ("yes" if bad == 0 else f"NO ({bad} mismatches)"))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="world model folder (default: the tiny run's, else the newest)")
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--profile", type=Path, default=ROOT / "params" / "tiny.yaml")
    parser.add_argument("--round-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (use 1 while other jobs share the cores: "
                             "spinning OpenMP threads then slow everything many times)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = (args.model or default_model()).resolve()
    cfg = StratifyConfig.from_profile(args.profile)
    world = world_config(model, args.profile)
    questions = eval_questions(world)[:args.questions]
    engine = HFEngine.from_path(model, batch_rows=cfg.batch_rows)
    prompts = [chat_prompt(engine.template, q.text, cfg.prompt_suffix) for q in questions]
    keys = [prompt_key(p) for p in prompts]
    answers = [str(q.answer) for q in questions]
    print(f"model {model} ({sum(p.numel() for p in engine.model.parameters()):,} parameters, "
          f"{engine.model.device}, {torch.get_num_threads()} threads)")
    print(f"{len(questions)} questions x {cfg.n_samples} samples, {cfg.spec}, "
          f"levels {cfg.level_min_correct}\n")

    engine.generate(prompts[:2], keys[:2], 0, 2, cfg.spec, cfg.seed)  # warm-up
    print("1. generation throughput")
    throughput(engine, prompts, keys, cfg)
    print("\n2. early stopping vs fixed N")
    early_stopping(engine, prompts, answers, cfg, args.round_sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
