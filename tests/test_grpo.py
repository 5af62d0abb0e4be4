"""04_grpo: rewards, the exclude-easiest filter, the curve log, one real GRPO step, resume,
and the notebook on the smoke profile."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from synergy import grpo, grpo_trainer

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
PAPER = ROOT / "params" / "paper.yaml"


# --- rewards --------------------------------------------------------------------------------

def test_reward_is_point_nine_accuracy_plus_point_one_format():
    completions = ["<think> 2+3=5.</think> \\boxed{5}",  # right, formatted
                   "\\boxed{5}",                          # right, no think block
                   "<think> 2+3=4.</think> \\boxed{4}",  # wrong, formatted
                   "five"]                                # neither
    funcs = grpo_trainer.reward_functions()
    assert [f.__name__ for f in funcs] == list(grpo_trainer.REWARD_NAMES)
    weights = grpo_trainer.training_args(grpo.GRPOStageConfig.from_profile(PAPER),
                                         0.005).reward_weights
    per_func = [f(completions=completions, answer=["5"] * 4) for f in funcs]
    total = [sum(w * r[i] for w, r in zip(weights, per_func)) for i in range(4)]
    assert total == pytest.approx([1.0, 0.9, 0.1, 0.0])


# --- exclude easiest ------------------------------------------------------------------------

def crafted_batch():
    """Three prompts x 4 rollouts: all correct, mixed, all wrong."""
    accuracy = torch.tensor([1., 1., 1., 1., 1., 0., 1., 0., 0., 0., 0., 0.])
    mask = torch.ones(12, 5, dtype=torch.long)
    mask[:, 4] = 0  # a padded position
    batch = {"completion_ids": torch.ones(12, 5, dtype=torch.long), "completion_mask": mask,
             "advantages": torch.linspace(-1, 1, 12), "num_items_in_batch": mask.sum()}
    return accuracy, batch


def test_easiest_groups_marks_only_all_correct_groups():
    accuracy, _ = crafted_batch()
    drop = grpo_trainer.easiest_groups(accuracy, num_generations=4)
    assert drop.tolist() == [True] * 4 + [False] * 8


def test_drop_completions_masks_easiest_out_of_the_loss():
    accuracy, batch = crafted_batch()
    out = grpo_trainer.drop_completions(batch, grpo_trainer.easiest_groups(accuracy, 4))
    assert out["completion_mask"][:4].sum() == 0
    assert torch.equal(out["completion_mask"][4:], batch["completion_mask"][4:])
    assert torch.all(out["advantages"][:4] == 0)
    assert torch.equal(out["advantages"][4:], batch["advantages"][4:])
    assert out["num_items_in_batch"] == 8 * 4  # the kept rows' real tokens
    assert batch["completion_mask"].sum() == 12 * 4  # the input is left alone


def test_static_filter_keeps_questions_with_any_miss():
    assert grpo.base_all_correct([[True] * 8, [True] * 7 + [False], [False] * 8, []]).tolist() \
        == [True, False, False, False]


# --- batching and config --------------------------------------------------------------------

def test_paper_batching_maps_onto_trl():
    cfg = grpo.GRPOStageConfig.from_profile(PAPER)
    b = grpo_trainer.trl_batching(cfg)
    assert b["completions_per_step"] == 64 * 8  # verl mini-batch of 64 prompts x 8 rollouts
    assert b["per_device_train_batch_size"] * b["gradient_accumulation_steps"] == 512
    assert b["steps_per_generation"] == 2 * b["gradient_accumulation_steps"]  # 128 / 64
    assert grpo_trainer.trl_batching(cfg, num_processes=8)["gradient_accumulation_steps"] == 8


@pytest.mark.parametrize("key, value, names", [
    ("betas", [], "grpo.betas"), ("betas", [0.0, 0.0], "grpo.betas"),
    ("prompts_per_generation", 5, "grpo.prompts_per_generation"),
    ("micro_batch", 3, "grpo.micro_batch"), ("num_generations", 1, "grpo.num_generations"),
    ("reward_weights", [1.0], "grpo.reward_weights"), ("loss_type", "ppo", "grpo.loss_type"),
    ("exclude_easiest", "yes", "grpo.exclude_easiest"),
])
def test_bad_values_name_the_key(key, value, names):
    from synergy.config import ConfigError, load_profile, profile_section

    values = profile_section(load_profile(SMOKE), "grpo", SMOKE)
    with pytest.raises(ConfigError, match=names):
        grpo.GRPOStageConfig.from_mapping({**values, key: value}, "test")


# --- the training log -----------------------------------------------------------------------

def test_log_callback_appends_and_forgets_rows_past_a_resumed_checkpoint(tmp_path):
    from synergy.training import log_callback, read_jsonl

    path = tmp_path / "curves.jsonl"
    logger = log_callback(path, "rl-beta0")
    state = types.SimpleNamespace(global_step=0, is_world_process_zero=True)
    logger.on_train_begin(None, state, None)
    for step in (1, 2, 3):
        state.global_step = step
        logger.on_log(None, state, None, logs={"reward": 0.1 * step, "kl": 0.01, "note": "x"})
    logger.on_log(None, state, None, logs={"train_runtime": 9.0})  # end summary: skipped
    with path.open("a") as fh:
        fh.write('{"run": "rl-beta0", "st')  # torn by an interruption
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0] == {"run": "rl-beta0", "step": 1, "reward": 0.1, "kl": 0.01}
    logger.on_train_begin(None, types.SimpleNamespace(global_step=2, is_world_process_zero=True), None)  # resumed at 2
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


# --- real training --------------------------------------------------------------------------

def smoke_cfg(smoke_root, **overrides):
    from synergy.config import load_profile, profile_section

    values = profile_section(load_profile(SMOKE), "grpo", SMOKE)
    return grpo.GRPOStageConfig.from_mapping(
        {**values, "output_root": str(smoke_root), **overrides}, str(SMOKE))


@pytest.fixture
def init_copy(smoke_world, tmp_path):
    _, model_dir = smoke_world
    path = tmp_path / "init"
    shutil.copytree(model_dir, path)
    return path


@pytest.mark.slow
def test_one_grpo_step_changes_the_weights(init_copy, tmp_path):
    from synergy.training import log_callback, read_jsonl
    from synergy.verify import accuracy_reward
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    def length_reward(completions, **kwargs):  # varies within a group, so advantages != 0
        return [len(c) / 16 for c in completions]

    tok = AutoTokenizer.from_pretrained(init_copy)
    questions = pd.DataFrame({"qid": ["a", "b"], "question": ["3 +4", "9 -2 *2"],
                              "answer": ["7", "14"]})
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                      num_generations=4, max_completion_length=12, learning_rate=1e-2,
                      max_steps=1, beta=0.01, reward_weights=[0.9, 0.1], logging_steps=1,
                      save_strategy="no", report_to="none", bf16=False, fp16=False,
                      gradient_checkpointing=False, remove_unused_columns=False)
    trainer = grpo_trainer.trainer_class()(
        model=str(init_copy), reward_funcs=[accuracy_reward, length_reward], args=args,
        train_dataset=grpo.training_dataset(questions, tok, ""), processing_class=tok,
        callbacks=[log_callback(tmp_path / "curves.jsonl", "t")],
        exclude_easiest_dynamic=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    # beta != 0: the reference is a second copy, reloaded from the saved path, left untouched.
    assert Path(trainer.ref_model.config._name_or_path) == init_copy
    reloaded = AutoModelForCausalLM.from_pretrained(init_copy).state_dict()
    assert all(torch.equal(v, reloaded[k]) for k, v in trainer.ref_model.state_dict().items())
    (row,) = read_jsonl(tmp_path / "curves.jsonl")
    assert {"reward", "kl", "entropy", "completions/mean_length", "frac_reward_zero_std",
            "easiest_dropped"} <= set(row)
    assert row["reward"] == pytest.approx(0.9 * row["rewards/accuracy_reward/mean"]
                                          + 0.1 * row["rewards/length_reward/mean"], abs=1e-5)


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_last_checkpoint(smoke_root, init_copy,
                                                              tmp_path):
    from synergy.runs import Run
    from synergy.training import read_jsonl
    from transformers import AutoTokenizer, TrainerCallback

    cfg = smoke_cfg(smoke_root, save_steps=1, exclude_easiest="dynamic")
    questions, _ = grpo.training_questions(cfg, Run(smoke_root, "smoke"))
    dataset = grpo.training_dataset(questions, AutoTokenizer.from_pretrained(init_copy), "")
    run_dir = tmp_path / "run"

    def train(**kw):
        return grpo_trainer.train(str(init_copy), dataset,
                                  grpo_trainer.training_args(cfg, 0.01), run_dir, key="key",
                                  label="rl", progress=False, exclude_easiest_dynamic=True,
                                  **kw)

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(callbacks=[Interrupt()])
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir()
    assert not (run_dir / "done.json").exists()

    record = train()
    assert record["resumed_from"].endswith("checkpoint-2") and record["steps"] == 4
    assert [r["step"] for r in read_jsonl(run_dir / "curves.jsonl")] == [1, 2, 3, 4]
    again = train()
    assert again["reused"] and again["model_path"] == record["model_path"]


# --- the notebook ---------------------------------------------------------------------------

def test_notebook_04_on_smoke(smoke_series):
    from synergy.runs import Run

    result = grpo.load(str(smoke_series), "smoke")
    manifest = result.manifest
    assert set(manifest["model_paths"]) == {"rl-beta0-static", "rl-beta0.01-static"}
    assert manifest["main_model"] == "rl-beta0.01-static"  # the first policy with a KL term
    assert manifest["upstream"]["init_model"].startswith("world-")
    assert Run(smoke_series, "smoke").model("04_grpo").path == str(
        smoke_series / "smoke" / manifest["model_paths"]["rl-beta0.01-static"])
    assert set(result.curves["run"]) == set(manifest["model_paths"])
    assert {"reward", "entropy", "completions/mean_length", "frac_reward_zero_std"} \
        <= set(result.curves.columns)
    assert {"base", "sft-careful", "rl-beta0-static", "rl-beta0.01-static"} \
        <= set(result.table["model"])
    assert (result.drift["kl_to_init"] >= 0).all()
    assert result.train["kept"].any()
    assert (result.dir / "04_grpo.html").stat().st_size > 0


def test_finished_policies_are_reused(smoke_series, tmp_path):
    shutil.copytree(smoke_series / "smoke", tmp_path / "smoke")
    result = grpo.run(smoke_cfg(tmp_path), progress=False)
    assert result.runs["reused"].all()


def test_policies_trained_side_by_side_are_the_same_policies(smoke_series, tmp_path):
    """Both smoke policies trained two at a time (run.train_jobs 2, one thread each, as the
    smoke profile's one thread) are the policies 04 trained one after another, bit for bit."""
    from synergy import models

    shutil.copytree(smoke_series / "smoke", tmp_path / "smoke")
    shutil.rmtree(tmp_path / "smoke" / "04_grpo" / "runs")
    result = grpo.run(smoke_cfg(tmp_path, train_jobs=2), progress=False)
    assert not result.runs["reused"].any() and len(result.runs) == 2
    before = grpo.load(str(smoke_series), "smoke").runs.set_index("label")["model_path"]
    for label, path in result.runs.set_index("label")["model_path"].items():
        assert models.fingerprint(path) == models.fingerprint(before[label]), label


@pytest.mark.slow
def test_keyed_rollouts_do_not_depend_on_the_batch(init_copy, monkeypatch):
    """Rollouts go through the keyed decoder: a prompt's samples are the same alone or beside
    other prompts, differ between its copies, and change with the training step."""
    import contextlib

    import trl.models
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(trl.models, "unwrap_model_for_generation",
                        lambda model, accelerator: contextlib.nullcontext(model))
    tok = AutoTokenizer.from_pretrained(init_copy)
    model = AutoModelForCausalLM.from_pretrained(init_copy)
    trainer = types.SimpleNamespace(
        _tokenizer=tok, temperature=1.0, top_k=0, top_p=1.0, max_completion_length=12,
        args=types.SimpleNamespace(seed=3), state=types.SimpleNamespace(global_step=0),
        accelerator=types.SimpleNamespace(process_index=0), model_wrapped=model)
    a, b = (tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
            for q in ("3 +4", "9 -2 *2 +11"))
    a, b = (list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x)
            for x in (a, b))
    both = grpo_trainer.keyed_rollouts(trainer, [a] * 4 + [b] * 4)
    alone = grpo_trainer.keyed_rollouts(trainer, [b] * 4)
    assert both[4:] == alone
    assert len(set(map(tuple, both[:4]))) > 1 or len(set(map(tuple, both[4:]))) > 1
    assert all(len(r) <= 12 for r in both)
    trainer.state.global_step = 1
    assert grpo_trainer.keyed_rollouts(trainer, [b] * 4) != alone


