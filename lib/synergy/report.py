"""The run report: every stage of one run, beside the paper's numbers, with a checklist.

Reads `outputs/<run>/<stage>/` (manifests, `per_level.csv`, merge and pivotal-token tables,
training curves); a stage that has not run shows as "not run". The paper's numbers live in
`synergy/data/paper_results.yaml`. The checklist judges each of the paper's findings from
this run's numbers. Model-generated text is HTML-escaped wherever it is shown.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.resources
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from synergy.config import StageConfig

STAGE = "08_report"
LEVELS = ["L1", "L2", "L3", "L4", "L5"]
# Where each role's per-level numbers come from, best first: 06 and 07 evaluate base, SFT
# and RL with one sampling spec, so their numbers compare directly.
ROLE_SOURCES = ["06_merging", "07_pivotal_tokens", "04_grpo", "03_sft", "01_stratify"]
_MERGE = re.compile(r"^(linear|slerp|ties|dare_ties)-([0-9.]+)$")


@dataclasses.dataclass
class ReportConfig(StageConfig):
    SECTION = "report"

    n_examples: int
    top_tokens: int
    margin: float
    long_ratio: float

    def validate(self) -> None:
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")
        self.require(self.top_tokens >= 1, "top_tokens", "must be >= 1")
        self.require(0 <= self.margin < 1, "margin", "must be in [0, 1)")
        self.require(self.long_ratio > 1, "long_ratio", "must be > 1")


# --- reading a run ------------------------------------------------------------------------

def paper_results() -> dict:
    import yaml

    text = importlib.resources.files("synergy").joinpath("data/paper_results.yaml").read_text()
    return yaml.safe_load(text)


def paper_table(paper: dict) -> pd.DataFrame:
    """The paper's headline table (accuracy %, per benchmark and average)."""
    return pd.DataFrame([{"model": m["name"], **dict(zip(paper["benchmarks"], m["scores"])),
                          "Avg": m["avg"]} for m in paper["models"]])


def stage_status(output_root: str, run_name: str) -> pd.DataFrame:
    """Every stage of the series (and any other folder of the run): ran or not, when, id."""
    from synergy import pipeline
    from synergy.runs import read_json

    root = Path(output_root) / run_name
    names = sorted(({s.name for s in pipeline.STAGES}
                    | {p.name for p in root.glob("[0-9][0-9]_*")}) - {STAGE})
    rows = []
    for name in names:
        path = root / name / "manifest.json"
        m = read_json(path) if path.exists() else {}
        rows.append({"stage": name, "status": "ran" if m else "not run",
                     "artifact_id": m.get("artifact_id", ""), "finished": m.get("finished", ""),
                     "seconds": round(float(m.get("seconds", m.get("train_seconds", np.nan))),
                                      1) if m else np.nan,
                     "commit": (m.get("git", {}).get("commit") or "")[:10]})
    return pd.DataFrame(rows)


def run_levels(output_root: str, run_name: str) -> pd.DataFrame:
    """Per-level accuracy and length of every model every stage evaluated (long table).

    Columns: stage, model, level, accuracy, mean_length, format_rate, questions. The base's
    stratification pass rates appear as stage 01_stratify, model "base".
    """
    root = Path(output_root) / run_name
    parts = [pd.read_csv(p).assign(stage=p.parent.name)
             for p in sorted(root.glob("[0-9][0-9]_*/per_level.csv"))]
    levels_path = root / "01_stratify" / "levels"
    if levels_path.exists():
        from synergy.stratify import load_levels

        df = load_levels(output_root, run_name)
        df = df.assign(accuracy=df["pass_rate"],
                       mean_length=df["lengths"].map(lambda x: float(np.mean(x))))
        groups = [(f"L{lv}", p) for lv, p in df.groupby("level")] + [("all", df)]
        parts.append(pd.DataFrame([{"stage": "01_stratify", "model": "base", "level": lv,
                                    "questions": len(p), "accuracy": p["accuracy"].mean(),
                                    "mean_length": p["mean_length"].mean(),
                                    "format_rate": np.nan} for lv, p in groups]))
    if not parts:
        return pd.DataFrame(columns=["stage", "model", "level", "accuracy", "mean_length",
                                     "format_rate", "questions"])
    return pd.concat(parts, ignore_index=True)


