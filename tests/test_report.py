"""The run report: escaping, the checklist, missing stages, and 08 on the smoke profile."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_stages
from synergy import findings, judging, report, report_roles, stats
from synergy.config import ConfigError
from synergy.evidence import STATUSES
from synergy.evidence import evidence as evidence_of
from synergy import report_figures as figures

PAYLOAD = "<script>alert('pwned')</script><b>bold</b>"


def test_model_text_is_escaped():
    df = pd.DataFrame({"model": ["sft"], "response": [f"Wait {PAYLOAD} \\boxed{{1}}"]})
    out = report.escaped_html(df).data
    assert "<script>" not in out and "<b>bold" not in out
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in out
    assert "not run" in report.escaped_html(df.iloc[:0]).data


def _roles(sft, rl, base, lengths=(10, 40, 12), merges=None, width=0.01):
    """A crafted `role_levels` table: accuracy per level L1..L5 of each role, each with a
    95% interval of +-`width` (None: no interval columns, like an older per_level.csv)."""
    rows = []
    for role, accs, length in (("base", base, lengths[0]), ("sft", sft, lengths[1]),
                               ("rl", rl, lengths[2]), *(merges or [])):
        for level, a in [(f"L{i + 1}", a) for i, a in enumerate(accs)] + [
                ("all", sum(accs) / len(accs))]:
            rows.append({"stage": "06_merging", "model": role, "role": role, "level": level,
                         "accuracy": a, "mean_length": length,
                         "questions": 50 if level == "all" else 10,
                         **({} if width is None else {"accuracy_low": a - width,
                                                      "accuracy_high": a + width})})
    return pd.DataFrame(rows)


def _ev(roles, margin=0.02, long_ratio=2.0, **facts):
    return evidence_of(roles, margin, long_ratio, **facts)


BASE, SFT = [0.9, 0.7, 0.5, 0.3, 0.1], [0.8, 0.7, 0.6, 0.5, 0.3]


def test_checklist_judges_from_numbers():
    paper = report_roles.paper_results()
    rl = [0.95, 0.75, 0.55, 0.35, 0.12]
    merges = [("linear-0.5", [0.87, 0.72, 0.57, 0.42, 0.2], 25),
              ("ties-0.5", [0.5, 0.9, 0.2, 0.9, 0.0], 25)]
    counts = pd.DataFrame({"model": ["base", "sft", "rl"], "level": "all",
                           "category": "meta", "word": "wait", "count": [0, 50, 1],
                           "tokens": [1000, 4000, 1000]})
    checks = findings.checklist(paper, _ev(_roles(SFT, rl, BASE, merges=merges), counts=counts))
    status = dict(zip(checks["finding"], checks["status"]))
    assert set(status.values()) <= set(STATUSES)
    f = paper["findings"]
    for key in ("sft_hard", "sft_easy", "sft_long", "rl_all", "rl_short", "interpolate",
                "ties_erratic", "meta_tokens"):
        assert status[f[key]] == "reproduced", (key, checks)
    assert status[f["no_synergy"]] == "reproduced"
    dominating = merges + [("linear-0.75", [0.96, 0.8, 0.65, 0.55, 0.35], 30)]
    checks = findings.checklist(paper, _ev(_roles(SFT, rl, BASE, merges=dominating),
                                         counts=counts))
    status = dict(zip(checks["finding"], checks["status"]))
    assert status[f["no_synergy"]] == "not reproduced"
    assert "linear-0.75" in checks.set_index("finding").at[f["no_synergy"], "this run"]
    words = pd.DataFrame({"model": ["sft", "sft", "rl"], "category": "meta",
                          "word": ["wait", "hmm", "wait"], "occurrences": [30, 10, 0],
                          "p_model": [0.9, 0.5, None], "p_reference": [0.2, 0.6, None]})
    meta = findings.meta_tokens(_ev(_roles(SFT, rl, BASE), counts=counts, words=words))
    assert meta[0] == "reproduced" and meta[1].endswith(
        "where SFT writes them the base gives them probability 0.30 (SFT 0.80, 40 words)")
    flipped = findings.checklist(paper, _ev(_roles(BASE, rl, SFT)))
    status = dict(zip(flipped["finding"], flipped["status"]))
    assert status[f["sft_hard"]] == "not reproduced"
    assert status[f["meta_tokens"]] == "not run"


def test_every_finding_has_one_function_and_each_is_judged_alone():
    paper = report_roles.paper_results()
    assert set(paper["findings"]) == set(findings.FINDINGS)
    ev = _ev(_roles(SFT, BASE, BASE, width=0.03))
    assert findings.sft_hard(ev) == (
        "reproduced", "SFT - base on L4+L5: +20.0 points [95% CI +14.0, +26.0]")
    assert findings.sft_easy(ev) == ("reproduced",
                                   "SFT - base on L1: -10.0 points [95% CI -16.0, -4.0]")
    # RL equal to the base: an interval of +-6 points holds a gain and none: undecided
    assert findings.rl_all(ev)[0] == findings.UNDECIDED
    narrow = _ev(_roles(SFT, BASE, BASE, width=0.005))  # +-1 point: clearly no gain
    assert findings.rl_all(narrow)[0] == "not reproduced"
    assert findings.no_synergy(ev)[0] == "not run"  # no combination in this run
    assert findings.meta_tokens(ev)[0] == "not run"


def test_a_difference_counts_only_beyond_its_interval():
    # +3 points on L4-L5 clears the 2-point margin but not an interval of +-5 per model
    sft = [0.9, 0.7, 0.5, 0.33, 0.13]
    wide = _ev(_roles(sft, BASE, BASE, width=0.05))
    status, text = findings.sft_hard(wide)
    assert status == findings.UNDECIDED and "+3.0 points [95% CI -7.0, +13.0]" in text
    assert "more questions would decide it" in text  # no per-question results: no count
    below = _ev(_roles([0.9, 0.7, 0.5, 0.28, 0.08], BASE, BASE, width=0.01))  # -2 [-4, 0]
    assert findings.sft_hard(below)[0] == "not reproduced"
    assert findings.sft_hard(_ev(_roles(sft, BASE, BASE, width=0.01)))[0] == "reproduced"
    # without intervals (an older per_level.csv) the margin alone decides, and says so
    status, text = findings.sft_hard(_ev(_roles(sft, BASE, BASE, width=None)))
    assert status == "reproduced" and "(no interval)" in text


def test_paired_difference_from_per_question_results():
    q = pd.DataFrame({"qid": range(6), "level": [1, 1, 4, 4, 5, 5],
                      "accuracy": [1.0, 1.0, 0.0, 0.25, 0.0, 0.0]})
    better = q.assign(accuracy=q["accuracy"] + [0, 0, 0.5, 0.5, 0.25, 0.25])
    ev = _ev(_roles(SFT, BASE, BASE, width=0.3), answers={"base": q, "sft": better})
    d = ev.difference("sft", "base", ["L4", "L5"])  # paired: every question gains
    assert (d.points, d.low, d.high) == (37.5, 25.0, 50.0)
    assert findings.sft_hard(ev)[0] == "reproduced"  # the per-level intervals would not say so


def test_undecided_names_the_questions_that_would_decide():
    d = stats.Difference(1.0, -5.0, 7.0, questions=200)  # half-width 6
    assert d.within(-5.0, 5.0) is None and d.within(-10.0, 10.0) is True
    assert d.within(8.0, 20.0) is False
    # inside +-5 needs a half-width below 5 - 1 = 4: 200 * (6 / 4)^2 = 450 questions
    assert d.to_decide_within(-5.0, 5.0) == 450
    # a gain above 2 or none: the interval must end below 2, a half-width below 1
    assert d.exceeds(2.0) is None and d.to_decide_gain(2.0) == 7200
    assert stats.Difference(3.0, 1.0, 5.0, 200).exceeds(2.0) is True
    assert stats.Difference(1.0, 0.5, 1.5, 200).exceeds(2.0) is False  # clear but small
    status, text = findings.judged_within(d, -5.0, 5.0, "x - y")
    assert status == findings.UNDECIDED and "200 questions; about 450" in text
    assert findings.judged_within(stats.Difference(1.0, -2.0, 4.0, 200), -5.0, 5.0,
                                  "x")[0] == "reproduced"
    assert findings.judged_within(stats.Difference(9.0, 6.0, 12.0, 200), -5.0, 5.0,
                                  "x")[0] == "not reproduced"
    # the easiest-question ablation: +0.6 [-5.6, +6.9] on 200 questions is undecided
    q = pd.DataFrame({"qid": range(4), "level": [1, 2, 4, 5], "accuracy": [1.0, 0.5, 0.0, 0.5]})
    ev = _ev(_roles(SFT, BASE, BASE), answers={"rl": q, "04_grpo/rl-static": q})
    status, text = findings.no_easiest(ev.__class__(**{**ev.__dict__, "acc": ev.acc.reindex(
        list(ev.acc.index) + ["04_grpo/rl-static"]).fillna(0.5)}))
    assert status == "reproduced"  # identical policies: a zero-width interval inside +-5


def test_rl_all_statuses():
    base = [0.5] * 5
    ok = _ev(_roles(SFT, [0.55] * 5, base))
    assert findings.rl_all(ok)[0] == "reproduced"
    big = _ev(_roles(SFT, [0.55, 0.6, 0.8, 0.55, 0.55], base))
    status, text = findings.rl_all(big)
    assert status == findings.DIRECTION_ONLY
    assert "L3 +30.0 [+28.0, +32.0]" in text and "+4.8 on average" in text
    assert "+30.0 on L3" in text
    hurt = _ev(_roles(SFT, [0.4, 0.7, 0.7, 0.7, 0.7], base))
    status, text = findings.rl_all(hurt)
    assert status == "not reproduced" and "below the base on L1" in text
    direct, traced = ("\\boxed{3}", 8), ("<think> a: 1+2=3.</think>\\boxed{3}", 24)
    answers = {"base": _answers([[direct, direct], [direct, traced]]).assign(accuracy=0.0,
                                                                             level=3),
               "rl": _answers([[traced, traced], [traced, traced]]).assign(level=3)}
    status, text = findings.rl_all(_ev(_roles(SFT, [0.55, 0.6, 0.8, 0.55, 0.55], base),
                                       answers=answers))
    assert status == findings.DIRECTION_ONLY
    assert "the base opens a <think> trace in 25% of its answers, RL in 100%" in text
    unclear = _ev(_roles(SFT, [0.53] * 5, base, width=0.05))  # +3 inside +-10
    assert findings.rl_all(unclear)[0] == findings.UNDECIDED
    no_rl = _roles(SFT, [0.55] * 5, base)
    assert findings.rl_all(_ev(no_rl[no_rl["role"] != "rl"])) == ("not run", "needs rl")


def test_sft_long_magnitude():
    assert findings.sft_long(_ev(_roles(SFT, BASE, BASE, lengths=(10, 100, 12))))[0] == \
        "reproduced"  # 10x: inside the paper's 8-15x
    status, text = findings.sft_long(_ev(_roles(SFT, BASE, BASE, lengths=(10, 400, 12))))
    assert status == findings.DIRECTION_ONLY and "40.0x" in text and "8-15x" in text
    assert findings.sft_long(_ev(_roles(SFT, BASE, BASE, lengths=(10, 15, 12))))[0] == \
        "not reproduced"


def _answers(texts_lengths):
    """One evaluation table: per question its samples and their token counts."""
    return pd.DataFrame({"qid": range(len(texts_lengths)), "level": 1, "accuracy": 1.0,
                         "samples": [[t for t, _ in q] for q in texts_lengths],
                         "lengths": [[n for _, n in q] for q in texts_lengths]})


def test_traced_length():
    direct, traced = ("\\boxed{3}", 8), ("<think> a: 1+2=3.</think>\\boxed{3}", 24)
    out = findings.traced_length(_answers([[direct, direct], [direct, traced]]))
    assert out == {"all": 12.0, "traced": 24.0, "traced_share": 0.25}
    assert pd.isna(findings.traced_length(_answers([[direct]]))["traced"])


def test_rl_short_against_the_base_traces():
    direct, traced = ("\\boxed{3}", 8), ("<think> a: 1+2=3.</think>\\boxed{3}", 30)
    roles = _roles(SFT, BASE, BASE, lengths=(13.5, 130, 33))
    base = _answers([[direct, direct], [direct, traced]])
    status, text = findings.rl_short(_ev(roles, answers={"base": base}))
    assert status == "reproduced"
    assert text.startswith("RL 33 tokens vs base's traced answers 30 tokens (all answers 14;")
    status, text = findings.rl_short(_ev(roles))  # no samples: all answers, 33 vs 14
    assert status == "not reproduced" and "no per-sample results" in text


def _merges(between: bool):
    """Linear merges at 0.25/0.5/0.75: between the parents, or below both everywhere."""
    return [(f"linear-{t}", [0.1] * 5 if not between else
             [t * s + (1 - t) * r for s, r in zip(SFT, BASE)], 20) for t in (0.25, 0.5, 0.75)]


def _weights(sft_moved):
    return pd.DataFrame({"role": ["sft", "rl"], "relative_distance": [sft_moved, 0.017],
                         "median_tensor_distance": [0.5, 0.02]})


def test_interpolate_statuses():
    far, near = _weights(0.38), _weights(0.005)
    assert findings.interpolate(_ev(_roles(SFT, BASE, BASE, merges=_merges(True)),
                                  weights=far))[0] == "reproduced"
    status, text = findings.interpolate(_ev(_roles(SFT, BASE, BASE, merges=_merges(False)),
                                          weights=far))
    assert status == findings.NOT_APPLICABLE and "SFT 38.0%, RL 1.7%" in text
    assert "0% of linear/SLERP (ratio, level) points are not clearly outside" in text
    assert findings.interpolate(_ev(_roles(SFT, BASE, BASE, merges=_merges(False)),
                                  weights=near))[0] == "not reproduced"
    assert findings.interpolate(_ev(_roles(SFT, BASE, BASE, merges=_merges(False))))[0] == \
        "not reproduced"  # distances unknown: judged as before
    assert findings.interpolate(_ev(_roles(SFT, BASE, BASE)))[0] == "not run"


def test_interpolate_reads_the_merges_intervals():
    """A merge just outside the parents' band by its point estimate, but whose interval
    reaches into the band, is not clearly outside; one whose interval lies wholly outside
    is."""
    near = _weights(0.05)
    just = [(f"linear-{t}", [max(s, r) + 0.04 for s, r in zip(SFT, BASE)], 20)
            for t in (0.25, 0.5, 0.75)]
    status, text = findings.interpolate(_ev(_roles(SFT, BASE, BASE, merges=just, width=0.03),
                                            weights=near))
    assert status == "reproduced"
    assert text.startswith("100% of linear/SLERP (ratio, level) points are not clearly outside")
    assert "0% between them by the point estimate" in text and "SFT 5.0%, RL 1.7%" in text
    status, _ = findings.interpolate(_ev(_roles(SFT, BASE, BASE, merges=just, width=0.01),
                                         weights=near))
    assert status == "not reproduced"  # +4 points, +-1: clearly outside the +-2 band
    gaps = findings.interpolation_gaps(_ev(_roles(SFT, BASE, BASE, merges=just, width=None)),
                                       ("linear",))
    assert gaps.shape == (15, 3) and gaps[:, 2].all()  # no interval: the point decides


def _curves(label, rewards, entropy=0.3):
    return pd.DataFrame({"run": label, "step": [5 * (i + 1) for i in range(len(rewards))],
                         "reward": rewards, "entropy": entropy})


def test_kl_collapse_statuses():
    ev = _ev(_roles(SFT, BASE, BASE))
    assert findings.kl_collapse(ev)[0] == "not run"
    runs = pd.DataFrame({"label": ["rl-beta0", "rl-beta0.005", "rl-beta0.005-static"],
                         "beta": [0.0, 0.005, 0.005]})
    short = pd.concat([_curves("rl-beta0", [0.5] * 12), _curves("rl-beta0.005", [0.5] * 12)])
    status, text = findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs,
                                          rl_curves=short))
    assert status == findings.NOT_APPLICABLE and "ran 60 steps" in text
    assert "params/tiny-long.yaml" in text
    rise, fall = [0.5 + 0.005 * i for i in range(80)], [0.8] * 50 + [0.3] * 30
    long = pd.concat([_curves("rl-beta0", fall), _curves("rl-beta0.005", rise)])
    status, text = findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs,
                                          rl_curves=long))
    assert status == "reproduced" and "rl-beta0 (400 steps): reward best 0.80 -> end 0.30" \
        in text
    steady = pd.concat([_curves("rl-beta0", rise), _curves("rl-beta0.005", rise)])
    assert findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs,
                                  rl_curves=steady))[0] == "not reproduced"
    # Both collapsing, the KL policy more slowly, is not the paper's contrast.
    slower = [0.8] * 50 + [0.55] * 30
    both = pd.concat([_curves("rl-beta0", fall), _curves("rl-beta0.005", slower)])
    status, text = findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs,
                                            rl_curves=both))
    assert status == "not reproduced" and "best 0.80 -> end 0.55 (it collapses too)" in text
    # The row says how hard the KL term pulled: beta x the KL the policy logged.
    logged = steady.assign(kl=0.08)
    status, text = findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs,
                                            rl_curves=logged))
    assert "mean KL to the reference 0.080: the penalty beta x KL is 0.0004 per token" in text
    assert findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs.iloc[1:],
                                  rl_curves=steady))[0] == "not run"
    # A run too short to part points at the run that holds the ablation, then reads it.
    assert findings.kl_too_short(runs, short) and not findings.kl_too_short(runs, long)
    status, text = findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs,
                                            rl_curves=short, long_run="tiny-long"))
    assert status == "not run" and "04_grpo of run 'tiny-long'" in text
    # A run that trains no KL pair at all (tiny: one beta) points at the same run.
    status, text = findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs.iloc[1:],
                                            rl_curves=short, long_run="tiny-long"))
    assert status == "not run" and "04_grpo of run 'tiny-long'" in text
    assert "policies at beta 0 and at a beta > 0" in text
    status, text = findings.kl_collapse(_ev(_roles(SFT, BASE, BASE), rl_runs=runs,
                                            rl_curves=long, long_run="tiny-long",
                                            kl_from="tiny-long"))
    assert status == "reproduced" and text.startswith("run 'tiny-long': rl-beta0 (400 steps)")


def _with_static(accs, width=0.01):
    rl = [0.9, 0.8, 0.7, 0.6, 0.5]
    roles = _roles(SFT, rl, BASE, merges=[("x", accs, 30)], width=width)
    return roles.assign(role=roles["role"].replace("x", "04_grpo/rl-beta0.005-static"),
                        stage=roles["stage"].where(roles["role"] != "x", "04_grpo"),
                        model=roles["model"].replace("x", "rl-beta0.005-static"))


def test_no_easiest_statuses():
    status, text = findings.no_easiest(_ev(_with_static([0.9, 0.8, 0.7, 0.58, 0.48])))
    assert status == "reproduced" and "-0.8 points [95% CI -2.8, +1.2]" in text
    assert "the paper: -2.3 points" in text
    assert findings.no_easiest(_ev(_with_static([0.5, 0.5, 0.5, 0.4, 0.3])))[0] == \
        "not reproduced"  # 30 points below RL
    assert findings.no_easiest(_ev(_with_static([0.9, 0.8, 0.7, 0.58, 0.48], width=0.1)))[0] \
        == findings.UNDECIDED  # too uncertain to call it "about as well" or not
    assert findings.no_easiest(_ev(_roles(SFT, BASE, BASE)))[0] == "not run"


def test_no_easiest_against_04s_own_rl():
    """Where "rl" comes from a later stage's questions, the ablation is compared with 04's
    RL parent as 04 evaluated it (the same questions and samples as the ablation)."""
    roles = _with_static([0.9, 0.8, 0.7, 0.58, 0.48])
    own = roles[roles["role"] == "rl"].assign(role=report_roles.OWN_RL, stage="04_grpo",
                                              model="rl-beta0.005")
    later = roles.copy()
    later.loc[later["role"] == "rl", ["accuracy", "accuracy_low", "accuracy_high"]] -= 0.3
    status, text = findings.no_easiest(_ev(pd.concat([later, own], ignore_index=True)))
    assert status == "reproduced" and "RL (04's evaluation) overall: -0.8 points" in text
    assert findings.no_easiest(_ev(later))[0] == "not reproduced"  # against the other set


def test_role_levels_adds_04s_own_rl():
    def rows(stage, model, acc):
        return [{"stage": stage, "model": model, "level": lv, "accuracy": acc}
                for lv in ("L1", "all")]
    later = "07_pivotal_tokens"
    levels = pd.DataFrame(rows(later, "base", 0.4) + rows(later, "sft", 0.6)
                          + rows(later, "rl", 0.8) + rows("04_grpo", "rl-beta0.005", 0.9)
                          + rows("04_grpo", "rl-beta0.005-static", 0.88))
    roles = report_roles.role_levels(levels, {"04_grpo": ["rl-beta0.005"], "03_sft": []})
    by = roles.groupby("role")["stage"].first()
    assert by["rl"] == "07_pivotal_tokens" and by[report_roles.OWN_RL] == "04_grpo"
    assert "04_grpo/rl-beta0.005-static" in by.index
    assert (roles["model"] == "rl-beta0.005").sum() == 2  # once, as 04's own RL
    alone = report_roles.role_levels(levels[levels["stage"] == "04_grpo"],
                               {"04_grpo": ["rl-beta0.005"]})
    assert report_roles.OWN_RL not in set(alone["role"])  # rl is 04's own already


def test_tables_render_without_index():
    df = pd.DataFrame({"model": ["sft"], "accuracy": [0.123456]}, index=["index-marker"])
    out = report.escaped_html(df).data
    assert "index-marker" not in out and "<th></th>" not in out and "0.123<" in out
    named = report.escaped_html(df.rename_axis("role")).data  # a named index is a column
    assert "<th>role</th>" in named and "index-marker" in named
    folded = report.escaped_html(df, summary="more").data
    assert folded.startswith("<details><summary>more</summary><table>")
    tokens = pd.DataFrame({"model": "sft", "token": ["wait", "check"], "total_kl": [2.0, 1.0],
                           "kl_share": [0.5, 0.25]})
    assert "<th>rank</th>" in report.escaped_html(report.top_pivotal_tokens(tokens, 2)).data


def _levels(stage, models, questions):
    """A crafted `run_levels` table: one stage's models (name -> accuracy per level L1..L5)
    on `questions` questions."""
    return pd.DataFrame([{"stage": stage, "model": m, "level": lv, "accuracy": a,
                          "mean_length": 10.0, "questions": questions}
                         for m, accs in models.items()
                         for lv, a in [*zip(report_roles.LEVELS, accs),
                                       ("all", sum(accs) / len(accs))]])


def test_every_comparison_on_one_question_set():
    """The headline and 05's table compare 05's models with the parents 05 evaluated (its
    200 questions), never with 06's merge subset; merges are judged against 06's parents."""
    rl = [0.95, 0.75, 0.55, 0.35, 0.12]
    levels = pd.concat([
        _levels("05_strategies", {"base": BASE, "sft": SFT, "rl": rl, "data_mixing": SFT,
                                  "progressive-cosine": BASE, "router": [1.0] * 5}, 200),
        _levels("06_merging", {"base": BASE, "sft": [a + 0.1 for a in SFT], "rl": rl,
                               "linear-0.5": [a + 0.05 for a in SFT]}, 80),
        _levels("07_pivotal_tokens", {"base": BASE, "sft": SFT, "rl": rl}, 200)])
    roles = report_roles.role_levels(levels)
    parents = roles[roles["role"].isin(["base", "sft", "rl"])]
    assert set(parents["stage"]) == {"07_pivotal_tokens"}  # the whole evaluation set
    own = roles[roles["role"].str.startswith("06_merging/")]
    assert set(own["role"]) == {"06_merging/base", "06_merging/sft", "06_merging/rl"}
    ev = _ev(roles)
    assert ev.parents_of("linear-0.5") == ("06_merging/sft", "06_merging/rl")
    assert ev.parents_of("05_strategies/data_mixing") == ("sft", "rl")
    # linear-0.5 is above 07's SFT but below 06's own SFT: on its questions, no synergy
    table = findings.synergy_table(ev).set_index("model")
    assert not table.at["linear-0.5", "synergy"]

    headline = report_roles.headline_roles(roles, levels)
    assert set(headline["stage"]) == {"05_strategies"}
    assert list(dict.fromkeys(headline["role"])) == ["base", "sft", "rl",
                                                    "05_strategies/data_mixing"]
    fig = figures.headline_figure(headline)
    assert "05_strategies, 200 questions" in fig.layout.title.text
    assert "best strategy: data_mixing" in {t.name for t in fig.data}
    strategies = report.strategies_table(report_roles.paper_results(),
                                         report_roles.strategy_roles(levels), {}, 0.02)
    row = strategies.set_index("model").loc["data_mixing"]
    assert row["questions"] == 200 and row["run vs SFT"] == 0.0  # 05's SFT, not 06's
    # without 05, the headline is base, SFT and RL on one stage's questions
    alone = report_roles.role_levels(levels[levels["stage"] == "06_merging"])
    assert set(report_roles.headline_roles(alone, levels.iloc[:0])["stage"]) == {"06_merging"}


def test_one_colour_per_model_in_every_figure():
    levels = pd.concat([_levels("05_strategies", {"base": BASE, "sft": SFT, "rl": SFT,
                                                  "adaptive": SFT}, 200),
                        _levels("06_merging", {"base": BASE, "sft": SFT, "rl": SFT,
                                               "linear-0.5": SFT}, 80)])
    roles = report_roles.role_levels(levels)
    curves = pd.DataFrame({"stage": ["04_grpo", "05_strategies"], "source": "curves.csv",
                           "run": ["rl-beta0.005", "adaptive"], "step": 1, "metric": "reward",
                           "value": 0.5})
    series = figures.curve_series(curves)
    colors = figures.model_colors([*roles["role"], *series], {"04_grpo/rl-beta0.005": "rl"})
    assert colors["04_grpo/rl-beta0.005"] == colors["rl"] == colors["06_merging/rl"]
    assert colors["06_merging/sft"] == colors["sft"] != colors["rl"]
    assert len({colors[r] for r in ("base", "sft", "rl", "linear-0.5",
                                    "05_strategies/adaptive")}) == 5
    drawn = {}
    for fig in (figures.accuracy_figure(roles, colors=colors),
                figures.training_figure(curves, colors),
                figures.tradeoff_figure(roles, colors)):
        for t in fig.data:
            color = t.line.color if getattr(t, "mode", None) == "lines" else t.marker.color
            drawn.setdefault(t.name, set()).add(color)
    assert drawn["05_strategies/adaptive"] == {colors["05_strategies/adaptive"]}
    assert drawn["04_grpo/rl-beta0.005"] == {colors["rl"]}


def test_every_model_figure_has_one_facet_per_question_set():
    levels = pd.concat([_levels("05_strategies", {"base": BASE, "sft": SFT, "rl": SFT,
                                                  "adaptive": SFT, "router": SFT}, 200),
                        _levels("06_merging", {"base": BASE, "sft": SFT, "rl": SFT,
                                               "linear-0.5": SFT}, 80)])
    fig = figures.accuracy_figure(report_roles.role_levels(levels))
    titles = {a.text for a in fig.layout.annotations}
    assert titles == {"05_strategies, 200 questions", "06_merging, 80 questions"}
    # bars are grouped per facet: a facet reserves no slot for another facet's models
    assert len({t.alignmentgroup for t in fig.data}) == 2


def test_headline_figure_and_weight_table():
    roles = _roles(SFT, BASE, BASE)
    fig = figures.headline_figure(roles[roles["role"].isin(["base", "sft", "rl"])])
    assert len(fig.data) == 3 and fig.data[0].error_y.array is not None
    assert "06_merging, 50 questions" in fig.layout.title.text
    table = report.weight_table(_weights(0.38).assign(stage="03_sft", model=["careful", "rl"],
                                                      learning_rate=[2e-3, 3e-5]))
    assert table["moved (all weights, %)"].tolist()[:2] == ["38.0", "1.7"]
    assert table.iloc[-1]["model"].startswith("paper")


def test_training_figures_split_the_paper_metrics():
    curves = pd.DataFrame({"stage": ["04_grpo"] * 3 + ["00_world"] * 2, "source": "x.csv",
                           "run": ["rl"] * 3 + ["00_world"] * 2, "step": [1, 1, 1, 1, 600],
                           "metric": ["reward", "kl", "grad_norm", "loss", "loss"],
                           "value": [0.5, 0.1, 2.0, 3.0, 1.0]})
    main = figures.training_figure(curves)
    assert {a.text for a in main.layout.annotations} == {"reward", "KL to start"}
    assert main.layout.xaxis.matches is None  # each panel on its own steps
    other = figures.other_logs_figure(curves)
    labels = [b.label for b in other.layout.updatemenus[0].buttons]
    assert labels == ["00_world: loss", "04_grpo: grad_norm"]  # only what was logged
    assert [t.visible for t in other.data] == [True, False]
    assert list(other.layout.updatemenus[0].buttons[1].args[0]["visible"]) == [False, True]


def test_verdict_leads_with_the_dilemma():
    paper = report_roles.paper_results()
    checks = pd.DataFrame({"finding": list(paper["findings"].values()),
                           "status": ["reproduced"] * 12 + ["not run"]})
    line = report.verdict(checks, paper)
    assert line.startswith("**Verdict:** no combination of SFT and RL beats both parents")
    assert "12 reproduced, 1 not run" in line and "\n" not in line


def test_checklist_and_tables_with_stages_missing(smoke_root, tmp_path):
    from synergy.runs import Run

    shutil.copytree(smoke_root / "smoke" / "00_world", tmp_path / "smoke" / "00_world")
    run = Run(tmp_path, "smoke")
    paper = report_roles.paper_results()
    roles = report_roles.role_levels(report.run_levels(run), report.main_models(run))
    checks = findings.checklist(paper, evidence_of(roles, 0.02, 2.0))
    assert set(checks["status"]) == {"not run"}
    compared = report_roles.paper_vs_run(paper, roles)
    assert (compared["this run"] == "not run").all()
    status = report.stage_status(run).set_index("stage")["status"]
    assert status["00_world"] == "ran" and status["06_merging"] == "not run"
    assert report.top_pivotal_tokens(None, 5).iloc[0, 0] == "07_pivotal_tokens not run"
    curves = report.training_curves(run)  # only the base's own training loss so far
    assert set(curves["stage"]) == {"00_world"} and set(curves["metric"]) >= {"loss"}


def test_paper_numbers_match_the_paper_page():
    paper = report_roles.paper_results()
    table = report.paper_table(paper).set_index("model")
    assert table.at["base Qwen2.5-VL-7B", "Avg"] == 50.3
    assert table.at["RL, KL 0.005", "MathVista"] == 72.6
    assert table.at["model merging (linear, SFT ratio 0.25)", "MMStar"] == 66.2
    assert paper["pivotal_counts"]["wait"] == [0, 249091, 0]


@pytest.mark.slow
def test_notebook_08_on_smoke(smoke_series, tmp_path):
    """The report renders without code, with plotly inline once, and escapes model text."""
    import datasets
    from synergy.files import save_dataset

    shutil.copytree(smoke_series / "smoke", tmp_path / "smoke")  # the hostile text stays here
    # wherever the report's examples come from (report_roles.ROLE_SOURCES)
    for eval_dir in (tmp_path / "smoke").glob("0[5-7]_*/eval/sft"):
        df = datasets.load_from_disk(str(eval_dir)).to_pandas()
        df["samples"] = [[f"{PAYLOAD} \\boxed{{1}}"] * len(s) for s in df["samples"]]
        save_dataset(datasets.Dataset.from_pandas(df, preserve_index=False), eval_dir)
    run_stages(tmp_path, "08")
    rep = report.load(str(tmp_path), "smoke")
    html = (tmp_path / "smoke" / "08_report" / "08_report.html").read_text()
    assert "report.run(cfg)" not in html  # code cells hidden
    assert html.count("window.PlotlyConfig") == 1  # plotly.js inlined once: works offline
    assert not re.search(r"<script[^>]+src=[\"'][^\"']*plot", html)  # not from a CDN
    assert "<script>alert" not in html and "<b>bold</b>" not in html
    # shown as text (nbconvert turns &#x27; back into a quote)
    assert "&lt;script&gt;alert(" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    status = dict(zip(rep.checklist["finding"], rep.checklist["status"]))
    texts = report_roles.paper_results()["findings"]
    assert status[texts["interpolate"]] in ("reproduced", "not reproduced",  # 06 ran
                                            findings.NOT_APPLICABLE)
    ran_07 = (tmp_path / "smoke" / "07_pivotal_tokens" / "manifest.json").exists()
    assert (status[texts["meta_tokens"]] == "not run") != ran_07
    assert (tmp_path / "smoke" / "08_report" / "accuracy_by_level.png").stat().st_size > 1000


def test_combination_findings_with_uncertainty_and_magnitude():
    rl = [0.95, 0.75, 0.55, 0.35, 0.12]
    best = [max(s, r) for s, r in zip(SFT, rl)]
    above = [("linear-0.5", [best[0], best[1] + 0.03, *best[2:]], 25)]  # +3 on L2 only
    status, text = findings.no_synergy(_ev(_roles(SFT, rl, BASE, merges=above, width=0.05)))
    # above both parents by the point estimate only: the interval holds synergy and none
    assert status == findings.UNDECIDED and "within the uncertainty: linear-0.5" in text
    assert findings.no_synergy(_ev(_roles(SFT, rl, BASE, merges=above)))[0] == "not reproduced"
    far_below = [("linear-0.5", [a - 0.3 for a in rl], 25)]
    status, text = findings.below_rl(_ev(_roles(SFT, rl, BASE, merges=far_below)))
    assert status == findings.DIRECTION_ONLY and "the paper's best ends -0.2 points" in text
    near = [("linear-0.5", [a - 0.01 for a in rl], 25)]
    assert findings.below_rl(_ev(_roles(SFT, rl, BASE, merges=near)))[0] == "reproduced"


def _strategies_ev(control, two_stage, steps, merges=(), **facts):
    """Evidence of a run whose 05 trained an RL control and two-stage `steps` steps."""
    rl = [0.95, 0.75, 0.55, 0.35, 0.12]
    roles = _roles(SFT, rl, BASE, merges=[("05_strategies/rl_control", control, 30),
                                          ("05_strategies/two_stage-160", two_stage, 120),
                                          *merges])
    budget = pd.DataFrame({"model": ["rl_control", "two_stage-160"],
                           "optimizer steps": [steps, steps], "questions": [8 * steps] * 2,
                           "rollouts": [64 * steps] * 2})
    return _ev(roles, budget=budget, **facts)


def test_ends_above_rl_pairs_the_judged_models_over_their_extra_questions():
    """Where 05 evaluated its control group on more pool questions (`with_judged`), the
    row pairs them over all of those: a difference the benchmark's 200 questions leave
    undecided is decided on 600, and the row says over how many."""
    control = [0.9, 0.6, 0.5, 0.4, 0.2]

    def answers(n, won, lost, prefix):  # the strategy wins `won` questions, loses `lost`
        qid = [f"{prefix}{i}" for i in range(n)]
        level = [1 + i % 5 for i in range(n)]
        c = np.resize([0.0, 1.0], n)
        s = c.copy()
        c[:won], s[:won] = 0.0, 1.0
        c[won:won + lost], s[won:won + lost] = 1.0, 0.0
        return (pd.DataFrame({"qid": qid, "level": level, "accuracy": c}),
                pd.DataFrame({"qid": qid, "level": level, "accuracy": s}))

    bench_c, bench_s = answers(200, 6, 9, "b")
    extra_c, extra_s = answers(400, 12, 18, "p")
    sft = bench_c.assign(accuracy=0.5)
    only_benchmark = {"05_strategies/rl_control": bench_c,
                      "05_strategies/two_stage-160": bench_s, "sft": sft}
    status, text = findings.combinations_below_rl(
        _strategies_ev(control, control, 64, answers=only_benchmark))
    assert status == findings.UNDECIDED and "over" not in text.split(";")[0]
    pooled = judging.with_judged(only_benchmark, {"05_strategies/rl_control": extra_c,
                                                  "05_strategies/two_stage-160": extra_s})
    ev = _strategies_ev(control, control, 64, answers=pooled)
    status, text = findings.combinations_below_rl(ev)
    assert status != findings.UNDECIDED
    assert "-1.5 points [95% CI" in text and ", over 600 questions)" in text
    mean_s, mean_c = ev.paired_means("05_strategies/two_stage-160", "05_strategies/rl_control")
    assert f"two_stage-160 {100 * mean_s:.1f}% vs 05_strategies/rl_control " \
           f"{100 * mean_c:.1f}%" in text
    assert ev.difference("05_strategies/two_stage-160", "sft", ["all"]).questions == 200


def test_ends_above_rl_is_decided_at_the_longer_budget_once_that_run_has_run():
    control = [0.9, 0.6, 0.5, 0.4, 0.2]
    ahead = [a + 0.1 for a in control]  # mid-training: SFT's head start still shows
    short = _strategies_ev(control, ahead, 8)
    assert findings.control_steps(short.budget) == 8
    assert findings.control_steps(None) is None
    assert findings.control_steps(pd.DataFrame()) is None  # an older 05 without budget.csv
    status, text = findings.below_rl(short)
    assert status == "not reproduced" and "furthest above its RL 05_strategies/two_stage-160" \
        in text
    assert "mid-training" not in text  # no longer run configured: this run's own verdict
    # With report.long_run set but not run, this run's strategies mid-training are not the
    # paper's claim: their end-of-training comparison is "not run", naming the run that
    # would decide it, and this run's own comparison is shown beside.
    status, text = findings.below_rl(_strategies_ev(control, ahead, 8, long_run="tiny-long"))
    assert status == "not run"
    assert text.startswith("05's strategies at the end of training: not run: needs "
                           "05_strategies of run 'tiny-long', which trains them longer than "
                           "this run's 8 steps")
    assert "This run's strategies, mid-training at 8 steps: not reproduced:" in text
    # This run's merges decide meanwhile (here one clearly below RL).
    level = [("linear-0.5", [0.9, 0.7, 0.5, 0.3, 0.07], 25)]
    status, text = findings.below_rl(_strategies_ev(control, ahead, 8, merges=level,
                                                    long_run="tiny-long"))
    assert status in ("reproduced", findings.DIRECTION_ONLY), text
    assert "this run's merges and blends of 04's samples: " in text
    # Strategies trained as long as 04's RL parent are at the end: this run decides alone.
    import dataclasses

    ended = _strategies_ev(control, ahead, 8, long_run="tiny-long")
    ended = dataclasses.replace(ended, budget=pd.concat([
        ended.budget.assign(stage="05_strategies"),
        pd.DataFrame({"model": ["rl (rl-beta0.005)"], "stage": ["04_grpo"],
                      "optimizer steps": [8], "questions": [64], "rollouts": [512]})]))
    assert findings.rl_parent_steps(ended.budget) == 8
    status, text = findings.below_rl(ended)
    assert status == "not reproduced" and "end of training" not in text
    # Once it has run, its strategies decide; this run's are shown beside as mid-training.
    longer = _strategies_ev([a + 0.3 for a in control], [a + 0.05 for a in control], 64,
                            merges=[("linear-0.5", [1.0] * 5, 25)])  # not judged there
    status, text = findings.below_rl(_strategies_ev(control, ahead, 8, long_run="tiny-long",
                                                    longer=longer))
    assert status == findings.DIRECTION_ONLY  # the longer run's two-stage ends far below
    assert text.startswith("05's strategies in run 'tiny-long' (64 steps, the paper's claim "
                           "at a longer budget): reproduced in direction only: 05's GRPO "
                           "strategies against the RL control at their own budget (64 "
                           "optimizer steps on 512 questions, 4096 rollouts): closest")
    assert "linear-0.5" not in text  # the longer run's merges are not this run's question
    assert "This run's strategies, mid-training at 8 steps: not reproduced:" in text
    # This run's merges are judged here, against 04's RL parent: one clearly above decides.
    above = [("linear-0.5", [1.0] * 5, 25)]
    status, text = findings.below_rl(_strategies_ev(control, ahead, 8, merges=above,
                                                    long_run="tiny-long", longer=longer))
    assert status == "not reproduced"
    assert "this run's merges and blends of 04's samples: not reproduced: data mixing" in text
    # The checklist carries the combined status.
    checks = findings.checklist(report_roles.paper_results(), _strategies_ev(
        control, ahead, 8, long_run="tiny-long", longer=longer))
    row = checks.set_index("finding").loc[report_roles.paper_results()["findings"]["below_rl"]]
    assert row["status"] == findings.DIRECTION_ONLY


def test_a_report_rendered_before_a_key_was_renamed_still_loads():
    params = report.ReportConfig.from_profile(ROOT / "params" / "tiny.yaml").to_dict()
    old = {("kl_run" if k == "long_run" else k): v for k, v in params.items()}
    assert report.ReportConfig.from_manifest(old, "08_report").long_run == "tiny-long"
    with pytest.raises(ConfigError, match="unknown key"):
        report.ReportConfig.from_manifest({**params, "typo": 1}, "08_report")


def test_sample_sizes_state_what_each_stage_rests_on():
    status = pd.DataFrame({"stage": ["03_sft", "06_merging", "07_pivotal_tokens"],
                           "eval_questions": [200, 80, np.nan],
                           "samples_per_question": [2, 2, 4]})
    text = report.sample_sizes(status)
    assert "03_sft 200 x 2" in text and "06_merging 80 x 2" in text
    assert "07_pivotal" not in text
    assert "not training's own randomness" in text and "run.seed" in text
    spent = pd.DataFrame({"stage": ["05_strategies"], "eval_questions": [200],
                          "samples_per_question": [2], "control_samples": [12]})
    assert "05_strategies 200 x 2 (its RL control and the strategies judged against it: " \
           "x 12)" in report.sample_sizes(spent)
    assert report.sample_sizes(status.iloc[:0]) == "No stage has evaluated models yet."


# --- bench/seed_spread.py: a run's later stages again at other seeds -------------------------

def test_seed_spread_reseeds_only_the_later_stages_and_lists_moving_findings(tmp_path):
    import importlib.util

    from synergy import stages
    from synergy.config import load_profile
    from synergy.files import write_json
    from synergy.runs import Run

    spec = importlib.util.spec_from_file_location("seed_spread", ROOT / "bench" / "seed_spread.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    profile = load_profile(ROOT / "params" / "tiny.yaml")
    name, seeded = bench.seed_profile(profile, "tiny", 3)
    assert name == "tiny-seed3" and seeded["run"]["seed"] == 3
    assert seeded["run"]["run_name"] == name and profile["run"]["seed"] == 0
    assert {k: v for k, v in seeded.items() if k != "run"} == \
        {k: v for k, v in profile.items() if k != "run"}

    before, again = bench.later_stages("02")
    assert [s.name for s in before] == ["00_world", "01_stratify"]
    assert again[0] is stages.DISTILL and again[-1] is stages.REPORT

    source, target = Run(str(tmp_path), "tiny"), Run(str(tmp_path), "tiny-seed3")
    with pytest.raises(SystemExit, match="has not run"):
        bench.copy_upstream(source, target, before)
    for stage in before:
        write_json(source.dir(stage) / "manifest.json", {"stage": stage.name})
    bench.copy_upstream(source, target, before)
    assert all(target.has_run(s) for s in before) and not target.has_run(stages.DISTILL)

    rows = ["SFT helps", "Ends above RL", "Meta words"]
    table = bench.spread({
        "tiny": pd.DataFrame({"finding": rows, "status": ["reproduced"] * 3}),
        "tiny-seed1": pd.DataFrame({"finding": rows[:2],
                                    "status": ["reproduced", "undecided at this sample size"]})})
    assert table["differs"].tolist() == [False, True, True]
    assert table["tiny-seed1"].tolist() == ["reproduced", "undecided at this sample size",
                                            "missing"]
