"""Every bad input is named in one line before work starts.

A table of bad parameters and profiles across every stage's config, each run through the
command line (`python -m synergy run`) as a user would: exit code 2, one stderr line that
names the key (or the file and key), and no notebook executed. Then the inputs only a stage
can check (a model's positions, a missing local model, a parameter `papermill -p` injects)
and the one-line report of an error inside a notebook, on real notebook runs (slow).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import SMOKE
from synergy import pipeline
from synergy.__main__ import main
from synergy.config import ConfigError

NAN, INF = math.nan, math.inf


def edit_profile(tmp_path: Path, changes: dict[str, object]) -> Path:
    """The smoke profile with `changes` ({"section.key": value}) written to tmp_path."""
    data = yaml.safe_load(SMOKE.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        data[section][key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def no_execution(monkeypatch):
    """Fail the test if any notebook starts."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a notebook ran although the input was bad")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(["run", *argv, "--quiet"])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


BAD_VALUES = [
    # world (00): arithmetic made impossible, non-finite numbers
    ({"world.num_heads": 0}, "world.num_heads"),
    ({"world.hidden_size": 30, "world.num_heads": 4}, "world.hidden_size"),
    ({"world.hidden_size": 6, "world.num_heads": 2}, "world.hidden_size"),  # odd head width
    ({"world.lr": NAN}, "world.lr"),
    ({"world.lr": INF}, "world.lr"),
    ({"world.trace_fraction": NAN}, "world.trace_fraction"),
    ({"world.max_positions": 0}, "world.max_positions"),
    ({"world.batch_size": 0}, "world.batch_size"),
    # stratify (01)
    ({"stratify.temperature": INF}, "stratify.temperature"),
    ({"stratify.top_p": NAN}, "stratify.top_p"),
    ({"stratify.max_skipped_share": NAN}, "stratify.max_skipped_share"),
    ({"stratify.backend": "tgi"}, "stratify.backend"),
    ({"stratify.n_samples": 0}, "stratify.n_samples"),
    ({"stratify.round_size": 0}, "stratify.round_size"),
    # distill (02)
    ({"distill.lowquality_error_rate": NAN}, "distill.lowquality_error_rate"),
    ({"distill.teacher_temperature": -INF}, "distill.teacher_temperature"),
    ({"distill.teachers": ["carefull"]}, "distill.teachers[0]"),
    ({"distill.teachers": ["careful", "careful"]}, "distill.teachers"),
    ({"distill.trace_set": "s1k-claude"}, "distill.trace_set"),
    ({"distill.train_questions": ""}, "distill.train_questions"),
    ({"distill.train_questions": "pool.jsonl"}, "distill.train_questions"),
    # sft (03)
    ({"sft.grad_accum": 0}, "sft.grad_accum"),
    ({"sft.lr_scheduler": "cosin"}, "sft.lr_scheduler"),
    ({"sft.lr": INF}, "sft.lr"),
    ({"sft.easy_share": NAN}, "sft.easy_share"),
    ({"sft.epochs": INF}, "sft.epochs"),
    ({"sft.warmup_ratio": NAN}, "sft.warmup_ratio"),
    ({"sft.report_to": "tensorbord"}, "sft.report_to"),
    ({"sft.batch_size": 0}, "sft.batch_size"),
    ({"sft.lora_r": 4, "sft.lora_alpha": 0}, "sft.lora_alpha"),
    ({"sft.eval_top_p": NAN}, "sft.eval_top_p"),
    ({"sft.easy_share_sweep": [0.5, NAN]}, "sft.easy_share_sweep[1]"),
    # grpo (04)
    ({"grpo.micro_batch": 0}, "grpo.micro_batch"),
    ({"grpo.prompts_per_step": 0}, "grpo.prompts_per_step"),
    ({"grpo.betas": [NAN]}, "grpo.betas[0]"),
    ({"grpo.learning_rate": INF}, "grpo.learning_rate"),
    ({"grpo.reward_weights": [INF, 0.1]}, "grpo.reward_weights[0]"),
    ({"grpo.loss_type": "ppo"}, "grpo.loss_type"),
    ({"grpo.exclude_easiest": "always"}, "grpo.exclude_easiest"),
    ({"grpo.lr_scheduler_type": "cosin"}, "grpo.lr_scheduler_type"),
    # merging (06)
    ({"merging.density": NAN}, "merging.density"),
    ({"merging.sft_ratios": [INF]}, "merging.sft_ratios[0]"),
    ({"merging.methods": ["lerp"]}, "merging.methods[0]"),
    ({"merging.dtype": "fp32"}, "merging.dtype"),
    ({"merging.synergy_margin": NAN}, "merging.synergy_margin"),
    # pivotal (07) and report (08)
    ({"pivotal.kl_batch_size": 0}, "pivotal.kl_batch_size"),
    ({"pivotal.eval_temperature": NAN}, "pivotal.eval_temperature"),
    ({"report.margin": NAN}, "report.margin"),
    ({"report.long_ratio": INF}, "report.long_ratio"),
    # the run section: a run name must be one plain folder name
    ({"run.run_name": ".."}, "run.run_name"),
    ({"run.run_name": "."}, "run.run_name"),
    ({"run.run_name": "a/b"}, "run.run_name"),
    ({"run.run_name": "a\\b"}, "run.run_name"),
    ({"run.run_name": "cache"}, "run.run_name"),
    ({"run.seed": 0.5}, "run.seed"),
]