def main_models(output_root: str, run_name: str) -> dict[str, list[str]]:
    """The model a bare "03_sft" / "04_grpo" means in this run (as 06 and 07 resolve it),
    with every name the stage's manifest gives that same model folder."""
    from synergy.merging import STAGE_LABELS, main_model, stage_models
    from synergy.runs import read_manifest

    out = {}
    for stage in ("03_sft", "04_grpo"):
        folder = Path(output_root) / run_name / stage
        if (folder / "manifest.json").exists():
            models = stage_models(output_root, run_name, stage)
            if models:
                main = main_model(read_manifest(folder), models, STAGE_LABELS[stage])
                out[stage] = [main] + [n for n, p in models.items()
                                       if p == models[main] and n != main]
    return out


def role_levels(levels: pd.DataFrame,
                mains: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Base, SFT and RL (from one stage where possible) plus every combination model.

    `mains` names the SFT and RL models of stages 03 and 04 (`main_models`), used when 06
    and 07 (which evaluate base, SFT and RL side by side) have not run.

    Adds a `role` column: base, sft, rl, a merge name ("linear-0.25") or `<stage>/<model>`
    for 05 strategies and other models. Merges at ratio 0 or 1 are the parents: left out.
    """
    picked = []
    for role, stages in (("base", ROLE_SOURCES), ("sft", ROLE_SOURCES[:2] + ["03_sft"]),
                         ("rl", ROLE_SOURCES[:2] + ["04_grpo"])):
        for stage in stages:
            part = levels[levels["stage"] == stage]
            if role in set(part["model"]):
                picked.append(part[part["model"] == role].assign(role=role))
                break
            names = (mains or {}).get(stage, []) if (role, stage) in (("sft", "03_sft"),
                                                                      ("rl", "04_grpo")) else []
            own = next((n for n in names if n in set(part["model"])), None)
            if own:
                picked.append(part[part["model"] == own].assign(role=role))
                break
    names = levels["model"].astype(str)
    ratio = names.str.extract(_MERGE)[1].astype(float)
    merges = levels.loc[(levels["stage"] == "06_merging") & ratio.notna()
                        & ~ratio.isin([0.0, 1.0])]
    picked.append(merges.assign(role=merges["model"]))
    # 05 strategies, and the other SFT / RL models (teachers, sweeps, KL ablations).
    taken = {(p["stage"].iloc[0], p["model"].iloc[0]) for p in picked[:-1] if len(p)}
    # (04 also re-evaluates base, its start and the SFT models: "sft-<name>".)
    others = levels[levels["stage"].str.match(r"0[345]_")
                    & ~levels["model"].astype(str).str.match(r"^(base|init|sft-.*)$")]
    others = others.loc[np.array([(s, m) not in taken for s, m in
                                  zip(others["stage"], others["model"])], dtype=bool)]
    # A model several stages evaluated (04 re-evaluates the SFT models) appears once.
    others = others.sort_values("stage", kind="stable").drop_duplicates(["model", "level"])
    picked.append(others.assign(role=others["stage"] + "/" + others["model"]))
    return pd.concat(picked, ignore_index=True)


def _wide(roles: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    if roles.empty:
        return pd.DataFrame(columns=LEVELS + ["all"])
    table = roles.pivot_table(index="role", columns="level", values=value, sort=False)
    return table.reindex(columns=[c for c in LEVELS + ["all"] if c in table.columns])


# This run's counterparts of the paper's other models, matched by name: the world's
# teachers stand in for the paper's trace sources (careful ~ s1.1-R1, lowquality ~
# s1-Gemini2), GRPO labels carry their beta and easy-question filter, 05 its strategy.
PAPER_MATCH = {"sft:s1.1-R1": r"^03_sft/careful$", "sft:s1-Gemini2": r"^03_sft/lowquality$",
               "rl_kl0": r"^04_grpo/.*beta0$", "rl_no_easiest": r"^04_grpo/.*(static|dynamic)",
               "two_stage": r"^05_.*two", "interleaved": r"^05_.*interleav",
               "progressive": r"^05_.*progress", "data_mixing": r"^05_.*mix"}


def _find_role(role: str, roles: pd.DataFrame) -> str | None:
    """This run's row for a paper role (see PAPER_MATCH; "sft" may also be "03_sft/careful")."""
    if role in set(roles["role"]):
        return role
    pattern = PAPER_MATCH.get(role)
    for r, stage, model in roles[["role", "stage", "model"]].drop_duplicates().itertuples(
            index=False):
        if pattern and any(re.search(pattern, key, re.IGNORECASE)
                           for key in (r, f"{stage}/{model}")):
            return r
    return None


def paper_vs_run(paper: dict, roles: pd.DataFrame) -> pd.DataFrame:
    """The paper's average and gain over its base beside this run's per-level accuracy.

    Absolute numbers do not compare (a 7B VLM on five benchmarks vs a small model on the
    run's task); the gains over the base and their signs per level do.
    """
    wide = _wide(roles)
    where = {r: f"{st}/{m}" for r, st, m in roles[["role", "stage", "model"]].itertuples(
        index=False)} if len(roles) else {}
    base_paper = next(m["avg"] for m in paper["models"] if m["role"] == "base")
    base_run = wide.loc["base"] if "base" in wide.index else None
    rows = []
    for m in paper["models"]:
        match = _find_role(m["role"], roles) if len(roles) else None
        row = {"paper model": m["name"], "paper Avg %": m["avg"],
               "paper gain vs base": round(m["avg"] - base_paper, 1),
               "this run": (f"{match} ({where[match]})" if match in ("base", "sft", "rl")
                            else match) if match else "not run"}
        for lv in list(wide.columns):
            row[f"run {lv} %"] = round(100 * wide.at[match, lv], 1) if match else np.nan
        if match and base_run is not None and "all" in wide.columns:
            row["run gain vs base"] = round(100 * (wide.at[match, "all"] - base_run["all"]), 1)
        else:
            row["run gain vs base"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# --- the checklist --------------------------------------------------------------------------

def checklist(paper: dict, roles: pd.DataFrame, counts: pd.DataFrame | None,
              margin: float, long_ratio: float) -> pd.DataFrame:
    """Each of the paper's findings, judged from this run's numbers.

    `roles` is `role_levels` output; `counts` the pivotal stage's category counts (or None).
    Status: "reproduced", "not reproduced", or "not run" when the numbers it needs are absent.
    """
    acc, length = _wide(roles), _wide(roles, "mean_length")
    have = set(acc.index)
    lv = [c for c in LEVELS if c in acc.columns]
    hard = [c for c in lv if c in ("L4", "L5")]
    out = {}

    def judge(key, needs, ok, evidence, levels=lv):
        missing = [n for n in needs if n not in have]
        if missing:
            out[key] = ("not run", f"needs {', '.join(missing)}")
        elif not levels:
            out[key] = ("not run", "no questions at the levels it concerns in this run")
        else:
            out[key] = ("reproduced" if ok() else "not reproduced", evidence())

    def d(model, cols):  # accuracy change vs base, in points
        return 100 * (acc.loc[model, cols] - acc.loc["base", cols])

    easy = [c for c in lv if c == "L1"]
    judge("sft_hard", ["base", "sft"], lambda: d("sft", hard).mean() > 100 * margin,
          lambda: f"SFT - base on {'+'.join(hard)}: {d('sft', hard).mean():+.1f} points", hard)
    judge("sft_easy", ["base", "sft"], lambda: d("sft", easy).iloc[0] < -100 * margin,
          lambda: f"SFT - base on L1: {d('sft', easy).iloc[0]:+.1f} points", easy)
    judge("sft_long", ["base", "sft"],
          lambda: length.at["sft", "all"] >= long_ratio * length.at["base", "all"],
          lambda: f"mean length SFT {length.at['sft', 'all']:.0f} vs base "
                  f"{length.at['base', 'all']:.0f} tokens "
                  f"({length.at['sft', 'all'] / max(length.at['base', 'all'], 1e-9):.1f}x)")
    judge("rl_all", ["base", "rl"],
          lambda: (d("rl", lv) >= -100 * margin).all() and d("rl", ["all"]).iloc[0] > 0,
          lambda: "RL - base: " + ", ".join(f"{c} {v:+.1f}" for c, v in d("rl", lv).items()))
    judge("rl_short", ["base", "rl"],
          lambda: length.at["rl", "all"] < long_ratio * length.at["base", "all"],
          lambda: f"mean length RL {length.at['rl', 'all']:.0f} vs base "
                  f"{length.at['base', 'all']:.0f} tokens")
    combos = [r for r in acc.index if _MERGE.match(r) or r.startswith("05_")]

    def synergies():
        from synergy.merging import synergy_check

        return synergy_check(roles.rename(columns={"model": "_m", "role": "model"}),
                             combos, margin=margin)

    judge("no_synergy", ["sft", "rl"] + (combos[:1] or ["a combination (05 or 06)"]),
          lambda: not synergies()["synergy"].any(),
          lambda: (f"{int(synergies()['synergy'].sum())} of {len(combos)} combinations beat "
                   f"both parents without losing elsewhere: "
                   f"{', '.join(synergies().query('synergy')['model']) or 'none'}"))
    interior = [r for r in combos if _MERGE.match(r)]

    def deviations(methods):  # |merge - linear interpolation of the parents|, per point
        rows = []
        for r in (interior if {"sft", "rl"} <= have else []):
            m = _MERGE.match(r)
            if m.group(1) in methods:
                t = float(m.group(2))
                expect = t * acc.loc["sft", lv] + (1 - t) * acc.loc["rl", lv]
                lo = np.minimum(acc.loc["sft", lv], acc.loc["rl", lv]) - margin
                hi = np.maximum(acc.loc["sft", lv], acc.loc["rl", lv]) + margin
                rows += [(abs(acc.at[r, c] - expect[c]), lo[c] <= acc.at[r, c] <= hi[c])
                         for c in lv]
        return np.array(rows, dtype=float).reshape(-1, 2)

    lin = deviations(("linear", "slerp"))
    judge("interpolate", ["sft", "rl"] + ([] if len(lin) else ["linear or SLERP merges"]),
          lambda: lin[:, 1].mean() >= 0.8,
          lambda: f"{100 * lin[:, 1].mean():.0f}% of linear/SLERP (ratio, level) points lie "
                  f"between the parents (+-{100 * margin:.0f} points)")
    ties = deviations(("ties",))
    judge("ties_erratic", ["sft", "rl"] + ([] if len(ties) else ["TIES merges"])
          + ([] if len(lin) else ["linear or SLERP merges"]),
          lambda: ties[:, 0].mean() > lin[:, 0].mean(),
          lambda: f"mean distance from interpolation: TIES {100 * ties[:, 0].mean():.1f} vs "
                  f"linear/SLERP {100 * lin[:, 0].mean():.1f} points")
    if counts is None or counts.empty:
        out["meta_tokens"] = ("not run", "needs 07_pivotal_tokens")
    else:
        meta = counts[(counts["level"] == "all") & (counts["category"] == "meta")]
        per = meta.groupby("model").agg(n=("count", "sum"), tokens=("tokens", "first"))
        per = 1000 * per["n"] / per["tokens"].clip(lower=1)
        if "sft" not in per.index:
            out["meta_tokens"] = ("not run", "needs the SFT model in 07_pivotal_tokens")
        else:
            others = per.drop("sft")
            ok = per["sft"] > 0 and (others.empty or per["sft"] >= 5 * others.max())
            out["meta_tokens"] = ("reproduced" if ok else "not reproduced",
                                  "meta words per 1k tokens: " + ", ".join(
                                      f"{m} {v:.2f}" for m, v in per.items()))
    return pd.DataFrame([{"finding": paper["findings"][k], "status": s, "this run": e}
                         for k, (s, e) in out.items()])


# --- other tables -------------------------------------------------------------------------

def training_curves(output_root: str, run_name: str) -> pd.DataFrame:
    """Every training log of the run (CSV files with a `step` column), long: stage, source,
    run, step, metric, value."""
    root = Path(output_root) / run_name
    parts = []
    for path in sorted(root.glob("[0-9][0-9]_*/**/*.csv")):
        if path.name in ("per_level.csv",) or "eval" in path.parts or "cache" in path.parts:
            continue
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "step" not in df.columns or df.empty:
            continue
        ids = [c for c in ("label", "run", "model", "beta") if c in df.columns]
        numeric = [c for c in df.select_dtypes("number").columns if c not in ("step", *ids)]
        long = df.melt(id_vars=["step", *ids], value_vars=numeric, var_name="metric")
        run = (long[ids].astype(str).agg("/".join, axis=1) if ids
               else path.parent.name if path.parent.name != path.parents[1].name else "")
        parts.append(long.assign(stage=path.relative_to(root).parts[0],
                                 source=path.name, run=run)
                     [["stage", "source", "run", "step", "metric", "value"]])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["stage", "source", "run", "step", "metric", "value"])


def response_examples(output_root: str, run_name: str, n: int, seed: int = 0) -> pd.DataFrame:
    """A few responses of base, SFT and RL (from the stage that evaluated all three)."""
    from synergy.evaluation import load_results
    from synergy.runs import ArtifactError

    root = Path(output_root) / run_name
    for stage in ROLE_SOURCES[:2]:
        try:
            results = load_results(root / stage)
        except ArtifactError:
            continue
        rows = []
        for model in [m for m in ("base", "sft", "rl") if m in results]:
            df = results[model]
            for _, row in df.sample(min(n, len(df)), random_state=seed).iterrows():
                rows.append({"model": model, "level": f"L{row['level']}",
                             "question": row["question"], "answer": row["answer"],
                             "response": row["samples"][0], "correct": bool(row["correct"][0])})
        return pd.DataFrame(rows)
    return pd.DataFrame(columns=["model", "level", "question", "answer", "response", "correct"])


def escaped_html(df: pd.DataFrame, empty: str = "not run"):
    """A table whose every cell is HTML-escaped: model text is shown, never interpreted."""
    from IPython.display import HTML

    if df.empty:
        return HTML(f"<p><em>{html.escape(empty)}</em></p>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(
        f"<td style='text-align:left; white-space:pre-wrap'>{html.escape(str(v))}</td>"
        for v in row) + "</tr>" for row in df.itertuples(index=False))
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _not_run(stage: str) -> pd.DataFrame:
    return pd.DataFrame({"status": [f"{stage} not run"]})


