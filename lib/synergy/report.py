"""The run report: every stage of one run, beside the paper's numbers, with a checklist.

`run(cfg)` reads one run (manifests, `per_level.csv`, merge and pivotal-token tables,
training curves) and returns every table the report shows; the figures are pure functions
of those tables. A stage that has not run shows as "not run". The paper's numbers live in
`synergy/data/paper_results.yaml`; each of its findings is judged by one function of
`FINDINGS`, keyed like the YAML, from an `Evidence`: per-level accuracy with its 95%
intervals, per-question results (paired differences), weight distances and 04's training
curves. A finding is `reproduced` only when its difference exceeds its uncertainty (and
`margin`); the other statuses are in `STATUSES`. Model-generated text is HTML-escaped
wherever it is shown, and tables are shown without their index (`escaped_html`).
"""

from __future__ import annotations

import dataclasses
import html
import importlib.resources
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from synergy import stages, strategies
from synergy.config import StageConfig
from synergy.runs import EXTERNAL, Run, StageResult
from synergy.strategies import COMBINATIONS, CONTROL

LEVELS = ["L1", "L2", "L3", "L4", "L5"]
# Where each role's per-level numbers come from, best first: 06, 07 and 05 evaluate base,
# SFT and RL with one sampling spec, so their numbers compare directly.
ROLE_SOURCES = [stages.MERGING.name, stages.PIVOTAL.name, stages.STRATEGIES.name,
                stages.GRPO.name, stages.SFT.name, stages.STRATIFY.name]
_MERGE = re.compile(r"^(linear|slerp|ties|dare_ties)-([0-9.]+)$")
_FILTERED = r"-(?:static|dynamic)$"  # 04's policies trained without the easiest questions
# Stages whose other models (teachers, sweeps, KL ablations, strategies) the report lists,
# and the models from outside the run that `synergy eval` evaluated on its benchmark.
MODEL_STAGE_FOLDERS = [stages.SFT.name, stages.GRPO.name, stages.STRATEGIES.name,
                       EXTERNAL]
STRATEGY_PREFIX = f"{stages.STRATEGIES.name}/"  # roles of 05's models: "<stage>/<model>"
CONTROL_ROLE = STRATEGY_PREFIX + CONTROL  # 05's RL control: RL at the strategies' budget


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


def stage_status(run: Run) -> pd.DataFrame:
    """Every stage of the series (and any other folder of the run): ran or not, when, id."""
    from synergy.files import read_json

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
                     "commit": (m.get("git", {}).get("commit") or "")[:10]})
    return pd.DataFrame(rows)


