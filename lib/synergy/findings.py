"""The paper's findings judged on one run: the checklist.

Each finding of `synergy/data/paper_results.yaml` is judged by one function of `FINDINGS`,
keyed like the YAML, from an `evidence.Evidence`: per-level accuracy with its 95% intervals,
per-question results (paired differences), weight distances and 04's training curves. A
finding is `reproduced` only when its difference exceeds its uncertainty (and `margin`); the
other statuses are in `evidence.STATUSES`. Pure functions of tables: `report` reads the run and
hands them over. The roles they speak of (base, sft, rl, merges, `05_strategies/<model>`)
are `report_roles`'.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np
import pandas as pd

from synergy import stages, strategies
from synergy.merging import synergy_check
from synergy.pivotal import category_probabilities
from synergy.evidence import (DIRECTION_ONLY, NOT_APPLICABLE, UNDECIDED, Evidence, Verdict,
                              _not_run, _verdict, judged_gain, judged_within)
from synergy.report_roles import (CONTROL_ROLE, FILTERED, MERGE_PATTERN, OWN_RL,
                                  PAPER_COMBINATIONS, PAPER_MATCH, is_strategy)
from synergy.strategies import CONTROL
from synergy.task import THINK_OPEN

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
INTERPOLATE_SHARE = 0.8    # share of (merge, level) points that must not lie clearly outside
COLLAPSE_STEP = 300        # the paper: without KL the reward collapses near step 300
COLLAPSE_DROP = 0.1        # reward (0-1) lost from its best that counts as a collapse
CURVE_WINDOW = 3           # logged steps averaged for "start", "best" and "end" of a curve
def sft_hard(ev: Evidence) -> Verdict:
    hard = ev.levels("L4", "L5")
    if ev.missing("base", "sft"):
        return _not_run(ev.missing("base", "sft"))
    if not hard:
        return ("not run", "no questions at L4-L5 in this run")
    d = ev.difference("sft", "base", hard)
    return judged_gain(d, 100 * ev.margin, f"SFT - base on {'+'.join(hard)}: {d}")


def sft_easy(ev: Evidence) -> Verdict:
    if ev.missing("base", "sft"):
        return _not_run(ev.missing("base", "sft"))
    if not ev.levels("L1"):
        return ("not run", "no questions at L1 in this run")
    d = ev.difference("sft", "base", ["L1"])
    return judged_gain(d.negated(), 100 * ev.margin, f"SFT - base on L1: {d}")


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
    if hurt:
        return ("not reproduced", text)
    status, text = judged_gain(overall, margin, text)
    if status != "reproduced":
        return (status, text)
    big = max(per, key=lambda lv: per[lv].points)
    if per[big].points > SMALL_GAIN:
        models = {m["role"]: m for m in ev.paper["models"]}
        gains = [r - b for r, b in zip(models["rl"]["scores"], models["base"]["scores"])]
        return (DIRECTION_ONLY, f"{text}; the paper's RL gains are a few points "
                                f"({ev.paper_avg('rl') - ev.paper_avg('base'):+.1f} on average, "
                                f"at most {max(gains):+.1f} on one benchmark), here "
                                f"{per[big].points:+.1f} on {big}{_why_rl_gains(ev)}")
    return ("reproduced", text)


def _why_rl_gains(ev: Evidence) -> str:
    """Why RL gains more here than in the paper, where the answers show it: the tiny base
    mostly answers directly and RL learns to open a trace, while the paper's instruction-
    tuned 7B already reasons step by step."""
    if "base" not in ev.answers or "rl" not in ev.answers:
        return ""
    base, rl = (traced_length(ev.answers[r])["traced_share"] for r in ("base", "rl"))
    if np.isnan(base) or np.isnan(rl) or rl <= base:
        return ""
    return (f" (the base opens a <think> trace in {100 * base:.0f}% of its answers, RL in "
            f"{100 * rl:.0f}%: RL teaches this small base a mode the paper's 7B already uses)")


def traced_length(results: pd.DataFrame) -> dict[str, float]:
    """Of one model's sampled answers (an evaluation table: per question `samples` and
    `lengths`): mean tokens of all answers, of those that open a `<think>` trace, and the
    traced share. A base that mostly answers directly is short on average; its traces are
    what RL, which learns to open them, should be compared with."""
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


def synergy_table(ev: Evidence, combos: list[str] | None = None) -> pd.DataFrame:
    """`merging.synergy_check` of every combination (`combos`, default the paper's:
    `Evidence.combinations`) against SFT and its RL model (`Evidence.rl_for`: the RL control
    for 05's strategies, 04's RL for merges)."""
    long = ev.acc.reset_index().melt(id_vars="role", var_name="level", value_name="accuracy")
    long = long.rename(columns={"role": "model"})
    groups: dict[tuple[str, str], list[str]] = {}
    for combo in ev.combinations() if combos is None else combos:
        groups.setdefault(ev.parents_of(combo), []).append(combo)
    parts = [synergy_check(long, members, parents, margin=ev.margin)
             for parents, members in groups.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def synergies(ev: Evidence, combos: list[str]) -> tuple[list[str], list[str]]:
    """Of `combos`: those that beat both parents on some level without losing elsewhere,
    beyond the uncertainty on a level where they are above both (winners), and those above
    both by the point estimate only (unclear)."""
    table = synergy_table(ev, combos)
    if not len(table):
        return [], []
    table = table.set_index("model")
    margin = 100 * ev.margin
    winners = [m for m in table.index[table["synergy"]]
               if any(all(ev.difference(m, p, [lv]).gain(margin)
                          for p in ev.parents_of(m))
                      for lv in table.at[m, "above_both"].split(", "))]
    return winners, [m for m in table.index[table["synergy"]] if m not in winners]


def no_synergy(ev: Evidence) -> Verdict:
    combos = ev.combinations()
    if ev.missing("sft", "rl") or not combos:
        return _not_run(ev.missing("sft", "rl") + ([] if combos else
                                                   ["a combination (05 or 06)"]))
    winners, unclear = synergies(ev, combos)
    text = (f"{ev.budget_note()}: {len(winners)} of {len(combos)} combinations beat both "
            f"parents without losing elsewhere: {', '.join(winners) or 'none'}"
            + (f"; above both by the point estimate, within the uncertainty: "
               f"{', '.join(unclear)}" if unclear else ""))
    if ev.beyond():
        won, open_ = synergies(ev, ev.beyond())
        text += (f"; beyond the paper ({', '.join(ev.beyond())}): beat both parents: "
                 f"{', '.join(won) or 'none'}"
                 + (f", within the uncertainty: {', '.join(open_)}" if open_ else ""))
    if unclear and not winners:
        return (UNDECIDED, text)
    return _verdict(not winners, text)


def control_steps(budget: pd.DataFrame | None) -> int | None:
    """Optimizer steps of 05's RL control in a `strategies.budget_table` (None: no control)."""
    if budget is None or "model" not in budget or CONTROL not in set(budget["model"]):
        return None
    return int(budget.set_index("model").at[CONTROL, "optimizer steps"])