def top_pivotal_tokens(output_root: str, run_name: str, n: int) -> pd.DataFrame:
    """Top-n tokens by total KL per compared model, side by side (rank x model)."""
    path = Path(output_root) / run_name / "07_pivotal_tokens" / "kl_tokens.csv"
    if not path.exists():
        return _not_run("07_pivotal_tokens")
    tokens = pd.read_csv(path, keep_default_na=False)
    cols = {}
    for model, part in tokens.groupby("model", sort=False):
        top = part.sort_values("total_kl", ascending=False).head(n)
        cols[f"{model}: token"] = list(top["token"].astype(str))
        cols[f"{model}: KL share"] = list(top["kl_share"].round(3))
    table = pd.DataFrame({k: pd.Series(v) for k, v in cols.items()})
    return table.set_axis(range(1, len(table) + 1)).rename_axis("rank")


def category_counts(output_root: str, run_name: str) -> pd.DataFrame:
    """Pivotal-word counts per model over all levels (the paper's Table 5 layout)."""
    from synergy.pivotal import category_table

    path = Path(output_root) / run_name / "07_pivotal_tokens" / "category_counts.csv"
    if not path.exists():
        return _not_run("07_pivotal_tokens")
    return category_table(pd.read_csv(path))


def examples_html(output_root: str, run_name: str, n: int, seed: int = 0):
    """A few base / SFT / RL responses, escaped."""
    return escaped_html(response_examples(output_root, run_name, n, seed),
                        empty="no evaluated responses yet (06 or 07 not run)")


