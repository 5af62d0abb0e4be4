"""TEST HELPER, run by `accelerate launch` (tests/test_scale.py): exactly what
`python -m synergy train grpo --profile PROFILE` runs in each process, with one change:
the format reward is replaced by a length reward. The smoke world's near-random base earns
no accuracy or format reward, so every group's advantages would be zero and no weight could
move; a reward that varies inside a group shows that each process really trained."""

import sys

from synergy import grpo, grpo_trainer, stages
from synergy.__main__ import stage_config
from synergy.verify import accuracy_reward


def length_reward(completions, **kwargs):
    return [len(c) / 16 for c in completions]


grpo_trainer.reward_functions = lambda: [accuracy_reward, length_reward]
grpo.train_models(stage_config(stages.GRPO, sys.argv[1], None), progress=False)
