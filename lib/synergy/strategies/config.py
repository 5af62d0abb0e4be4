"""The stage's one config (mirrors the `strategies` section of a profile and the notebook's
parameters cell) and what one execution trains: a `Spec` per model.

Each family module (`two_stage`, `interleaved`, `progressive`, `aux_sft`, `data_mixing`,
`hybrid`, `router`) turns the config into its specs; `specs(cfg)` lists them in training
order.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal


from synergy.config import StageConfig
from synergy.evaluation import EvaluatingConfig
from synergy.grpo import POLICY_KEYS, PolicyKeys

Family = Literal["rl_control", "two_stage", "interleaved", "progressive", "aux_sft",
                 "data_mixing", "adaptive", "hybrid", "router"]
FAMILIES = typing.get_args(Family)
# The combinations of SFT and RL 05 compares with its parents: the paper's four strategies
# and the public SFT-in-RL baseline. Hybrid, adaptive and the router go beyond them; the RL
# control is the RL parent's recipe at the strategies' budget.
COMBINATIONS = ("two_stage", "interleaved", "progressive", "aux_sft", "data_mixing")
# Of those, the ones the paper did not train (CHORD's auxiliary SFT loss): the checklist
# judges the paper's claims on the paper's strategies and shows these beside them.
BEYOND_PAPER = ("aux_sft",)
CONTROL = "rl_control"           # the model (and family) name of the RL control
PARENTS = ("sft", "rl")          # 03's and 04's models, as 05 evaluates them
# Families trained on the RL parent's own samples: its training is part of theirs, so they
# are compared with the RL parent, not with the control.
FROM_RL_PARENT = ("data_mixing", "adaptive")


def rl_reference(model: str, has_control: bool) -> str:
    """The RL model a 05 model is judged against: the RL control (the same questions,
    steps, learning rate and rollouts) for the GRPO strategies when it ran; 04's RL parent
    ("rl") for the blends of its samples, and when no control ran."""
    family = model.split("-")[0]
    return CONTROL if has_control and family not in FROM_RL_PARENT else "rl"


def control_group(models: list[str]) -> list[str]:
    """Of `models` (05's trained models), the RL control and the strategies judged against
    it (`rl_reference`): the "ends above RL" claim rests on their paired differences, which
    `control_eval_samples` sizes. Empty when no control ran."""
    if CONTROL not in models:
        return []
    return [m for m in models if m == CONTROL or (
        m.split("-")[0] in COMBINATIONS and rl_reference(m, True) == CONTROL)]


@dataclasses.dataclass
class StrategiesConfig(PolicyKeys, EvaluatingConfig):
    SECTION = "strategies"
    MANIFEST_DEFAULTS = {"control_eval_questions": 0}  # runs before the judged questions

    base_model: str
    sft_model: str
    rl_model: str
    teacher: str
    families: list[Family]
    n_train_questions: int
    n_val_questions: int
    beta: float
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"]
    two_stage_lengths: list[int]
    sft_gate: int
    interleaved_modes: list[Literal["same_step", "buffered"]]
    sft_buffer: int
    prefix_schedules: list[Literal["linear", "cosine", "step"]]
    prefix_start: float
    prefix_horizon: float
    prefix_steps: int
    prefix_sft_weight: float
    aux_schedule: Literal["linear", "cosine", "step"]
    aux_mu_peak: float
    aux_mu_floor: float
    aux_horizon: float
    mix_samples: int
    mix_temperature: float
    mix_max_new_tokens: int
    sft_lr: float
    sft_lr_scheduler: Literal["constant", "linear", "cosine"]
    sft_warmup_ratio: float
    sft_batch_size: int
    sft_grad_accum: int
    sft_epochs: float
    sft_max_steps: int
    sft_max_length: int
    adaptive_pass_threshold: float
    adaptive_grpo: bool
    hybrid_start: Literal["base", "sft", "rl"]
    hybrid_warmup_questions: int
    hybrid_warmup_steps: int
    hybrid_warmup_lr: float
    hybrid_train_questions: int
    hybrid_learning_rate: float
    hybrid_max_completion_length: int
    hybrid_mode_loss_weight: float
    hybrid_long_margin: float
    router_samples: int
    router_signal: Literal["agreement", "confidence"]
    router_max_new_tokens: int
    synergy_margin: float
    control_eval_samples: int
    control_eval_questions: int
    n_examples: int

    def validate(self) -> None:
        super().validate()
        for key in ("base_model", "sft_model", "rl_model", "teacher"):
            self.require(getattr(self, key).strip() != "", key, "must not be empty")
        self.require(len(self.families) >= 1 and len(set(self.families))
                     == len(self.families), "families", "must name strategies, each once")
        for key in ("n_train_questions", "n_val_questions", "sft_buffer", "mix_samples",
                    "mix_max_new_tokens", "sft_batch_size", "sft_max_length", "router_samples",
                    "router_max_new_tokens", "hybrid_warmup_questions", "hybrid_warmup_steps",
                    "hybrid_train_questions", "hybrid_max_completion_length"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require((self.prompts_per_step * self.num_generations) % self.micro_batch == 0,
                     "micro_batch", "must divide prompts_per_step x num_generations")
        self.require(self.beta >= 0, "beta", "must be >= 0")
        self.require(self.control_eval_samples >= 0, "control_eval_samples",
                     "must be >= 0 (0: eval_samples)")
        self.require(self.control_eval_questions >= 0, "control_eval_questions",
                     "must be >= 0 (0: the benchmark's questions only)")
        for key in ("sft_lr", "hybrid_warmup_lr", "hybrid_learning_rate"):
            self.require(getattr(self, key) > 0, key, "must be > 0")
        self.require(self.mix_temperature > 0, "mix_temperature", "must be > 0 (it samples)")
        self.require(len(self.two_stage_lengths) >= 1 and all(n >= 1 for n in
                     self.two_stage_lengths), "two_stage_lengths", "must list lengths >= 1")
        self.require(0 <= self.sft_gate < self.num_generations, "sft_gate",
                     "must be in 0..num_generations-1")
        for key in ("interleaved_modes", "prefix_schedules"):
            values = getattr(self, key)
            self.require(len(values) >= 1 and len(set(values)) == len(values), key,
                         "must be a non-empty list without repeats")
        for key in ("prefix_start", "prefix_horizon", "aux_horizon", "adaptive_pass_threshold",
                    "sft_warmup_ratio", "hybrid_long_margin"):
            self.require(0 <= getattr(self, key) <= 1, key, "must be in [0, 1]")
        self.require(self.prefix_steps >= 2, "prefix_steps", "must be >= 2 (plateaus)")
        self.require(self.prefix_sft_weight >= 0, "prefix_sft_weight", "must be >= 0")
        self.require(self.hybrid_mode_loss_weight >= 0, "hybrid_mode_loss_weight",
                     "must be >= 0")
        self.require(0 <= self.aux_mu_floor <= self.aux_mu_peak, "aux_mu_floor",
                     "must be in [0, aux_mu_peak]")
        self.require(self.sft_grad_accum >= 1 and self.sft_batch_size % self.sft_grad_accum
                     == 0, "sft_batch_size", "must be divisible by sft_grad_accum (>= 1)")
        self.require(self.sft_epochs > 0, "sft_epochs", "must be > 0")
        self.require(self.sft_max_steps == -1 or self.sft_max_steps >= 1, "sft_max_steps",
                     "must be -1 (train for sft_epochs) or >= 1")
        self.require(0 <= self.synergy_margin < 1, "synergy_margin", "must be in [0, 1)")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")


# This stage's GRPO keys (04's names and meanings); everything else about how GRPO runs (the
# trainer backend, LoRA, vLLM rollouts) is the RL parent's, from 04's manifest.
GRPO_KEYS = ("loss_type", *POLICY_KEYS,
             *(f.name for f in dataclasses.fields(EvaluatingConfig)
               if f.name not in StageConfig.keys()))
# The keys that shape one kind of training (part of each model's reuse key).
GRPO_SHAPING = ("beta", "loss_type", "learning_rate", "lr_scheduler_type", "epochs",
                "prompts_per_generation", "prompts_per_step", "micro_batch",
                "num_generations", "temperature", "max_completion_length", "reward_weights")
SFT_SHAPING = ("sft_lr", "sft_lr_scheduler", "sft_warmup_ratio", "sft_batch_size",
               "sft_grad_accum", "sft_epochs", "sft_max_steps", "sft_max_length")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One model this stage trains: its name, family, where it starts ("base", "sft", or
    the name of a model trained before it in this execution), its trainer, the family's
    routing plan (a frozen dataclass of the family module, None: plain GRPO) and the GRPO
    settings it changes (`overrides`: response budget, learning rate, questions)."""

    name: str
    family: str
    start: str
    trainer: Literal["grpo", "sft"]
    plan: Any = None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.overrides)