# --- figures ------------------------------------------------------------------------------

def _placeholder(title: str, note: str):
    import plotly.graph_objects as go

    fig = go.Figure().update_layout(title=title, xaxis_visible=False, yaxis_visible=False,
                                    height=250)
    return fig.add_annotation(text=note, showarrow=False, font_size=16)


def accuracy_figure(roles: pd.DataFrame):
    """Accuracy per level for base, SFT, RL and every combination, in one figure."""
    from synergy.evaluation import accuracy_figure as bars

    if roles.empty:
        return _placeholder("Accuracy by level", "no evaluated models yet")
    return bars(roles.drop(columns="model").rename(columns={"role": "model"}),
                "Accuracy by difficulty level, every model of the run")


def tradeoff_figure(roles: pd.DataFrame):
    """Accuracy vs mean response length per model and level: the long-CoT trade-off."""
    import plotly.express as px

    if roles.empty:
        return _placeholder("Accuracy vs length", "no evaluated models yet")
    return px.scatter(roles, x="mean_length", y="accuracy", color="role", facet_col="level",
                      facet_col_wrap=3, log_x=True, hover_data=["stage", "questions"],
                      title="Accuracy vs mean response length (tokens), per level")


def training_figure(curves: pd.DataFrame):
    import plotly.express as px

    keep = curves[curves["metric"].str.contains(
        "loss|reward|kl|entropy|length|clip", case=False, regex=True)] if len(curves) else curves
    if keep.empty:
        return _placeholder("Training curves", "no training stage has run")
    keep = keep.assign(series=keep["stage"] + " " + keep["run"].astype(str))
    return px.line(keep, x="step", y="value", color="series", facet_col="metric",
                   facet_col_wrap=3, title="Training curves").update_yaxes(matches=None)


