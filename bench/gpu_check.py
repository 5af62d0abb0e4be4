"""The GPU box's first check (one GPU, under 10 minutes); run through bench/gpu_check.sh.

    python bench/gpu_check.py cuda                # the driver's CUDA against torch's
    python bench/gpu_check.py engines --out DIR   # tiny world: vLLM vs the HF engine
    python bench/gpu_check.py grpo --out DIR      # a few GRPO steps with vLLM colocate

`engines` trains (or reuses) the tiny profile's world, then on its 200 eval questions:
1. greedy decoding with both engines: the share of identical responses (the two engines
   compute the same model, so this should be ~1; fp16/bf16 kernels may flip a near tie);
2. stratification with the tiny profile's sampling (16 samples, early stopping) through each
   engine: level counts, the share of questions whose level is the same, and the total
   variation distance between the two level distributions. vLLM samples with its own
   per-request generator seeded by the same per-sample seed, the HF engine with keyed Gumbel
   noise: the same seed does not give the same tokens across engines, so levels differ
   question by question by sampling noise while each engine alone stays reproducible,
   resumable and exact under early stopping;
3. generation throughput of both engines on the same prompts x samples, and the ratio.
`cuda` compares the CUDA version the NVIDIA driver supports (nvidia-smi's "CUDA Version")
with the one torch was built for (`torch.version.cuda`; PyPI's torch 2.13 / 2.14 are CUDA
13.0 builds, environment.yml): a driver older than torch's CUDA major version cannot run
it, and the message says so, with what to do, before anything else fails less clearly.
`grpo` writes a tiny GRPO profile with `vllm_mode: colocate` and runs
`python -m synergy train grpo` on it (8 optimizer steps), then prints its record.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"
RUN = "gpu-check"


def world_model(out: Path) -> str:
    from synergy import pipeline, stages, world

    pipeline.run_stage(stages.WORLD, TINY, {"run_name": RUN, "output_root": str(out)},
                       log_output=False)
    return world.load(str(out), RUN).model_path


def engines(out: Path) -> None:
    import pandas as pd
    import torch
    from synergy import task, world
    from synergy.config import load_profile, profile_section
    from synergy.generation import (
        HFEngine,
        SamplingSpec,
        VLLMEngine,
        chat_prompt,
        engine_arguments,
    )
    from synergy.runs import Run
    from synergy.stratify import StratifyConfig, level_questions

    t0 = time.perf_counter()
    model = world_model(out)
    print(f"[gpu-check] tiny world ready in {time.perf_counter() - t0:.0f} s: {model}")
    wcfg = world.config_of(Run(out, RUN))
    questions = task.questions_frame(task.eval_questions(wcfg))
    scfg = StratifyConfig.from_mapping(
        {**profile_section(load_profile(TINY), "stratify", TINY), "output_root": str(out),
         "run_name": RUN}, str(TINY))
    hf = HFEngine.from_path(model, batch_rows=scfg.batch_rows, device="cuda")
    vl = VLLMEngine(model, batch_rows=scfg.batch_rows, **engine_arguments(memory=0.5))
    prompts = [chat_prompt(hf.tokenizer, q) for q in questions["question"]]
    keys = list(questions["qid"])

    greedy = SamplingSpec(0.0, 1.0, 0, scfg.max_new_tokens)
    a = [r[0].text for r in hf.generate(prompts, keys, 0, 1, greedy, 0)]
    b = [r[0].text for r in vl.generate(prompts, keys, 0, 1, greedy, 0)]
    same = sum(x == y for x, y in zip(a, b)) / len(a)
    print(f"[gpu-check] greedy: {same:.1%} of {len(a)} responses identical (vLLM vs HF)")

    levels = {}
    for name, engine in (("hf", hf), ("vllm", vl)):
        t = time.perf_counter()
        df = level_questions(engine, model, questions, scfg, out / f"cache-{name}", False)
        levels[name] = df["level"].to_numpy()
        print(f"[gpu-check] stratify with {name}: {time.perf_counter() - t:.1f} s, levels "
              + ", ".join(f"L{k}={int((df['level'] == k).sum())}" for k in range(1, 6)))
    agree = float((levels["hf"] == levels["vllm"]).mean())
    counts = pd.DataFrame({n: pd.Series(v).value_counts(normalize=True) for n, v in
                           levels.items()}).fillna(0.0)
    tvd = 0.5 * float((counts["hf"] - counts["vllm"]).abs().sum())
    print(f"[gpu-check] levels: {agree:.1%} of questions at the same level; total variation "
          f"distance of the level distributions {tvd:.3f}. Not identical by design: vLLM "
          "draws with its own seeded sampler, the HF engine with keyed Gumbel noise (see "
          "the greedy line for the models agreeing).")

    spec, n = scfg.spec, scfg.n_samples
    rates = {}
    for name, engine in (("hf", hf), ("vllm", vl)):
        engine.generate(prompts[:8], keys[:8], 0, 2, spec, 1)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        rows = engine.generate(prompts, keys, 100, n, spec, 1)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        tokens = sum(c.n_tokens for r in rows for c in r)
        rates[name] = tokens / seconds
        print(f"[gpu-check] {name}: {len(prompts)} prompts x {n} samples, {tokens} tokens in "
              f"{seconds:.2f} s = {rates[name]:.0f} tokens/s")
    print(f"[gpu-check] throughput vLLM / HF engine: {rates['vllm'] / rates['hf']:.1f}x")


def grpo(out: Path) -> None:
    from synergy import stages

    profile = yaml.safe_load(TINY.read_text())
    profile["run"].update(run_name=RUN, output_root=str(out))
    profile["grpo"].update(betas=[0.0], exclude_easiest="none", n_train_questions=64,
                           prompts_per_generation=16, prompts_per_step=8, micro_batch=64,
                           save_steps=1000, logging_steps=1, vllm_mode="colocate",
                           vllm_gpu_memory_utilization=0.3)
    path = out / "grpo-colocate.yaml"
    path.write_text(yaml.safe_dump(profile))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "synergy", "train", "grpo", "--profile", str(path),
                    "--quiet"], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
    runs = out / RUN / stages.GRPO.name / "runs"
    record = json.loads(next(runs.glob("*/done.json")).read_text())
    curves = [json.loads(line) for line in next(runs.glob("*/curves.jsonl")).read_text()
              .splitlines()]
    print(f"[gpu-check] GRPO with vLLM colocate: {record['steps']} steps in "
          f"{time.perf_counter() - t:.0f} s ({record['seconds_per_step']:.2f} s/step); "
          f"reward by step: {[round(c.get('reward', float('nan')), 3) for c in curves]}")


# The oldest driver branch that supports each CUDA major version (NVIDIA's release notes).
DRIVER_FOR_CUDA = {12: "R525", 13: "R580"}


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.strip().split(".") + ["0"])[:2]
    return int(major), int(minor)


def cuda_verdict(driver_cuda: str | None, torch_cuda: str | None,
                 torch_version: str) -> tuple[bool, str]:
    """(whether torch's CUDA build can run on this driver, one line saying so)."""
    if torch_cuda is None:
        return False, (f"torch {torch_version} is not a CUDA build (torch.version.cuda is "
                       "None): install the CUDA 13.0 build (conda env create -f "
                       "environment.yml)")
    if driver_cuda is None:
        return False, ("no NVIDIA driver found (nvidia-smi is missing or printed no "
                       f"'CUDA Version'), but torch {torch_version} is built for CUDA "
                       f"{torch_cuda}")
    have, need = _version(driver_cuda), _version(torch_cuda)
    if have[0] < need[0]:
        branch = DRIVER_FOR_CUDA.get(need[0], "a newer driver")
        return False, (f"the NVIDIA driver is too old: it supports CUDA {driver_cuda}, but "
                       f"torch {torch_version} is built for CUDA {torch_cuda}. Update the "
                       f"driver ({branch} or newer for CUDA {need[0]}.x), or install a torch "
                       f"built for CUDA {have[0]}.x")
    if have < need:
        return True, (f"the driver supports CUDA {driver_cuda}, torch is built for CUDA "
                      f"{torch_cuda}: it runs under CUDA's minor-version compatibility, but "
                      "kernels compiled from PTX at run time may fail; update the driver if "
                      "they do")
    return True, (f"the driver supports CUDA {driver_cuda}, torch {torch_version} is built "
                  f"for CUDA {torch_cuda}: ok")


def driver_cuda() -> str | None:
    """The CUDA version the installed driver supports, from nvidia-smi's header."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", done.stdout)
    return m.group(1) if m else None


def cuda() -> None:
    import torch

    ok, line = cuda_verdict(driver_cuda(), torch.version.cuda, torch.__version__)
    print(f"[gpu-check] cuda: {line}")
    if not ok:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["cuda", "engines", "grpo"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.what == "cuda":
        return cuda()
    if args.out is None:
        parser.error(f"{args.what} needs --out DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    {"engines": engines, "grpo": grpo}[args.what](args.out)


if __name__ == "__main__":
    main()
