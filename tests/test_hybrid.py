"""05's hybrid (one model that learns when to think) and the training budgets every trainer
counts: mode tokens, the warm-up's two targets, the decoupled loss on a crafted batch, the
reward's mode preference, a real optimizer step, and budgets against the trainers' own
counts (a resumed training included)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from synergy import strategies
from synergy.strategies import hybrid


# --- mode tokens ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokened(smoke_world, tmp_path_factory):
    """The smoke world's base with the mode tokens added."""
    return hybrid.with_mode_tokens(smoke_world[1], tmp_path_factory.mktemp("hyb") / "start")


def test_mode_tokens_are_added_with_their_own_distinct_rows(smoke_world, tokened):
    from synergy import models

    before, _ = models.load(smoke_world[1])
    model, processing = models.load(tokened)
    tok = models.tokenizer_of(processing)
    ids = hybrid.mode_token_ids(processing)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] >= len(tok) > max(ids.values())
    old = before.get_input_embeddings().weight
    assert torch.equal(weight[:old.shape[0]][[i for i in range(old.shape[0])
                                              if i not in ids.values()]],
                       old[[i for i in range(old.shape[0]) if i not in ids.values()]])
    short, think = weight[ids["short"]], weight[ids["think"]]
    # Two typical, different rows (transformers' mean resizing would make them one).
    assert (short - think).norm() > 0.5 * old.std() * old.shape[1] ** 0.5
    # Each is one token, and decoding keeps it (plain added tokens, not special ones).
    text = hybrid.THINK + "<think> 1+2=3.</think> \\boxed{3}"
    encoded = tok(text, add_special_tokens=False)["input_ids"]
    assert encoded[0] == ids["think"]
    assert tok.decode(encoded, skip_special_tokens=True).startswith(hybrid.THINK)
    assert hybrid.mode_of(tok.decode(encoded, skip_special_tokens=True)) == "think"


def test_mode_of_and_response_of():
    assert hybrid.mode_of("<short><think> 1</think>") == "short"
    assert hybrid.mode_of(" <long>x") == "think"
    assert hybrid.mode_of("\\boxed{3}") is None
    assert hybrid.response_of("<long><think> a</think> \\boxed{1}") == "<think> a</think> \\boxed{1}"
    assert hybrid.response_of("\\boxed{1}") == "\\boxed{1}"


# --- the warm-up's two targets --------------------------------------------------------------

def test_warmup_puts_each_question_in_both_modes():
    drawn = pd.DataFrame({
        "qid": ["a", "b", "c"], "question": ["qa", "qb", "qc"], "answer": ["1", "2", "3"],
        "level": [1, 3, 5],
        # a: a bare right guess is shorter, the formatted right answer wins; c: never right.
        "samples": [["\\boxed{1}", "<think> 0+1=1.</think> \\boxed{1}", "x"],
                    ["<think> long one</think> \\boxed{2}", "<think> b</think> \\boxed{2}"],
                    ["\\boxed{9}", "\\boxed{8}"]],
        "correct": [[True, True, False], [True, True], [False, False]],
        "lengths": [[4, 12, 2], [20, 9], [4, 4]],
        "expert": ["EA", "EB", "EC"], "expert_tokens": [100, 110, 120]})
    rows = hybrid.warmup_rows(drawn)
    assert list(zip(rows["qid"], rows["mode"], rows["response"], rows["n_tokens"])) == [
        ("a", "short", "<short><think> 0+1=1.</think> \\boxed{1}", 13),
        ("a", "think", "<long>EA", 101),
        ("b", "short", "<short><think> b</think> \\boxed{2}", 10),
        ("b", "think", "<long>EB", 111),
        ("c", "think", "<long>EC", 121)]  # RL never solves c: no short target
    comp = hybrid.warmup_composition(rows).set_index("level")
    assert comp.loc["all", ["questions", "short_rows", "think_rows"]].tolist() == [3, 2, 3]


# --- the reward's mode preference -----------------------------------------------------------

