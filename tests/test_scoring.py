"""Scoring responses under two models (`scoring`): the chunked per-token KL, entropy and
log-probs equal the whole-sequence computation, on random heads and on tiny models built
here (a Qwen2 and a Qwen2.5-VL with images); scoring models load where `placement` says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturbed_copy
from PIL import Image
from synergy import models, scoring, world
from synergy.generation import chat_prompt
from synergy.vlm import build_tiny_vlm


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A saved tiny Qwen2 with the world's tokenizer and a perturbed copy of it."""
    cfg = world.WorldConfig(run_name="t", threads=1, train_jobs=1, output_root=str(tmp_path_factory.mktemp("o")),
                            kind="text", seed=0, min_steps=1, max_steps=2, max_value=19,
                            n_eval_questions=4, eval_seed=1, vocab_size=300, hidden_size=16,
                            num_layers=1, num_heads=2, intermediate_size=16, max_positions=128,
                            train_steps=1, batch_size=2, lr=1e-3, warmup_steps=0,
                            trace_fraction=0.5, long_fraction=0.0, check_fraction=0.0, log_every=1)
    tok = world.build_tokenizer(cfg.vocab_size, world.tokenizer_corpus(cfg, n=50))
    root = tmp_path_factory.mktemp("models")
    world.build_model(cfg, tok).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base", perturbed_copy(root / "base", root / "other", 3, scale=0.5)


def whole(logits_p, logits_q, target) -> dict[str, np.ndarray]:
    """The unchunked computation: one [n, vocab] float32 log-softmax per model."""
    a, c = torch.log_softmax(logits_p.float(), -1), torch.log_softmax(logits_q.float(), -1)
    p, pick = a.exp(), target[:, None]
    return {"kl": (p * (a - c)).sum(-1).clamp_min(0).numpy(),
            "entropy": (-(p * a).sum(-1)).numpy(),
            "logp_p": a.gather(1, pick)[:, 0].numpy(), "logp_q": c.gather(1, pick)[:, 0].numpy()}


@pytest.mark.parametrize("n", [0, 1, 37, 64, 300])
def test_chunked_stats_equal_the_whole_sequence(n):
    gen = torch.Generator().manual_seed(n)
    head_p, head_q = torch.nn.Linear(8, 50, bias=False), torch.nn.Linear(8, 50, bias=False)
    states_p, states_q = torch.randn(n, 8, generator=gen), torch.randn(n, 8, generator=gen)
    target = torch.randint(0, 50, (n,), generator=gen)
    with torch.no_grad():
        expected = whole(head_p(states_p), head_q(states_q), target)
    for chunk in (1, 7, 64, scoring.CHUNK):  # 37 and 300 are no multiple of these
        got = scoring.token_stats(states_p, head_p, states_q, head_q, target, chunk)
        assert set(got) == set(expected) and all(len(v) == n for v in got.values())
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def reference_kl(model_p, model_q, processor, prompts, responses, images=None):
    """Per-token stats from each model's whole logits (what `token_kl` computed before it
    chunked), row by row."""
    out = []
    for i in range(len(prompts)):
        inputs, (s,), (e,) = scoring._batch(processor, prompts[i:i + 1], responses[i:i + 1],
                                            [images[i]] if images and images[i] else None)
        with torch.no_grad():
            lp, lq = (m(**inputs).logits[0, s - 1:e - 1] for m in (model_p, model_q))
        out.append(whole(lp, lq, inputs["input_ids"][0, s:e]))
    return {k: np.concatenate([o[k] for o in out]) for k in scoring.STATS}


def assert_matches(frame, expected):
    for name in scoring.STATS:
        np.testing.assert_allclose(frame[name].to_numpy(), expected[name], rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_token_kl_in_chunks_equals_whole_logits(tiny_pair):
    (p, tok), (q, _) = (models.load_for_scoring(path) for path in tiny_pair)
    prompts = [chat_prompt(tok, x) for x in ("3 +4", "2 *3 -1", "9 -9 +2 *2")]
    responses = ["\\boxed{7}", "<think> 2*3=6. 6-1=5. Wait, 6-1=5.</think> \\boxed{5}",
                 "Wait, hmm \\boxed{4}"]
    expected = reference_kl(p, q, tok, prompts, responses)
    assert expected["kl"].sum() > 1e-3  # the two models differ
    for chunk, batch in ((3, 2), (scoring.CHUNK, 3)):
        assert_matches(scoring.token_kl(p, q, tok, prompts, responses, batch_size=batch,
                                        chunk=chunk), expected)
    one = tok(["1"], return_tensors="pt").data
    assert scoring._states(p, one)[1] is p.get_output_embeddings()  # states, then the head
    # A model whose logits are more than its head's product is scored from its logits.
    p.config.final_logit_softcapping = 30.0
    assert isinstance(scoring._states(p, one)[1], torch.nn.Identity)
    assert_matches(scoring.token_kl(p, q, tok, prompts, responses, chunk=5), expected)


def test_token_kl_in_chunks_on_a_vlm_with_images(tiny_pair, tmp_path):
    vlm = build_tiny_vlm(tiny_pair[0], tmp_path / "vlm")
    (p, processor), (q, _) = models.load_for_scoring(vlm), models.load_for_scoring(vlm)
    with torch.no_grad():
        for w in q.parameters():
            w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    prompts = [chat_prompt(processor, x, "", k) for x, k in (("? +4", 1), ("2 +2", 0))]
    responses = ["<think> 3+4=7.</think> \\boxed{7}", "\\boxed{4}"]
    images = [[Image.new("RGB", (56, 56), (200, 0, 0))], []]
    expected = reference_kl(p, q, processor, prompts, responses, images)
    inputs, _, _ = scoring._batch(processor, prompts[:1], responses[:1], images[:1])
    assert scoring._states(p, inputs)[1] is p.get_output_embeddings()  # images go in too
    assert_matches(scoring.token_kl(p, q, processor, prompts, responses, images, chunk=4),
                   expected)


def test_scoring_placement(tiny_pair, monkeypatch):
    assert models.placement() == ("cpu", "float32")  # this machine: no CUDA
    model, _ = models.load_for_scoring(tiny_pair[0])
    assert not model.training and model.dtype == torch.float32
    assert model.device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.placement() == ("cuda", "bfloat16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.placement() == ("cuda", "float32")  # GPUs before bf16


def test_policy_drift_scores_each_policy_against_the_reference(tiny_pair):
    import pandas as pd
    from synergy import grpo_analysis

    base, other = map(str, tiny_pair)
    results = {name: pd.DataFrame({"question": ["3 +4", "2 *3"],
                                   "samples": [["\\boxed{7}", "Wait, \\boxed{7}"],
                                               ["<think> 2*3=6.</think> \\boxed{6}"]]})
               for name in ("same", "moved")}
    drift = grpo_analysis.policy_drift(results, {"same": base, "moved": other}, base, batch=2)
    assert drift["model"].tolist() == ["same", "moved"] and (drift["tokens"] > 0).all()
    assert drift["kl_to_init"][0] < 1e-6 < drift["kl_to_init"][1]
    assert (drift["entropy"] > 0).all()
