"""05_strategies: every way of combining long-CoT SFT and RL (the paper's section 4), and
choosing the reasoning mode per question by difficulty (beyond the paper).

Every strategy starts from the same base (two-stage: from the SFT parent), trains on the
same questions with the same expert traces (02_distill's `teacher`, one per question), at
one stated budget (its GRPO keys; `budget.csv` counts what each model trained on), and is
evaluated with the shared engine and verifier on the stratified evaluation set beside base,
SFT, RL and an RL control trained exactly like the GRPO strategies (same start, questions,
steps, learning rate, rollouts): the paper's findings are judged against that control.

One module per family, each readable top to bottom:

- `two_stage`: GRPO from the SFT model, once per response budget.
- `interleaved`: GRPO; a failed question's expert trace gets the SFT loss instead (HPT in
  the same step, ReLIFT buffered into separate SFT steps).
- `progressive`: a failed question is rolled out again from a fading prefix of its expert
  trace (UFT, Prefix-RFT).
- `aux_sft`: GRPO plus a fading SFT loss on every expert trace (CHORD).
- `data_mixing`: SFT on the RL model's correct answers plus expert traces (the paper's data
  mixing), and the naive `adaptive` blend.
- `hybrid`: one model that chooses its mode with a first token (Thinkless: mode tokens,
  warm-up on both modes, decoupled GRPO).
- `router`: no training; concise RL probes decide per question whether SFT answers; the
  oracle (the better parent per question) bounds any such choice.

What they share: `config` (the stage's config and `Spec`), `trainer` (GRPO with an SFT term
on routed targets), `shared` (questions, datasets, samples, reuse keys, the GRPO and SFT
entry points), `stage` (run and load), `analysis` (tables, figures, findings).
"""

from __future__ import annotations

from synergy.strategies import (
    analysis,
    aux_sft,
    data_mixing,
    hybrid,
    interleaved,
    progressive,
    router,
    shared,
    two_stage,
)
from synergy.strategies.analysis import (
    against_rl,
    budget_table,
    combinations_run,
    comparison,
    comparison_figure,
    curves_figure,
    examples,
    family_runs,
    goal_check,
    paper_findings,
    plan_table,
    run_table,
    statement,
    synergy_table,
)
from synergy.strategies.config import (
    BEYOND_PAPER,
    COMBINATIONS,
    CONTROL,
    FAMILIES,
    PARENTS,
    Spec,
    StrategiesConfig,
    rl_reference,
)
from synergy.strategies.data_mixing import blend_composition
from synergy.strategies.stage import StrategiesResult, headlines, load, run, specs
from synergy.strategies.two_stage import two_stage_table

__all__ = [
    "BEYOND_PAPER", "COMBINATIONS", "CONTROL", "FAMILIES", "PARENTS", "Spec",
    "StrategiesConfig", "StrategiesResult", "against_rl", "analysis", "aux_sft",
    "blend_composition", "budget_table", "combinations_run", "comparison", "comparison_figure",
    "curves_figure", "data_mixing", "examples", "family_runs", "goal_check", "headlines",
    "hybrid", "interleaved", "load", "paper_findings", "plan_table",
    "progressive", "router", "run", "rl_reference", "run_table", "shared", "specs",
    "statement", "synergy_table", "two_stage", "two_stage_table",
]
