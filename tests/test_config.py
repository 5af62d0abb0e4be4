"""The three mirrors of every stage's parameters agree, and bad parameters fail at once.

Notebook parameters cell == config dataclass == profile (`run` + the stage's section), for
every stage and profile; the notebook defaults are the tiny profile, so a notebook opened in
JupyterLab runs top to bottom as is. Errors name the key and the file.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from synergy import pipeline, runs
from synergy.config import (PROFILE_PARAMETER, RUN_SECTION, ConfigError, load_profile,
                            profile_section)

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "params").glob("*.yaml"))
TINY = ROOT / "params" / "tiny.yaml"
STAGE_IDS = [s.name for s in pipeline.STAGES]


def notebook_defaults(stage: pipeline.Stage) -> dict:
    """The parameters cell's values, but `profile` (empty: the cell's own values hold)."""
    found = {k: ast.literal_eval(v) for k, v in pipeline.notebook_parameters(stage.notebook).items()}
    assert found.pop(PROFILE_PARAMETER) == ""
    return found


# --- the three mirrors ----------------------------------------------------------------------

def test_every_stage_module_has_config_run_and_load():
    import inspect

    for stage in pipeline.STAGES:
        module = stage.load_module()
        assert stage.config.SECTION == stage.section, stage.name
        assert list(inspect.signature(module.run).parameters)[:1] == ["cfg"], stage.name
        assert list(inspect.signature(module.load).parameters) == ["output_root", "run_name"]


@pytest.mark.parametrize("stage", pipeline.STAGES, ids=STAGE_IDS)
def test_notebook_exists_with_one_parameters_cell(stage):
    assert stage.notebook.is_file(), f"stage {stage.name} has no notebook {stage.notebook}"
    cells = json.loads(stage.notebook.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    assert cells[0]["cell_type"] == "markdown"  # the question the notebook answers


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
@pytest.mark.parametrize("stage", pipeline.STAGES, ids=STAGE_IDS)
def test_notebook_config_and_profile_have_the_same_keys(stage, profile):
    notebook = list(notebook_defaults(stage))
    fields = stage.config.keys()
    data = load_profile(profile)
    yaml_keys = set(data[RUN_SECTION]) | set(data[stage.config.SECTION])
    assert set(notebook) == set(fields) == yaml_keys
    assert len(notebook) == len(fields)  # no key declared twice
    pipeline.check_notebook_matches(stage)
    cfg = stage.config.from_profile(profile)
    assert list(cfg.to_dict()) == fields


@pytest.mark.parametrize("stage", pipeline.STAGES, ids=STAGE_IDS)
def test_notebook_defaults_are_the_tiny_profile(stage):
    defaults = notebook_defaults(stage)
    tiny = profile_section(load_profile(TINY), stage.config.SECTION, TINY)
    assert defaults == tiny
    for key, value in tiny.items():  # 1.0 == 1 above; the types must agree too
        assert type(defaults[key]) is type(value), key
    # ... and they make a valid config, as the notebook's first code cell builds it.
    assert stage.config.from_params(defaults).to_dict() == stage.config.from_profile(TINY).to_dict()


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_section_is_a_stage(profile):
    sections = set(load_profile(profile)) - {RUN_SECTION}
    assert sections == {s.config.SECTION for s in pipeline.STAGES}


def test_stages_are_numbered_in_order_and_found_by_number_or_section():
    numbers = [int(stage.name[:2]) for stage in pipeline.STAGES]
    assert numbers == sorted(set(numbers)) and numbers[:2] == [0, 1]  # run in order
    for stage in pipeline.STAGES:
        assert stage.name[2] == "_"
        assert pipeline.find_stage(stage.name[:2]) is stage
        assert pipeline.find_stage(stage.config.SECTION) is stage
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        pipeline.find_stage("nope")


def test_output_root_is_relative_to_the_project(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")  # where JupyterLab's kernel starts
    cfg = pipeline.find_stage("01").config.from_profile(TINY)
    assert Path(cfg.output_root) == ROOT / "outputs"


# --- errors name the key and the file -------------------------------------------------------

def write_profile(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(TINY.read_text())
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def set_key(section, key, value):
    def edit(data):
        data[section][key] = value
    return edit


def drop_key(section, key):
    def edit(data):
        del data[section][key]
    return edit


@pytest.mark.parametrize("section, key, value, names", [
    # unknown keys
    ("stratify", "n_sample", 16, "n_sample"),
    ("world", "hiden_size", 8, "hiden_size"),
    ("run", "sed", 1, "sed"),
    # wrong types
    ("stratify", "n_samples", "16", "stratify.n_samples"),
    ("stratify", "n_samples", 1.5, "stratify.n_samples"),
    ("stratify", "n_samples", True, "stratify.n_samples"),
    ("stratify", "early_stop", "yes", "stratify.early_stop"),
    ("stratify", "level_min_correct", "12,8,5,2,0", "stratify.level_min_correct"),
    ("stratify", "level_min_correct", [12, 8, "5", 2, 0], "stratify.level_min_correct[2]"),
    ("stratify", "backend", "tgi", "stratify.backend"),
    ("stratify", "temperature", "hot", "stratify.temperature"),
    ("world", "lr", None, "world.lr"),
    ("run", "seed", "0", "run.seed"),
    ("run", "run_name", 7, "run.run_name"),
    # impossible values
    ("stratify", "n_samples", -1, "stratify.n_samples"),
    ("stratify", "level_min_correct", [12, 5, 8, 2, 0], "stratify.level_min_correct"),
    ("stratify", "level_min_correct", [12, 8, 5, 2, 1], "stratify.level_min_correct"),
    ("stratify", "level_min_correct", [20, 8, 5, 2, 0], "stratify.level_min_correct"),
    ("stratify", "level_min_correct", [0], "stratify.level_min_correct"),
    ("stratify", "top_p", 0.0, "stratify.top_p"),
    ("stratify", "top_p", 1.5, "stratify.top_p"),
    ("stratify", "temperature", -0.1, "stratify.temperature"),
    ("stratify", "round_size", 0, "stratify.round_size"),
    ("world", "min_steps", 9, "world.min_steps"),
    ("world", "num_heads", 3, "world.hidden_size"),
    ("world", "trace_fraction", 1.5, "world.trace_fraction"),
    ("world", "warmup_steps", 10_000, "world.warmup_steps"),
    ("run", "run_name", "a/b", "run.run_name"),
])
def test_bad_value_names_key_and_file(tmp_path, section, key, value, names):
    path = write_profile(tmp_path, set_key(section, key, value))
    stages = pipeline.STAGES if section == RUN_SECTION else [pipeline.find_stage(section)]
    for stage in stages:
        with pytest.raises(ConfigError) as err:
            stage.config.from_profile(path)
        assert names in str(err.value)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("section, key", [("stratify", "top_k"), ("world", "eval_seed"),
                                          ("run", "output_root")])
def test_missing_key_names_key_and_file(tmp_path, section, key):
    path = write_profile(tmp_path, drop_key(section, key))
    stage = pipeline.find_stage("stratify" if section == RUN_SECTION else section)
    with pytest.raises(ConfigError, match="missing") as err:
        stage.config.from_profile(path)
    assert key in str(err.value) and str(path) in str(err.value)


def test_int_widens_to_float_but_not_the_reverse(tmp_path):
    path = write_profile(tmp_path, set_key("stratify", "temperature", 1))
    cfg = pipeline.find_stage("stratify").config.from_profile(path)
    assert cfg.temperature == 1.0 and type(cfg.temperature) is float


def test_key_in_both_run_and_section_is_an_error(tmp_path):
    path = write_profile(tmp_path, set_key("stratify", "seed", 3))
    with pytest.raises(ConfigError, match=r"\['seed'\].*both") as err:
        pipeline.find_stage("stratify").config.from_profile(path)
    assert str(path) in str(err.value)


def test_missing_section_is_an_error(tmp_path):
    path = write_profile(tmp_path, lambda data: data.pop("stratify"))
    with pytest.raises(ConfigError, match="no section 'stratify'") as err:
        pipeline.find_stage("stratify").config.from_profile(path)
    assert str(path) in str(err.value)


def test_notebook_parameters_are_checked_like_the_profile():
    cls = pipeline.find_stage("stratify").config
    values = profile_section(load_profile(TINY), "stratify", TINY)
    with pytest.raises(ConfigError, match="stratify.n_samples.*'16'"):
        cls.from_params({**values, "n_samples": "16"})
    with pytest.raises(ConfigError, match=r"missing parameter\(s\) \['top_k'\]"):
        cls.from_params({k: v for k, v in values.items() if k != "top_k"})


def test_missing_profile_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="profile not found") as err:
        load_profile(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="profile not found"):
        pipeline.run_series(path)


@pytest.mark.parametrize("text, match", [
    ("run: [unclosed\n", "not valid YAML"),
    ("run:\n  seed: 0\n bad indent: 1\n", "not valid YAML"),
    ("- just\n- a list\n", "mapping with a 'run' section"),
    ("", "mapping with a 'run' section"),
    ("world: {}\n", "mapping with a 'run' section"),
])
def test_invalid_yaml(tmp_path, text, match):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_profile(path)
    assert str(path) in str(err.value)


# --- the pipeline checks everything before running anything ---------------------------------

@pytest.fixture
def no_execution(monkeypatch):
    """Record notebook executions instead of running them."""
    import papermill

    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(pipeline, "run_stage", lambda *a, **k: calls.append(a))
    return calls


def test_run_series_fails_before_any_notebook_runs(tmp_path, no_execution):
    # The error is in the *last* stage: nothing may run first.
    path = write_profile(tmp_path, set_key(pipeline.STAGES[-1].config.SECTION, "bogus", 1))
    with pytest.raises(ConfigError, match="bogus"):
        pipeline.run_series(path)
    path = write_profile(tmp_path, set_key("stratify", "n_samples", -4))
    with pytest.raises(ConfigError, match="stratify.n_samples"):
        pipeline.run_series(path)
    assert no_execution == []
    pipeline.run_series(TINY)  # the check itself lets a good profile through
    assert len(no_execution) == len(pipeline.STAGES)


def test_run_series_prints_the_host_speed_around_the_stage_times(no_execution, capsys,
                                                                 monkeypatch):
    speeds = iter([310.0, 452.6])
    monkeypatch.setattr(runs, "reference_step_ms", lambda threads: next(speeds))
    pipeline.run_series(TINY, ["00"])
    out = capsys.readouterr().out
    head, table = out.split("[synergy] stage times:")
    assert "[synergy] host speed: a reference training step takes 310 ms" in head
    assert "a reference training step took 310 ms before, 453 ms after" in table


def test_reference_step_measures_and_restores_the_threads(monkeypatch):
    import torch

    monkeypatch.setenv(runs.HOST_SPEED_ENV, "1")  # the tests' own default is off (conftest)

    before = torch.get_num_threads()
    ms = runs.reference_step_ms(1, seconds=0.05)
    assert torch.get_num_threads() == before
    assert 1 < ms < 60_000  # a forward and backward of ~1M parameters on 6,144 tokens


@pytest.mark.parametrize("why", ["cuda", "environment"])
def test_no_host_speed_with_cuda_or_when_switched_off(why, no_execution, capsys, monkeypatch):
    import torch

    if why == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setenv(runs.HOST_SPEED_ENV, "1")
    else:
        monkeypatch.setenv(runs.HOST_SPEED_ENV, "0")
    assert runs.reference_step_ms(1) is None
    pipeline.run_series(TINY, ["00"])
    out = capsys.readouterr().out
    assert "[synergy] stage times:" in out and "host speed" not in out


def test_run_stage_rejects_bad_overrides(tmp_path, monkeypatch):
    import papermill

    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: calls.append(a))
    stage = pipeline.find_stage("01")
    with pytest.raises(ConfigError, match="bogus"):
        pipeline.run_stage(stage, TINY, {"bogus": 1, "output_root": str(tmp_path)})
    with pytest.raises(ConfigError, match="run.seed"):
        pipeline.run_stage(stage, TINY, {"seed": "1", "output_root": str(tmp_path)})
    assert calls == []


def edited_notebook(src: Path, dst: Path, edit) -> Path:
    nb = json.loads(src.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = edit("".join(cell["source"]))
    dst.write_text(json.dumps(nb))
    return dst


@pytest.mark.parametrize("edit, names", [
    (lambda src: src + "\nextra_knob = 3\n", "unknown ['extra_knob']"),
    (lambda src: src.replace("seed = 0\n", ""), "missing ['seed']"),
])
def test_check_notebook_matches_catches_a_drifted_parameters_cell(tmp_path, monkeypatch,
                                                                  no_execution, edit, names):
    stage = pipeline.find_stage("01")
    bad = edited_notebook(stage.notebook, tmp_path / stage.notebook.name, edit)
    from synergy.config import project_root

    monkeypatch.setattr(pipeline.Stage, "notebook", property(
        lambda self: bad if self.name == stage.name else project_root()
        / "notebooks" / f"{self.name}.ipynb"))
    with pytest.raises(ConfigError) as err:
        pipeline.check_notebook_matches(stage)
    assert names in str(err.value) and stage.name in str(err.value)
    with pytest.raises(ConfigError, match=re.escape(names)):
        pipeline.run_series(TINY)
    assert no_execution == []
