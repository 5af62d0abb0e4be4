"""What the checklist judges from: the statuses a finding can have, the `Evidence` of one
run (per-level accuracy with its 95% intervals, per-question results for paired
differences, weight distances, 04's training curves, 05's budget) and the verdict helpers
every finding shares (a gain beyond a margin, a difference inside a band, undecided with the
questions that would decide it, not run with what it needs). `findings` holds one function
per finding on top of these; `report` gathers the evidence from a run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from synergy import stages, strategies
from synergy.report_roles import (CONTROL_ROLE, LEVELS, MERGE_PATTERN, STRATEGY_PREFIX,
                                  beyond_paper, is_strategy, paper_results, wide)
from synergy.stats import Difference, overall_difference, paired
from synergy.strategies import CONTROL

NOT_APPLICABLE = "not applicable on this world"
DIRECTION_ONLY = "reproduced in direction only"
# The interval holds both the paper's claim and its negation: more questions would decide.
UNDECIDED = "undecided at this sample size"
STATUSES = ("reproduced", DIRECTION_ONLY, "not reproduced", UNDECIDED, NOT_APPLICABLE,
            "not run")


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
    words: pd.DataFrame | None = None       # 07's `pivotal.word_probabilities` per model
    two_stage: pd.DataFrame | None = None   # 05's `strategies.two_stage_table`
    answers: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # role ->
    #   per-question results (qid, level, accuracy, samples, lengths): `role_answers`
    weights: pd.DataFrame | None = None     # `weight_distances`: role, relative_distance
    rl_runs: pd.DataFrame | None = None     # 04's runs: label, beta, steps
    rl_curves: pd.DataFrame | None = None   # `grpo_analysis.load_curves` of 04
    long_run: str = ""                      # the run holding what this run trains too
    #   briefly (report.long_run): the KL ablation, the strategies at a longer budget
    kl_from: str = ""                       # rl_runs / rl_curves are that run's ("": this run's)
    longer: Evidence | None = None          # that run's evidence, where its RL control
    #   trained more steps than this run's (`below_rl` judges the paper's claim there)
    budget: pd.DataFrame | None = None      # 05's `strategies.budget_table`

    def rl_for(self, role: str) -> str:
        """The RL model a combination is judged against: for 05's GRPO strategies the RL
        control trained at their budget, when 05 trained one (`strategies.rl_reference`);
        for merges (of 03's and 04's models) 04's RL parent on the merges' questions
        (`parents_of`), for the blends of 04's samples 04's RL parent."""
        if not is_strategy(role):
            return self.parents_of(role)[1]
        ref = strategies.rl_reference(role[len(STRATEGY_PREFIX):],
                                      CONTROL_ROLE in self.acc.index)
        return CONTROL_ROLE if ref == CONTROL else "rl"

    def parents_of(self, role: str) -> tuple[str, str]:
        """(SFT, RL) roles a combination is compared with on its own questions: a merge's
        are 06's parents where the report gives them apart ("06_merging/sft", when base,
        SFT and RL come from a stage with more questions); else "sft" and `rl_for`."""
        own = tuple(f"{stages.MERGING.name}/{p}" for p in ("sft", "rl"))
        if MERGE_PATTERN.match(role) and not self.missing(*own):
            return own
        return "sft", self.rl_for(role) if is_strategy(role) else "rl"

    def budget_note(self) -> str:
        """Which budget the combinations are compared at (from 05's budget table)."""
        if CONTROL_ROLE not in self.acc.index:
            return "compared with 04's RL parent (05's strategies train on fewer steps)"
        judged = [*self.combinations(), *self.beyond()]
        parts = []
        if any(self.rl_for(r) == CONTROL_ROLE for r in judged):
            note = "05's GRPO strategies against the RL control at their own budget"
            if self.budget is not None and CONTROL in set(self.budget["model"]):
                row = self.budget.set_index("model").loc[CONTROL]
                note += (f" ({row['optimizer steps']:.0f} optimizer steps on "
                         f"{row['questions']:.0f} questions, {row['rollouts']:.0f} rollouts)")
            parts.append(note)
        if not judged or any(self.rl_for(r) != CONTROL_ROLE for r in judged):
            parts.append("data mixing (trained on 04's samples) and merges against 04's RL "
                         "parent")
        return "; ".join(parts)

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
        qa, qb = self.answers.get(a), self.answers.get(b)
        if qa is not None and qb is not None:
            if levels != ["all"]:
                wanted = {int(lv[1:]) for lv in levels}
                qa, qb = qa[qa["level"].isin(wanted)], qb[qb["level"].isin(wanted)]
            d = overall_difference(qa, qb)
            if d.questions > 0:
                return d
        d = (self.acc.loc[a, levels] - self.acc.loc[b, levels]).mean()
        low = (self.low.loc[a, levels] - self.high.loc[b, levels]).mean(skipna=False)
        high = (self.high.loc[a, levels] - self.low.loc[b, levels]).mean(skipna=False)
        return Difference(100 * d, 100 * low, 100 * high)

    def paired_means(self, a: str, b: str) -> tuple[float, float]:
        """Overall accuracy (0-1) of `a` and of `b` over the questions both answered (the
        basis of `difference(a, b, ["all"])`); the per-level table's where either has no
        per-question results."""
        qa, qb = self.answers.get(a), self.answers.get(b)
        if qa is None or qb is None:
            return self.acc.at[a, "all"], self.acc.at[b, "all"]
        both = paired(qa, qb)
        return both["accuracy_a"].mean(), both["accuracy_b"].mean()

    def questions_note(self, d: Difference) -> str:
        """", over N questions" where a difference rests on more questions than the
        benchmark's (a judged pair's pool questions, `judging.with_judged`)."""
        benchmark = max((int((~df["judged"].astype(bool)).sum()) if "judged" in df
                         else len(df) for df in self.answers.values()), default=0)
        return f", over {d.questions} questions" if d.questions > benchmark > 0 else ""

    def combinations(self) -> list[str]:
        """The combinations the paper's claims are judged on: merges (interior ratios) and
        05's runs of the paper's four strategies (not the SFT-loss baseline, the router,
        adaptive model or oracle, which go beyond it: `beyond`)."""
        return [r for r in self.acc.index
                if MERGE_PATTERN.match(r) or (is_strategy(r) and not beyond_paper(r))]

    def beyond(self) -> list[str]:
        """05's combinations the paper did not train (the SFT-loss baseline): the rows of
        the claims about combinations show them beside, with their own numbers."""
        return [r for r in self.acc.index if beyond_paper(r)]

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


def undecided(d: Difference, questions: int | None, text: str) -> Verdict:
    """UNDECIDED, with what would decide it: `questions` (from `Difference.to_decide_*`)."""
    need = (f"{d.questions} questions; about {questions} (at the same samples per question) "
            f"would decide it" if questions else
            "more questions would decide it" if not d.questions else
            f"{d.questions} questions; the estimate sits on the bound")
    return (UNDECIDED, f"{text}; {need}")


def judged_gain(d: Difference, margin: float, text: str) -> Verdict:
    """The claim "a gain of more than `margin` points" (a loss: pass `d.negated()`)."""
    decided = d.exceeds(margin)
    return undecided(d, d.to_decide_gain(margin), text) if decided is None \
        else _verdict(decided, text)


def judged_within(d: Difference, low: float, high: float, text: str) -> Verdict:
    """The claim "the difference lies in [low, high] points" ("about as well")."""
    decided = d.within(low, high)
    return undecided(d, d.to_decide_within(low, high), text) if decided is None \
        else _verdict(decided, text)


def _not_run(needs: list[str] | str) -> Verdict:
    return ("not run", f"needs {', '.join(needs) if isinstance(needs, list) else needs}")
