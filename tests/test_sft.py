"""SFT: data selection, a real TRL step, the assistant-only mask, the frozen-vision switch,
overthinking counts, and the 03_sft notebook on the smoke profile."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMOKE
from synergy import sft, sft_trainer
from synergy.config import load_profile, profile_section


def smoke_cfg(root, **over) -> sft.SftConfig:
    values = {**profile_section(load_profile(SMOKE), "sft", SMOKE), "output_root": str(root)}
    return sft.SftConfig.from_mapping({**values, **over}, "test")


def fake_traces(n_per_level=20, teachers=("careful", "lowquality")):
    rows = []
    for t in teachers:
        for level in range(1, 6):
            for i in range(n_per_level):
                rows.append({"qid": f"q{level}_{i}", "teacher": t, "level": level,
                             "response": f"{t}-{level}-{i}"})
    return pd.DataFrame(rows)


def test_select_traces_mix_validation_and_nesting():
    tr = fake_traces()
    train, val = sft.select_traces(tr, "careful", 20, 0.25, [1, 2], [4, 5], 8, seed=0)
    assert len(train) == 20 and len(val) == 8
    assert (train["level"].isin([1, 2])).sum() == 5 and train["level"].isin([4, 5]).sum() == 15
    assert not set(train["qid"]) & set(val["qid"])
    small, _ = sft.select_traces(tr, "careful", 10, 0.0, [1, 2], [4, 5], 8, seed=0)
    large, _ = sft.select_traces(tr, "careful", 30, 0.0, [1, 2], [4, 5], 8, seed=0)
    assert set(small["qid"]) <= set(large["qid"])
    other, _ = sft.select_traces(tr, "lowquality", 10, 0.0, [1, 2], [4, 5], 8, seed=0)
    assert set(other["qid"]) == set(small["qid"])  # teachers see the same questions
    with pytest.raises(ValueError, match="hard traces"):
        sft.select_traces(tr, "careful", 60, 0.0, [1, 2], [4, 5], 8, seed=0)
    with pytest.raises(ValueError, match="no traces from teacher"):
        sft.select_traces(tr, "oracle", 5, 0.0, [1, 2], [4, 5], 2, seed=0)


def test_run_specs_dedupe_sweeps(tmp_path):
    cfg = smoke_cfg(tmp_path, teachers=["careful", "lowquality"], n_traces=10, easy_share=0.0,
                    easy_share_sweep=[0.0, 0.5], scale_sweep={"careful": [10, 4]})
    names = [s.name for s in sft.run_specs(cfg)]
    assert names == ["careful", "lowquality", "careful_n10_easy50", "careful_n4_easy0"]


def test_first_correct_tokens_counts_until_the_answer(smoke_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smoke_world[1])
    text = "<think> 3*4=12. So the answer is 12. Wait, let me check: 12. Yes.</think> \\boxed{12}"
    df = pd.DataFrame({"answer": ["12"], "level": [1], "samples": [[text, "\\boxed{1}"]],
                       "correct": [[True, False]],
                       "lengths": [[len(tok(text)["input_ids"]), 3]]})
    out = sft.first_correct_tokens(df, tok)
    upto = len(tok("<think> 3*4=12. So the answer is 12")["input_ids"])
    assert out["tokens_to_first_correct"].iloc[0] == upto
    assert 0 < out["share_after"].iloc[0] < 1


@pytest.fixture(scope="module")
def smoke_traces(smoke_series):
    from synergy import distill

    return distill.load(str(smoke_series), "smoke").traces


def test_one_sft_step_changes_weights_and_masks_only_the_assistant(smoke_world, smoke_traces,
                                                                   tmp_path):
    import torch
    from synergy import models
    from synergy.training import read_jsonl

    cfg = smoke_cfg(tmp_path, max_steps=1, batch_size=4, grad_accum=1, lr=1e-2)
    train = smoke_traces[smoke_traces["teacher"] == "careful"].head(8)
    args = sft_trainer.training_args(cfg, len(train))
    assert (args.learning_rate, args.max_steps, args.assistant_only_loss) == (1e-2, 1, True)
    before = {n: p.detach().clone()
              for n, p in models.load(smoke_world[1])[0].named_parameters()}
    trainer, result = sft_trainer.train(smoke_world[1], train, args, tmp_path / "run", key="k",
                                progress=False)
    assert math.isfinite(result.training_loss) and result.training_loss > 0
    changed = [n for n, p in trainer.model.named_parameters()
               if not torch.equal(before[n], p.detach())]
    assert len(changed) == len(before)
    assert read_jsonl(tmp_path / "run" / "log.jsonl")

    # TRL folds the assistant mask into the labels: -100 everywhere but the assistant turn
    tok = trainer.processing_class
    for row in trainer.train_dataset:
        ids, labels = np.array(row["input_ids"]), np.array(row["labels"])
        mask = labels != -100
        assert (labels[mask] == ids[mask]).all()
        text = tok.decode(ids)
        matches = [m for m in train["messages"] if tok.apply_chat_template(
            list(m), tokenize=False) == text]
        assert len(matches) >= 1
        assert tok.decode(ids[mask]) == matches[0][1]["content"] + "<|im_end|>"
        first, n = int(np.argmax(mask)), int(mask.sum())
        assert mask[first:first + n].all()  # one contiguous span
        assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
        assert tok.decode(ids[first + n:]) in ("", "\n")


def test_interrupted_sft_resumes_from_its_last_checkpoint(smoke_world, smoke_traces, tmp_path):
    from synergy import training
    from transformers import TrainerCallback

    cfg = smoke_cfg(tmp_path, max_steps=4, checkpoints=4, batch_size=4, grad_accum=1)
    rows = smoke_traces[smoke_traces["teacher"] == "careful"].head(16)

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sft_trainer.train(smoke_world[1], rows, sft_trainer.training_args(cfg, len(rows)), tmp_path / "run",
                  key="k", progress=False, callbacks=[Interrupt()])
    ckpts = training.checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2"]
    assert (ckpts[-1] / "optimizer.pt").exists() and not (ckpts[0] / "optimizer.pt").exists()
    trainer, result = sft_trainer.train(smoke_world[1], rows, sft_trainer.training_args(cfg, len(rows)),
                                tmp_path / "run", key="k", progress=False)
    assert result.global_step == 4 and trainer.state.global_step == 4
    steps = [r["step"] for r in training.read_jsonl(tmp_path / "run" / "log.jsonl")
             if "loss" in r]
    assert steps == sorted(set(steps)) and max(steps) == 4  # step 2's log kept once
    # Another key never resumes from these checkpoints.
    sft_trainer.train(smoke_world[1], rows, sft_trainer.training_args(cfg, len(rows)), tmp_path / "run",
              key="other", progress=False)
    assert training.read_json(tmp_path / "run" / "key.json")["key"] == "other"


def tiny_vlm():
    """A ~1M-parameter Qwen2.5-VL built from a config (no download)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rope_scaling={"type": "mrope",
                                                                    "mrope_section": [2, 2, 4]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
        image_token_id=120, video_token_id=121, vision_start_token_id=122,
        vision_end_token_id=123)
    return Qwen2_5_VLForConditionalGeneration(config)


