"""Run the notebook series with papermill and render each executed notebook to HTML.

Every stage's parameters are validated against its config *and* the notebook's parameters
cell before anything runs (papermill would only warn about an unknown parameter).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from synergy.config import ConfigError, StageConfig, project_root
from synergy.distill import DistillConfig
from synergy.grpo import GRPOStageConfig
from synergy.merging import MergingConfig
from synergy.pivotal import PivotalConfig
from synergy.report import ReportConfig
from synergy.runs import atomic_path, write_text
from synergy.sft import SftConfig
from synergy.stratify import StratifyConfig
from synergy.world import WorldConfig


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # notebook stem and output folder, e.g. "01_stratify"
    config: type[StageConfig]
    hide_code: bool = False  # render the HTML without code cells (the run report)

    @property
    def notebook(self) -> Path:
        return project_root() / "notebooks" / f"{self.name}.ipynb"


STAGES = [Stage("00_world", WorldConfig), Stage("01_stratify", StratifyConfig),
          Stage("02_distill", DistillConfig), Stage("03_sft", SftConfig),
          Stage("04_grpo", GRPOStageConfig),
          Stage("06_merging", MergingConfig), Stage("07_pivotal_tokens", PivotalConfig),
          Stage("08_report", ReportConfig, hide_code=True)]


def find_stage(name: str) -> Stage:
    for stage in STAGES:
        if name in (stage.name, stage.name[:2], stage.config.SECTION):
            return stage
    raise ConfigError(f"unknown stage '{name}'; stages: {[s.name for s in STAGES]}")


def notebook_parameters(path: Path) -> dict[str, Any]:
    import papermill

    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def check_notebook_matches(stage: Stage) -> None:
    """The parameters cell must hold exactly the config's keys."""
    declared = set(notebook_parameters(stage.notebook))
    expected = set(stage.config.keys())
    if declared != expected:
        raise ConfigError(
            f"{stage.notebook.name}: parameters cell does not match config "
            f"'{stage.config.SECTION}': missing {sorted(expected - declared)}, "
            f"unknown {sorted(declared - expected)}")


def render_html(notebook: Path, html: Path, exclude_input: bool = False) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    # Without code, the In/Out prompts are noise too (the run report).
    body, _ = HTMLExporter(exclude_input=exclude_input, exclude_input_prompt=exclude_input,
                           exclude_output_prompt=exclude_input).from_notebook_node(
        nbformat.read(notebook, as_version=4))
    return write_text(html, body)


def run_stage(stage: Stage, profile: str | Path, overrides: dict[str, Any] | None = None,
              log_output: bool = True, exclude_input: bool = False) -> Path:
    """Execute one stage's notebook on a profile; returns the executed notebook's path."""
    import papermill

    from synergy.config import load_profile, profile_section

    values = {**profile_section(load_profile(profile), stage.config.SECTION, profile),
              **(overrides or {})}
    cfg = stage.config.from_mapping(values, str(profile))
    check_notebook_matches(stage)
    out_dir = Path(cfg.output_root) / cfg.run_name / stage.name
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{stage.name}.ipynb"
    t0 = time.perf_counter()
    with atomic_path(executed) as tmp:
        papermill.execute_notebook(str(stage.notebook), str(tmp), parameters=cfg.to_dict(),
                                   cwd=str(stage.notebook.parent), kernel_name="python3",
                                   log_output=log_output, progress_bar=False)
    render_html(executed, out_dir / f"{stage.name}.html",
                exclude_input=exclude_input or stage.hide_code)
    print(f"[synergy] {stage.name}: {time.perf_counter() - t0:.1f}s -> "
          f"{out_dir / (stage.name + '.html')}", flush=True)
    return executed


def run_series(profile: str | Path, stages: list[str] | None = None,
               overrides: dict[str, Any] | None = None, log_output: bool = True) -> list[Path]:
    chosen = [find_stage(s) for s in stages] if stages else STAGES
    for stage in chosen:  # fail on any parameter problem before the first long stage
        check_notebook_matches(stage)
        stage.config.from_profile(profile)
    return [run_stage(s, profile, overrides, log_output) for s in chosen]
