"""Where the tiny profile's time goes, how close the engine is to this CPU's limit, and
what torch thread count to use.

Measures, on a finished run's world base (or any local causal LM folder), in one process:
  - each unit of work the series repeats: one evaluation sample (tokens/s of the shared
    engine), one GRPO rollout batch (TRL's `generate` vs the project's keyed compacting
    decoder, which 04 and 05 now use), one GRPO / SFT optimizer step, one step of the world
    base's training (one padded batch vs the two length buckets 00 now uses), one mergekit
    merge;
  - each at 1 and at 2 torch threads, interleaved (the machine is shared: ratios in the same
    run, not absolute times, are the figures to compare);
  - the engine's share of the physical limit: FLOPs per generated token (2 x the weights in
    matmuls + attention over the mean context) x tokens/s, over the best float32 torch
    matmul throughput measured here at the same thread count;
  - where a run's time goes: each unit's cost x how many of it the profile runs (counts
    read from the profile), as shares of the estimated total.

    python bench/where_time_goes.py [--model outputs/tiny/00_world/model] [--profile params/tiny.yaml]
"""

from __future__ import annotations

import argparse
import glob
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(threads: int) -> float:
    """Best float32 GFLOP/s of a square torch matmul at this thread count."""
    torch.set_num_threads(threads)
    best = 0.0
    for n in (256, 512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, 2 * n ** 3 / timed(lambda: a @ b, 5) / 1e9)
    return best


