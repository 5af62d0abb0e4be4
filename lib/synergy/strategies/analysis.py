"""Reading 05's results (pure: tables in, tables and figures out): the comparison, the
training budgets, synergy against the parents, the paper's findings at equal budget, and
the run's closing statement.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synergy.grpo_analysis import examples as same_questions
from synergy.merging import synergy_check
from synergy.stats import overall_difference, paired_difference
from synergy.strategies import two_stage
from synergy.strategies.config import (
    COMBINATIONS,
    CONTROL,
    PARENTS,
    StrategiesConfig,
    rl_reference,
)
from synergy.training import read_jsonl

GOAL_MAX_DROP, GOAL_TOKEN_SHARE = 0.02, 0.5  # the goal of a mode-choosing model
TRAINING_CURVES = {
    "reward": "reward (weighted)", "rewards/accuracy_reward/mean": "accuracy reward",
    "completions/clipped_ratio": "truncated completions (clip ratio)",
    "completions/mean_length": "completion length (tokens)",
    "strategy/gated_share": "share of rollouts gated to SFT",
    "strategy/sft_updates": "separate SFT updates (buffered)",
    "strategy/prefix_share": "expert prefix share", "strategy/mu": "aux SFT weight mu",
    "strategy/sft_loss": "SFT NLL per token"}


def load_curves(stage_path: str | Path, labels: list[str]) -> pd.DataFrame:
    """Every logged step of the stage's runs: GRPO `curves.jsonl`, SFT `log.jsonl`."""
    frames = []
    for label in labels:
        folder = Path(stage_path) / "runs" / label
        rows = read_jsonl(folder / "curves.jsonl") or read_jsonl(folder / "log.jsonl")
        if rows:
            frames.append(pd.DataFrame(rows).assign(run=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "step"])


def plan_table(cfg: StrategiesConfig, specs: list) -> pd.DataFrame:
    """What this config trains: one row per model, its start, trainer, routing plan and the
    GRPO settings it changes."""
    rows = []
    for s in specs:
        plan = dataclasses.asdict(s.plan) if s.plan is not None else {}
        budget = s.settings.get("max_completion_length")
        rows.append({"model": s.name, "family": s.family, "starts from": s.start,
                     "trainer": s.trainer, "response budget": budget
                     or (cfg.max_completion_length if s.trainer == "grpo" else None),
                     "plan": ", ".join(f"{k}={v}" for k, v in
                                       {**plan, **s.settings}.items()
                                       if k != "max_completion_length")})
    return pd.DataFrame(rows)


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["label", "family", "trainer", "steps", "rows", "train_runtime",
            "seconds_per_step", "reused"]
    return runs[[c for c in cols if c in runs.columns]] if len(runs) else runs


def family_runs(runs: pd.DataFrame, family: str) -> list[str]:
    return list(runs.loc[runs["family"] == family, "label"]) if len(runs) else []


# --- training budgets ---------------------------------------------------------------------

BUDGET_COLUMNS = ["model", "stage", "starts from", "questions", "rollouts", "optimizer steps",
                  "SFT tokens", "RL completion tokens", "train seconds", "counted"]


def budget_row(model: str, stage: str, start: str, record: dict[str, Any]) -> dict[str, Any]:
    """One model's training budget from its training record (`budget` as its trainer counted
    it; wall time of the whole training)."""
    b = record.get("budget") or {}
    seconds = record.get("train_runtime", record.get("train_seconds", np.nan))
    return {"model": model, "stage": stage, "starts from": start,
            "questions": b.get("questions", np.nan), "rollouts": b.get("rollouts", 0),
            "optimizer steps": b.get("optimizer_steps", record.get("steps", np.nan))
            + b.get("sft_steps", 0),
            "SFT tokens": b.get("sft_tokens", 0),
            "RL completion tokens": b.get("rl_completion_tokens", 0)
            + b.get("mode_tokens", 0),
            "train seconds": seconds,
            "counted": "yes" if b.get("complete") else
            "no record" if not b else "partly (resumed from a checkpoint without counts)"}


def budget_table(parents: list[dict[str, Any]], runs: pd.DataFrame) -> pd.DataFrame:
    """The training budget of both parents (`parents`: budget_row dicts) and every model of
    05 (`runs`: its run records), and of the hybrid as a whole (warm-up + RL)."""
    rows = list(parents)
    for r in runs.to_dict("records") if len(runs) else []:
        rows.append(budget_row(r["label"], "05_strategies", str(r.get("start", "")), r))
    table = pd.DataFrame(rows, columns=BUDGET_COLUMNS)
    hybrid = table[table["model"].str.startswith("hybrid")]
    if len(hybrid) > 1:
        total = hybrid[BUDGET_COLUMNS[3:9]].sum(min_count=1).to_dict()
        total["questions"] = hybrid["questions"].max()
        table = pd.concat([table, pd.DataFrame([{
            "model": "hybrid (warm-up + RL)", "stage": "05_strategies",
            "starts from": hybrid["starts from"].iloc[0], **total,
            "counted": "yes" if (hybrid["counted"] == "yes").all() else "partly"}])],
            ignore_index=True)
    return table