def restricted(ev: Evidence, keep: Callable[[str], bool]) -> Evidence:
    """`ev` with only the combinations (the paper's and those beyond it) that `keep`; the
    parents and 05's RL control stay."""
    drop = [r for r in [*ev.combinations(), *ev.beyond()] if not keep(r)]
    return dataclasses.replace(ev, **{f: getattr(ev, f).drop(index=drop)
                                      for f in ("acc", "length", "low", "high")})


def vs_control(ev: Evidence) -> Callable[[str], bool]:
    """Whether a combination of `ev` is judged against 05's RL control (at 05's budget)."""
    return lambda role: ev.rl_for(role) == CONTROL_ROLE


def rl_parent_steps(budget: pd.DataFrame | None) -> int | None:
    """Optimizer steps of 04's RL parent in a `strategies.budget_table` (None: not there)."""
    if budget is None or "stage" not in budget:
        return None
    rows = budget[budget["stage"] == stages.GRPO.name]
    return int(rows["optimizer steps"].iloc[0]) if len(rows) else None


def below_rl(ev: Evidence) -> Verdict:
    """No combination ends above RL. The paper compares at the end of training; 05's GRPO
    strategies and their RL control train few steps in the default. Where `ev.longer`
    (report.long_run) trained them more steps than this run, its strategies are judged
    there. Where that run is named but has not run, and this run's strategies are
    mid-training (their control trained fewer steps than 04's RL parent), their
    end-of-training comparison is "not run" (the row names the run that would decide it),
    like the KL row's. Either way this run's merges and blends of 04's samples (against
    04's RL parent: both parents trained to the end) are judged here, and this run's
    strategies are shown beside as mid-training with their own status. Without a long run,
    or where this run's strategies trained as long as the RL parent, this run decides
    alone."""
    steps, parent = control_steps(ev.budget), rl_parent_steps(ev.budget)
    mid_training = steps is not None and (parent is None or steps < parent)
    if ev.longer is None and not (ev.long_run and mid_training):
        return combinations_below_rl(ev)
    if ev.longer is not None:
        first = (f"05's strategies in run '{ev.long_run}' ({control_steps(ev.longer.budget)} "
                 f"steps, the paper's claim at a longer budget)",
                 combinations_below_rl(restricted(ev.longer, vs_control(ev.longer))))
    else:
        first = ("05's strategies at the end of training", _not_run(
            f"{stages.STRATEGIES.name} of run '{ev.long_run}', which trains them longer "
            f"than this run's {steps} steps"
            + (f" (04's RL parent: {parent} steps)" if parent else "")
            + "; run it, then re-render this report"))
    parts = [first]
    rest = restricted(ev, lambda r: not vs_control(ev)(r))
    if rest.combinations():
        parts.append(("this run's merges and blends of 04's samples",
                      combinations_below_rl(rest)))
    judged = [s for _, (s, _) in parts if s != "not run"]
    status = next((s for s in ("not reproduced", UNDECIDED) if s in judged),
                  DIRECTION_ONLY if judged and set(judged) == {DIRECTION_ONLY}
                  else "reproduced" if judged else "not run")
    own = combinations_below_rl(restricted(ev, vs_control(ev)))
    return status, ("; ".join(f"{label}: {s}: {text}" for label, (s, text) in parts)
                    + f". This run's strategies, mid-training at {steps} steps: "
                      f"{own[0]}: {own[1]}")