def test_reward_prefers_the_short_mode_when_both_are_right():
    completions = ["<short><think> 1+2=3.</think> \\boxed{3}",
                   "<long><think> 1+2=3.</think> \\boxed{3}",
                   "<long><think> 1+2=4.</think> \\boxed{4}",
                   "<short>\\boxed{4}"]
    answer = ["3"] * 4
    accuracy, fmt, prefer = hybrid.reward_functions(margin=0.2)
    assert (accuracy.__name__, fmt.__name__, prefer.__name__) == (
        "accuracy_reward", "format_reward", "mode_preference_reward")
    assert accuracy(completions, answer=answer) == [1.0, 1.0, 0.0, 0.0]
    assert fmt(completions, answer=answer) == [1.0, 1.0, 1.0, 0.0]  # scored without the mode
    assert prefer(completions, answer=answer) == [0.0, -0.2, 0.0, 0.0]
    # With the accuracy weight on the preference: right short 1, right long 1 - margin.
    total = [a + p for a, p in zip(accuracy(completions, answer=answer),
                                   prefer(completions, answer=answer))]
    assert total == pytest.approx([1.0, 0.8, 0.0, 0.0])


# --- the decoupled loss ---------------------------------------------------------------------

def test_mode_token_loss_clips_like_ppo_and_adds_the_k3_kl():
    logps = torch.log(torch.tensor([0.5, 0.5, 0.9]))
    old = torch.log(torch.tensor([0.5, 0.25, 0.5]))  # ratios 1, 2, 1.8
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss = hybrid.mode_token_loss(logps, old, adv, 0.2, 0.2)
    # ratio 1 -> -A; ratio 2 with A > 0 -> clipped at 1.2; ratio 1.8 with A < 0 -> -(-1.8)
    assert loss.tolist() == pytest.approx([-1.0, -1.2, 1.8])
    ref = torch.log(torch.tensor([0.25, 0.5, 0.9]))
    kl = hybrid.mode_token_loss(logps, old, adv, 0.2, 0.2, beta=0.1, ref_logps=ref) - loss
    assert kl.tolist() == pytest.approx([0.1 * (0.5 - np.log(0.5) - 1), 0.0, 0.0], abs=1e-6)


def accuracy_reward(completions, qid, **kwargs):
    """TEST HELPER: question "a" is always solved, "b" never."""
    return [1.0 if q == "a" else 0.0 for q in qid]


def format_reward(completions, **kwargs):
    """TEST HELPER: varies inside every group, so GRPO advantages are never all zero."""
    return [float(i % 2) for i in range(len(completions))]


def hybrid_trainer(model_dir, out, questions, max_steps=1, reward_funcs=None, **kwargs):
    """TEST HELPER: the hybrid's trainer on the smoke world with its mode tokens (its own
    rewards, or `reward_funcs`)."""
    from synergy import models
    from trl import GRPOConfig

    processing = models.load_processing(model_dir)
    ds = strategies.shared.grpo_dataset(questions, processing, "")
    ds = ds.add_column("level", [1, 5][:len(questions)])
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=12, learning_rate=1e-3, max_steps=max_steps,
                      beta=0.0, reward_weights=[0.9, 0.1, 0.9], logging_steps=1,
                      save_strategy="no", report_to="none", bf16=False, fp16=False,
                      gradient_checkpointing=False, remove_unused_columns=False, seed=0,
                      **kwargs)
    return hybrid.trainer_class()(
        model=str(model_dir), reward_funcs=reward_funcs or hybrid.reward_functions(0.1),
        args=args,
        train_dataset=ds, processing_class=processing, plan=hybrid.Plan(2.0, 0.1))


def two_questions():
    return pd.DataFrame({"qid": ["a", "b"], "question": ["3 +4", "9 -2 *2 +3"],
                         "answer": ["7", "17"], "expert": ["x", "y"]})


