"""The run report: every stage of one run, beside the paper's numbers, with a checklist.

`run(cfg)` reads one run (manifests, `per_level.csv`, merge and pivotal-token tables,
training curves) and returns every table the report shows; the figures are pure functions
of those tables. A stage that has not run shows as "not run". The paper's findings are
judged by `findings` (the checklist) from the evidence gathered here. Model-generated text
is HTML-escaped wherever it is shown, and tables are shown without their index
(`escaped_html`).
"""

from __future__ import annotations

import dataclasses
import html

import numpy as np
import pandas as pd

from synergy import (
    grpo_analysis, judging, merging, models, pivotal, stages, staleness, strategies, stratify,
)
from synergy.config import ConfigError, StageConfig, run_name_problem
from synergy.evaluation import load_results
from synergy.files import ArtifactError, read_json, write_text
from synergy.merging import synergy_check
from synergy.pivotal import category_table
from synergy.report_figures import curve_series, model_colors, static_accuracy_png
from synergy.runs import Run, StageResult, stage_run
from synergy.strategies import CONTROL
from synergy.evidence import STATUSES, Evidence, evidence
from synergy.findings import checklist, control_steps, kl_too_short
from synergy.report_roles import (CONTROL_ROLE, ROLE_SOURCES, STRATEGY_PREFIX, headline_roles,
                                  paper_results, paper_vs_run, role_levels, strategy_roles,
                                  wide)

@dataclasses.dataclass
class ReportConfig(StageConfig):
    SECTION = "report"
    RENAMED_KEYS = {"kl_run": "long_run"}  # reports rendered before the long run held 05

    n_examples: int
    top_tokens: int
    margin: float
    long_ratio: float
    long_run: str

    def validate(self) -> None:
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")
        self.require(self.top_tokens >= 1, "top_tokens", "must be >= 1")
        self.require(0 <= self.margin < 1, "margin", "must be in [0, 1)")
        self.require(self.long_ratio > 1, "long_ratio", "must be > 1")
        self.require(self.long_run == "" or run_name_problem(self.long_run) is None, "long_run",
                     f"must be '' or a run name ({run_name_problem(self.long_run)})")


# --- reading a run ------------------------------------------------------------------------


def paper_table(paper: dict) -> pd.DataFrame:
    """The paper's headline table (accuracy %, per benchmark and average)."""
    return pd.DataFrame([{"model": m["name"], **dict(zip(paper["benchmarks"], m["scores"])),
                          "Avg": m["avg"]} for m in paper["models"]])


def stage_status(run: Run) -> pd.DataFrame:
    """Every stage of the series (and any other folder of the run): ran or not, when, id."""
    names = sorted(({s.name for s in stages.STAGES}
                    | {p.name for p in run.root.glob("[0-9][0-9]_*")}) - {stages.REPORT.name})
    rows = []
    for name in names:
        path = run.root / name / "manifest.json"
        m = read_json(path) if path.exists() else {}
        table = run.root / name / "per_level.csv"
        questions = np.nan
        if m and table.exists():
            per_level = pd.read_csv(table)
            overall = per_level.loc[per_level["level"] == "all", "questions"]
            questions = int(overall.max()) if len(overall) else np.nan
        rows.append({"stage": name, "status": "ran" if m else "not run",
                     "artifact_id": m.get("artifact_id", ""), "finished": m.get("finished", ""),
                     "seconds": round(float(m.get("seconds", np.nan)), 1) if m else np.nan,
                     "eval_questions": questions,
                     "samples_per_question": m.get("params", {}).get("eval_samples", np.nan)
                     if m else np.nan,
                     # 05: more samples for the RL control and the strategies judged against it
                     "control_samples": m.get("params", {}).get("control_eval_samples", 0)
                     if m else 0,
                     "commit": (m.get("git", {}).get("commit") or "")[:10]})
    return pd.DataFrame(rows)