def combinations_below_rl(ev: Evidence) -> Verdict:
    """No combination ends clearly above its RL model, judged on one run's evidence."""
    combos = ev.combinations()
    if ev.missing("rl") or not combos:
        return _not_run(ev.missing("rl") + ([] if combos else ["a combination (05 or 06)"]))
    diffs = {r: ev.difference(r, ev.rl_for(r), ["all"]) for r in combos}
    margin = 100 * ev.margin
    # The claim per combination: no gain of more than `margin` over its RL model.
    above = [r for r, d in diffs.items() if d.exceeds(margin) is True]
    open_ = [r for r, d in diffs.items() if d.exceeds(margin) is None]
    best = max(combos, key=lambda r: diffs[r].points)
    rl = ev.rl_for(best)
    mean_best, mean_rl = ev.paired_means(best, rl)
    where = "closest to" if diffs[best].points <= 0 else "furthest above"
    text = (f"{ev.budget_note()}: {where} its RL {best} {100 * mean_best:.1f}% "
            f"vs {rl} {100 * mean_rl:.1f}% ({diffs[best]}{ev.questions_note(diffs[best])}); "
            f"clearly above their RL: {', '.join(above) or 'none'}")
    if is_strategy(best) and rl != "rl":  # against 04's RL parent too (unequal budgets)
        text += (f"; against 04's RL parent ({100 * ev.acc.at['rl', 'all']:.1f}%, more "
                 f"steps): {best} {ev.difference(best, 'rl', ['all']).short()} points")
    text += beyond_rl(ev, margin)
    if above:
        return ("not reproduced", text)
    if open_:
        need = [diffs[r].to_decide_gain(margin) for r in open_]
        return (UNDECIDED, f"{text}; not clearly at or below their RL: "
                           + ", ".join(f"{r} {diffs[r].short()}" + (f" (about {n} questions "
                                                                    f"would decide)" if n else "")
                                       for r, n in zip(open_, need)))
    paper_best = max(m["avg"] for m in ev.paper["models"] if m["role"] in PAPER_COMBINATIONS)
    if diffs[best].points < -SMALL_GAIN:  # the paper's best ends just below RL
        return (DIRECTION_ONLY, f"{text}; the paper's best ends "
                                f"{paper_best - ev.paper_avg('rl'):+.1f} points from RL")
    return ("reproduced", text)


def beyond_rl(ev: Evidence, margin: float) -> str:
    """The row's clause on the combinations beyond the paper against their RL model, each
    decided like the paper's ("" when 05 trained none)."""
    parts = []
    for r in ev.beyond():
        d = ev.difference(r, ev.rl_for(r), ["all"])
        decided, need = d.exceeds(margin), d.to_decide_gain(margin)
        parts.append(f"{r} {d.short()} against {ev.rl_for(r)}: " + (
            "clearly above" if decided else "not above" if decided is False else
            UNDECIDED + (f" (about {need} questions would decide)" if need else "")))
    return f"; beyond the paper: {'; '.join(parts)}" if parts else ""


