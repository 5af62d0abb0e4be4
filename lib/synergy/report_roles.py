"""The vocabulary of roles the report and the checklist share: base, sft, rl, merges
(`<method>-<ratio>`), 05's models (`05_strategies/<model>`), 04's RL as 04 evaluated it;
how a run's per-level rows become those roles (`role_levels`, `headline_roles`,
`strategy_roles`: pure functions of `report.run_levels`' table); the paper's numbers
(`paper_results`) and this run's counterpart of each paper model (`paper_vs_run`).
"""

from __future__ import annotations

import importlib.resources
import re

import numpy as np
import pandas as pd

from synergy import stages
from synergy.runs import EXTERNAL
from synergy.strategies import BEYOND_PAPER, COMBINATIONS, CONTROL

LEVELS = ["L1", "L2", "L3", "L4", "L5"]
PARENTS = ("base", "sft", "rl")
MERGE_PATTERN = re.compile(r"^(linear|slerp|ties|dare_ties)-([0-9.]+)$")
FILTERED = r"-(?:static|dynamic)$"  # 04's policies trained without the easiest questions
STRATEGY_PREFIX = f"{stages.STRATEGIES.name}/"  # roles of 05's models: "<stage>/<model>"
CONTROL_ROLE = STRATEGY_PREFIX + CONTROL  # 05's RL control: RL at the strategies' budget
OWN_RL = f"{stages.GRPO.name}/rl"  # 04's RL parent as 04 evaluated it, beside its ablations
#   (`role_levels` adds it when "rl" comes from a later stage's question set)


def paper_results() -> dict:
    import yaml

    text = importlib.resources.files("synergy").joinpath("data/paper_results.yaml").read_text()
    return yaml.safe_load(text)



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
               "rl_no_easiest": rf"^{stages.GRPO.name}/.*{FILTERED}",
               "two_stage": r"two", "interleaved": r"interleav",
               "progressive": r"progress", "data_mixing": r"mix"}


# The paper's combinations (its table's roles): strategies and the best merge.
PAPER_COMBINATIONS = ("two_stage", "interleaved", "progressive", "data_mixing", "linear-0.25")


def strategy_family(role: str) -> str:
    """The 05 family of a role ("05_strategies/progressive-cosine" -> "progressive"; "" for
    a role that is not 05's)."""
    return role[len(STRATEGY_PREFIX):].split("-")[0] if role.startswith(STRATEGY_PREFIX) \
        else ""


def is_strategy(role: str) -> bool:
    """A role of 05's combination strategies (the paper's four and the SFT-loss baseline)."""
    return strategy_family(role) in COMBINATIONS


def beyond_paper(role: str) -> bool:
    """A 05 combination the paper did not train (`strategies.BEYOND_PAPER`): shown beside the
    paper's claims, not judged in them."""
    return strategy_family(role) in BEYOND_PAPER


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


# --- a run's per-level rows as roles ----------------------------------------------------

# Where base, SFT and RL's per-level numbers come from, best first: 07 and 05 evaluate all
# three on the run's whole evaluation set (04's questions) with one sampling spec, so their
# numbers compare with 04's and 05's models; 06 evaluates them on its merge subset, where
# the merges are compared with 06's own parents (roles "06_merging/base", ".../sft", ...).
ROLE_SOURCES = [stages.PIVOTAL.name, stages.STRATEGIES.name, stages.MERGING.name,
                stages.GRPO.name, stages.SFT.name, stages.STRATIFY.name]
# Stages whose other models (teachers, sweeps, KL ablations, strategies) the report lists,
# and the models from outside the run that `synergy eval` evaluated on its benchmark.
MODEL_STAGE_FOLDERS = [stages.SFT.name, stages.GRPO.name, stages.STRATEGIES.name,
                       EXTERNAL]


