"""Keyed sampling: a sample depends on (seed, prompt key, index), never on its batch."""

from __future__ import annotations

import sys

import pytest
import torch
from synergy.generation import (
    HFEngine,
    SamplingSpec,
    chat_prompt,
    keyed_uniform,
    make_engine,
    sample_seed,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = SamplingSpec(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16)


@pytest.fixture(scope="module")
def engine(smoke_engine):
    return smoke_engine


@pytest.fixture(scope="module")
def prompts(engine, smoke_world):
    """Three prompts of clearly different lengths (1, 3 and 6 operations)."""
    from synergy.task import eval_questions

    qs = eval_questions(smoke_world[0])
    picks = [next(q for q in qs if q.steps == s) for s in (1, 3, 6)]
    out = [chat_prompt(engine.tokenizer, q.text) for q in picks]
    lengths = [len(engine.tokenizer(p)["input_ids"]) for p in out]
    assert len(set(lengths)) == 3
    return out


KEYS = ["qa", "qb", "qc"]


def texts(completions):
    return [[(c.text, c.n_tokens, c.truncated) for c in row] for row in completions]


def test_sample_does_not_depend_on_its_batch(engine, prompts):
    alone = [texts(engine.generate([p], [k], 0, 8, SPEC, 0))[0] for p, k in zip(prompts, KEYS)]
    batched = texts(engine.generate(prompts, KEYS, 0, 8, SPEC, 0))
    assert batched == alone
    reordered = texts(engine.generate(prompts[::-1], KEYS[::-1], 0, 8, SPEC, 0))
    assert reordered == alone[::-1]
    split = [a + b for a, b in zip(texts(engine.generate(prompts, KEYS, 0, 4, SPEC, 0)),
                                   texts(engine.generate(prompts, KEYS, 4, 4, SPEC, 0)))]
    assert split == alone
    one_by_one = [[texts(engine.generate([p], [k], j, 1, SPEC, 0))[0][0] for j in range(8)]
                  for p, k in zip(prompts, KEYS)]
    assert one_by_one == alone
    # Sampling is on: samples of one prompt differ (a near-random model at temperature 1).
    assert all(len({t for t, _, _ in row}) > 1 for row in alone)


def test_small_batch_rows_split_the_call_without_changing_samples(engine, prompts):
    small = HFEngine(engine.model, engine.tokenizer, batch_rows=3)
    assert texts(small.generate(prompts, KEYS, 0, 4, SPEC, 0)) == \
        texts(engine.generate(prompts, KEYS, 0, 4, SPEC, 0))


def test_the_key_not_the_prompt_seeds_a_sample(engine, prompts):
    same = texts(engine.generate([prompts[0]] * 2, ["k1", "k1"], 0, 4, SPEC, 0))
    assert same[0] == same[1]
    other = texts(engine.generate([prompts[0]] * 2, ["k1", "k2"], 0, 4, SPEC, 0))
    assert other[0] != other[1]


def test_different_seeds_give_different_samples(engine, prompts):
    a = texts(engine.generate(prompts, KEYS, 0, 4, SPEC, 0))
    b = texts(engine.generate(prompts, KEYS, 0, 4, SPEC, 1))
    assert a == texts(engine.generate(prompts, KEYS, 0, 4, SPEC, 0))
    assert all(ra != rb for ra, rb in zip(a, b))


def test_temperature_zero_is_greedy(engine, prompts):
    greedy = SamplingSpec(0.0, 1.0, 0, SPEC.max_new_tokens)
    out = engine.generate(prompts, KEYS, 0, 4, greedy, 0)
    for prompt, row in zip(prompts, out):
        assert len({c.text for c in row}) == 1
        enc = engine.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = engine.model.generate(**enc, do_sample=False,
                                        max_new_tokens=SPEC.max_new_tokens)
        expected = engine.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
        assert row[0].text == expected
    assert texts(engine.generate(prompts, KEYS, 4, 4, greedy, 7)) == texts(out)


def test_completion_lengths_and_truncation(engine, prompts):
    short = SamplingSpec(1.0, 1.0, 0, 3)
    rows = engine.generate(prompts, KEYS, 0, 8, short, 0)
    assert [len(r) for r in rows] == [8, 8, 8]
    for row in rows:
        for c in row:
            assert 1 <= c.n_tokens <= 3
            assert not c.truncated or c.n_tokens == 3  # cut off only at the token limit
    assert any(c.truncated for row in rows for c in row)


def test_top_k_one_is_greedy(engine, prompts):
    top1 = SamplingSpec(1.0, 1.0, 1, SPEC.max_new_tokens)
    greedy = SamplingSpec(0.0, 1.0, 0, SPEC.max_new_tokens)
    assert [[c.text for c in row] for row in engine.generate(prompts, KEYS, 0, 2, top1, 0)] == \
        [[c.text for c in row] for row in engine.generate(prompts, KEYS, 0, 2, greedy, 0)]


# --- the noise ------------------------------------------------------------------------------

def seeds(n, seed=0):
    return torch.tensor([sample_seed(seed, f"q{i}", i % 5) for i in range(n)], dtype=torch.long)


def test_sample_seed():
    assert sample_seed(0, "q", 1) == sample_seed(0, "q", 1)
    assert len({sample_seed(s, k, i) for s in (0, 1) for k in ("a", "b") for i in range(4)}) == 16
    assert 0 <= sample_seed(3, "q", 0) < 2**63


def test_keyed_uniform_is_uniform_and_keyed():
    rows = seeds(64)
    u = keyed_uniform(rows, 0, 1000)
    assert u.shape == (64, 1000) and u.dtype == torch.float64
    assert (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs(u.var().item() - 1 / 12) < 0.005
    counts = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert ((counts - 0.1).abs() < 0.01).all()
    # Rows, steps and token ids all change the noise; no two rows or steps coincide.
    assert len({tuple(r[:8].tolist()) for r in u}) == 64
    assert not torch.equal(u, keyed_uniform(rows, 1, 1000))
    assert (u[:, :500] != u[:, 500:]).any(1).all()
    # Each row is a pure function of its own seed: same noise alone or in any batch.
    assert torch.equal(keyed_uniform(rows, 3, 50)[5], keyed_uniform(rows[5:6], 3, 50)[0])
    assert torch.equal(keyed_uniform(rows.flip(0), 3, 50).flip(0), keyed_uniform(rows, 3, 50))
    # Neighbouring steps are not correlated.
    a, b = keyed_uniform(rows, 10, 1000).flatten(), keyed_uniform(rows, 11, 1000).flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.02


# --- engines and fingerprints ---------------------------------------------------------------

def test_vllm_backend_without_vllm_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # importing it now fails, installed or not
    with pytest.raises(ImportError) as err:
        make_engine(tmp_path, "vllm")
    assert "vllm" in str(err.value) and "[gpu]" in str(err.value)


def test_make_engine_hf(smoke_world):
    engine = make_engine(smoke_world[1], "hf", batch_rows=7)
    assert isinstance(engine, HFEngine) and engine.batch_rows == 7
    assert engine.tokenizer.padding_side == "left"


@pytest.mark.parametrize("spec", [SamplingSpec(1.0, 1.0, 0, 24), SamplingSpec(0.7, 0.9, 5, 24),
                                  SamplingSpec(0.0, 1.0, 0, 24)])
def test_compacting_decoder_matches_hf_generate(engine, prompts, spec, monkeypatch):
    """Dropping finished rows changes the work, not the samples: HF generate with the same
    keyed noise (the path VLMs take) gives the same completions."""
    ours = engine.generate(prompts, [f"k{i}" for i in range(len(prompts))], 0, 3, spec, 7)
    monkeypatch.setattr(engine, "processor", object())  # no images: HF generate path
    theirs = engine.generate(prompts, [f"k{i}" for i in range(len(prompts))], 0, 3, spec, 7)
    assert ours == theirs


def test_buffered_cache_holds_what_concatenation_would():
    """The decoder's KV cache grows its buffers by doubling and compacts rows in place:
    what attention sees equals transformers' concatenating cache, through growth and
    reordering, and a position past its capacity is refused."""
    from transformers import DynamicCache

    from synergy.generation import buffered_cache

    gen = torch.Generator().manual_seed(0)
    ours, theirs = buffered_cache(10 + 150), DynamicCache()
    rows = 6

    def step(n):
        k, v = (torch.randn(rows, 2, n, 4, generator=gen) for _ in range(2))
        return ours.update(k, v, 0), theirs.update(k.clone(), v.clone(), 0)

    step(10)  # the prompt
    for i in range(150):
        (k, v), (k_ref, v_ref) = step(1)
        assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
        if i in (30, 90):  # rows leave, as when a quarter of the batch has ended
            keep = torch.tensor([0, 2, 3, 5]) if i == 30 else torch.tensor([1, 3])
            ours.reorder_cache(keep)
            theirs.reorder_cache(keep)
            rows = len(keep)
    assert k.shape == (2, 2, 160, 4) and ours.get_seq_length() == 160
    assert ours.layers[0].key_buffer.shape[2] == 160  # 64, 128, then capped at capacity
    with pytest.raises(ValueError, match="holds 160 positions, 161 asked"):
        step(1)