# --- the comparison -----------------------------------------------------------------------

def comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Models as rows; accuracy and mean generated tokens per answer per level and overall,
    and the tokens generated for one answer to every question (the router's probes count)."""
    order = list(dict.fromkeys(table["model"]))
    acc = table.pivot(index="model", columns="level", values="accuracy").loc[order]
    tokens = table.pivot(index="model", columns="level", values="mean_length").loc[order]
    every = table[table["level"] == "all"].set_index("model").loc[order]
    return pd.concat([acc.add_prefix("acc "), tokens.add_prefix("tokens "),
                      (every["mean_length"] * every["questions"]).rename("tokens total")],
                     axis=1)


def comparison_figure(table: pd.DataFrame):
    """Accuracy (top) and mean generated tokens (bottom, log scale) per level, per model."""
    import plotly.express as px

    long = table.melt(id_vars=["model", "level"], value_vars=["accuracy", "mean_length"],
                      var_name="measure")
    fig = px.bar(long, x="level", y="value", color="model", barmode="group",
                 facet_row="measure", height=640,
                 title="Every strategy beside its parents: accuracy and tokens per level")
    fig.update_yaxes(matches=None, title=None)
    fig.layout["yaxis"].update(type="log")  # facet rows are laid out bottom-up: tokens
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return fig


def curves_figure(curves: pd.DataFrame, runs: list[str] | None = None,
                  metrics: dict[str, str] | None = None, title: str = "Training curves"):
    """One panel per metric, one line per run (those of `runs`, default all)."""
    import plotly.express as px

    part = curves if runs is None else curves[curves["run"].isin(runs)]
    metrics = {k: v for k, v in (metrics or TRAINING_CURVES).items()
               if k in part.columns and part[k].notna().any()}
    if part.empty or not metrics:
        return px.line(title=f"{title}: nothing logged (reused or not run)")
    long = part.melt(id_vars=["run", "step"], value_vars=list(metrics), var_name="metric",
                     value_name="value").dropna(subset=["value"])
    long["metric"] = long["metric"].map(metrics)
    fig = px.line(long, x="step", y="value", color="run", facet_col="metric",
                  facet_col_wrap=3, height=280 * -(-len(metrics) // 3), title=title,
                  category_orders={"metric": list(metrics.values())})
    fig.update_yaxes(matches=None, showticklabels=True, title=None)
    return fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))


def examples(results: dict[str, pd.DataFrame], n: int, seed: int = 0) -> pd.DataFrame:
    """The same questions answered by every sampled model (first sample each)."""
    return same_questions({k: v for k, v in results.items() if "samples" in v.columns},
                          n, seed)


def combinations_run(table: pd.DataFrame) -> list[str]:
    names = list(dict.fromkeys(table["model"]))
    return [m for m in names if m.split("-")[0] in COMBINATIONS]


def budget_of(rl: str) -> str:
    """In words, the budget at which a model is compared with the RL model `rl`."""
    return "equal budget (the RL control: same questions, steps, rollouts)" \
        if rl == CONTROL else "04's RL parent (its samples are the training data, or no control ran)"


def synergy_table(table: pd.DataFrame, models: list[str], margin: float,
                  parents: tuple[str, str] | None = None) -> pd.DataFrame:
    """`merging.synergy_check` of each model against two parents (default: SFT and its RL
    reference, `config.rl_reference`), plus its best and worst per-level gap to the better
    parent (synergy: best > margin and worst >= -margin) and the RL model it was judged
    against."""
    has_control = CONTROL in set(table["model"])
    groups: dict[tuple[str, str], list[str]] = {}
    for m in models:
        groups.setdefault(parents or ("sft", rl_reference(m, has_control)), []).append(m)
    acc = table[table["level"] != "all"].pivot(index="model", columns="level",
                                              values="accuracy")
    parts = []
    for pair, members in groups.items():
        check = synergy_check(table, members, pair, margin)
        gaps = acc.loc[list(check["model"])].sub(acc.loc[list(pair)].max(), axis=1)
        parts.append(check.assign(best_gap=gaps.max(axis=1).to_numpy(),
                                  worst_gap=gaps.min(axis=1).to_numpy(), rl=pair[1]))
    order = {m: i for i, m in enumerate(models)}
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["model", "above_both", "below_better_parent", "synergy", "best_gap",
                 "worst_gap", "rl"])
    return out.sort_values("model", key=lambda s: s.map(order)).reset_index(drop=True)


