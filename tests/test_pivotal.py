"""Pivotal tokens: token KL, word categories on crafted text, 07 on the smoke profile."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SMOKE, perturbed_copy, run_stages
from synergy import pivotal

CATEGORIES = {"meta": ["wait", "hmm", "mistake"], "connectors": ["alternative", "however"],
              "actions": ["check"]}


def test_kl_of_a_model_with_itself_is_zero(smoke_world, tmp_path):
    from synergy import models
    from synergy.generation import chat_prompt
    from synergy.scoring import token_kl

    _, base = smoke_world
    model, tok = models.load(base)
    prompts = [chat_prompt(tok, q) for q in ("3 +4", "2 *3 -1", "9 -9 +2 *2")]
    responses = ["\\boxed{7}", "<think> 2*3=6. 6-1=5.</think> \\boxed{5}", "Wait, hmm \\boxed{4}"]
    kl = token_kl(model, model, tok, prompts, responses, batch_size=2)
    n_tokens = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses)
    assert len(kl) == n_tokens
    assert kl["kl"].abs().max() < 1e-6 and (kl["entropy"] > 0).all()
    assert (kl["logp_p"] - kl["logp_q"]).abs().max() < 1e-6
    other, _ = models.load(perturbed_copy(base, tmp_path / "other", 5, scale=0.5))
    different = token_kl(other, model, tok, prompts, responses, batch_size=3)
    assert different["kl"].min() >= 0 and different["kl"].sum() > 1e-3
    table = pivotal.kl_by_token(different)
    assert table["total_kl"].is_monotonic_decreasing
    assert table["count"].sum() == n_tokens and abs(table["kl_share"].sum() - 1) < 1e-9


def test_kl_on_a_vision_language_model_with_images(smoke_world, tmp_path):
    from PIL import Image
    from synergy import models
    from synergy.generation import chat_prompt
    from synergy.scoring import token_kl
    from synergy.vlm import build_tiny_vlm

    _, base = smoke_world
    model, processor = models.load(build_tiny_vlm(base, tmp_path / "vlm"))
    assert processor is not getattr(processor, "tokenizer", processor)  # a real processor
    prompts = [chat_prompt(processor, q, "", n_images=1) for q in ("3 +4", "2 *3")]
    responses = ["\\boxed{7}", "Wait, \\boxed{6}"]
    images = [[Image.new("RGB", (56, 56), (200, 0, 0))], [Image.new("RGB", (84, 56), (0, 0, 9))]]
    kl = token_kl(model, model, processor, prompts, responses, images)
    n_tokens = sum(len(processor.tokenizer(r, add_special_tokens=False)["input_ids"])
                   for r in responses)
    assert len(kl) == n_tokens and kl["kl"].abs().max() < 1e-6


def test_word_counts_on_crafted_text():
    text = ("Wait, hmm. Hmmm... Alternatively, let me check: I checked it twice. "
            "However, waiting is a mistake; mistakes happen. Awaited checks? No: "
            "a checkerboard counts, a recheck does not.")
    counts = pivotal.count_words(text, ["wait", "hmm", "alternative", "check", "however",
                                        "mistake", "verify"])
    assert counts == {"wait": 2, "hmm": 2, "alternative": 1, "check": 4, "however": 1,
                      "mistake": 2, "verify": 0}


def _responses():
    return pd.DataFrame({
        "model": ["sft", "sft", "sft", "base", "base"],
        "qid": ["a", "b", "c", "a", "b"],
        "level": ["L1", "L5", "L5", "L1", "L5"],
        "text": ["Wait, wait. Alternatively \\boxed{1}", "Hmm, however \\boxed{2}",
                 "\\boxed{3}", "\\boxed{1}", "check \\boxed{9}"],
        "n_tokens": [500, 250, 250, 10, 10],
        "correct": [True, False, True, True, False]})


def test_category_counts_absolute_and_per_1k():
    counts = pivotal.category_counts(_responses(), CATEGORIES).set_index(
        ["model", "level", "word"])
    assert counts.at[("sft", "all", "wait"), "count"] == 2
    assert counts.at[("sft", "all", "wait"), "per_1k_tokens"] == pytest.approx(2.0)
    assert counts.at[("sft", "L1", "wait"), "per_1k_tokens"] == pytest.approx(4.0)
    assert counts.at[("sft", "L5", "hmm"), "count"] == 1
    assert counts.at[("base", "all", "check"), "per_1k_tokens"] == pytest.approx(50.0)
    table = pivotal.category_table(pivotal.category_counts(_responses(), CATEGORIES))
    assert table.loc[("meta", "wait"), "sft"] == 2 and table.loc[("meta", "wait"), "base"] == 0
    assert list(table.index.get_level_values("word")) == ["wait", "hmm", "mistake",
                                                          "alternative", "however", "check"]


def test_use_vs_correctness():
    use = pivotal.use_vs_correctness(_responses(), CATEGORIES).set_index(
        ["model", "level", "category"])
    row = use.loc[("sft", "L5", "meta")]
    assert (row["n_with"], row["accuracy_with"]) == (1, 0.0)
    assert (row["n_without"], row["accuracy_without"]) == (1, 1.0)
    assert use.loc[("sft", "all", "meta"), "n_with"] == 2


def test_word_probabilities_spell_the_word_from_its_tokens():
    """A word's probability is the product over the tokens that spell it (here " Wa" +
    "it", not the "ing" of a longer word), under the model and under the reference."""
    import numpy as np

    tokens = [" Wa", "it", ",", " hmm", " check", "ing", " \\boxed{1}"]
    p = [0.5, 0.8, 0.9, 0.6, 0.7, 0.1, 0.9]
    q = [0.1, 0.5, 0.9, 0.01, 0.2, 0.9, 0.9]
    kl = pd.DataFrame({"response": [0] * 7 + [1] * 2, "position": [*range(7), 0, 1],
                       "token": tokens + [" wait", "!"],
                       "logp_p": np.log(p + [1.0, 0.5]), "logp_q": np.log(q + [0.3, 0.5])})
    words = pivotal.word_probabilities(kl, CATEGORIES).set_index("word")
    assert words.at["wait", "occurrences"] == 2
    assert words.at["wait", "p_model"] == pytest.approx((0.5 * 0.8 + 1.0) / 2)
    assert words.at["wait", "p_reference"] == pytest.approx((0.1 * 0.5 + 0.3) / 2)
    assert words.at["check", "p_model"] == pytest.approx(0.7)  # "ing" is not the word
    assert words.at["mistake", "occurrences"] == 0 and np.isnan(words.at["mistake", "p_model"])
    per = pivotal.category_probabilities(words.reset_index().assign(model="sft")).set_index(
        "category")
    assert per.at["meta", "occurrences"] == 3
    assert per.at["meta", "p_reference"] == pytest.approx((0.05 + 0.3 + 0.01) / 3)
    assert per.at["actions", "p_model"] == pytest.approx(0.7)


@pytest.mark.slow
def test_notebook_07_on_smoke(smoke_series):
    run_stages(smoke_series, "07")
    res = pivotal.load(str(smoke_series), "smoke")
    assert set(res.tokens["model"]) == {"sft", "rl"}
    assert set(res.counts["model"]) == {"base", "sft", "rl"}
    assert (res.tokens["total_kl"] >= 0).all()
    assert res.manifest["upstream"]["sft"].endswith(":careful")
    assert "words per 1k tokens" in pivotal.statement(res, yaml_categories())
    assert set(res.words["model"]) == {"sft", "rl"}
    assert res.words["p_reference"].dropna().between(0, 1).all()


def yaml_categories():
    import yaml

    return yaml.safe_load(SMOKE.read_text())["pivotal"]["categories"]