def vlm_step(model, freeze: bool):
    import torch

    frozen = sft_trainer.freeze_vision(model) if freeze else []
    torch.manual_seed(0)
    grid = torch.tensor([[1, 4, 4]])  # one image: 1 x 4 x 4 patches -> 4 merged tokens
    pixels = torch.randn(16, 3 * 2 * 14 * 14)
    ids = torch.tensor([[1, 2, 122] + [120] * 4 + [123, 5, 6, 7, 8]])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                image_grid_thw=grid, labels=ids)
    out.loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    return frozen, changed, out.loss.item()


def test_freeze_vision_keeps_the_vision_tower_and_connector_fixed():
    frozen, changed, loss = vlm_step(tiny_vlm(), freeze=True)
    assert math.isfinite(loss)
    assert frozen and all("visual" in n for n in frozen)
    assert any("merger" in n for n in frozen) and any("blocks" in n for n in frozen)
    assert not changed & set(frozen)
    assert any("language_model" in n or "lm_head" in n for n in changed)
    # control: without the switch the same step does move the vision weights
    _, changed_free, _ = vlm_step(tiny_vlm(), freeze=False)
    assert changed_free & set(frozen)


def test_notebook_03_on_smoke(smoke_series):
    from synergy import models
    from synergy.runs import Run

    res = sft.load(str(smoke_series), "smoke")
    assert set(res.manifest["model_paths"]) == set(res.runs["name"])
    assert res.manifest["main_model"] == "careful"
    for name in res.manifest["model_paths"]:
        path = models.resolve(Run(smoke_series, "smoke"), f"03_sft:{name}").path
        assert (Path(path) / "model.safetensors").exists()
    assert {"base", "careful", "lowquality"} <= set(res.results)
    assert "SFT on 'careful'" in sft.conclusion(res)
    assert (res.dir / "03_sft.html").stat().st_size > 0


