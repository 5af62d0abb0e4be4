"""Peak memory of scoring one response under two models: the whole [tokens, vocab] float32
log-softmax at once (what 04's drift table and 07's token KL did) against `scoring.CHUNK`
positions at a time (what they do now, `scoring.token_stats`).

Two random output heads (vocab x dim) score `tokens` random final hidden states; the same
function runs with chunk = tokens (unchunked) and with smaller chunks. Each measurement runs
in a fresh process (the allocator keeps nothing from the one before, and maps every tensor
over 1 MiB, so resident memory follows live tensors): peak resident memory
(VmHWM, reset once the inputs exist) minus the resident memory then, so the figures are what
scoring adds on top of the models. Ratios in one run are the figures to compare.

    python bench/score_memory.py [--vocab 32000 152064] [--tokens 2048] [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def measure(vocab: int, tokens: int, dim: int, chunk: int) -> dict:
    """In this process: peak MiB scoring adds, and its seconds."""
    import torch

    from synergy.scoring import token_stats

    torch.manual_seed(0)
    torch.set_num_threads(1)
    heads = [torch.nn.Linear(dim, vocab, bias=False) for _ in range(2)]
    states = [torch.randn(tokens, dim) for _ in range(2)]
    target = torch.randint(0, vocab, (tokens,))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = status_kib("VmRSS")
    t0 = time.perf_counter()
    stats = token_stats(states[0], heads[0], states[1], heads[1], target, chunk)
    seconds = time.perf_counter() - t0
    return {"vocab": vocab, "tokens": tokens, "chunk": chunk,
            "peak_mib": (status_kib("VmHWM") - base) / 1024, "seconds": seconds,
            "kl_mean": float(stats["kl"].mean())}


def run_one(vocab: int, tokens: int, dim: int, chunk: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", str(vocab), str(tokens), str(dim),
                          str(chunk)], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "lib"), "OMP_NUM_THREADS": "1",
                              # A fixed mmap threshold: every tensor over 1 MiB is mapped and
                              # unmapped when freed, so resident memory follows live tensors
                              # (glibc's moving threshold kept freed ~31 MiB chunks resident
                              # in one run and not in the next).
                              "MALLOC_MMAP_THRESHOLD_": str(MIB)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--one", type=int, nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    print(f"{'vocab':>7} {'tokens':>6} {'chunk':>6} {'peak MiB':>9} {'x whole':>8} "
          f"{'s':>6}  KL mean (equal across chunks)")
    for vocab in args.vocab:
        whole = run_one(vocab, args.tokens, args.dim, args.tokens)
        rows = [whole] + [run_one(vocab, args.tokens, args.dim, c) for c in args.chunks]
        for r in rows:
            name = "whole" if r["chunk"] == args.tokens else str(r["chunk"])
            print(f"{vocab:>7} {args.tokens:>6} {name:>6} {r['peak_mib']:>9.0f} "
                  f"{r['peak_mib'] / whole['peak_mib']:>8.3f} {r['seconds']:>6.1f}  "
                  f"{r['kl_mean']:.6f}")


if __name__ == "__main__":
    main()