def sample_sizes(status: pd.DataFrame) -> str:
    """What each stage's accuracies rest on (questions x samples per question), from
    `stage_status`: the price of a faster profile, stated beside the checklist (markdown)."""
    sized = status.dropna(subset=["eval_questions", "samples_per_question"])
    if sized.empty:
        return "No stage has evaluated models yet."
    parts = ", ".join(f"{r.stage} {int(r.eval_questions)} x {int(r.samples_per_question)}"
                      + (f" (its RL control and the strategies judged against it: x "
                         f"{int(r.control_samples)})"
                         if getattr(r, "control_samples", 0) else "")
                      for r in sized.itertuples())
    return (f"Accuracies rest on questions x samples per question: {parts}. Fewer questions "
            "or samples widen every interval above (a subset of n of N questions by about "
            "sqrt(N / n)); a difference inside its interval is not called reproduced. The "
            "intervals cover which questions and samples were drawn, not training's own "
            "randomness: each model is one training run at `run.seed`, and a comparison of "
            "models still mid-training (05's strategies at their few steps) can turn with the "
            "seed.")


def run_levels(run: Run) -> pd.DataFrame:
    """Per-level accuracy and length of every model every stage evaluated (long table).

    Columns: stage, model, level, accuracy, mean_length, format_rate, questions. The base's
    stratification pass rates appear as stage 01_stratify, model "base"; models `synergy
    eval` evaluated appear as stage "external".
    """
    files = sorted(run.root.glob("[0-9][0-9]_*/per_level.csv")) + sorted(
        run.external.glob("per_level.csv"))
    parts = [pd.read_csv(p).assign(stage=p.parent.name) for p in files]
    if run.has_run(stages.STRATIFY):
        df = stratify.load(str(run.output_root), run.name).levels
        df = df.assign(accuracy=df["pass_rate"],
                       mean_length=df["lengths"].map(lambda x: float(np.mean(x))))
        groups = [(f"L{lv}", p) for lv, p in df.groupby("level")] + [("all", df)]
        parts.append(pd.DataFrame([{"stage": stages.STRATIFY.name, "model": "base",
                                    "level": lv, "questions": len(p),
                                    "accuracy": p["accuracy"].mean(),
                                    "mean_length": p["mean_length"].mean(),
                                    "format_rate": np.nan} for lv, p in groups]))
    if not parts:
        return pd.DataFrame(columns=["stage", "model", "level", "accuracy", "mean_length",
                                     "format_rate", "questions"])
    return pd.concat(parts, ignore_index=True)


def main_models(run: Run) -> dict[str, list[str]]:
    """Per model stage (03, 04): its main model (the registry's) first, then every other
    name its manifest gives the same folder."""
    out = {}
    for stage in (stages.SFT, stages.GRPO):
        if run.has_run(stage):
            found = models.stage_models(run, stage)
            main = models.main_model(run, stage)
            out[stage.name] = [main] + [n for n, p in found.items()
                                        if p == found[main] and n != main]
    return out


