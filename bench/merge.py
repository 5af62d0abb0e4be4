"""Peak memory and time of one mergekit merge, as `synergy.merging` runs it.

Builds two random Qwen2 models of the same shape (default ~100M parameters, ~400 MB in
float32), merges them in a fresh subprocess with the stage's options (lazy loading, small
output shards) and prints the child's peak resident memory divided by the size of one input
model (goal: <= 2x), with and without the memory the imports alone take.

    python bench/merge.py [--method linear] [--hidden 768] [--layers 8] [--vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
from synergy import merging
import mergekit.merge, torch  # imports before the baseline reading
import threading
args = json.loads(sys.argv[1])
baseline = {k: rss(k) for k in ("VmRSS:", "RssAnon:", "RssFile:")}
peaks = {"RssAnon:": 0, "RssFile:": 0}
done = threading.Event()
def watch():  # the kernel keeps only the total's peak (VmHWM); sample its two parts
    while not done.wait(0.02):
        for k in peaks:
            peaks[k] = max(peaks[k], rss(k))
threading.Thread(target=watch, daemon=True).start()
t0 = time.perf_counter()
merging.run_mergekit(args["config"], args["out"], args["shard_params"], 0)
seconds = time.perf_counter() - t0
done.set()
print(json.dumps({"baseline": baseline, "peak": rss("VmHWM:"), "seconds": seconds,
                  "anon": peaks["RssAnon:"], "file": peaks["RssFile:"]}))
"""


def build_model(path: Path, seed: int, hidden: int, layers: int, vocab: int) -> int:
    """A random Qwen2 saved as safetensors (with a small tokenizer); returns its weight bytes."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         intermediate_size=4 * hidden, tie_word_embeddings=False)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path, safe_serialization=True)
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="linear",
                        choices=["linear", "slerp", "ties", "dare_ties"])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard-params", type=int, default=50_000_000,
                        help="parameters per output shard (the stage's shard_params)")
    args = parser.parse_args()

    import transformers
    from synergy import merging

    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        size = build_model(tmp / "sft", 1, args.hidden, args.layers, args.vocab)
        build_model(tmp / "rl", 2, args.hidden, args.layers, args.vocab)
        build_model(tmp / "base", 3, args.hidden, args.layers, args.vocab)
        print(f"inputs: 3 random Qwen2 models, {size / 2**20:.0f} MiB each "
              f"(built in {time.perf_counter() - t0:.0f}s)")
        config = merging.mergekit_config(args.method, 0.5, str(tmp / "sft"), str(tmp / "rl"),
                                         str(tmp / "base"), density=0.5, dtype="float32")
        payload = json.dumps({"config": config, "out": str(tmp / "merged"),
                              "shard_params": args.shard_params})
        wall = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True,
                              text=True)
        wall = time.perf_counter() - wall
        if done.returncode:
            sys.exit(f"merge failed:\n{done.stderr[-3000:]}")
        child = json.loads(done.stdout.strip().splitlines()[-1])
        # ru_maxrss of waited-for children (KiB on Linux): a cross-check of the child's VmHWM.
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        merged = sum(f.stat().st_size for f in (tmp / "merged").glob("*.safetensors"))
    peak, base = child["peak"], child["baseline"]["VmRSS:"]
    anon = child["anon"] - child["baseline"]["RssAnon:"]
    print(f"method {args.method}, SFT ratio 0.5, shards of {args.shard_params:,} parameters")
    print(f"merge time: {child['seconds']:.1f}s (subprocess wall {wall:.1f}s)")
    print(f"peak RSS {peak / 2**20:.0f} MiB (getrusage children {children_peak / 2**20:.0f} "
          f"MiB); after imports {base / 2**20:.0f} MiB; output {merged / 2**20:.0f} MiB")
    print(f"sampled peaks: anonymous {child['anon'] / 2**20:.0f} MiB, file-backed (mapped "
          f"weights, reclaimable) {child['file'] / 2**20:.0f} MiB")
    print(f"peak RSS / input model size: {peak / size:.2f}x "
          f"(peak minus imports: {(peak - base) / size:.2f}x; goal <= 2x)")
    print(f"merge's own memory (anonymous, above imports) / input model size: "
          f"{anon / size:.2f}x")


if __name__ == "__main__":
    main()
