"""The stage registry: every stage of the series, its folder, profile section and module.

The one place that names stages. A stage's output folder and notebook are both called
`Stage.name` ("03_sft"); its profile section and config `SECTION` are `Stage.section`
("sft"); its code is `synergy.<Stage.module>` with a config class, `run(cfg)` and
`load(output_root, run_name)`. Modules are imported only when asked for
(`Stage.load_module`), so the shared core can name stages without depending on them.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str               # notebook stem and output folder, e.g. "03_sft"
    section: str            # profile section and config SECTION, e.g. "sft"
    module: str             # synergy.<module> holds the config, run() and load()
    config_name: str        # the config class in that module
    role: str = ""          # what a model of this stage stands for in comparisons

    @property
    def number(self) -> str:
        return self.name[:2]

    @property
    def notebook(self) -> Path:
        from synergy.config import project_root

        return project_root() / "notebooks" / f"{self.name}.ipynb"

    def load_module(self):
        return importlib.import_module(f"{__package__}.{self.module}")

    @property
    def config(self):
        return getattr(self.load_module(), self.config_name)

    def __str__(self) -> str:
        return self.name


WORLD = Stage("00_world", "world", "world", "WorldConfig", role="base")
STRATIFY = Stage("01_stratify", "stratify", "stratify", "StratifyConfig")
DISTILL = Stage("02_distill", "distill", "distill", "DistillConfig")
SFT = Stage("03_sft", "sft", "sft", "SftConfig", role="sft")
GRPO = Stage("04_grpo", "grpo", "grpo", "GRPOStageConfig", role="rl")
STRATEGIES = Stage("05_strategies", "strategies", "strategies", "StrategiesConfig",
                   role="strategy")
MERGING = Stage("06_merging", "merging", "merging", "MergingConfig", role="merge")
PIVOTAL = Stage("07_pivotal_tokens", "pivotal", "pivotal", "PivotalConfig")
REPORT = Stage("08_report", "report", "report", "ReportConfig")

STAGES = [WORLD, STRATIFY, DISTILL, SFT, GRPO, STRATEGIES, MERGING, PIVOTAL, REPORT]
# Stages whose manifests list models (`model_paths`, `main_model`) for later stages.
MODEL_STAGES = [WORLD, SFT, GRPO, STRATEGIES, MERGING]


def find(name: str | Stage) -> Stage:
    """A stage by folder name ("03_sft"), number ("03") or section ("sft")."""
    from synergy.config import ConfigError

    if isinstance(name, Stage):
        return name
    for stage in STAGES:
        if name in (stage.name, stage.number, stage.section):
            return stage
    raise ConfigError(f"unknown stage '{name}'; stages: {[s.name for s in STAGES]}")


def by_folder(name: str) -> Stage | None:
    """The stage whose output folder is `name`, or None."""
    return next((s for s in STAGES if s.name == name), None)