def role_answers(run: Run, roles: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per role, the per-question results of the stage its numbers come from (qid, level,
    accuracy, samples, lengths): paired differences and facts about single samples. The
    models 05 and 06 judged also hold their answers on their judged questions
    (`judging.with_judged`). Roles whose stage saved none (01_stratify's base pass rates)
    are left out."""
    keep = ["qid", "level", "accuracy", "samples", "lengths"]
    by_stage: dict[str, dict[str, pd.DataFrame]] = {}
    out = {}
    for role, stage, model in roles[["role", "stage", "model"]].drop_duplicates().itertuples(
            index=False):
        if stage == stages.STRATIFY.name:
            continue
        if stage not in by_stage:
            try:
                by_stage[stage] = load_results(run.root / stage)
            except ArtifactError:
                by_stage[stage] = {}
            by_stage[stage] = judging.with_judged(by_stage[stage],
                                                  judging.load(run.root / stage))
        df = by_stage[stage].get(model)
        if df is not None and set(keep) <= set(df.columns):
            out[role] = df[keep + (["judged"] if "judged" in df else [])]
    return out


def weight_distances(run: Run) -> pd.DataFrame:
    """How far each model 03 and 04 trained moved from the base (`models.weight_distance`):
    role ("sft", "rl" for each stage's main model, else "<stage>/<name>"), stage, model,
    learning_rate, relative_distance (all weights), median_tensor_distance."""
    base = run.model(stratify.config_of(run).model).path
    rows = []
    for stage, role, lr in ((stages.SFT, "sft", "lr"), (stages.GRPO, "rl", "learning_rate")):
        if not run.has_run(stage):
            continue
        main = models.main_model(run, stage)
        for name, path in models.stage_models(run, stage).items():
            d = models.weight_distance(path, base)
            rows.append({"role": role if name == main else f"{stage.name}/{name}",
                         "stage": stage.name, "model": name,
                         "learning_rate": run.manifest(stage)["params"].get(lr),
                         "relative_distance": d["relative_distance"],
                         "median_tensor_distance": d["median_tensor_distance"]})
    return pd.DataFrame(rows, columns=["role", "stage", "model", "learning_rate",
                                       "relative_distance", "median_tensor_distance"])


def rl_training(run: Run) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """04's policies as its manifest lists them (label, beta, steps, ...) and their training
    curves (`grpo_analysis.load_curves`); (None, None) before 04 has run."""
    if not run.has_run(stages.GRPO):
        return None, None
    runs = pd.DataFrame(run.manifest(stages.GRPO).get("runs") or [])
    if runs.empty or "label" not in runs:
        return None, None
    return runs, grpo_analysis.load_curves(run.dir(stages.GRPO), list(runs["label"]))


def verdict(checklist: pd.DataFrame, paper: dict) -> str:
    """The report's first line (markdown): the synergy finding's status, and how many of
    the paper's findings this run reproduces."""
    status = dict(zip(checklist["finding"], checklist["status"]))
    counts = checklist["status"].value_counts()
    tally = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
    dilemma = status.get(paper["findings"]["no_synergy"], "not run")
    answer = {"reproduced": "no combination of SFT and RL beats both parents here, as in the "
                            "paper",
              "not reproduced": "a combination beats both SFT and RL here, unlike the paper",
              "not run": "not answered yet (needs SFT, RL and a combination)"}.get(
        dilemma, dilemma)
    return f"**Verdict:** {answer}. Of the paper's {len(checklist)} findings: {tally}."


def staleness_note(table: pd.DataFrame) -> str:
    """Markdown under the verdict: the stages out of date (`staleness.warnings`), or ""."""
    lines = staleness.warnings(table)
    if not lines:
        return ""
    return ("**Out of date:** rerun these stages for a consistent report "
            "(`python -m synergy run --profile <profile> --run-name <run> --stages ...`):\n"
            + "\n".join(f"- {line}" for line in lines))


# --- other tables -------------------------------------------------------------------------

def strategies_table(paper: dict, roles: pd.DataFrame, headlines: dict[str, str] | None,
                     margin: float) -> pd.DataFrame:
    """Every 05 model beside the paper's number for the strategy it stands for: overall
    accuracy and its difference to SFT, to 04's RL and to the RL control at the strategies'
    budget (paper: average over five benchmarks; this run: all levels), and where it beats
    both SFT and its RL model (the control when 05 trained one) or falls below the better.
    `roles`: 05's models and parents on 05's questions (`strategy_roles`), counted in the
    "questions" column."""
    acc = wide(roles)
    names = [r for r in acc.index if r.startswith(STRATEGY_PREFIX)]
    if not names:
        return _not_run_table(stages.STRATEGIES)
    avg = {m["role"]: m["avg"] for m in paper["models"]}
    sizes = roles[roles["level"] == "all"].set_index("role")["questions"]
    parents = all(p in acc.index for p in ("sft", "rl"))
    control = CONTROL_ROLE in acc.index
    check = pd.DataFrame()
    if parents:
        long = acc.reset_index().melt(id_vars="role", var_name="level", value_name="accuracy")
        long = long.rename(columns={"role": "model"})
        rl_of = {n: CONTROL_ROLE if strategies.rl_reference(n[len(STRATEGY_PREFIX):], control)
                 == CONTROL else "rl" for n in names}
        check = pd.concat([synergy_check(long, [n], ("sft", rl_of[n]), margin=margin)
                           for n in names]).set_index("model")
    stands_for = {STRATEGY_PREFIX + m: r for r, m in (headlines or {}).items()}
    rows = []
    for name in names:
        role = stands_for.get(name)
        row = {"model": name[len(STRATEGY_PREFIX):], "paper strategy": role or "",
               "paper Avg %": avg.get(role, np.nan),
               "paper vs SFT": round(avg[role] - avg["sft"], 1) if role in avg else np.nan,
               "paper vs RL": round(avg[role] - avg["rl"], 1) if role in avg else np.nan,
               "run all %": round(100 * acc.at[name, "all"], 1),
               "questions": int(sizes.get(name, 0))}
        if parents:
            row["run vs SFT"] = round(100 * (acc.at[name, "all"] - acc.at["sft", "all"]), 1)
            row["run vs RL"] = round(100 * (acc.at[name, "all"] - acc.at["rl", "all"]), 1)
            if control:
                row["run vs RL control"] = round(
                    100 * (acc.at[name, "all"] - acc.at[CONTROL_ROLE, "all"]), 1)
            row.update({k: check.at[name, k] for k in ("above_both", "below_better_parent",
                                                       "synergy")})
        rows.append(row)
    return pd.DataFrame(rows)


def training_curves(run: Run) -> pd.DataFrame:
    """Every training log of the run (CSV files with a `step` column), long: stage, source,
    run, step, metric, value."""
    parts = []
    for path in sorted(run.root.glob("[0-9][0-9]_*/**/*.csv")):
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
        name = (long[ids].astype(str).agg("/".join, axis=1) if ids
                else path.parent.name if path.parent.name != path.parents[1].name else "")
        parts.append(long.assign(stage=path.relative_to(run.root).parts[0],
                                 source=path.name, run=name)
                     [["stage", "source", "run", "step", "metric", "value"]])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["stage", "source", "run", "step", "metric", "value"])


def response_examples(run: Run, n: int, seed: int = 0) -> pd.DataFrame:
    """A few responses of base, SFT and RL (from the stage that evaluated all three)."""
    for stage in ROLE_SOURCES[:3]:  # 07, 05, 06: each evaluates base, SFT and RL
        try:
            results = load_results(run.root / stage)
        except ArtifactError:
            continue
        rows = []
        for model in [m for m in ("base", "sft", "rl") if m in results]:
            df = results[model]
            for _, row in df.sample(min(n, len(df)), random_state=seed).iterrows():
                rows.append({"model": model, "level": f"L{row['level']}",
                             "question": row["question"], "answer": row["answer"],
                             "response": row["samples"][0], "correct": bool(row["correct"][0])})
        if rows:  # a stage whose results name none of the three: the next source
            return pd.DataFrame(rows)
    return pd.DataFrame(columns=["model", "level", "question", "answer", "response", "correct"])


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{round(float(v), 3):g}"
    return str(v)


def escaped_html(df: pd.DataFrame, empty: str = "not run", summary: str | None = None):
    """How the report shows every table: without the pandas index (named index levels
    become columns), every cell HTML-escaped (model text is shown, never interpreted),
    numbers to 3 decimals, NaN blank. With `summary`, folded under that line (<details>)."""
    from IPython.display import HTML

    if df.empty:
        table = f"<p><em>{html.escape(empty)}</em></p>"
    else:
        if any(n is not None for n in df.index.names):
            df = df.reset_index()
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        body = "".join("<tr>" + "".join(
            f"<td style='text-align:left; white-space:pre-wrap'>{html.escape(_cell(v))}</td>"
            for v in row) + "</tr>" for row in df.itertuples(index=False))
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if summary is not None:
        table = f"<details><summary>{html.escape(summary)}</summary>{table}</details>"
    return HTML(table)


# The paper reports no weight distances; this is what its settings imply (full fine-tuning
# of a 7B model for a few epochs at lr 1e-5, RL at 1e-6), beside which this run's models stand.
PAPER_REGIME = {"model": "paper: Qwen2.5-VL-7B, SFT and RL", "trained in": "",
                "learning rate": "1e-5 (SFT), 1e-6 (RL)",
                "moved (all weights, %)": "well under 1 (expected)",
                "moved (median tensor, %)": ""}


def weight_table(weights: pd.DataFrame) -> pd.DataFrame:
    """`weight_distances` for display, in percent, with the paper's regime as a last row."""
    if "relative_distance" not in weights:
        return weights  # a status table: why the distances are missing
    rows = [{"model": r.model + (f" ({r.role})" if r.role in ("sft", "rl") else ""),
             "trained in": r.stage, "learning rate": f"{r.learning_rate:g}",
             "moved (all weights, %)": f"{100 * r.relative_distance:.1f}",
             "moved (median tensor, %)": f"{100 * r.median_tensor_distance:.1f}"}
            for r in weights.itertuples()]
    return pd.DataFrame(rows + [PAPER_REGIME])


def _not_run_table(stage: stages.Stage) -> pd.DataFrame:
    return pd.DataFrame({"status": [f"{stage.name} not run"]})


def top_pivotal_tokens(tokens: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """Top-n tokens by total KL per compared model, side by side (rank x model)."""
    if tokens is None:
        return _not_run_table(stages.PIVOTAL)
    cols = {}
    for model, part in tokens.groupby("model", sort=False):
        top = part.sort_values("total_kl", ascending=False).head(n)
        cols[f"{model}: token"] = list(top["token"].astype(str))
        cols[f"{model}: KL share"] = list(top["kl_share"].round(3))
    table = pd.DataFrame({k: pd.Series(v) for k, v in cols.items()})
    return table.set_axis(range(1, len(table) + 1)).rename_axis("rank")


def category_counts(counts: pd.DataFrame | None) -> pd.DataFrame:
    """Pivotal-word counts per model over all levels (the paper's Table 5 layout)."""
    return _not_run_table(stages.PIVOTAL) if counts is None else category_table(counts)


# --- the stage ----------------------------------------------------------------------------

@dataclasses.dataclass
class ReportResult(StageResult):
    paper: dict                       # paper_results.yaml
    status: pd.DataFrame              # stage_status
    levels: pd.DataFrame              # run_levels: every model every stage evaluated
    roles: pd.DataFrame               # role_levels: base, SFT, RL, combinations, others
    paper_vs_run: pd.DataFrame
    checklist: pd.DataFrame
    weights: pd.DataFrame             # weight_distances, or why they are missing (status)
    curves: pd.DataFrame              # training_curves
    merge_curves: pd.DataFrame | None  # merging.merge_curves, or None when 06 has not run
    strategies: pd.DataFrame          # strategies_table: 05's models beside the paper's
    budget: pd.DataFrame              # 05's budget table: what each model trained on
    counts: pd.DataFrame | None       # 07's category counts
    tokens: pd.DataFrame | None       # 07's KL per token
    examples: pd.DataFrame            # response_examples
    headline: pd.DataFrame            # headline_roles: one question set
    strategy_roles: pd.DataFrame      # strategy_roles: 05's models on 05's questions
    colors: dict                      # report_figures.model_colors: one colour per model
    verdict: str                      # verdict: the report's first line
    stale: str                        # staleness_note: the stages out of date, or ""
    accuracy_png: bytes               # static_accuracy_png, also saved beside the report


def longer_evidence(run: Run, cfg: ReportConfig, paper: dict,
                    budget: pd.DataFrame | None) -> Evidence | None:
    """The evidence of `report.long_run` for the strategies' comparison, where its RL control
    trained more steps than this run's (`budget`); None where there is no such run, it has
    not run 05, or it trained them no longer."""
    if not cfg.long_run or cfg.long_run == run.name:
        return None
    other = Run(run.output_root, cfg.long_run)
    if not other.has_run(stages.STRATEGIES):
        return None
    theirs = strategies.load(str(other.output_root), other.name).budget
    if (control_steps(theirs) or 0) <= (control_steps(budget) or np.inf):
        return None
    roles = role_levels(run_levels(other), main_models(other))
    return evidence(roles, cfg.margin, cfg.long_ratio, paper=paper,
                    answers=role_answers(other, roles), budget=theirs)


def gather(run: Run, cfg: ReportConfig) -> dict:
    """Everything the report shows, read and computed from the run's stages."""
    paper = paper_results()
    levels = run_levels(run)
    mains = main_models(run)
    roles = role_levels(levels, mains)
    headlines, two_stage, budget = {}, None, None
    if run.has_run(stages.STRATEGIES):
        res = strategies.load(str(run.output_root), run.name)
        headlines = res.manifest.get("paper_roles", {})
        two_stage = strategies.two_stage_table(res.table, res.curves, res.runs)
        budget = res.budget if len(res.budget) else None
    piv = pivotal.load(str(run.output_root), run.name) if run.has_run(stages.PIVOTAL) else None
    merge_curves = None
    if run.has_run(stages.MERGING):
        m = merging.load(str(run.output_root), run.name)
        merge_curves = merging.merge_curves(m.per_level, m.merges)
    try:
        weights = weight_distances(run)
    except (ArtifactError, ConfigError) as e:  # a stage saved no models, or older manifests
        weights = pd.DataFrame({"status": [f"weight distances unavailable: {e}"]})
    rl_runs, rl_curves = rl_training(run)
    kl_from = ""
    if cfg.long_run and cfg.long_run != run.name and kl_too_short(rl_runs, rl_curves):
        other = Run(run.output_root, cfg.long_run)  # the KL ablation's home (tiny-long)
        if other.has_run(stages.GRPO):
            (rl_runs, rl_curves), kl_from = rl_training(other), cfg.long_run
    curves = training_curves(run)
    aliases = {f"{stage}/{names[0]}": role for stage, role in
               ((stages.SFT.name, "sft"), (stages.GRPO.name, "rl"))
               for names in [mains.get(stage)] if names}
    ev = evidence(roles, cfg.margin, cfg.long_ratio, paper=paper,
                  counts=piv.counts if piv else None, words=piv.words if piv else None,
                  two_stage=two_stage,
                  answers=role_answers(run, roles),
                  weights=weights if "relative_distance" in weights else None,
                  rl_runs=rl_runs, rl_curves=rl_curves, kl_from=kl_from,
                  long_run=cfg.long_run if cfg.long_run != run.name else "",
                  budget=budget, longer=longer_evidence(run, cfg, paper, budget))
    checks = checklist(paper, ev)
    own = strategy_roles(levels)
    stale = staleness.staleness(run)
    status = stage_status(run).merge(stale.drop(columns="finished"), on="stage", how="left")
    return {"paper": paper, "status": status, "levels": levels, "roles": roles,
            "stale": staleness_note(stale),
            "paper_vs_run": paper_vs_run(paper, roles, headlines),
            "checklist": checks, "verdict": verdict(checks, paper), "weights": weights,
            "curves": curves, "merge_curves": merge_curves,
            "strategies": strategies_table(paper, own, headlines, cfg.margin),
            "budget": budget if budget is not None else _not_run_table(stages.STRATEGIES),
            "counts": piv.counts if piv else None, "tokens": piv.tokens if piv else None,
            "examples": response_examples(run, cfg.n_examples, cfg.seed),
            "headline": headline_roles(roles, levels), "strategy_roles": own,
            "colors": model_colors([*roles["role"], *curve_series(curves)], aliases)}

def run(cfg: ReportConfig, progress: bool = True) -> ReportResult:
    """Collect the run's numbers; writes paper_vs_run.csv, checklist.csv, a PNG, manifest."""
    with stage_run(cfg, stages.REPORT) as ctx:
        parts = gather(ctx.run, cfg)
        write_text(ctx.dir / "paper_vs_run.csv", parts["paper_vs_run"].to_csv(index=False))
        write_text(ctx.dir / "checklist.csv", parts["checklist"].to_csv(index=False))
        accuracy = static_accuracy_png(parts["roles"], ctx.dir / "accuracy_by_level.png")
        ran = parts["status"].query("status == 'ran'")
        ctx.upstream.update(dict(zip(ran["stage"], ran["artifact_id"])))
        ctx.record(report_html=f"{stages.REPORT.name}.html",
                   checklist=dict(zip(parts["checklist"]["finding"],
                                      parts["checklist"]["status"])))
    return ReportResult(ctx.manifest, ctx.dir, accuracy_png=accuracy, **parts)


def load(output_root: str, run_name: str) -> ReportResult:
    """The report of a run as it was written (checklist and paper table from its files)."""
    r = Run(output_root, run_name)
    manifest, folder = r.manifest(stages.REPORT), r.dir(stages.REPORT)
    parts = gather(r, ReportConfig.from_manifest(manifest["params"], stages.REPORT.name))
    parts["checklist"] = pd.read_csv(folder / "checklist.csv")
    parts["verdict"] = verdict(parts["checklist"], parts["paper"])
    parts["paper_vs_run"] = pd.read_csv(folder / "paper_vs_run.csv")
    return ReportResult(manifest, folder, accuracy_png=(folder / "accuracy_by_level.png")
                        .read_bytes(), **parts)