def goal_check(table: pd.DataFrame, model: str,
               results: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    """The goal of a mode-choosing model: overall above both parents (03's SFT, 04's RL) —
    beyond the paired 95% interval when per-question `results` are given —, no level more
    than 0.02 below the better parent, at most half of SFT's tokens."""
    acc = table.pivot(index="model", columns="level", values="accuracy")
    tokens = table.pivot(index="model", columns="level", values="mean_length")
    levels = [c for c in acc.columns if c != "all"]
    overall_gap = acc.at[model, "all"] - acc.loc[list(PARENTS), "all"].max()
    level_gap = (acc.loc[model, levels] - acc.loc[list(PARENTS), levels].max()).min()
    token_share = tokens.at[model, "all"] / max(tokens.at["sft", "all"], 1e-9)
    low = np.nan  # the lower end of the smaller paired difference to a parent
    if results is not None and model in results and all(p in results for p in PARENTS):
        low = min(paired_difference(results[model], results[p]).set_index("level")
                  .at["all", "diff_low"] for p in PARENTS)
    above = overall_gap > 0 and (np.isnan(low) or low > 0)
    return {"model": model, "overall": acc.at[model, "all"], "overall_gap": overall_gap,
            "overall_gap_low": low, "worst_level_gap": level_gap,
            "token_share_of_sft": token_share,
            "met": bool(above and level_gap >= -GOAL_MAX_DROP
                        and token_share <= GOAL_TOKEN_SHARE)}


def think_share_rises(by_level: pd.Series, tolerance: float = 0.02) -> bool:
    """The think share rises with the level: higher on the hardest level than on the
    easiest, and never more than `tolerance` below the level before."""
    v = by_level.sort_index().to_numpy(dtype=float)
    return bool(len(v) >= 2 and v[-1] > v[0] and np.all(np.diff(v) >= -tolerance))


def paper_findings(table: pd.DataFrame, curves: pd.DataFrame, runs: pd.DataFrame,
                   margin: float) -> pd.DataFrame:
    """The paper's findings on strategies, each judged from this run's numbers against the
    RL model of the strategies' budget (`rl_reference`), 04's RL parent shown beside."""
    acc = table.pivot(index="model", columns="level", values="accuracy")
    has_control = CONTROL in acc.index
    budget = "; ".join(sorted({budget_of(rl_reference(m, has_control))
                               for m in combinations_run(table)}))
    rows = []
    combos = combinations_run(table)
    syn = synergy_table(table, combos, margin) if combos else pd.DataFrame()
    if len(syn):
        winners = list(syn.loc[syn["synergy"], "model"])
        rows.append(("No combination beats both SFT and RL on some level without losing on "
                     "another", not winners, budget,
                     f"beating both: {', '.join(winners) or 'none'}"))
        refs = {m: rl_reference(m, has_control) for m in combos}
        below = [m for m in combos if acc.at[m, "all"] <= acc.at[refs[m], "all"] + margin]
        rows.append(("Every combination ends at or below RL overall",
                     len(below) == len(combos), budget, ", ".join(
                         f"{m} {acc.at[m, 'all']:.2f} vs {refs[m]} {acc.at[refs[m], 'all']:.2f}"
                         for m in combos) + (f" (04's RL parent {acc.at['rl', 'all']:.2f})"
                                             if has_control else "")))
    two = two_stage.two_stage_table(table, curves, runs)
    if len(two) >= 2:
        rows.append(("Two-stage needs a long response budget: short budgets truncate "
                     "(high clip ratio) and end lower", two_stage.needs_budget(two),
                     "two-stage runs at equal steps, different response budgets",
                     "; ".join(f"{r.model}: clip {r.clipped_ratio:.2f}, acc {r.accuracy:.2f}"
                               for r in two.itertuples())))
    order = [f for f in ("progressive", "data_mixing", "interleaved", "two_stage")
             if any(m.split("-")[0] == f for m in combos)]
    if len(order) >= 2:
        best = {f: max(acc.at[m, "all"] for m in combos if m.split("-")[0] == f)
                for f in order}
        ranked = sorted(order, key=lambda f: -best[f])
        strict = all(best[a] > best[b] for a, b in zip(order, order[1:]))
        rows.append(("Ranking progressive > data mixing > interleaved > two-stage (paper avg "
                     "54.9 / 54.0 / 53.6 / 51.4)", strict, "the strategies' budget",
                     ", ".join(f"{f} {best[f]:.2f}" for f in ranked)))
    return pd.DataFrame([{"finding": f, "status": "reproduced" if ok else "not reproduced",
                          "compared at": b, "this run": ev} for f, ok, b, ev in rows],
                        columns=["finding", "status", "compared at", "this run"])


def against_rl(results: dict[str, pd.DataFrame], models: list[str]) -> pd.DataFrame:
    """Each model's overall accuracy minus the RL control's and minus 04's RL parent's,
    paired over the questions both answered (`judging.with_judged` results: a judged pair
    also over its judged questions), with 95% intervals (points) and how many questions."""
    rows = []
    for m in models:
        row = {"model": m}
        for ref, label in ((CONTROL, "vs RL control"), ("rl", "vs 04's RL")):
            if ref not in results or m == ref:
                continue
            d = overall_difference(results[m], results[ref])
            row[label], row[f"{label}: questions"] = d.short(), d.questions
        rows.append(row)
    table = pd.DataFrame(rows)
    counts = [c for c in table.columns if c.endswith(": questions")]
    return table.astype({c: "Int64" for c in counts})  # blank where not compared


def statement(table: pd.DataFrame, results: dict[str, pd.DataFrame], margin: float) -> str:
    """What this run shows, computed from its numbers (markdown)."""
    acc = table.pivot(index="model", columns="level", values="accuracy")
    tokens = table.pivot(index="model", columns="level", values="mean_length")
    lines = [f"- Parents: SFT {acc.at['sft', 'all']:.2f} ({tokens.at['sft', 'all']:.0f} "
             f"tokens), RL {acc.at['rl', 'all']:.2f} ({tokens.at['rl', 'all']:.0f} tokens), "
             f"base {acc.at['base', 'all']:.2f}"
             + (f"; the RL control at the strategies' budget {acc.at[CONTROL, 'all']:.2f}."
                if CONTROL in acc.index else ".")]
    combos = combinations_run(table)
    if combos:
        syn = synergy_table(table, combos, margin).sort_values(
            ["worst_gap", "best_gap"], ascending=False)
        top = syn.iloc[0]
        lines.append(
            f"- Closest to synergy: **{top['model']}** (best level {top['best_gap']:+.2f} "
            f"vs the better of SFT and {top['rl']} ({budget_of(top['rl'])}), worst level "
            f"{top['worst_gap']:+.2f}; overall {acc.at[top['model'], 'all']:.2f}).")
        winners = list(syn.loc[syn["synergy"], "model"])
        lines.append(f"- Combinations beating both parents on some level without losing more "
                     f"than {margin:.2f} on another: {', '.join(winners) or 'none'} — the "
                     f"paper's finding (none) {'does not hold' if winners else 'holds'} "
                     f"on this run.")
    if "oracle" in results:
        picked = results["oracle"]["picked_sft"].astype(bool)
        lines.append(f"- Room for choosing the mode per question: the SFT model answers "
                     f"{picked.sum()} of {len(picked)} evaluation questions better than RL; "
                     f"picking the better model per question (the oracle) gives "
                     f"{acc.at['oracle', 'all']:.2f} against RL's {acc.at['rl', 'all']:.2f}.")
    for model in ("router", "hybrid", "adaptive", "adaptive-grpo", "oracle"):
        if model not in acc.index:
            continue
        g = goal_check(table, model, results)
        misses = []
        if g["overall_gap"] <= 0:
            misses.append(f"overall {-g['overall_gap']:.3f} short of the better parent")
        elif g["overall_gap_low"] <= 0:
            misses.append("overall above the better parent but within the 95% interval")
        if g["worst_level_gap"] < -GOAL_MAX_DROP:
            misses.append(f"worst level {-g['worst_level_gap']:.3f} below the better parent "
                          f"(allowed {GOAL_MAX_DROP})")
        if g["token_share_of_sft"] > GOAL_TOKEN_SHARE:
            misses.append(f"{g['token_share_of_sft']:.2f} of SFT's tokens (allowed "
                          f"{GOAL_TOKEN_SHARE})")
        share = ""
        if "think_share" in results.get(model, pd.DataFrame()):
            by_level = results[model].groupby("level")["think_share"].mean()
            rising = think_share_rises(by_level)
            share = (f"; think share by level {' / '.join(f'{v:.2f}' for v in by_level)} "
                     f"({'rising with the level' if rising else 'not rising with the level'})")
            if not rising:
                misses.append("think share not rising with the level")
        met = g["met"] and not misses
        interval = "" if np.isnan(g["overall_gap_low"]) else \
            f", paired 95% interval's lower end {g['overall_gap_low']:+.3f}"
        lines.append(f"- **{model}**: overall {g['overall']:.2f} "
                     f"({g['overall_gap']:+.3f} vs the better parent{interval}), worst level "
                     f"{g['worst_level_gap']:+.3f}, {g['token_share_of_sft']:.2f} of SFT's "
                     f"tokens{share}: goal {'met' if met else 'missed: ' + '; '.join(misses)}.")
    return "\n".join(lines)
