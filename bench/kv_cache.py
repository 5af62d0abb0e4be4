"""The HF engine's decoder against the one before it, on one model's evaluation, in turns.

    .venv/bin/python bench/kv_cache.py [--model outputs/tiny/03_sft/models/careful] \\
        [--profile params/tiny.yaml] [--samples 4] [--max-new-tokens 384] [--rounds 2]

Samples the profile's evaluation questions `--samples` times each at the evaluation's
temperature / top-p / top-k (03's keys), once with each decoder per round, alternating:
  - before: transformers' `DynamicCache`, which concatenates every layer's keys and values
    at each step, and a compaction of the batch at every step where a row ended;
  - now: `generation.buffered_cache` (buffers grown by doubling, written in place) and a
    compaction once a quarter of the batch has ended (`generation.COMPACT_SHARE`).
Prints each round's seconds, tokens and the ratio (before / now), and checks that both
decoders drew the same samples. The machine is shared: only the ratios of neighbouring
measurements say anything. A long-CoT model (03's) shows the difference; the world base's
short answers much less.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

from synergy import generation, quiet_libraries, task, world
from synergy.config import load_profile, profile_section
from synergy.generation import HFEngine, SamplingSpec, chat_prompt
from synergy.runs import thread_count

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def decoder_before():
    """The decoder as it was: transformers' concatenating cache, compacting at every end."""
    from transformers import DynamicCache

    saved = generation.buffered_cache, generation.COMPACT_SHARE
    generation.buffered_cache = lambda capacity: DynamicCache()
    generation.COMPACT_SHARE = 10 ** 9
    try:
        yield
    finally:
        generation.buffered_cache, generation.COMPACT_SHARE = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "outputs/tiny/03_sft/models/careful"))
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    quiet_libraries()
    if not Path(args.model).is_dir():
        raise SystemExit(f"no model at {args.model}: run `make demo` first or pass --model")
    threads = thread_count(0)
    torch.set_num_threads(threads)
    profile = load_profile(args.profile)
    sft = profile_section(profile, "sft", args.profile)
    spec = SamplingSpec(sft["eval_temperature"], sft["eval_top_p"], sft["eval_top_k"],
                        args.max_new_tokens)
    engine = HFEngine.from_path(args.model, batch_rows=1024, device="cpu")
    questions = task.eval_questions(world.WorldConfig.from_profile(args.profile))
    prompts = [chat_prompt(engine.template, q.text) for q in questions]
    keys = [q.qid for q in questions]
    print(f"model: {args.model}; {len(prompts)} questions x {args.samples} samples, "
          f"{spec}, {threads} threads")

    def sample() -> tuple[float, list]:
        t0 = time.perf_counter()
        out = engine.generate(prompts, keys, 0, args.samples, spec, seed=0)
        return time.perf_counter() - t0, out

    for r in range(1, args.rounds + 1):
        with decoder_before():
            before, samples_before = sample()
        now, samples_now = sample()
        if samples_now != samples_before:
            raise SystemExit("the decoders drew different samples")
        tokens = sum(c.n_tokens for row in samples_now for c in row)
        print(f"round {r}: before {before:.2f} s, now {now:.2f} s ({tokens:,} tokens, "
              f"the same samples): {before / now:.2f}x")


if __name__ == "__main__":
    main()