# --- log-probs in length groups ---------------------------------------------------------------

def test_length_groups_cut_only_columns_that_are_padding_in_every_row():
    """Each group's pass gets its rows without the columns padded in all of them, never
    the first completion column, and its results come back in row order, 0 where cut."""
    from synergy.length_groups import completion_logps

    # 2 prompt columns (left-padded), 5 completion columns (right-padded, one row empty).
    mask = torch.tensor([[0, 1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 1, 1, 1, 1],
                         [0, 1, 0, 0, 0, 0, 0],
                         [0, 1, 1, 1, 1, 0, 0]])
    ids = torch.arange(28).view(4, 7)
    seen = []

    def compute(input_ids, attention_mask, keep):
        seen.append((input_ids.tolist(), keep))
        assert attention_mask.any(0).all() or keep == 1  # no all-padding column is left
        return input_ids[:, -keep:].float(), -input_ids[:, -keep:].float(), None

    logps, entropies, _ = completion_logps(compute, ids, mask, 5, groups=3)
    # Groups {2}, {0, 3}, {1}: row 0's prompt column 0 and every row's padding after its
    # group's longest completion are cut; row 2's lone completion column is kept.
    assert seen == [([[15, 16]], 1), ([[1, 2, 3, 4], [22, 23, 24, 25]], 3),
                    ([[7, 8, 9, 10, 11, 12, 13]], 5)]
    kept = torch.arange(5) < torch.tensor([[3], [5], [1], [3]])  # each row's group's width
    assert torch.equal(logps, ids[:, 2:].float() * kept)
    assert torch.equal(entropies, -logps)


