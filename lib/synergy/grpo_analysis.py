"""What 04's results say: training curves, the run and level tables, each policy's drift
from its start, examples and the stage's statement. Pure, except `load_curves` (reads the
runs' logs) and `policy_drift` (scores responses under two models); `synergy.grpo` trains
and evaluates, the 04 notebook and the report read through here.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from synergy import models as registry, training
from synergy.evaluation import build_prompts
from synergy.scoring import mean_kl_entropy, token_kl
from synergy.training import read_jsonl

# The curves shown per run (names as TRL 1.x logs them).
CURVES = {
    "reward": "reward (weighted)",
    "rewards/accuracy_reward/mean": "accuracy reward",
    "rewards/format_reward/mean": "format reward",
    "kl": "KL to reference",
    "entropy": "entropy (nats/token)",
    "completions/mean_length": "completion length (tokens)",
    "completions/clipped_ratio": "truncated completions",
    "clip_ratio/region_mean": "PPO-clipped tokens",
    "frac_reward_zero_std": "groups with zero reward variance",
    "easiest_dropped": "completions dropped as easiest",
}


def load_curves(stage_path: str | Path, labels: list[str] | None = None) -> pd.DataFrame:
    """Every logged training step of the stage's runs (long table: one row per log)."""
    root = Path(stage_path) / "runs"
    labels = labels or sorted(p.name for p in root.iterdir() if p.is_dir())
    frames = [pd.DataFrame(read_jsonl(root / label / "curves.jsonl")) for label in labels]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves_figure(curves: pd.DataFrame, metrics: dict[str, str] | None = None):
    """One panel per training metric, one line per run (interactive)."""
    import plotly.express as px

    metrics = {k: v for k, v in (metrics or CURVES).items() if k in curves.columns}
    long = curves.melt(id_vars=["run", "step"], value_vars=list(metrics),
                       var_name="metric", value_name="value").dropna(subset=["value"])
    long["metric"] = long["metric"].map(metrics)
    fig = px.line(long, x="step", y="value", color="run", facet_col="metric",
                  facet_col_wrap=3, facet_row_spacing=0.07, height=260 * -(-len(metrics) // 3),
                  category_orders={"metric": list(metrics.values())},
                  title="GRPO training curves")
    fig.update_yaxes(matches=None, showticklabels=True, title=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return fig


def headline_policy(runs: pd.DataFrame) -> pd.Series:
    """The first policy trained with a KL term (the paper's RL model), else the first."""
    with_kl = runs[runs["beta"] > 0]
    return (with_kl if len(with_kl) else runs).iloc[0]


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["label", "beta", "steps", "seconds_per_step", "train_runtime", "reused"]
    return runs[[c for c in cols if c in runs.columns]]


def level_pivot(table: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Models as rows, levels as columns (input: `evaluation.per_level`)."""
    order = list(dict.fromkeys(table["model"]))
    pivot = table.pivot(index="model", columns="level", values=value)
    return pivot.loc[order]


def drift_table(curves: pd.DataFrame, window: int = 3) -> pd.DataFrame:
    """How far each run moved: first vs last logged entropy and length, mean and last KL."""
    rows = []
    for run, part in curves.sort_values("step").groupby("run", sort=False):
        head, tail = part.head(window), part.tail(window)
        row = {"run": run, "steps": int(part["step"].max())}
        for col, name in (("reward", "reward"), ("entropy", "entropy"),
                          ("completions/mean_length", "length")):
            if col in part:
                row[f"{name}_start"], row[f"{name}_end"] = head[col].mean(), tail[col].mean()
        row["kl_end"] = tail["kl"].mean() if "kl" in part else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def policy_drift(results: dict[str, pd.DataFrame], models: dict[str, str], ref_path: str,
                 prompt_suffix: str = "", max_samples: int = 400, batch: int = 4) -> pd.DataFrame:
    """Per model: mean per-token KL(model || reference) and the model's entropy, measured on
    the model's own evaluation responses (`scoring.token_kl`, `batch` responses per forward
    pass, as 07's `kl_batch_size` in the paper profiles: 64 responses of ~8k tokens make one
    ~19 GiB MLP activation in the 7B). Unlike TRL's logged `kl` (only when beta != 0),
    this measures every policy the same way, beta 0 included."""
    ref, processing = registry.load_for_scoring(ref_path)
    rows = []
    for name, path in models.items():
        df = results[name].explode("samples").head(max_samples)
        prompts, images = build_prompts(SimpleNamespace(template=processing), df,
                                        prompt_suffix)
        model, _ = registry.load_for_scoring(path)
        kl = token_kl(model, ref, processing, prompts, list(df["samples"]), images, batch)
        del model  # the next policy takes its place on the device
        training.release_memory()
        stats = mean_kl_entropy(kl)
        rows.append({"model": name, "kl_to_init": stats["kl"], "entropy": stats["entropy"],
                     "tokens": stats["tokens"]})
    return pd.DataFrame(rows)


def examples(results: dict[str, pd.DataFrame], n: int, seed: int = 0) -> pd.DataFrame:
    """The same few questions per level answered by every model (first sample each)."""
    first = next(iter(results.values()))
    picks = pd.concat([g.sample(min(n, len(g)), random_state=seed)
                       for _, g in first.groupby("level")])
    rows = []
    for _, q in picks.iterrows():
        row = {"level": f"L{q['level']}", "question": q["question"], "answer": q["answer"]}
        for name, df in results.items():
            match = df[df["question"] == q["question"]].iloc[0]
            row[name] = match["samples"][0]
        rows.append(row)
    return pd.DataFrame(rows)


def statement(table: pd.DataFrame, drift: pd.DataFrame, curves: pd.DataFrame,
              runs: pd.DataFrame, tolerance: float = 0.03, drift_margin: float = 0.1) -> str:
    """What the run shows, computed from its numbers (markdown)."""
    acc = level_pivot(table, "accuracy")
    length = level_pivot(table, "mean_length")
    levels = [c for c in acc.columns if c != "all"]
    ref = "base" if "base" in acc.index else acc.index[0]
    lines = []
    for label in runs["label"]:
        delta = acc.loc[label, levels] - acc.loc[ref, levels]
        up = [lv for lv in levels if delta[lv] > tolerance]
        down = [lv for lv in levels if delta[lv] < -tolerance]
        kept = [lv for lv in levels if lv not in up + down]
        raised = "every level" if len(up) == len(levels) else ", ".join(up) or "no level"
        verdict = (f"raises accuracy on {raised}"
                   + (f", keeps {', '.join(kept)} within {tolerance:.0%}" if kept else "")
                   + (f" and lowers {', '.join(down)}" if down else ""))
        lines.append(
            f"- **{label}** {verdict} vs {ref} (overall {acc.loc[ref, 'all']:.2f} → "
            f"{acc.loc[label, 'all']:.2f}; per level "
            + ", ".join(f"{lv} {acc.loc[ref, lv]:.2f}→{acc.loc[label, lv]:.2f}" for lv in levels)
            + f"), mean response {length.loc[ref, 'all']:.0f} → {length.loc[label, 'all']:.0f}"
              " tokens.")
    sft = [m for m in acc.index if str(m).startswith("sft")]
    for s in sft:
        rl_len = length.loc[list(runs["label"]), "all"].mean()
        lines.append(f"- **{s}** answers in {length.loc[s, 'all']:.0f} tokens on average, "
                     f"{length.loc[s, 'all'] / max(rl_len, 1e-9):.1f}x the RL policies' "
                     f"{rl_len:.0f}; overall accuracy {acc.loc[s, 'all']:.2f}.")
    zero, kl_runs = runs[runs["beta"] == 0], runs[runs["beta"] > 0]
    if len(zero) and len(kl_runs):
        d = drift.set_index("model")
        start = "init" if "init" in d.index else ref
        curve = drift_table(curves).set_index("run") if len(curves) else None
        z = zero["label"].iloc[0]
        for k in kl_runs["label"]:
            moved = {"KL to the start": (d.loc[z, "kl_to_init"], d.loc[k, "kl_to_init"]),
                     "entropy change": (d.loc[z, "entropy"] - d.loc[start, "entropy"],
                                        d.loc[k, "entropy"] - d.loc[start, "entropy"])
                     if start in d.index else (np.nan, np.nan)}
            if curve is not None and "length_end" in curve:
                moved["training length change"] = tuple(
                    curve.loc[r, "length_end"] - curve.loc[r, "length_start"] for r in (z, k))
            # "Further" only beyond `drift_margin` (relative): single-seed runs differ a little
            # by chance, and a few percent says nothing about the KL term.
            further = [m for m, (a, b) in moved.items() if abs(a) > (1 + drift_margin) * abs(b)]
            less = [m for m, (a, b) in moved.items() if abs(b) > (1 + drift_margin) * abs(a)]
            lines.append(
                f"- Without KL ({z}) vs {k}: "
                + "; ".join(f"{m} {a:+.3f} vs {b:+.3f}" for m, (a, b) in moved.items())
                + f". Beyond {drift_margin:.0%}, beta 0 drifted further in "
                + (", ".join(further) if further else "none of these")
                + (f" and less in {', '.join(less)}" if less else "") + ".")
    if len(kl_runs) and "kl" in curves:
        weight = max(b * curves.loc[curves["run"] == r, "kl"].max()
                     for r, b in zip(kl_runs["label"], kl_runs["beta"]))
        lines.append(f"- The KL term's weight in the loss (beta x logged KL) peaked at "
                     f"{weight:.1e} per token, against advantages of order 1.")
    secs = runs["seconds_per_step"].mean()
    lines.append(f"- {int(runs['steps'].iloc[0])} optimizer steps per policy, "
                 f"{secs:.2f} s per GRPO step on average.")
    return "\n".join(lines)