@pytest.mark.slow
def test_decoupled_loss_averages_the_mode_token_over_rollouts_apart_from_the_response(
        tokened, tmp_path, one_thread):
    trainer = hybrid_trainer(tokened, tmp_path / "out", two_questions())
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    ids = hybrid.mode_token_ids(trainer.processing_class)
    # 3 rollouts with 4, 2 and 3 completion tokens, the first of each its mode token.
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    completion = torch.tensor([[ids["short"], 10, 11, 12], [ids["think"], 13, 0, 0],
                               [ids["short"], 14, 15, 0]])
    adv = torch.tensor([1.0, -2.0, 0.5])
    tool = torch.ones_like(mask)
    tool[:, 0] = 0
    inputs = {"prompt_ids": torch.tensor([[5, 6]] * 3), "prompt_mask": torch.ones(3, 2,
                                                                                  dtype=torch.long),
              "completion_ids": completion, "completion_mask": mask, "advantages": adv,
              "tool_mask": tool, "num_items_in_batch": (mask * tool).sum(),
              "mode_num_items": torch.tensor(3.0)}
    total = trainer._compute_loss(trainer.model, inputs)
    # No old log-probs: ratio 1, beta 0, so every token's loss is -A. Response: a token mean
    # over the 6 response tokens; mode: a mean over the 3 rollouts, weighted 2.0.
    response = -(1.0 * 3 + -2.0 * 1 + 0.5 * 2) / 6
    mode = -(1.0 - 2.0 + 0.5) / 3
    assert trainer.last_loss_parts["response"] == pytest.approx(response, abs=1e-6)
    assert trainer.last_loss_parts["mode"] == pytest.approx(mode, abs=1e-6)
    assert float(total.detach()) == pytest.approx(response + 2.0 * mode, abs=1e-6)


@pytest.mark.slow
def test_one_hybrid_step_trains_both_loss_parts_and_logs_the_think_share(
        smoke_world, tokened, tmp_path, one_thread):
    init = tmp_path / "init"
    shutil.copytree(tokened, init)
    # The untrained smoke world never answers right: rewards that vary inside each group.
    rewards = [accuracy_reward, format_reward, hybrid.reward_functions(0.1)[2]]
    trainer = hybrid_trainer(init, tmp_path / "out", two_questions(), reward_funcs=rewards)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.last_loss_parts["mode"] != 0 and trainer.last_loss_parts["response"] != 0
    logged = trainer.state.log_history[0]
    assert 0 <= logged["strategy/think_share"] <= 1
    assert {"strategy/think_share_L1", "strategy/think_share_L5"} <= set(logged)
    assert "rewards/mode_preference_reward/mean" in logged
    # The budget: 2 questions x 4 rollouts, every completion token in one loss or the other.
    budget = trainer.budget.record()
    assert budget["rollouts"] == 8 and budget["optimizer_steps"] == trainer.state.global_step
    assert budget["mode_tokens"] == 8


# --- budgets against the trainers' own counts -----------------------------------------------

@pytest.mark.slow
def test_grpo_budget_matches_trls_token_count_and_survives_a_resume(smoke_world, tmp_path,
                                                                    one_thread):
    from synergy import grpo, grpo_trainer, models
    from trl import GRPOConfig

    model_dir = tmp_path / "init"
    shutil.copytree(smoke_world[1], model_dir)
    processing = models.load_processing(model_dir)
    qs = pd.DataFrame({"qid": [f"q{i}" for i in range(4)],
                       "question": ["3 +4", "9 -2", "8 -1", "2 +3"],
                       "answer": ["7", "7", "7", "5"]})
    ds = grpo.training_dataset(qs, processing, "")
    lengths = {len(processing(p, add_special_tokens=False)["input_ids"]) for p in ds["prompt"]}
    assert len(lengths) == 1  # every prompt the same length: TRL's count is known

    def args(steps):
        return GRPOConfig(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=8,
                          num_generations=4, max_completion_length=12, learning_rate=1e-4,
                          max_steps=steps, beta=0.0, logging_steps=1, save_strategy="steps",
                          save_steps=1, report_to="none", bf16=False, fp16=False,
                          gradient_checkpointing=False, remove_unused_columns=False, seed=0)

    first = grpo_trainer.trainer_class()(
        model=str(model_dir), reward_funcs=grpo_trainer.reward_functions(), args=args(1),
        train_dataset=ds, processing_class=processing)
    first.train()
    counted = first.budget.record()
    # TRL's own count: prompt and completion tokens it has seen.
    prompts = 8 * lengths.pop()  # 8 rollouts, each with its prompt
    assert counted["rollouts"] == 8 and counted["optimizer_steps"] == 1
    assert counted["rl_completion_tokens"] + prompts == first.state.num_input_tokens_seen
    # A second trainer resumed from the checkpoint counts on from there: the whole run.
    second = grpo_trainer.trainer_class()(
        model=str(model_dir), reward_funcs=grpo_trainer.reward_functions(), args=args(2),
        train_dataset=ds, processing_class=processing)
    second.train(resume_from_checkpoint=str(tmp_path / "ckpt" / "checkpoint-1"))
    again = second.budget.record()
    assert again["complete"] and again["optimizer_steps"] == 2 and again["rollouts"] == 16
    assert again["rl_completion_tokens"] > counted["rl_completion_tokens"]