def role_levels(levels: pd.DataFrame,
                mains: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Base, SFT and RL (from one stage where possible: `ROLE_SOURCES`) plus every
    combination model, and 06's parents on 06's questions when base, SFT and RL come from
    another stage.

    `mains` names the SFT and RL models of stages 03 and 04 (`report.main_models`), used when 06
    and 07 (which evaluate base, SFT and RL side by side) have not run.

    Adds a `role` column: base, sft, rl, a merge name ("linear-0.25") or `<stage>/<model>`
    for 06's parents, 05 strategies and other models. Merges at ratio 0 or 1 are the
    parents: left out.
    """
    own_stage = {"sft": stages.SFT.name, "rl": stages.GRPO.name}
    parents = []
    for role, sources in (("base", ROLE_SOURCES), ("sft", ROLE_SOURCES[:3] + [own_stage["sft"]]),
                          ("rl", ROLE_SOURCES[:3] + [own_stage["rl"]])):
        for stage in sources:
            part = levels[levels["stage"] == stage]
            if role in set(part["model"]):
                parents.append(part[part["model"] == role].assign(role=role))
                break
            own = _stage_main(levels, mains, stage) if own_stage.get(role) == stage else None
            if own is not None:
                parents.append(own.assign(role=role))
                break
    rl = next((p for p in parents if p["role"].iloc[0] == "rl"), None)
    own_rl = _stage_main(levels, mains, stages.GRPO.name)
    if rl is not None and own_rl is not None and rl["stage"].iloc[0] != stages.GRPO.name:
        # 04's RL parent on 04's own questions, beside 04's ablations (findings.no_easiest).
        parents.append(own_rl.assign(role=OWN_RL))
    names = levels["model"].astype(str)
    ratio = names.str.extract(MERGE_PATTERN)[1].astype(float)
    merges = levels.loc[(levels["stage"] == stages.MERGING.name) & ratio.notna()
                        & ~ratio.isin([0.0, 1.0])]
    picked = [*parents, merges.assign(role=merges["model"])]
    if len(merges) and {p["stage"].iloc[0] for p in parents} != {stages.MERGING.name}:
        # The merges' parents on the merges' own questions (evidence.Evidence.parents_of).
        own = levels[(levels["stage"] == stages.MERGING.name) & names.isin(PARENTS)]
        picked.append(own.assign(role=stages.MERGING.name + "/" + own["model"]))
    # The other SFT / RL models (teachers, sweeps, KL ablations), 05's strategies, router,
    # oracle; not the parents a stage re-evaluated (base, init, sft-*, 05's sft and rl), nor
    # 03's and 04's main models, which are "sft" and "rl".
    taken = {(p["stage"].iloc[0], p["model"].iloc[0]) for p in parents}
    taken |= {(stage, found[0]) for stage, found in (mains or {}).items() if found}
    others = levels[levels["stage"].isin(MODEL_STAGE_FOLDERS)
                    & ~levels["model"].astype(str).str.match(r"^(base|init|sft|rl|sft-.*)$")]
    others = others.loc[np.array([(s, m) not in taken for s, m in
                                  zip(others["stage"], others["model"])], dtype=bool)]
    # A model several stages evaluated (04 re-evaluates the SFT models) appears once.
    others = others.sort_values("stage", kind="stable").drop_duplicates(["model", "level"])
    picked.append(others.assign(role=others["stage"] + "/" + others["model"]))
    return pd.concat(picked, ignore_index=True)



def _stage_main(levels: pd.DataFrame, mains: dict[str, list[str]] | None,
                stage: str) -> pd.DataFrame | None:
    """A stage's main model (`report.main_models`) as that stage evaluated it (None if it
    did not)."""
    part = levels[levels["stage"] == stage]
    own = next((n for n in (mains or {}).get(stage, []) if n in set(part["model"])), None)
    return part[part["model"] == own] if own else None


def stage_roles(levels: pd.DataFrame, stage: str) -> pd.DataFrame:
    """One stage's models on its own questions, in the checklist's role vocabulary: base,
    sft and rl as themselves, every other model as "<stage>/<model>"."""
    part = levels[levels["stage"] == stage]
    own = part["model"].astype(str)
    return part.assign(role=own.where(own.isin(PARENTS), stage + "/" + own))


def headline_roles(roles: pd.DataFrame, levels: pd.DataFrame) -> pd.DataFrame:
    """Base, SFT, RL and the best of 05's combination strategies (by accuracy over all
    levels), all on one question set: 05's, when 05 evaluated SFT and RL beside its
    strategies; otherwise base, SFT and RL as `role_levels` picked them."""
    own = stage_roles(levels, stages.STRATEGIES.name)
    combos = own[own["role"].map(is_strategy).astype(bool) & (own["level"] == "all")]
    if combos.empty or not {"sft", "rl"} <= set(own["role"]):
        return roles[roles["role"].isin(PARENTS)]
    best = combos.loc[combos["accuracy"].idxmax(), "role"]
    return own[own["role"].isin([*PARENTS, best])].reset_index(drop=True)


def strategy_roles(levels: pd.DataFrame) -> pd.DataFrame:
    """05's models and the parents 05 evaluated beside them (its own question set)."""
    return stage_roles(levels, stages.STRATEGIES.name)
