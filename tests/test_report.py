"""The run report: escaping, the checklist, missing stages, and 08 on the smoke profile."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
from conftest import run_stages
from synergy import report

PAYLOAD = "<script>alert('pwned')</script><b>bold</b>"


def test_model_text_is_escaped():
    df = pd.DataFrame({"model": ["sft"], "response": [f"Wait {PAYLOAD} \\boxed{{1}}"]})
    out = report.escaped_html(df).data
    assert "<script>" not in out and "<b>bold" not in out
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in out
    assert "not run" in report.escaped_html(df.iloc[:0]).data


def _roles(sft, rl, base, lengths=(10, 40, 12), merges=None):
    rows = []
    for role, accs, length in (("base", base, lengths[0]), ("sft", sft, lengths[1]),
                               ("rl", rl, lengths[2]), *(merges or [])):
        for i, a in enumerate(accs):
            rows.append({"stage": "06_merging", "model": role, "role": role,
                         "level": f"L{i + 1}", "accuracy": a, "mean_length": length,
                         "questions": 10})
        rows.append({"stage": "06_merging", "model": role, "role": role, "level": "all",
                     "accuracy": sum(accs) / len(accs), "mean_length": length,
                     "questions": 50})
    return pd.DataFrame(rows)


def test_checklist_judges_from_numbers():
    paper = report.paper_results()
    base, sft, rl = [0.9, 0.7, 0.5, 0.3, 0.1], [0.8, 0.7, 0.6, 0.5, 0.3], \
        [0.95, 0.75, 0.55, 0.35, 0.12]
    merges = [("linear-0.5", [0.87, 0.72, 0.57, 0.42, 0.2], 25),
              ("ties-0.5", [0.5, 0.9, 0.2, 0.9, 0.0], 25)]
    counts = pd.DataFrame({"model": ["base", "sft", "rl"], "level": "all",
                           "category": "meta", "word": "wait", "count": [0, 50, 1],
                           "tokens": [1000, 4000, 1000]})
    checks = report.checklist(paper, _roles(sft, rl, base, merges=merges), counts,
                              margin=0.02, long_ratio=2.0)
    status = dict(zip(checks["finding"], checks["status"]))
    f = paper["findings"]
    for key in ("sft_hard", "sft_easy", "sft_long", "rl_all", "rl_short", "interpolate",
                "ties_erratic", "meta_tokens"):
        assert status[f[key]] == "reproduced", (key, checks)
    assert status[f["no_synergy"]] == "reproduced"
    dominating = merges + [("linear-0.75", [0.96, 0.8, 0.65, 0.55, 0.35], 30)]
    checks = report.checklist(paper, _roles(sft, rl, base, merges=dominating), counts,
                              margin=0.02, long_ratio=2.0)
    status = dict(zip(checks["finding"], checks["status"]))
    assert status[f["no_synergy"]] == "not reproduced"
    assert "linear-0.75" in checks.set_index("finding").at[f["no_synergy"], "this run"]
    flipped = report.checklist(paper, _roles(base, rl, sft), None, 0.02, 2.0)
    status = dict(zip(flipped["finding"], flipped["status"]))
    assert status[f["sft_hard"]] == "not reproduced"
    assert status[f["meta_tokens"]] == "not run"


def test_every_finding_has_one_function_and_each_is_judged_alone():
    paper = report.paper_results()
    assert set(paper["findings"]) == set(report.FINDINGS)
    base, sft = [0.9, 0.7, 0.5, 0.3, 0.1], [0.8, 0.7, 0.6, 0.5, 0.3]
    ev = report.Evidence(report.wide(_roles(sft, base, base)),
                         report.wide(_roles(sft, base, base), "mean_length"), None, 0.02, 2.0)
    assert report.sft_hard(ev)[0] == "reproduced" and "+20.0 points" in report.sft_hard(ev)[1]
    assert report.sft_easy(ev) == ("reproduced", "SFT - base on L1: -10.0 points")
    assert report.rl_all(ev)[0] == "not reproduced"  # RL equal to the base: no gain
    assert report.no_synergy(ev)[0] == "not run"  # no combination in this run
    assert report.meta_tokens(ev)[0] == "not run"


def test_checklist_and_tables_with_stages_missing(smoke_root, tmp_path):
    from synergy.runs import Run

    shutil.copytree(smoke_root / "smoke" / "00_world", tmp_path / "smoke" / "00_world")
    run = Run(tmp_path, "smoke")
    paper = report.paper_results()
    roles = report.role_levels(report.run_levels(run), report.main_models(run))
    checks = report.checklist(paper, roles, None, 0.02, 2.0)
    assert set(checks["status"]) == {"not run"}
    compared = report.paper_vs_run(paper, roles)
    assert (compared["this run"] == "not run").all()
    status = report.stage_status(run).set_index("stage")["status"]
    assert status["00_world"] == "ran" and status["06_merging"] == "not run"
    assert report.top_pivotal_tokens(None, 5).iloc[0, 0] == "07_pivotal_tokens not run"
    curves = report.training_curves(run)  # only the base's own training loss so far
    assert set(curves["stage"]) == {"00_world"} and set(curves["metric"]) >= {"loss"}


def test_paper_numbers_match_the_paper_page():
    paper = report.paper_results()
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
    eval_dir = tmp_path / "smoke" / "06_merging" / "eval" / "sft"
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
    findings = report.paper_results()["findings"]
    assert status[findings["interpolate"]] in ("reproduced", "not reproduced")  # 06 ran
    ran_07 = (tmp_path / "smoke" / "07_pivotal_tokens" / "manifest.json").exists()
    assert (status[findings["meta_tokens"]] == "not run") != ran_07
    assert (tmp_path / "smoke" / "08_report" / "accuracy_by_level.png").stat().st_size > 1000