def two_stage_budget(ev: Evidence) -> Verdict:
    if ev.two_stage is None or len(ev.two_stage) < 2:
        return _not_run(f"two-stage runs at two or more response budgets "
                        f"({stages.STRATEGIES.name})")
    t = ev.two_stage
    return _verdict(strategies.two_stage.needs_budget(t), "; ".join(
        f"budget {r.budget}: {100 * r.clipped_ratio:.0f}% truncated, accuracy "
        f"{100 * r.accuracy:.1f}%" for r in t.itertuples()))


def interpolation_gaps(ev: Evidence, methods: tuple[str, ...]) -> np.ndarray:
    """Per (merge, level) of `methods`: |merge - linear interpolation of the parents|,
    whether the merge's accuracy lies between the parents (+- margin), and whether its 95%
    interval lies wholly outside that band (clearly outside; a point estimate outside the
    band by less than its own uncertainty is not). Shape (n, 3)."""
    rows = []
    lv = ev.levels()
    for r in ev.combinations() if not ev.missing("sft", "rl") else []:
        m = MERGE_PATTERN.match(r)
        if m and m.group(1) in methods:
            t = float(m.group(2))
            sft, rl = (ev.acc.loc[p, lv] for p in ev.parents_of(r))
            expect = t * sft + (1 - t) * rl
            lo, hi = np.minimum(sft, rl) - ev.margin, np.maximum(sft, rl) + ev.margin
            for c in lv:
                a, a_lo, a_hi = ev.acc.at[r, c], ev.low.at[r, c], ev.high.at[r, c]
                between = lo[c] <= a <= hi[c]
                outside = (not between if np.isnan(a_lo) or np.isnan(a_hi)
                           else a_hi < lo[c] or a_lo > hi[c])
                rows.append((abs(a - expect[c]), between, outside))
    return np.array(rows, dtype=float).reshape(-1, 3)


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
    near = 1 - gaps[:, 2].mean()
    sft, rl = moved(ev, "sft"), moved(ev, "rl")
    between = 100 * gaps[:, 1].mean()
    text = (f"{100 * near:.0f}% of linear/SLERP (ratio, level) points are not clearly "
            f"outside the parents' band (+-{100 * ev.margin:.0f} points; {between:.0f}% "
            f"between them by the point estimate); weights moved from the base: SFT "
            f"{100 * sft:.1f}%, RL {100 * rl:.1f}%")
    if near < INTERPOLATE_SHARE and sft > FAR_MOVE:
        return (NOT_APPLICABLE, f"{text}; the paper's 7B models move well under 1%, so its "
                                f"merges stay near both parents")
    return _verdict(near >= INTERPOLATE_SHARE, text)


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
    return _verdict(ok, "meta words per 1k tokens: " + ", ".join(
        f"{m} {v:.2f}" for m, v in per.items()) + meta_prior(ev.words))


def meta_prior(words: pd.DataFrame | None) -> str:
    """How likely the reference (the base) found SFT's meta words where SFT wrote them: a
    change of a habit it has, or an invention (`pivotal.category_probabilities`)."""
    if words is None or words.empty:
        return ""
    probs = category_probabilities(words)
    row = probs[(probs["model"] == "sft") & (probs["category"] == "meta")]
    if row.empty:
        return ""
    r = row.iloc[0]
    return (f"; where SFT writes them the base gives them probability {r.p_reference:.2f} "
            f"(SFT {r.p_model:.2f}, {int(r.occurrences)} words)")


def curve_summary(curves: pd.DataFrame, window: int = CURVE_WINDOW) -> dict[str, float]:
    """One run's training log (`grpo_analysis.load_curves` rows of one run): steps logged, reward
    at the start, at its best and at the end, entropy at the start and end (each a mean
    over `window` logged steps)."""
    c = curves.sort_values("step")
    out = {"steps": int(c["step"].max())}
    if "kl" in c and c["kl"].notna().any():
        out["kl_mean"] = float(c["kl"].mean())  # KL to the reference, over the run
    for col in ("reward", "entropy"):
        if col in c:
            smooth = c[col].rolling(window, min_periods=1).mean()
            out.update({f"{col}_start": c[col].head(window).mean(),
                        f"{col}_best": smooth.max(), f"{col}_end": c[col].tail(window).mean()})
    return out