def flops_per_token(model, context: float) -> float:
    """Forward FLOPs of one generated token: 2 x matmul weights + attention's QK and AV."""
    cfg = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2 * linear + 4 * cfg.num_hidden_layers * context * cfg.hidden_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a causal LM folder (default: a run's "
                    "or the cache's world base)")
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from synergy import length_groups, task, world
    from synergy.generation import HFEngine, SamplingSpec, chat_prompt

    path = args.model or next(iter(sorted(glob.glob(str(ROOT / "outputs/tiny/00_world/model")))
                                   + sorted(glob.glob(str(ROOT / "outputs/cache/world-*/model")))),
                              None)
    if path is None:
        raise SystemExit("no world model: run `make demo` first or pass --model")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    wcfg = world.WorldConfig.from_profile(args.profile)
    qs = task.train_questions(wcfg, 64, seed=5)
    prompts = [chat_prompt(tok, q.text) for q in qs]
    keys = [q.qid for q in qs]
    engine = HFEngine(model, tok, batch_rows=1024)
    print(f"model: {path} ({sum(p.numel() for p in model.parameters()):,} parameters)")

    # Units of work.
    def eval_tokens(max_new: int = 384) -> int:
        out = engine.generate(prompts, keys, 0, 4, SamplingSpec(0.6, 0.95, 20, max_new), 0)
        return sum(c.n_tokens for row in out for c in row)

    rollout_prompts = [p for p in prompts[:16] for _ in range(8)]
    enc = tok(rollout_prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    gen_cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                               max_new_tokens=64, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)

    def trl_rollouts():
        with torch.no_grad():
            model.generate(**enc, generation_config=gen_cfg)

    def keyed_rollouts():
        engine.generate(prompts[:16], keys[:16], 0, 8, SamplingSpec(1.0, 1.0, 0, 64), 0)

    train_model = AutoModelForCausalLM.from_pretrained(path).train()
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-5)

    def step(batch: int, length: int):
        ids = torch.randint(0, tok.vocab_size, (batch, length))
        loss = train_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    world_batch = world.training_batch(wcfg, tok, *world.training_rows(wcfg, random.Random(6),
                                                                        held_out=set()))

    def world_step(split: bool):
        length_groups.backward_mean_loss(train_model, world_batch, groups=2 if split else 1)
        opt.step()
        opt.zero_grad()

    other = tempfile.mkdtemp()
    shutil.copytree(path, f"{other}/copy")  # mergekit refuses the same folder twice

    def merge():
        from synergy.merging import run_mergekit

        with tempfile.TemporaryDirectory() as tmp:
            cfg = {"merge_method": "linear", "dtype": "float32",
                   "models": [{"model": path, "parameters": {"weight": 0.5}},
                              {"model": f"{other}/copy", "parameters": {"weight": 0.5}}]}
            run_mergekit(cfg, Path(tmp) / "m", shard_params=100_000_000, seed=0)

    n_tokens = eval_tokens()
    units = {
        "evaluation: 64 questions x 4 samples": lambda: eval_tokens(),
        "rollouts: 16 x 8, TRL generate": trl_rollouts,
        "rollouts: 16 x 8, keyed compacting": keyed_rollouts,
        "GRPO update: 64 completions x 96 tokens": lambda: step(64, 96),
        "SFT step: 16 traces x 192 tokens": lambda: step(16, 192),
        "world base step: one padded batch": lambda: world_step(False),
        "world base step: two length buckets": lambda: world_step(True),
        "merge: one linear mergekit merge": merge,
    }
    seconds: dict[tuple[str, int], float] = {}
    for name, fn in units.items():
        for threads in (1, 2, 1, 2):  # interleaved: a load change hits both
            torch.set_num_threads(threads)
            t = timed(fn, args.repeats)
            seconds[name, threads] = min(t, seconds.get((name, threads), float("inf")))

    print("\nunit of work                                  1 thread   2 threads   2 / 1 speed-up")
    for name in units:
        one, two = seconds[name, 1], seconds[name, 2]
        print(f"{name:44s} {one:8.3f} s {two:9.3f} s {one / two:10.2f}x")
    trl, ours = (seconds["rollouts: 16 x 8, TRL generate", 1],
                 seconds["rollouts: 16 x 8, keyed compacting", 1])
    print(f"\nkeyed rollouts vs TRL generate (1 thread): {trl / ours:.2f}x faster")
    for threads in (1, 2):
        padded, split = (seconds["world base step: one padded batch", threads],
                         seconds["world base step: two length buckets", threads])
        print(f"world base step, length buckets vs one padded batch ({threads} thread(s)): "
              f"{padded / split:.2f}x faster")

    # Share of the physical limit: the engine's achieved FLOP/s over the matmul peak.
    mean_context = (enc["input_ids"].shape[1] + n_tokens / (len(prompts) * 4) / 2)
    fpt = flops_per_token(model, mean_context)
    for threads in (1, 2):
        peak = matmul_peak(threads)
        tps = n_tokens / seconds["evaluation: 64 questions x 4 samples", threads]
        print(f"engine, {threads} thread(s): {tps:,.0f} tokens/s x {fpt / 1e6:.2f} MFLOP/token"
              f" = {tps * fpt / 1e9:.2f} GFLOP/s of a {peak:.1f} GFLOP/s matmul peak"
              f" ({tps * fpt / 1e9 / peak:.1%} of the limit)")

    # Where a run's time goes: unit cost x the profile's counts (at the faster thread count).
    from synergy.config import load_profile

    prof = load_profile(args.profile)
    g, s, m = prof["grpo"], prof["sft"], prof["merging"]
    n_policies = len(g["betas"]) + (g.get("exclude_easiest_ablation", "none") != "none")
    grpo_steps = n_policies * g["n_train_questions"] // g["prompts_per_step"]
    rollout_batches = n_policies * g["n_train_questions"] // g["prompts_per_generation"]
    sft_models = (len(s["teachers"]) + len(s["easy_share_sweep"])
                  + sum(len(v) for v in s["scale_sweep"].values()))
    merges = len(m["methods"]) * len([r for r in m["sft_ratios"] if 0 < r < 1])
    eval_units = (prof["world"]["n_eval_questions"] / 64) * (
        sft_models + n_policies + 1 + merges * m.get("eval_questions", 200) / 200)
    best = {name: min(seconds[name, 1], seconds[name, 2]) for name in units}
    est = {
        "world base training (00)": prof["world"]["train_steps"] * best[
            "world base step: two length buckets"],
        "GRPO rollouts (04)": rollout_batches * best["rollouts: 16 x 8, keyed compacting"],
        "GRPO updates (04)": grpo_steps * best["GRPO update: 64 completions x 96 tokens"],
        "SFT steps (03)": sft_models * s["max_steps"] * best["SFT step: 16 traces x 192 tokens"],
        "evaluation sampling (03, 04, 06)": eval_units * best[
            "evaluation: 64 questions x 4 samples"],
        "merges (06)": merges * best["merge: one linear mergekit merge"],
    }
    total = sum(est.values())
    print(f"\nestimated from unit costs x the counts in {Path(args.profile).name} "
          "(05's strategies not included):")
    for name, sec in sorted(est.items(), key=lambda kv: -kv[1]):
        print(f"  {name:34s} {sec:7.1f} s  {sec / total:6.1%}")


if __name__ == "__main__":
    main()