def sample_sizes(status: pd.DataFrame) -> str:
    """What each stage's accuracies rest on (questions x samples per question), from
    `stage_status`: the price of a faster profile, stated beside the checklist (markdown)."""
    sized = status.dropna(subset=["eval_questions", "samples_per_question"])
    if sized.empty:
        return "No stage has evaluated models yet."
    parts = ", ".join(f"{r.stage} {int(r.eval_questions)} x {int(r.samples_per_question)}"
                      for r in sized.itertuples())
    return (f"Accuracies rest on questions x samples per question: {parts}. Fewer questions "
            "or samples widen every interval above (a subset of n of N questions by about "
            "sqrt(N / n)); a difference inside its interval is not called reproduced.")


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
        from synergy import stratify

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
    from synergy import models

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
    accuracy, samples, lengths): paired differences and facts about single samples. Roles
    whose stage saved none (01_stratify's base pass rates) are left out."""
    from synergy.evaluation import load_results
    from synergy.files import ArtifactError

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
        df = by_stage[stage].get(model)
        if df is not None and set(keep) <= set(df.columns):
            out[role] = df[keep]
    return out


def weight_distances(run: Run) -> pd.DataFrame:
    """How far each model 03 and 04 trained moved from the base (`models.weight_distance`):
    role ("sft", "rl" for each stage's main model, else "<stage>/<name>"), stage, model,
    learning_rate, relative_distance (all weights), median_tensor_distance."""
    from synergy import models, stratify

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
    curves (`grpo.load_curves`); (None, None) before 04 has run."""
    from synergy import grpo

    if not run.has_run(stages.GRPO):
        return None, None
    runs = pd.DataFrame(run.manifest(stages.GRPO).get("runs") or [])
    if runs.empty or "label" not in runs:
        return None, None
    return runs, grpo.load_curves(run.dir(stages.GRPO), list(runs["label"]))


def role_levels(levels: pd.DataFrame,
                mains: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Base, SFT and RL (from one stage where possible) plus every combination model.

    `mains` names the SFT and RL models of stages 03 and 04 (`main_models`), used when 06
    and 07 (which evaluate base, SFT and RL side by side) have not run.

    Adds a `role` column: base, sft, rl, a merge name ("linear-0.25") or `<stage>/<model>`
    for 05 strategies and other models. Merges at ratio 0 or 1 are the parents: left out.
    """
    own_stage = {"sft": stages.SFT.name, "rl": stages.GRPO.name}
    picked = []
    for role, sources in (("base", ROLE_SOURCES), ("sft", ROLE_SOURCES[:3] + [own_stage["sft"]]),
                          ("rl", ROLE_SOURCES[:3] + [own_stage["rl"]])):
        for stage in sources:
            part = levels[levels["stage"] == stage]
            if role in set(part["model"]):
                picked.append(part[part["model"] == role].assign(role=role))
                break
            names = (mains or {}).get(stage, []) if own_stage.get(role) == stage else []
            own = next((n for n in names if n in set(part["model"])), None)
            if own:
                picked.append(part[part["model"] == own].assign(role=role))
                break
    names = levels["model"].astype(str)
    ratio = names.str.extract(_MERGE)[1].astype(float)
    merges = levels.loc[(levels["stage"] == stages.MERGING.name) & ratio.notna()
                        & ~ratio.isin([0.0, 1.0])]
    picked.append(merges.assign(role=merges["model"]))
    # The other SFT / RL models (teachers, sweeps, KL ablations), 05's strategies, router,
    # oracle; not the parents a stage re-evaluated (base, init, sft-*, 05's sft and rl).
    taken = {(p["stage"].iloc[0], p["model"].iloc[0]) for p in picked[:-1] if len(p)}
    others = levels[levels["stage"].isin(MODEL_STAGE_FOLDERS)
                    & ~levels["model"].astype(str).str.match(r"^(base|init|sft|rl|sft-.*)$")]
    others = others.loc[np.array([(s, m) not in taken for s, m in
                                  zip(others["stage"], others["model"])], dtype=bool)]
    # A model several stages evaluated (04 re-evaluates the SFT models) appears once.
    others = others.sort_values("stage", kind="stable").drop_duplicates(["model", "level"])
    picked.append(others.assign(role=others["stage"] + "/" + others["model"]))
    return pd.concat(picked, ignore_index=True)


def wide(roles: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Roles as rows, levels (L1..L5, all) as columns."""
    if roles.empty:
        return pd.DataFrame(columns=LEVELS + ["all"])
    table = roles.pivot_table(index="role", columns="level", values=value, sort=False)
    return table.reindex(columns=[c for c in LEVELS + ["all"] if c in table.columns])


# This run's counterparts of the paper's other models, matched by name: the world's
# teachers stand in for the paper's trace sources (careful ~ s1.1-R1, lowquality ~
# s1-Gemini2), GRPO labels carry their beta and easy-question filter.
PAPER_MATCH = {"sft:s1.1-R1": rf"^{stages.SFT.name}/careful$",
               "sft:s1-Gemini2": rf"^{stages.SFT.name}/lowquality$",
               "rl_kl0": rf"^{stages.GRPO.name}/.*beta0$",
               "rl_no_easiest": rf"^{stages.GRPO.name}/.*{_FILTERED}",
               "two_stage": r"two", "interleaved": r"interleav",
               "progressive": r"progress", "data_mixing": r"mix"}


# The paper's combinations (its table's roles): strategies and the best merge.
PAPER_COMBINATIONS = ("two_stage", "interleaved", "progressive", "data_mixing", "linear-0.25")


def is_strategy(role: str) -> bool:
    """A role of 05's combination strategies (the paper's four and the SFT-loss baseline)."""
    return role.startswith(STRATEGY_PREFIX) and role[len(STRATEGY_PREFIX):].split("-")[0] \
        in COMBINATIONS


def _find_role(role: str, roles: pd.DataFrame,
               headlines: dict[str, str] | None = None) -> str | None:
    """This run's row for a paper role: the role itself, the model 05 names for it
    (`headlines`: its manifest's `paper_roles`), else the first PAPER_MATCH ("sft" may also
    be "03_sft/careful")."""
    if role in set(roles["role"]):
        return role
    named = STRATEGY_PREFIX + (headlines or {}).get(role, "")
    if role in (headlines or {}) and named in set(roles["role"]):
        return named
    pattern = PAPER_MATCH.get(role)
    for r, stage, model in roles[["role", "stage", "model"]].drop_duplicates().itertuples(
            index=False):
        if pattern and any(re.search(pattern, key, re.IGNORECASE)
                           for key in (r, f"{stage}/{model}")):
            return r
    return None


def paper_vs_run(paper: dict, roles: pd.DataFrame,
                 headlines: dict[str, str] | None = None) -> pd.DataFrame:
    """The paper's average and gain over its base beside this run's per-level accuracy.

    Absolute numbers do not compare (a 7B VLM on five benchmarks vs a small model on the
    run's task); the gains over the base and their signs per level do.
    """
    acc = wide(roles)
    where = {r: f"{st}/{m}" for r, st, m in roles[["role", "stage", "model"]].itertuples(
        index=False)} if len(roles) else {}
    base_paper = next(m["avg"] for m in paper["models"] if m["role"] == "base")
    base_run = acc.loc["base"] if "base" in acc.index else None
    rows = []
    for m in paper["models"]:
        match = _find_role(m["role"], roles, headlines) if len(roles) else None
        row = {"paper model": m["name"], "paper Avg %": m["avg"],
               "paper gain vs base": round(m["avg"] - base_paper, 1),
               "this run": (f"{match} ({where[match]})" if match in ("base", "sft", "rl")
                            else match) if match else "not run"}
        for lv in list(acc.columns):
            row[f"run {lv} %"] = round(100 * acc.at[match, lv], 1) if match else np.nan
        if match and base_run is not None and "all" in acc.columns:
            row["run gain vs base"] = round(100 * (acc.at[match, "all"] - base_run["all"]), 1)
        else:
            row["run gain vs base"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# --- the checklist: one function per finding of paper_results.yaml -----------------------

# Where the paper states a magnitude, how far from it a run may land before a finding whose
# sign matches counts only "in direction". RL: the paper's gains are a few points (+4.8 on
# average, at most +9.8 on one benchmark), so a gain above this on some level is not "a little".
SMALL_GAIN = 15.0          # accuracy points
FAR_FACTOR = 2.0           # a length ratio off the paper's range by more than this factor
ABOUT_SAME = 5.0           # "does about as well": the paper's gap is 2.3 points (52.8 vs 55.1)
# A 7B model fine-tuned at lr 1e-5 moves its weights by well under 1%; merges of two such
# models stay near both. Past this share of the base's norm the parents are different
# networks, and a linear path between them need not pass through models as good as either.
FAR_MOVE = 0.10
COLLAPSE_STEP = 300        # the paper: without KL the reward collapses near step 300
COLLAPSE_DROP = 0.1        # reward (0-1) lost from its best that counts as a collapse
CURVE_WINDOW = 3           # logged steps averaged for "start", "best" and "end" of a curve
NOT_APPLICABLE = "not applicable on this world"
DIRECTION_ONLY = "reproduced in direction only"
STATUSES = ("reproduced", DIRECTION_ONLY, "not reproduced", NOT_APPLICABLE, "not run")


@dataclasses.dataclass(frozen=True)
class Difference:
    """a - b in accuracy points over some levels, with its 95% interval (NaN: unknown)."""

    points: float
    low: float
    high: float

    def gain(self, margin: float) -> bool:
        """Above `margin` (points) and, where the interval is known, clear of zero."""
        return self.points > margin and (np.isnan(self.low) or self.low > 0)

    def loss(self, margin: float) -> bool:
        return self.points < -margin and (np.isnan(self.high) or self.high < 0)

    def short(self) -> str:
        if np.isnan(self.low):
            return f"{self.points:+.1f}"
        return f"{self.points:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"

    def __str__(self) -> str:
        if np.isnan(self.low):
            return f"{self.points:+.1f} points (no interval)"
        return f"{self.points:+.1f} points [95% CI {self.low:+.1f}, {self.high:+.1f}]"


@dataclasses.dataclass
class Evidence:
    """What the findings are judged from: per-role, per-level accuracy (with its interval)
    and length, per-question results where a stage saved them, and the run's other facts."""

    acc: pd.DataFrame                # role x level (accuracy 0-1)
    length: pd.DataFrame             # role x level (mean tokens)
    low: pd.DataFrame                # role x level: 95% interval of accuracy (NaN: unknown)
    high: pd.DataFrame
    margin: float                    # accuracy change (0-1) that counts as an effect at all
    long_ratio: float                # "much longer": at least this ratio
    paper: dict                      # paper_results.yaml (magnitudes the paper states)
    counts: pd.DataFrame | None = None      # 07's category counts
    two_stage: pd.DataFrame | None = None   # 05's `strategies.two_stage_table`
    answers: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # role ->
    #   per-question results (qid, level, accuracy, samples, lengths): `role_answers`
    weights: pd.DataFrame | None = None     # `weight_distances`: role, relative_distance
    rl_runs: pd.DataFrame | None = None     # 04's runs: label, beta, steps
    rl_curves: pd.DataFrame | None = None   # `grpo.load_curves` of 04
    budget: pd.DataFrame | None = None      # 05's `strategies.budget_table`

    def rl_for(self, role: str) -> str:
        """The RL model a combination is judged against: for 05's GRPO strategies the RL
        control trained at their budget, when 05 trained one (`strategies.rl_reference`);
        for merges (of 03's and 04's models), the blends of 04's samples and otherwise
        04's RL parent."""
        if not is_strategy(role):
            return "rl"
        ref = strategies.rl_reference(role[len(STRATEGY_PREFIX):],
                                      CONTROL_ROLE in self.acc.index)
        return CONTROL_ROLE if ref == CONTROL else "rl"

    def budget_note(self) -> str:
        """Which budget the combinations are compared at (from 05's budget table)."""
        if CONTROL_ROLE not in self.acc.index:
            return "compared with 04's RL parent (05's strategies train on fewer steps)"
        note = "05's GRPO strategies against the RL control at their own budget"
        if self.budget is not None and CONTROL in set(self.budget["model"]):
            row = self.budget.set_index("model").loc[CONTROL]
            note += (f" ({row['optimizer steps']:.0f} optimizer steps on "
                     f"{row['questions']:.0f} questions, {row['rollouts']:.0f} rollouts)")
        return note + "; data mixing (trained on 04's samples) and merges against 04's RL parent"

    def missing(self, *roles: str) -> list[str]:
        return [r for r in roles if r not in self.acc.index]

    def levels(self, *names: str) -> list[str]:
        wanted = names or LEVELS
        return [c for c in LEVELS if c in self.acc.columns and c in wanted]

    def difference(self, a: str, b: str, levels: list[str]) -> Difference:
        """Accuracy of `a` minus `b` over `levels` (["all"]: every question), in points.

        Paired over the questions both answered (`stats.paired_difference`) where both have
        per-question results; else from the per-level intervals: the mean over levels of
        a - b, between (low_a - high_b) and (high_a - low_b), a conservative interval."""
        from synergy.stats import paired_difference

        qa, qb = self.answers.get(a), self.answers.get(b)
        if qa is not None and qb is not None:
            if levels != ["all"]:
                wanted = {int(lv[1:]) for lv in levels}
                qa, qb = qa[qa["level"].isin(wanted)], qb[qb["level"].isin(wanted)]
            row = paired_difference(qa, qb).set_index("level").loc["all"]
            if row["questions"] > 0:
                return Difference(100 * row["diff"], 100 * row["diff_low"],
                                  100 * row["diff_high"])
        d = (self.acc.loc[a, levels] - self.acc.loc[b, levels]).mean()
        low = (self.low.loc[a, levels] - self.high.loc[b, levels]).mean(skipna=False)
        high = (self.high.loc[a, levels] - self.low.loc[b, levels]).mean(skipna=False)
        return Difference(100 * d, 100 * low, 100 * high)

    def combinations(self) -> list[str]:
        """Merges (interior ratios) and 05's combination strategies (the paper's four and
        the SFT-loss baseline; not the router, adaptive model or oracle, which go beyond)."""
        return [r for r in self.acc.index if _MERGE.match(r) or is_strategy(r)]

    def paper_avg(self, role: str) -> float:
        return next(m["avg"] for m in self.paper["models"] if m["role"] == role)


def evidence(roles: pd.DataFrame, margin: float, long_ratio: float, *,
             paper: dict | None = None, **facts) -> Evidence:
    """The checklist's evidence from `role_levels` output; `facts`: the optional fields of
    `Evidence` (counts, two_stage, answers, weights, rl_runs, rl_curves)."""
    acc = wide(roles)

    def like_acc(value: str) -> pd.DataFrame:
        return (wide(roles, value) if value in roles.columns else acc * np.nan).reindex(
            index=acc.index, columns=acc.columns)

    return Evidence(acc, like_acc("mean_length"), like_acc("accuracy_low"),
                    like_acc("accuracy_high"), margin, long_ratio,
                    paper if paper is not None else paper_results(), **facts)


Verdict = tuple[str, str]  # (status, the numbers it rests on)


def _verdict(ok: bool, evidence: str) -> Verdict:
    return ("reproduced" if ok else "not reproduced", evidence)


def _not_run(needs: list[str] | str) -> Verdict:
    return ("not run", f"needs {', '.join(needs) if isinstance(needs, list) else needs}")


def sft_hard(ev: Evidence) -> Verdict:
    hard = ev.levels("L4", "L5")
    if ev.missing("base", "sft"):
        return _not_run(ev.missing("base", "sft"))
    if not hard:
        return ("not run", "no questions at L4-L5 in this run")
    d = ev.difference("sft", "base", hard)
    return _verdict(d.gain(100 * ev.margin), f"SFT - base on {'+'.join(hard)}: {d}")


def sft_easy(ev: Evidence) -> Verdict:
    if ev.missing("base", "sft"):
        return _not_run(ev.missing("base", "sft"))
    if not ev.levels("L1"):
        return ("not run", "no questions at L1 in this run")
    d = ev.difference("sft", "base", ["L1"])
    return _verdict(d.loss(100 * ev.margin), f"SFT - base on L1: {d}")


def sft_long(ev: Evidence) -> Verdict:
    if ev.missing("base", "sft"):
        return _not_run(ev.missing("base", "sft"))
    s, b = ev.length.at["sft", "all"], ev.length.at["base", "all"]
    ratio = s / max(b, 1e-9)
    text = f"mean length SFT {s:.0f} vs base {b:.0f} tokens ({ratio:.1f}x)"
    lo, hi = ev.paper["sft_length_ratio"]
    if ratio < ev.long_ratio:
        return ("not reproduced", text)
    if not lo / FAR_FACTOR <= ratio <= hi * FAR_FACTOR:
        return (DIRECTION_ONLY, f"{text}; the paper's SFT answers are {lo}-{hi}x longer")
    return ("reproduced", text)


def rl_all(ev: Evidence) -> Verdict:
    if ev.missing("base", "rl"):
        return _not_run(ev.missing("base", "rl"))
    per = {lv: ev.difference("rl", "base", [lv]) for lv in ev.levels()}
    overall = ev.difference("rl", "base", ["all"])
    margin = 100 * ev.margin
    hurt = [lv for lv, d in per.items() if d.loss(margin)]
    text = ("RL - base, points [95% CI]: " + ", ".join(f"{lv} {d.short()}"
                                                     for lv, d in per.items())
            + f", all {overall.short()}" + (f"; below the base on {', '.join(hurt)}"
                                            if hurt else ""))
    if hurt or not overall.gain(margin):
        return ("not reproduced", text)
    big = max(per, key=lambda lv: per[lv].points)
    if per[big].points > SMALL_GAIN:
        models = {m["role"]: m for m in ev.paper["models"]}
        gains = [r - b for r, b in zip(models["rl"]["scores"], models["base"]["scores"])]
        return (DIRECTION_ONLY, f"{text}; the paper's RL gains are a few points "
                                f"({ev.paper_avg('rl') - ev.paper_avg('base'):+.1f} on average, "
                                f"at most {max(gains):+.1f} on one benchmark), here "
                                f"{per[big].points:+.1f} on {big}")
    return ("reproduced", text)


def traced_length(results: pd.DataFrame) -> dict[str, float]:
    """Of one model's sampled answers (an evaluation table: per question `samples` and
    `lengths`): mean tokens of all answers, of those that open a `<think>` trace, and the
    traced share. A base that mostly answers directly is short on average; its traces are
    what RL, which learns to open them, should be compared with."""
    from synergy.world import THINK_OPEN

    texts = [t for s in results["samples"] for t in s]
    lengths = np.array([n for s in results["lengths"] for n in s], dtype=float)
    traced = np.array([THINK_OPEN in t for t in texts], dtype=bool)
    return {"all": float(lengths.mean()) if len(lengths) else np.nan,
            "traced": float(lengths[traced].mean()) if traced.any() else np.nan,
            "traced_share": float(traced.mean()) if len(traced) else np.nan}


def rl_short(ev: Evidence) -> Verdict:
    if ev.missing("base", "rl"):
        return _not_run(ev.missing("base", "rl"))
    r, b = ev.length.at["rl", "all"], ev.length.at["base", "all"]
    sft = "" if ev.missing("sft") else f"; SFT {ev.length.at['sft', 'all']:.0f}"
    base = traced_length(ev.answers["base"]) if "base" in ev.answers else None
    if base is None or np.isnan(base["traced"]):
        why = "no per-sample results" if base is None else "the base never opens a trace"
        return _verdict(r < ev.long_ratio * b, f"mean length RL {r:.0f} vs base {b:.0f} "
                                               f"tokens{sft} (base's traced answers: {why})")
    t = base["traced"]
    return _verdict(r < ev.long_ratio * t,
                    f"RL {r:.0f} tokens vs base's traced answers {t:.0f} tokens (all answers "
                    f"{base['all']:.0f}; {100 * base['traced_share']:.0f}% of the base's "
                    f"answers open a <think> trace){sft}")


def synergy_table(ev: Evidence) -> pd.DataFrame:
    """`merging.synergy_check` of every combination against SFT and its RL model
    (`Evidence.rl_for`: the RL control for 05's strategies, 04's RL for merges)."""
    from synergy.merging import synergy_check

    long = ev.acc.reset_index().melt(id_vars="role", var_name="level", value_name="accuracy")
    long = long.rename(columns={"role": "model"})
    groups: dict[str, list[str]] = {}
    for combo in ev.combinations():
        groups.setdefault(ev.rl_for(combo), []).append(combo)
    parts = [synergy_check(long, combos, ("sft", rl), margin=ev.margin)
             for rl, combos in groups.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def no_synergy(ev: Evidence) -> Verdict:
    combos = ev.combinations()
    if ev.missing("sft", "rl") or not combos:
        return _not_run(ev.missing("sft", "rl") + ([] if combos else
                                                   ["a combination (05 or 06)"]))
    table = synergy_table(ev).set_index("model")
    margin = 100 * ev.margin
    # A synergy counts when the combination beats both parents beyond their uncertainty on
    # one of the levels where it is above both.
    winners = [m for m in table.index[table["synergy"]]
               if any(all(ev.difference(m, p, [lv]).gain(margin)
                          for p in ("sft", ev.rl_for(m)))
                      for lv in table.at[m, "above_both"].split(", "))]
    unclear = [m for m in table.index[table["synergy"]] if m not in winners]
    return _verdict(not winners, f"{ev.budget_note()}: {len(winners)} of {len(combos)} "
                                 f"combinations beat both parents without losing elsewhere: "
                                 f"{', '.join(winners) or 'none'}"
                                 + (f"; within the uncertainty: {', '.join(unclear)}"
                                    if unclear else ""))


def below_rl(ev: Evidence) -> Verdict:
    combos = ev.combinations()
    if ev.missing("rl") or not combos:
        return _not_run(ev.missing("rl") + ([] if combos else ["a combination (05 or 06)"]))
    diffs = {r: ev.difference(r, ev.rl_for(r), ["all"]) for r in combos}
    above = [r for r, d in diffs.items() if d.gain(100 * ev.margin)]
    best = max(combos, key=lambda r: diffs[r].points)
    rl = ev.rl_for(best)
    text = (f"{ev.budget_note()}: closest to its RL {best} {100 * ev.acc.at[best, 'all']:.1f}% "
            f"vs {rl} {100 * ev.acc.at[rl, 'all']:.1f}% ({diffs[best]}); clearly above "
            f"their RL: {', '.join(above) or 'none'}")
    if rl != "rl":  # the strategies against 04's RL parent too (unequal budgets)
        text += (f"; against 04's RL parent ({100 * ev.acc.at['rl', 'all']:.1f}%, more "
                 f"steps): {best} {ev.difference(best, 'rl', ['all']).short()} points")
    if above:
        return ("not reproduced", text)
    paper_best = max(m["avg"] for m in ev.paper["models"] if m["role"] in PAPER_COMBINATIONS)
    if diffs[best].points < -SMALL_GAIN:  # the paper's best ends just below RL
        return (DIRECTION_ONLY, f"{text}; the paper's best ends "
                                f"{paper_best - ev.paper_avg('rl'):+.1f} points from RL")
    return ("reproduced", text)


def two_stage_budget(ev: Evidence) -> Verdict:
    if ev.two_stage is None or len(ev.two_stage) < 2:
        return _not_run(f"two-stage runs at two or more response budgets "
                        f"({stages.STRATEGIES.name})")
    t = ev.two_stage
    return _verdict(strategies.two_stage.needs_budget(t), "; ".join(
        f"budget {r.budget}: {100 * r.clipped_ratio:.0f}% truncated, accuracy "
        f"{100 * r.accuracy:.1f}%" for r in t.itertuples()))


def interpolation_gaps(ev: Evidence, methods: tuple[str, ...]) -> np.ndarray:
    """Per (merge, level) of `methods`: |merge - linear interpolation of the parents| and
    whether the merge lies between the parents (+- margin). Shape (n, 2)."""
    rows = []
    lv = ev.levels()
    for r in ev.combinations() if not ev.missing("sft", "rl") else []:
        m = _MERGE.match(r)
        if m and m.group(1) in methods:
            t = float(m.group(2))
            sft, rl = ev.acc.loc["sft", lv], ev.acc.loc["rl", lv]
            expect = t * sft + (1 - t) * rl
            lo, hi = np.minimum(sft, rl) - ev.margin, np.maximum(sft, rl) + ev.margin
            rows += [(abs(ev.acc.at[r, c] - expect[c]), lo[c] <= ev.acc.at[r, c] <= hi[c])
                     for c in lv]
    return np.array(rows, dtype=float).reshape(-1, 2)


def moved(ev: Evidence, role: str) -> float:
    """How far a role's model moved from the base (`weight_distances`), NaN if unknown."""
    w = ev.weights
    if w is None or "relative_distance" not in w or role not in set(w["role"]):
        return np.nan
    return float(w.set_index("role").at[role, "relative_distance"])


def interpolate(ev: Evidence) -> Verdict:
    gaps = interpolation_gaps(ev, ("linear", "slerp"))
    if ev.missing("sft", "rl") or not len(gaps):
        return _not_run(ev.missing("sft", "rl") + ([] if len(gaps) else
                                                   ["linear or SLERP merges"]))
    share = gaps[:, 1].mean()
    text = (f"{100 * share:.0f}% of linear/SLERP (ratio, level) points lie between the "
            f"parents (+-{100 * ev.margin:.0f} points)")
    sft, rl = moved(ev, "sft"), moved(ev, "rl")
    if share < 0.8 and sft > FAR_MOVE:
        return (NOT_APPLICABLE, f"SFT moved its weights {100 * sft:.0f}% from the base (RL "
                                f"{100 * rl:.1f}%); the paper's 7B models move well under 1%, "
                                f"so its merges stay near both parents; {text}")
    return _verdict(share >= 0.8, text)


def ties_erratic(ev: Evidence) -> Verdict:
    lin, ties = interpolation_gaps(ev, ("linear", "slerp")), interpolation_gaps(ev, ("ties",))
    needs = ev.missing("sft", "rl") + ([] if len(ties) else ["TIES merges"]) + \
        ([] if len(lin) else ["linear or SLERP merges"])
    if needs:
        return _not_run(needs)
    t, li = 100 * ties[:, 0].mean(), 100 * lin[:, 0].mean()
    return _verdict(t > li, f"mean distance from interpolation: TIES {t:.1f} vs "
                            f"linear/SLERP {li:.1f} points")


def meta_tokens(ev: Evidence) -> Verdict:
    if ev.counts is None or ev.counts.empty:
        return _not_run(stages.PIVOTAL.name)
    meta = ev.counts[(ev.counts["level"] == "all") & (ev.counts["category"] == "meta")]
    per = meta.groupby("model").agg(n=("count", "sum"), tokens=("tokens", "first"))
    per = 1000 * per["n"] / per["tokens"].clip(lower=1)
    if "sft" not in per.index:
        return _not_run(f"the SFT model in {stages.PIVOTAL.name}")
    others = per.drop("sft")
    ok = per["sft"] > 0 and (others.empty or per["sft"] >= 5 * others.max())
    return _verdict(ok, "meta words per 1k tokens: " + ", ".join(f"{m} {v:.2f}"
                                                                 for m, v in per.items()))


def curve_summary(curves: pd.DataFrame, window: int = CURVE_WINDOW) -> dict[str, float]:
    """One run's training log (`grpo.load_curves` rows of one run): steps logged, reward
    at the start, at its best and at the end, entropy at the start and end (each a mean
    over `window` logged steps)."""
    c = curves.sort_values("step")
    out = {"steps": int(c["step"].max())}
    for col in ("reward", "entropy"):
        if col in c:
            smooth = c[col].rolling(window, min_periods=1).mean()
            out.update({f"{col}_start": c[col].head(window).mean(),
                        f"{col}_best": smooth.max(), f"{col}_end": c[col].tail(window).mean()})
    return out


def kl_collapse(ev: Evidence) -> Verdict:
    runs = ev.rl_runs
    needs = f"policies at beta 0 and at a beta > 0 in {stages.GRPO.name} (grpo.betas)"
    if runs is None or runs.empty or "beta" not in runs:
        return _not_run(needs)
    plain = runs[~runs["label"].str.contains(_FILTERED)]
    plain = plain if len(plain) else runs
    no_kl, kl = plain[plain["beta"] == 0], plain[plain["beta"] > 0]
    if no_kl.empty or kl.empty:
        return _not_run(needs)
    a, b = no_kl["label"].iloc[0], kl["label"].iloc[0]
    curves = ev.rl_curves if ev.rl_curves is not None else pd.DataFrame()
    if "run" not in curves or not {a, b} <= set(curves["run"]):
        return _not_run(f"the training curves of {a} and {b}")
    s, k = curve_summary(curves[curves["run"] == a]), curve_summary(curves[curves["run"] == b])
    if s["steps"] < COLLAPSE_STEP / 2:
        return (NOT_APPLICABLE, f"the paper's collapse came near step {COLLAPSE_STEP}; this "
                                f"run's no-KL policy ran {s['steps']} steps (params/tiny-long"
                                f".yaml runs where they part)")
    if "reward_end" not in s or "reward_end" not in k:
        return _not_run(f"rewards in the training curves of {a} and {b}")
    drop = s["reward_best"] - s["reward_end"]
    ok = drop > COLLAPSE_DROP and s["reward_end"] < k["reward_end"] - ev.margin
    entropy = (f", entropy {s['entropy_start']:.2f} -> {s['entropy_end']:.2f}"
               if "entropy_end" in s else "")
    return _verdict(ok, f"{a} ({s['steps']} steps): reward best {s['reward_best']:.2f} -> end "
                        f"{s['reward_end']:.2f}{entropy}; {b}: reward end "
                        f"{k['reward_end']:.2f}")


def no_easiest(ev: Evidence) -> Verdict:
    pattern = PAPER_MATCH["rl_no_easiest"]
    found = [r for r in ev.acc.index if re.search(pattern, r, re.IGNORECASE)]
    if ev.missing("rl") or not found:
        return _not_run(ev.missing("rl") + ([] if found else [
            f"a policy without the easiest questions in {stages.GRPO.name} "
            "(grpo.exclude_easiest_ablation)"]))
    d = ev.difference(found[0], "rl", ["all"])
    text = (f"{found[0]} - RL overall: {d}; the paper: "
            f"{ev.paper_avg('rl_no_easiest') - ev.paper_avg('rl'):+.1f} points")
    if np.isnan(d.low):
        return _verdict(abs(d.points) <= ABOUT_SAME, text)
    return _verdict(-ABOUT_SAME <= d.low and d.high <= ABOUT_SAME,
                    f"{text} (about as well: the interval inside +-{ABOUT_SAME:g})")


FINDINGS: dict[str, Callable[[Evidence], Verdict]] = {
    "sft_hard": sft_hard, "sft_easy": sft_easy, "sft_long": sft_long, "rl_all": rl_all,
    "rl_short": rl_short, "no_synergy": no_synergy, "below_rl": below_rl,
    "two_stage_budget": two_stage_budget, "interpolate": interpolate,
    "ties_erratic": ties_erratic, "meta_tokens": meta_tokens, "kl_collapse": kl_collapse,
    "no_easiest": no_easiest}


def checklist(paper: dict, ev: Evidence) -> pd.DataFrame:
    """Each of the paper's findings (`paper["findings"]`), judged by its function in
    FINDINGS from this run's evidence: one of STATUSES, with the numbers it rests on."""
    missing = set(paper["findings"]) ^ set(FINDINGS)
    if missing:
        raise KeyError(f"findings without a function or without a paper entry: {missing}")
    rows = []
    for key, text in paper["findings"].items():
        status, numbers = FINDINGS[key](ev)
        rows.append({"finding": text, "status": status, "this run": numbers})
    return pd.DataFrame(rows)


# --- other tables -------------------------------------------------------------------------

def strategies_table(paper: dict, roles: pd.DataFrame, headlines: dict[str, str] | None,
                     margin: float) -> pd.DataFrame:
    """Every 05 model beside the paper's number for the strategy it stands for: overall
    accuracy and its difference to SFT, to 04's RL and to the RL control at the strategies'
    budget (paper: average over five benchmarks; this run: all levels), and where it beats
    both SFT and its RL model (the control when 05 trained one) or falls below the better."""
    from synergy.merging import synergy_check

    acc = wide(roles)
    names = [r for r in acc.index if r.startswith(STRATEGY_PREFIX)]
    if not names:
        return _not_run_table(stages.STRATEGIES)
    avg = {m["role"]: m["avg"] for m in paper["models"]}
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
               "run all %": round(100 * acc.at[name, "all"], 1)}
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
    from synergy.evaluation import load_results
    from synergy.files import ArtifactError

    for stage in ROLE_SOURCES[:2]:
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
    from synergy.pivotal import category_table

    return _not_run_table(stages.PIVOTAL) if counts is None else category_table(counts)


# --- figures ------------------------------------------------------------------------------

def _placeholder(title: str, note: str):
    import plotly.graph_objects as go

    fig = go.Figure().update_layout(title=title, xaxis_visible=False, yaxis_visible=False,
                                    height=250)
    return fig.add_annotation(text=note, showarrow=False, font_size=16)


def accuracy_figure(roles: pd.DataFrame, title: str = "Accuracy by difficulty level, every "
                                                        "model of the run"):
    """Accuracy per level for base, SFT, RL and every combination, in one figure."""
    from synergy.evaluation import accuracy_figure as bars

    if roles.empty:
        return _placeholder("Accuracy by level", "no evaluated models yet")
    return bars(roles.drop(columns="model").rename(columns={"role": "model"}), title)


def headline_roles(roles: pd.DataFrame) -> pd.DataFrame:
    """Base, SFT, RL and the best of 05's combination strategies (by accuracy over all
    levels): the models the report leads with."""
    main = roles[roles["role"].isin(["base", "sft", "rl"])]
    combos = roles[roles["role"].map(is_strategy) & (roles["level"] == "all")]
    if combos.empty:
        return main
    best = combos.loc[combos["accuracy"].idxmax(), "role"]
    return pd.concat([main, roles[roles["role"] == best]], ignore_index=True)


def headline_figure(roles: pd.DataFrame):
    """Accuracy per level of base, SFT, RL and the best combination strategy, with the
    95% interval of each bar (`accuracy_low`, `accuracy_high`) where the stage saved one."""
    import plotly.express as px

    data = headline_roles(roles)
    if data.empty:
        return _placeholder("Accuracy by level", "base, SFT and RL not evaluated yet")
    names = {"base": "base", "sft": "SFT", "rl": "RL"}
    data = data.assign(model=data["role"].map(
        lambda r: names.get(r, f"best strategy: {r[len(STRATEGY_PREFIX):]}")))
    bars = {}
    if "accuracy_low" in data and data["accuracy_low"].notna().any():
        data = data.assign(above=100 * (data["accuracy_high"] - data["accuracy"]),
                           below=100 * (data["accuracy"] - data["accuracy_low"]))
        bars = {"error_y": "above", "error_y_minus": "below"}
    data = data.assign(accuracy=100 * data["accuracy"])
    return px.bar(data, x="level", y="accuracy", color="model", barmode="group",
                  range_y=[0, 100], category_orders={"level": LEVELS + ["all"]},
                  hover_data=["stage", "questions", "mean_length"],
                  labels={"accuracy": "accuracy (%)", "level": "difficulty level (L1 easiest)"},
                  title="Base, SFT, RL and the best combination, per level (95% intervals)",
                  **bars)


def strategy_roles(roles: pd.DataFrame) -> pd.DataFrame:
    """Base, SFT, RL and 05's models (the strategies section's figure)."""
    keep = roles["role"].isin(["base", "sft", "rl"]) | roles["role"].str.startswith(
        STRATEGY_PREFIX)
    return roles[keep]


def tradeoff_figure(roles: pd.DataFrame):
    """Accuracy vs mean response length per model and level: the long-CoT trade-off."""
    import plotly.express as px

    if roles.empty:
        return _placeholder("Accuracy vs length", "no evaluated models yet")
    return px.scatter(roles, x="mean_length", y="accuracy", color="role", facet_col="level",
                      facet_col_wrap=3, log_x=True, hover_data=["stage", "questions"],
                      title="Accuracy vs mean response length (tokens), per level")


# The RL curves the paper discusses (collapse without KL, truncation of two-stage runs).
PAPER_CURVES = {"reward": "reward", "rewards/accuracy_reward/mean": "accuracy reward",
                "kl": "KL to start", "entropy": "entropy",
                "completions/mean_length": "completion length",
                "completions/clipped_ratio": "clipped ratio"}


def training_figure(curves: pd.DataFrame, paper_metrics: bool = True):
    """The six curves the paper discusses (`PAPER_CURVES`), or with `paper_metrics=False`
    every other metric the run logged (losses, learning rates, norms, ...)."""
    import plotly.express as px

    chosen = curves["metric"].isin(list(PAPER_CURVES)) if len(curves) else []
    keep = curves[chosen if paper_metrics else ~chosen] if len(curves) else curves
    title = "Training curves" if paper_metrics else "Other training logs"
    if keep.empty:
        return _placeholder(title, "no training stage has run")
    keep = keep.assign(series=keep["stage"] + " " + keep["run"].astype(str),
                       metric=keep["metric"].map(lambda m: PAPER_CURVES.get(m, m)))
    order = [m for m in PAPER_CURVES.values() if m in set(keep["metric"])] or sorted(
        set(keep["metric"]))
    wrap = 3 if paper_metrics else 4
    fig = px.line(keep, x="step", y="value", color="series", facet_col="metric",
                  facet_col_wrap=wrap, category_orders={"metric": order}, title=title,
                  height=(330 if paper_metrics else 220) * -(-len(order) // wrap),
                  facet_row_spacing=0.08 if paper_metrics else 0.04)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return fig.update_yaxes(matches=None, showticklabels=True, title=None)


def merge_figure(merge_curves: pd.DataFrame | None):
    from synergy import merging

    if merge_curves is None:
        return _placeholder("Merge curves", f"{stages.MERGING.name} not run")
    return merging.merge_curve_figure(merge_curves)


def static_accuracy_png(roles: pd.DataFrame, path: str | Path) -> bytes:
    """Paper-style static bars (seaborn) of base / SFT / RL per level, saved as a PNG at
    `path`; returns the PNG's bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from synergy.files import atomic_path

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return buf.getvalue()


def png(data: bytes):
    """A PNG for display in the notebook."""
    from IPython.display import Image

    return Image(data=data, format="png")


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
    accuracy_png: bytes               # static_accuracy_png, also saved beside the report


def gather(run: Run, cfg: ReportConfig) -> dict:
    """Everything the report shows, read and computed from the run's stages."""
    from synergy import merging, pivotal
    from synergy.config import ConfigError
    from synergy.files import ArtifactError

    paper = paper_results()
    levels = run_levels(run)
    roles = role_levels(levels, main_models(run))
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
    ev = evidence(roles, cfg.margin, cfg.long_ratio, paper=paper,
                  counts=piv.counts if piv else None, two_stage=two_stage,
                  answers=role_answers(run, roles),
                  weights=weights if "relative_distance" in weights else None,
                  rl_runs=rl_runs, rl_curves=rl_curves, budget=budget)
    return {"paper": paper, "status": stage_status(run), "levels": levels, "roles": roles,
            "paper_vs_run": paper_vs_run(paper, roles, headlines),
            "checklist": checklist(paper, ev), "weights": weights,
            "curves": training_curves(run), "merge_curves": merge_curves,
            "strategies": strategies_table(paper, roles, headlines, cfg.margin),
            "budget": budget if budget is not None else _not_run_table(stages.STRATEGIES),
            "counts": piv.counts if piv else None, "tokens": piv.tokens if piv else None,
            "examples": response_examples(run, cfg.n_examples, cfg.seed)}


def run(cfg: ReportConfig, progress: bool = True) -> ReportResult:
    """Collect the run's numbers; writes paper_vs_run.csv, checklist.csv, a PNG, manifest."""
    from synergy.files import write_text
    from synergy.runs import stage_run

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
    parts = gather(r, ReportConfig.from_mapping(manifest["params"], f"{stages.REPORT.name} manifest"))
    parts["checklist"] = pd.read_csv(folder / "checklist.csv")
    parts["paper_vs_run"] = pd.read_csv(folder / "paper_vs_run.csv")
    return ReportResult(manifest, folder, accuracy_png=(folder / "accuracy_by_level.png")
                        .read_bytes(), **parts)