def test_grouped_logps_are_trls_padded_pass(init_copy, tmp_path, monkeypatch):
    """The trainer's log-probs, entropies and their gradients on a rollout-shaped batch
    (left-padded prompts, right-padded completions of many lengths, one empty) are those of
    TRL's one padded pass, up to float rounding."""
    from synergy.verify import accuracy_reward
    from transformers import AutoTokenizer
    from trl import GRPOConfig

    tok = AutoTokenizer.from_pretrained(init_copy)
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=12, max_steps=1,
                      save_strategy="no", report_to="none", bf16=False, fp16=False,
                      use_cpu=True, remove_unused_columns=False)
    questions = pd.DataFrame({"qid": ["a"], "question": ["3 +4"], "answer": ["7"]})
    trainer = grpo_trainer.trainer_class()(
        model=str(init_copy), reward_funcs=[accuracy_reward], args=args,
        train_dataset=grpo.training_dataset(questions, tok, ""), processing_class=tok)
    gen = torch.Generator().manual_seed(0)
    prompt_lens, completion_lens = [5, 9, 3, 9, 6, 4], [2, 30, 0, 7, 30, 1]
    width_p, width_c = max(prompt_lens), max(completion_lens)
    ids = torch.randint(3, 300, (6, width_p + width_c), generator=gen)
    mask = torch.tensor([[0] * (width_p - p) + [1] * p + [1] * c + [0] * (width_c - c)
                         for p, c in zip(prompt_lens, completion_lens)])
    ids = ids.masked_fill(mask == 0, tok.pad_token_id)
    model = trainer.model
    outputs, grads = [], []
    for groups in (1, 3):
        monkeypatch.setattr(grpo_trainer, "LOGPS_GROUPS", groups)
        model.zero_grad()
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            model, ids, mask, width_c, batch_size=4, compute_entropy=True)
        keep = mask[:, width_p:].bool()
        (logps * keep).sum().backward()
        outputs.append((logps[keep], entropies[keep]))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("processes, fsdp, deepspeed, allowed", [
    (1, False, False, True), (2, False, False, False), (1, True, False, False),
    (1, False, True, False)])
def test_only_a_lone_process_with_the_whole_model_groups(processes, fsdp, deepspeed, allowed):
    """Under DDP, FSDP or DeepSpeed every process must run the same forward passes: two
    processes whose micro-batches split into different numbers of groups deadlock."""
    from synergy.length_groups import may_group

    trainer = types.SimpleNamespace(accelerator=types.SimpleNamespace(num_processes=processes),
                                    is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed)
    assert may_group(trainer) is allowed