def _id(case) -> str:
    changes, _ = case
    return ",".join(f"{k}={v!r}" for k, v in changes.items())


@pytest.mark.parametrize("changes, names", BAD_VALUES, ids=[_id(c) for c in BAD_VALUES])
def test_bad_value_exits_2_naming_key_and_file(tmp_path, capsys, no_execution, changes, names):
    path = edit_profile(tmp_path, changes)
    section = next(iter(changes)).split(".")[0]
    stages = [] if section == "run" else ["--stages", pipeline.find_stage(section).number]
    code, err = cli(capsys, "--profile", str(path), *stages)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("synergy: ")
    assert names in err[0] and str(path) in err[0]


@pytest.mark.parametrize("text, names", [
    # a key twice in one section: PyYAML would keep the last one silently
    ("run:\n  run_name: a\n  output_root: o\n  seed: 0\n  seed: 1\n", ["'seed'", "line 5"]),
    # a section twice
    ("run:\n  run_name: a\n  output_root: o\n  seed: 0\nworld: {}\nworld: {}\n",
     ["'world'", "line 6"]),
])
def test_duplicate_yaml_key_names_file_and_key(tmp_path, capsys, no_execution, text, names):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    code, err = cli(capsys, "--profile", str(path))
    assert code == 2 and len(err) == 1 and str(path) in err[0]
    assert all(n in err[0] for n in names), err


def test_profile_that_is_not_utf8_names_the_file(tmp_path, capsys, no_execution):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(SMOKE.read_text().replace("Smoke profile", "Profil d'\u00e9t\u00e9")
                     .encode("latin-1"))
    code, err = cli(capsys, "--profile", str(path))
    assert code == 2 and len(err) == 1
    assert str(path) in err[0] and "UTF-8" in err[0]


@pytest.mark.parametrize("name", ["..", "a/b", "cache"])
def test_bad_run_name_on_the_command_line(capsys, no_execution, name):
    code, err = cli(capsys, "--profile", str(SMOKE), "--run-name", name, "--stages", "01")
    assert code == 2 and len(err) == 1 and "run.run_name" in err[0]


def test_report_of_a_bad_run_name(capsys, no_execution):
    assert main(["report", "--run", "../x", "--profile", str(SMOKE), "--quiet"]) == 2
    assert "run.run_name" in capsys.readouterr().err