@pytest.mark.slow
def test_sft_budget_counts_the_assistant_tokens_it_trains_on(smoke_world, tmp_path, one_thread):
    from synergy import models, sft_trainer
    from trl import SFTConfig

    _, processing = models.load(smoke_world[1])
    tok = models.tokenizer_of(processing)
    rows = pd.DataFrame({"qid": ["a", "b", "c", "d"], "messages": [
        [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
        for q, r in [("3 +4", "\\boxed{7}"), ("9 -2", "<think> 9-2=7.</think> \\boxed{7}"),
                     ("5 *2", "\\boxed{10}"), ("1 +1", "<think> 1+1=2.</think> \\boxed{2}")]]})
    args = SFTConfig(output_dir="checkpoints", max_steps=2, per_device_train_batch_size=2,
                     learning_rate=1e-4, assistant_only_loss=True, bf16=False, fp16=False,
                     report_to="none", save_strategy="steps", save_steps=1, seed=0,
                     data_seed=0, dataloader_num_workers=0, max_length=128)
    trainer, _ = sft_trainer.train(smoke_world[1], rows, args, tmp_path / "run", progress=False)
    expected = sum(sum(tok.apply_chat_template(m, tokenize=True, return_dict=True,
                                               return_assistant_tokens_mask=True)
                       ["assistant_masks"]) for m in rows["messages"])
    counted = trainer.budget.record()
    assert counted["sft_tokens"] == expected and counted["sft_rows"] == 4
    assert counted["optimizer_steps"] == trainer.state.global_step == 2
    # Each checkpoint carries the counts at its step (03 reports its chosen checkpoint's).
    from synergy import training

    ckpts = training.checkpoints(tmp_path / "run")
    assert training.checkpoint_budget(ckpts[0])["optimizer_steps"] == 1
    assert training.checkpoint_budget(ckpts[-1])["sft_tokens"] == expected


def test_budget_table_puts_parents_and_models_side_by_side():
    parents = [strategies.analysis.budget_row("rl (rl-beta0.005)", "04_grpo", "base", {
        "train_runtime": 100.0, "budget": {"questions": 480, "rollouts": 3840,
                                           "optimizer_steps": 60,
                                           "rl_completion_tokens": 50000, "complete": True}})]
    runs = pd.DataFrame([
        {"label": "rl_control", "start": "base", "train_runtime": 10.0,
         "budget": {"questions": 64, "rollouts": 512, "optimizer_steps": 8,
                    "rl_completion_tokens": 7000, "complete": True}},
        {"label": "hybrid-warmup", "start": "sft", "train_runtime": 30.0,
         "budget": {"questions": 400, "optimizer_steps": 150, "sft_tokens": 200000,
                    "complete": True}},
        {"label": "hybrid", "start": "hybrid-warmup", "train_runtime": 40.0,
         "budget": {"questions": 128, "rollouts": 1024, "optimizer_steps": 16,
                    "rl_completion_tokens": 70000, "mode_tokens": 1024, "complete": True}}])
    table = strategies.budget_table(parents, runs).set_index("model")
    assert table.at["rl_control", "optimizer steps"] == 8
    assert table.at["rl (rl-beta0.005)", "rollouts"] == 3840
    assert table.at["hybrid", "RL completion tokens"] == 71024
    total = table.loc["hybrid (warm-up + RL)"]
    assert total["optimizer steps"] == 166 and total["SFT tokens"] == 200000
    assert total["train seconds"] == 70.0 and total["counted"] == "yes"
