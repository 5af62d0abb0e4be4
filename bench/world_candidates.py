"""Candidate worlds for issue 23: what a change of the world does to the base, in minutes.

    .venv/bin/python bench/world_candidates.py --set long_fraction=0.06 \\
        --set trace_fraction=0.5,long_fraction=0.06,max_steps=8

Each `--set` is one candidate: `world` keys of the profile (default `params/tiny.yaml`)
changed as given. A candidate gets its own run, `world-<keys and values>`, whose profile is
written to `outputs/<run>/profile.yaml`; the real 00_world and 01_stratify run on it (a
world already trained with the same keys is reused from the cache), then the base is sampled
as 06 samples the parents (the `merging` section's eval keys: temperature 0.6, its samples
per question). Printed per candidate, the default's world first:
- the levels of the 200 evaluation questions (L1..L5 counts);
- the base's accuracy per level at the evaluation temperature;
- the share of its answers that open a `<think>` trace (RL gains on this world are large
  when few do: RL learns to open one every time);
- the pivotal `meta` words (the profile's `pivotal.categories`) per 1k response tokens and
  the share of answers holding one (SFT raises a rate the base has, or brings the words in).

The rest of the series decides the findings; run it on a candidate's profile:
`.venv/bin/python -m synergy run --profile outputs/<run>/profile.yaml`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml
from synergy import evaluation, pipeline, pivotal, stages, stratify
from synergy.config import load_profile, profile_section
from synergy.files import write_text
from synergy.runs import Run
from synergy.task import THINK_OPEN

ROOT = Path(__file__).resolve().parents[1]


def parse_set(text: str) -> dict[str, object]:
    """`a=1,b=0.5` -> {"a": 1, "b": 0.5} (values read as YAML scalars)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(p) != 2 or not p[0] for p in pairs):
        raise SystemExit(f"--set {text!r}: expected key=value[,key=value...]")
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def candidate_profile(profile: dict, changes: dict[str, object],
                      base_name: str) -> tuple[str, dict]:
    unknown = sorted(set(changes) - set(profile["world"]))
    if unknown:
        raise SystemExit(f"--set: unknown world keys {unknown}; the world's keys: "
                         f"{sorted(profile['world'])}")
    name = "-".join([base_name] + [f"{k}{v}" for k, v in changes.items()]) if changes \
        else base_name
    out = {**profile, "run": {**profile["run"], "run_name": name},
           "world": {**profile["world"], **changes}}
    return name, out


def describe(path: Path, profile: dict) -> dict[str, object]:
    """00 and 01 on the candidate's profile, then the base sampled with 06's eval keys."""
    t0 = time.perf_counter()
    pipeline.run_series(path, [stages.WORLD.name, stages.STRATIFY.name], log_output=False)
    cfg = stages.MERGING.config.from_mapping(
        profile_section(profile, stages.MERGING.section, path), str(path))
    levels = stratify.load(cfg.output_root, cfg.run_name)
    results = evaluation.evaluate_external(
        cfg, ["world"], stratify.benchmark_questions(levels.levels),
        stratify.config_of(Run.of(cfg)).prompt_suffix,
        upstream={stages.STRATIFY.name: levels.manifest["artifact_id"]}, progress=True)
    accuracy = evaluation.per_level(results).set_index("level")["accuracy"]
    responses = pivotal.responses_frame(results)
    answers = responses["text"]
    meta = {"meta": profile["pivotal"]["categories"]["meta"]}
    counts = pivotal.category_counts(responses, meta)
    with_meta = answers.map(lambda a: any(pivotal.count_words(a, meta["meta"]).values()))
    levels_count = levels.levels["level"].value_counts()
    return {"levels": "/".join(str(int(levels_count.get(level, 0))) for level in range(1, 6)),
            **{f"base {k}": round(100 * v, 1) for k, v in accuracy.items()},
            "opens trace %": round(100 * answers.str.contains(THINK_OPEN, regex=False).mean(), 1),
            "meta per 1k": round(counts.loc[counts["level"] == "all", "per_1k_tokens"].sum(), 2),
            "answers with meta %": round(100 * with_meta.mean(), 2),
            "seconds": round(time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(ROOT / "params" / "tiny.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="world keys of one candidate, key=value[,key=value...]; repeat")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    rows = {}
    for changes in [{}] + [parse_set(s) for s in args.sets]:
        name, candidate = candidate_profile(profile, changes, "world")
        path = ROOT / profile["run"]["output_root"] / name / "profile.yaml"
        write_text(path, yaml.safe_dump(candidate, sort_keys=False))
        print(f"[world_candidates] {name}: {changes or 'the profile as it is'}", flush=True)
        rows[name] = describe(path, candidate)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame(rows).T.to_string())


if __name__ == "__main__":
    main()
