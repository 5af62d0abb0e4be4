"""How many length groups a world training step should run as (`world.TRAIN_GROUPS`).

The world's batches mix direct answers, short traces and (at `world.long_fraction`) a few
careful long traces. Padding one batch to its longest row spends most of its compute on
padding; `length_groups.backward_mean_loss` runs the rows in groups of neighbouring lengths
instead (the same loss and gradient up to float rounding). This measures, on the profile's own
training batches and a freshly built base, one optimizer step at 1, 2, 3 and 4 groups,
interleaved round by round (the machine is shared: compare the ratios within this run),
and the padded positions each group count computes.

    python bench/world_buckets.py [--profile params/tiny.yaml] [--batches 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from synergy import length_groups, world
from synergy.world import WorldConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--groups", type=int, nargs="*", default=[1, 2, 3, 4])
    args = ap.parse_args()

    cfg = WorldConfig.from_profile(args.profile)
    torch.manual_seed(cfg.seed)
    tokenizer = world.build_tokenizer(cfg.vocab_size, world.tokenizer_corpus(cfg))
    model = world.build_model(cfg, tokenizer).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rng = random.Random(cfg.seed)
    batches = [world.training_batch(cfg, tokenizer, *world.training_rows(cfg, rng, set()))
               for _ in range(args.batches)]
    print(f"[world-buckets] {args.profile}: batch {cfg.batch_size}, long_fraction "
          f"{cfg.long_fraction}, trace_fraction {cfg.trace_fraction}, {args.batches} batches, "
          f"{torch.get_num_threads()} threads")

    positions = {}
    for g in args.groups:
        total = 0
        for b in batches:
            lengths = b["attention_mask"].sum(-1).tolist()
            total += sum(len(p) * max(lengths[i] for i in p)
                         for p in length_groups.length_buckets(lengths, g))
        positions[g] = total / len(batches)

    seconds: dict[int, list[float]] = {g: [] for g in args.groups}
    for _ in range(args.rounds):
        for g in args.groups:  # interleaved: a slow spell of the machine hits every count
            t0 = time.perf_counter()
            for b in batches:
                length_groups.backward_mean_loss(model, b, groups=g)
                opt.step()
                opt.zero_grad()
            seconds[g].append((time.perf_counter() - t0) / len(batches))

    base = statistics.median(seconds[args.groups[0]])
    print(f"{'groups':>6}  {'positions/step':>14}  {'s/step (median)':>15}  "
          f"{'vs ' + str(args.groups[0]):>6}")
    for g in args.groups:
        s = statistics.median(seconds[g])
        print(f"{g:>6}  {positions[g]:>14.0f}  {s:>15.4f}  {s / base:>6.2f}")


if __name__ == "__main__":
    main()