def test_every_float_param_of_every_stage_rejects_non_finite_values():
    """Not only the table above: every float-typed key (also inside lists) of every config."""
    import typing

    from synergy.config import load_profile, profile_section

    checked = 0
    for stage in pipeline.STAGES:
        good = profile_section(load_profile(SMOKE), stage.config.SECTION, SMOKE)
        hints = typing.get_type_hints(stage.config)
        for key, tp in hints.items():
            if key not in good:
                continue
            floats = float in (tp, *typing.get_args(tp))
            if not floats:
                continue
            for bad in (NAN, INF, -INF):
                value = [bad] if typing.get_origin(tp) is list else bad
                with pytest.raises(ConfigError, match=f"{stage.config.SECTION}.{key}"):
                    stage.config.from_mapping({**good, key: value}, "test")
                checked += 1
    assert checked >= 3 * 30


def test_injected_parameters_are_read_from_the_kernel_history():
    from synergy.config import injected_parameters
    from synergy.stratify import StratifyConfig

    history = ["", "# Mirrors params...\nrun_name = 'tiny'\n",
               "# Parameters\nrun_name = \"x\"\nn_sampels = 8\n", "import synergy"]
    assert injected_parameters({"In": history}) == ["run_name", "n_sampels"]
    assert injected_parameters({}) == []  # JupyterLab, plain Python
    values = {**StratifyConfig.from_profile(SMOKE).to_dict(), "In": history}
    with pytest.raises(ConfigError, match=r"\['n_sampels'\] are not declared"):
        StratifyConfig.from_params(values)


# --- inputs only a stage can check, and errors inside a notebook (real notebook runs) -------

def copy_run(smoke_root: Path, tmp_path: Path, *stages: str) -> Path:
    """A copy of the smoke run holding the given stage folders (and the run's caches)."""
    root = tmp_path / "outputs"
    for stage in stages:
        shutil.copytree(smoke_root / "smoke" / stage, root / "smoke" / stage)
    return root


@pytest.mark.slow
def test_an_error_inside_a_notebook_is_one_line_and_the_notebook(smoke_root, tmp_path, capsys):
    """More new tokens than the model has positions: found at the stage's start (it needs
    the model's config), reported as `synergy: <stage>: <cause>` and the notebook's path."""
    root = copy_run(smoke_root, tmp_path, "00_world")
    path = edit_profile(tmp_path, {"stratify.max_new_tokens": 600,
                                   "run.output_root": str(root)})
    code, err = cli(capsys, "--profile", str(path), "--stages", "01")
    assert code == 1
    assert len(err) == 2 and err[0] == (
        "synergy: 01_stratify: stratify.max_new_tokens: 600 tokens is more than the 512 "
        "positions of model 'world' (max_position_embeddings of "
        f"{root / 'smoke' / '00_world' / 'model'})"), err
    failed = Path(err[1].removeprefix("synergy: executed notebook: "))
    assert failed == root / "smoke" / "01_stratify" / "01_stratify.failed.ipynb"
    assert failed.is_file() and not (failed.parent / "levels").exists()


@pytest.mark.parametrize("changes, error, names", [
    ({"model": "outputs/no_such_model"}, "ArtifactError", "no such folder"),
    ({"max_new_tokens": 513}, "ConfigError", "stratify.max_new_tokens: 513 tokens"),
])
def test_stage_start_checks_come_before_any_work(smoke_root, tmp_path, changes, error, names):
    from synergy import stratify

    root = copy_run(smoke_root, tmp_path, "00_world")
    cfg = stratify.StratifyConfig.from_mapping(
        {**stratify.StratifyConfig.from_profile(SMOKE).to_dict(), "output_root": str(root),
         **changes}, "test")
    with pytest.raises(Exception) as err:
        stratify.run(cfg, progress=False)
    assert type(err.value).__name__ == error and names in str(err.value)
    assert not (root / "smoke" / "01_stratify" / "cache").exists()  # nothing sampled


@pytest.mark.slow
def test_papermill_p_with_an_undeclared_parameter_fails_naming_it(tmp_path):
    """papermill itself only warns and runs on the notebook's defaults."""
    import papermill

    stage = pipeline.find_stage("08")
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(stage.notebook), str(tmp_path / "out.ipynb"),
                                   parameters={"run_name": "x", "top_tokns": 5},
                                   cwd=str(stage.notebook.parent), kernel_name="python3",
                                   progress_bar=False)
    assert err.value.ename == "ConfigError"
    assert "['top_tokns'] are not declared" in err.value.evalue
