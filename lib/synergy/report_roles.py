"""The vocabulary of roles the report and the checklist share: base, sft, rl, merges
(`<method>-<ratio>`), 05's models (`05_strategies/<model>`), 04's RL as 04 evaluated it;
the paper's numbers (`paper_results`) and this run's counterpart of each paper model
(`paper_vs_run`).
"""

from __future__ import annotations

import importlib.resources
import re

import numpy as np
import pandas as pd

from synergy import stages
from synergy.strategies import BEYOND_PAPER, COMBINATIONS, CONTROL

LEVELS = ["L1", "L2", "L3", "L4", "L5"]
MERGE_PATTERN = re.compile(r"^(linear|slerp|ties|dare_ties)-([0-9.]+)$")
FILTERED = r"-(?:static|dynamic)$"  # 04's policies trained without the easiest questions
STRATEGY_PREFIX = f"{stages.STRATEGIES.name}/"  # roles of 05's models: "<stage>/<model>"
CONTROL_ROLE = STRATEGY_PREFIX + CONTROL  # 05's RL control: RL at the strategies' budget
OWN_RL = f"{stages.GRPO.name}/rl"  # 04's RL parent as 04 evaluated it, beside its ablations
#   (report.role_levels adds it when "rl" comes from a later stage's question set)


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