def kl_pair(runs: pd.DataFrame | None, curves: pd.DataFrame | None
            ) -> tuple[str, str, dict, dict] | str:
    """04's no-KL policy and its first KL policy (not the easy-question ablation) with their
    `curve_summary`, or what is missing to judge the KL finding."""
    needs = f"policies at beta 0 and at a beta > 0 in {stages.GRPO.name} (grpo.betas)"
    if runs is None or runs.empty or "beta" not in runs:
        return needs
    plain = runs[~runs["label"].str.contains(FILTERED)]
    plain = plain if len(plain) else runs
    no_kl, kl = plain[plain["beta"] == 0], plain[plain["beta"] > 0]
    if no_kl.empty or kl.empty:
        return needs
    a, b = no_kl["label"].iloc[0], kl["label"].iloc[0]
    curves = curves if curves is not None else pd.DataFrame()
    if "run" not in curves or not {a, b} <= set(curves["run"]):
        return f"the training curves of {a} and {b}"
    return a, b, curve_summary(curves[curves["run"] == a]), \
        curve_summary(curves[curves["run"] == b]) | {"beta": float(kl["beta"].iloc[0])}


def kl_too_short(runs: pd.DataFrame | None, curves: pd.DataFrame | None) -> bool:
    """The no-KL policy ran too few steps to reach the paper's collapse (or is missing)."""
    pair = kl_pair(runs, curves)
    return isinstance(pair, str) or pair[2]["steps"] < COLLAPSE_STEP / 2


def kl_collapse(ev: Evidence) -> Verdict:
    pair = kl_pair(ev.rl_runs, ev.rl_curves)
    if isinstance(pair, str):
        if ev.long_run and not ev.kl_from:  # this run trains no KL pair; long_run's has not run
            return _not_run(f"{stages.GRPO.name} of run '{ev.long_run}', which trains the "
                            f"policies at beta 0 and a beta > 0 long enough to part (this run: "
                            f"{pair}); run it, then re-render this report")
        return _not_run(pair if not ev.kl_from else f"{pair} in run '{ev.kl_from}'")
    a, b, s, k = pair
    where = f"run '{ev.kl_from}': " if ev.kl_from else ""
    if s["steps"] < COLLAPSE_STEP / 2:
        if ev.long_run and not ev.kl_from:
            return _not_run(f"{stages.GRPO.name} of run '{ev.long_run}', where the policies "
                            f"train long enough to part (this run's no-KL policy ran "
                            f"{s['steps']} steps; the paper's collapse came near step "
                            f"{COLLAPSE_STEP}); run it, then re-render this report")
        return (NOT_APPLICABLE, f"{where}the paper's collapse came near step {COLLAPSE_STEP}; "
                                f"the no-KL policy ran {s['steps']} steps "
                                f"(params/tiny-long.yaml runs where they part)")
    if "reward_end" not in s or "reward_end" not in k:
        return _not_run(f"rewards in the training curves of {a} and {b}")
    drop = s["reward_best"] - s["reward_end"]
    # The claim is a contrast: the no-KL policy collapses and the KL policy holds (one that
    # also collapses, only more slowly, does not show what the paper's KL run shows).
    held = k["reward_best"] - k["reward_end"] <= COLLAPSE_DROP
    ok = drop > COLLAPSE_DROP and held and s["reward_end"] < k["reward_end"] - ev.margin
    entropy = (f", entropy {s['entropy_start']:.2f} -> {s['entropy_end']:.2f}"
               if "entropy_end" in s else "")
    # How hard the KL term pulls: beta x the KL it measured, against a reward scale of 1.
    pull = (f" (mean KL to the reference {k['kl_mean']:.3f}: the penalty beta x KL is "
            f"{k['beta'] * k['kl_mean']:.4f} per token)" if "kl_mean" in k else "")
    return _verdict(ok, f"{where}{a} ({s['steps']} steps): reward best {s['reward_best']:.2f} "
                        f"-> end {s['reward_end']:.2f}{entropy}; {b}: reward "
                        + ("" if held else f"best {k['reward_best']:.2f} -> ")
                        + f"end {k['reward_end']:.2f}"
                        + ("" if held else " (it collapses too)") + pull)


def no_easiest(ev: Evidence) -> Verdict:
    pattern = PAPER_MATCH["rl_no_easiest"]
    found = [r for r in ev.acc.index if re.search(pattern, r, re.IGNORECASE)]
    if ev.missing("rl") or not found:
        return _not_run(ev.missing("rl") + ([] if found else [
            f"a policy without the easiest questions in {stages.GRPO.name} "
            "(grpo.exclude_easiest_ablation)"]))
    # The ablation against the RL parent on the questions 04 evaluated both on.
    rl, name = (OWN_RL, "RL (04's evaluation)") if OWN_RL in ev.acc.index else ("rl", "RL")
    d = ev.difference(found[0], rl, ["all"])
    text = (f"{found[0]} - {name} overall: {d}; the paper: "
            f"{ev.paper_avg('rl_no_easiest') - ev.paper_avg('rl'):+.1f} points")
    return judged_within(d, -ABOUT_SAME, ABOUT_SAME,
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