def test_lora_run_is_merged_into_a_plain_model(smoke_world, smoke_traces, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = smoke_cfg(tmp_path, lora_r=4, lora_alpha=8, max_steps=1, checkpoints=1, lr=1e-2,
                    n_traces=8, val_traces=2)
    cfg = dataclasses.replace(cfg, teachers=["careful"], scale_sweep={})
    unit, = sft.plan_models(cfg, smoke_traces, str(smoke_world[1]), "")
    record = sft.train_one(unit, cfg, str(smoke_world[1]), tmp_path, "", False)
    folder = tmp_path / "models" / "careful"
    assert (folder / "model.safetensors").exists() and not (folder / "adapter_config.json").exists()
    assert (folder / "tokenizer.json").exists() and record["steps"] == 1
    merged = AutoModelForCausalLM.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(smoke_world[1])
    diffs = [not torch.equal(a, b) for a, b in zip(merged.state_dict().values(),
                                                   base.state_dict().values())]
    assert any(diffs)
    again = sft.train_one(unit, cfg, str(smoke_world[1]), tmp_path, "", False)
    assert again["reused"]  # resumable: identical settings reuse the saved model


def test_length_groups_train_the_model_one_padded_batch_would(smoke_world, smoke_traces,
                                                              tmp_path, monkeypatch):
    """SFT on a blend of short answers and long traces, one micro-batch padded whole and in
    length groups: the same weights and logged metrics up to float rounding, and the
    grouped run really ran in groups."""
    import torch
    from synergy import length_groups

    cfg = smoke_cfg(tmp_path, max_steps=2, batch_size=8, grad_accum=1, lr=1e-2)
    train = smoke_traces[smoke_traces["teacher"] == "careful"].head(8).reset_index(drop=True)
    train["messages"] = [[m[0], {**m[1], "content": m[1]["content"].split("</think>")[-1]}]
                         if i % 2 else list(m) for i, m in enumerate(train["messages"])]
    parts = []
    summed = length_groups.summed_loss
    monkeypatch.setattr(length_groups, "summed_loss", lambda loss_of, batch, groups: (
        parts.append(groups), summed(loss_of, batch, groups))[1])
    weights, logs = [], []
    for groups in (1, 3):
        monkeypatch.setattr(sft_trainer, "SFT_GROUPS", groups)
        trainer, _ = sft_trainer.train(smoke_world[1], train,
                                       sft_trainer.training_args(cfg, len(train)),
                                       tmp_path / f"run{groups}", key="k", progress=False)
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        logs.append([h for h in trainer.state.log_history if "entropy" in h])
    assert parts == [3, 3]  # two steps, each one micro-batch in groups
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, rtol=1e-3, atol=1e-5)
    assert len(logs[0]) == len(logs[1]) == 2
    for one, grouped in zip(*logs):
        for key in ("loss", "entropy", "mean_token_accuracy"):
            assert grouped[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6)