def merge_figure(output_root: str, run_name: str):
    from synergy import merging

    path = Path(output_root) / run_name / merging.STAGE / "merges.csv"
    if not path.exists():
        return _placeholder("Merge curves", "06_merging not run")
    stage = merging.load_stage(output_root, run_name)
    return merging.merge_curve_figure(merging.merge_curves(stage["per_level"], stage["merges"]))


def static_accuracy_png(roles: pd.DataFrame, path: str | Path):
    """Paper-style static bars (seaborn) of base / SFT / RL per level, saved as a PNG at
    `path` and returned for display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = roles[roles["role"].isin(["base", "sft", "rl"]) & roles["level"].isin(LEVELS)]
    fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=120)
    if data.empty:
        ax.text(0.5, 0.5, "base / SFT / RL not evaluated yet", ha="center", va="center")
        ax.set_axis_off()
    else:
        sns.barplot(data=data.assign(accuracy=100 * data["accuracy"]), x="level", y="accuracy",
                    hue="role", hue_order=[r for r in ("base", "sft", "rl")
                                           if r in set(data["role"])],
                    order=LEVELS, palette="deep", ax=ax)
        ax.set(ylabel="accuracy (%)", xlabel="difficulty level (L1 easiest)", ylim=(0, 100))
        ax.legend(title="model", frameon=False)
        sns.despine(ax=ax)
    fig.tight_layout()
    import io

    from IPython.display import Image

    from synergy.runs import atomic_path

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Image(data=buf.getvalue(), format="png")


# --- the stage ----------------------------------------------------------------------------

def run(cfg: ReportConfig, progress: bool = True) -> dict:
    """Collect the run's numbers; writes paper_vs_run.csv, checklist.csv, a PNG, manifest."""
    from synergy.runs import now, read_json, stage_dir, write_manifest, write_text

    started, t0 = now(), time.perf_counter()
    out = stage_dir(cfg, STAGE)
    paper = paper_results()
    status = stage_status(cfg.output_root, cfg.run_name)
    levels = run_levels(cfg.output_root, cfg.run_name)
    roles = role_levels(levels, main_models(cfg.output_root, cfg.run_name))
    counts_path = Path(cfg.output_root) / cfg.run_name / "07_pivotal_tokens" / \
        "category_counts.csv"
    counts = pd.read_csv(counts_path) if counts_path.exists() else None
    compared = paper_vs_run(paper, roles)
    checks = checklist(paper, roles, counts, cfg.margin, cfg.long_ratio)
    write_text(out / "paper_vs_run.csv", compared.to_csv(index=False))
    write_text(out / "checklist.csv", checks.to_csv(index=False))
    root = Path(cfg.output_root) / cfg.run_name
    upstream = {s: read_json(root / s / "manifest.json")["artifact_id"]
                for s in status.query("status == 'ran'")["stage"] if s != STAGE}
    write_manifest(out, cfg, started=started, upstream=upstream,
                   extra={"seconds": time.perf_counter() - t0,
                          "report_html": str(out / f"{STAGE}.html"),
                          "checklist": dict(zip(checks["finding"], checks["status"]))})
    return {"paper": paper, "status": status, "levels": levels, "roles": roles,
            "paper_vs_run": compared, "checklist": checks, "counts": counts}
