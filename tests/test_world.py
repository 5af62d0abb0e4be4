"""The embedded world: the task generator, the tokenizer, one training step, the world cache."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from synergy import length_groups, task, world
from synergy.config import load_profile, profile_section
from synergy.task import (
    BOXED,
    THINK_CLOSE,
    THINK_OPEN,
    check_text,
    eval_questions,
    parse_question,
    random_question,
    train_questions,
)
from synergy.verify import is_correct
from synergy.world import IM_END, WorldConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"




@pytest.fixture(scope="module")
def cfg() -> WorldConfig:
    return WorldConfig.from_profile(SMOKE)


def tiny_cfg(root: Path, **changes) -> WorldConfig:
    """A world small enough to train in well under a second."""
    values = {**WorldConfig.from_profile(SMOKE).to_dict(), "output_root": str(root),
              "hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32,
              "max_positions": 128, "train_steps": 2, "batch_size": 4, "warmup_steps": 1,
              "log_every": 1, "vocab_size": 300, **changes}
    return WorldConfig.from_mapping(values, "test")


# --- the task -------------------------------------------------------------------------------

def left_to_right(text: str) -> int:
    """Evaluate "3 *4 -8" as ((3*4)-8) with Python's own arithmetic."""
    head, *ops = text.split()
    expr = head
    for op in ops:
        expr = f"({expr}{op})"
    return eval(expr)  # noqa: S307 - digits and + - * only


def test_questions_stay_in_range_and_answer_left_to_right():
    rng = random.Random(0)
    for _ in range(2000):
        steps, max_value = rng.randint(1, 8), rng.choice([9, 19, 50])
        q = random_question(rng, steps, max_value)
        assert q.steps == steps and 0 <= q.start <= 9
        assert all(0 <= v <= max_value for v in q.values())
        assert all(1 <= n <= 9 and op in "+-*" for op, n in q.ops)
        assert all(n >= 2 for op, n in q.ops if op == "*")  # no no-op multiplications
        assert q.answer == left_to_right(q.text)
        assert parse_question(q.text) == q
        assert q.qid == parse_question(q.text).qid


def test_question_text_and_traces():
    q = parse_question("3 *4 -8 *3")
    assert q.values() == [12, 4, 12] and q.answer == 12
    assert task.direct_answer(q) == "\\boxed{12}"
    assert task.short_trace(q) == "<think> 3*4=12. 12-8=4. 4*3=12.</think> \\boxed{12}"
    assert task.checked_trace(q) == ("<think> 3*4=12. 12-8=4. 4*3=12. Hmm, let me check: "
                                     "12/3=4.</think> \\boxed{12}")
    assert is_correct(task.short_trace(q), "12") and is_correct(task.direct_answer(q), "12")
    assert not is_correct(task.direct_answer(q), "4")


def test_all_operators_are_used():
    rng = random.Random(1)
    ops = Counter(op for _ in range(300) for op, _ in random_question(rng, 4, 19).ops)
    assert set(ops) == {"+", "-", "*"} and min(ops.values()) > 150


def test_eval_split(cfg):
    qs = eval_questions(cfg)
    assert qs == eval_questions(cfg)  # deterministic
    assert len(qs) == cfg.n_eval_questions == len({q.text for q in qs})
    per_step = Counter(q.steps for q in qs)
    assert sorted(per_step) == list(range(cfg.min_steps, cfg.max_steps + 1))
    assert len(set(per_step.values())) == 1
    other = dataclasses.replace(cfg, eval_seed=cfg.eval_seed + 1,
                                output_root=cfg.output_root)
    assert eval_questions(other) != qs
    # The run's own seed does not move the eval split; eval_seed does.
    assert eval_questions(dataclasses.replace(cfg, seed=99)) == qs
    frame = task.questions_frame(qs)
    assert list(frame.columns) == ["qid", "question", "answer", "steps"]
    assert frame["answer"].tolist() == [str(q.answer) for q in qs]


def test_train_questions_are_disjoint_from_eval(cfg):
    held_out = {q.text for q in eval_questions(cfg)}
    train = train_questions(cfg, 3000, seed=5)
    assert len(train) == 3000
    assert not held_out & {q.text for q in train}
    # Short questions are few, so random draws would hit the eval split often.
    one_step = [random_question(random.Random(i), 1, cfg.max_value).text for i in range(500)]
    assert held_out & set(one_step)
    assert train_questions(cfg, 50, seed=5) == train[:50]
    assert {q.steps for q in train_questions(cfg, 200, seed=5, steps=[2, 3])} == {2, 3}


def test_the_base_sees_long_traces_at_its_long_fraction(cfg):
    held_out = {q.text for q in eval_questions(cfg)}

    def rows(**changes):
        c = dataclasses.replace(cfg, batch_size=2000, **changes)
        return world.training_rows(c, random.Random(3), held_out)

    qs, plain = rows(long_fraction=0.0)
    kinds = Counter("long" if "step by step" in r else "short" if r.startswith(THINK_OPEN)
                    else "direct" for r in plain)
    assert kinds["long"] == 0 and 0.2 < kinds["short"] / 2000 < 0.3
    # The long mode: careful traces (correct, verified) at about long_fraction of answers.
    qs, mixed = rows(long_fraction=0.05)
    long = [(q, r) for q, r in zip(qs, mixed) if "step by step" in r]
    assert 0.03 < len(long) / 2000 < 0.07
    assert all(r.endswith(f"{BOXED}{q.answer}}}") and "verify" in r for q, r in long)
    with pytest.raises(Exception, match="long_fraction"):
        WorldConfig.from_mapping({**cfg.to_dict(), "long_fraction": 0.9}, "test")


def test_a_run_from_before_later_world_keys_still_loads(cfg, tmp_path):
    """A 00_world manifest written before `kind` and `check_fraction` existed reads as the
    world it trained: text, no checked traces (later stages of old runs keep working)."""
    from synergy import stages
    from synergy.files import write_json
    from synergy.runs import Run

    run = Run(str(tmp_path), "old")
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("kind", "check_fraction")}
    run.dir(stages.WORLD).mkdir(parents=True)
    write_json(run.dir(stages.WORLD) / "manifest.json", {"params": old})
    loaded = world.config_of(run)
    assert loaded.kind == "text" and loaded.check_fraction == 0.0
    assert {k: v for k, v in loaded.to_dict().items() if k in old} == old


def test_the_base_checks_a_share_of_its_short_traces(cfg):
    held_out = {q.text for q in eval_questions(cfg)}

    def rows(**changes):
        c = dataclasses.replace(cfg, batch_size=2000, long_fraction=0.0, **changes)
        return world.training_rows(c, random.Random(3), held_out)

    # check_fraction 0 draws nothing more: the questions and answers of a world without it.
    assert rows(check_fraction=0.0) == rows(check_fraction=0.0)
    qs, plain = rows(check_fraction=0.0)
    assert not any("Hmm" in r for r in plain)
    qs, checked = rows(check_fraction=0.3)
    short = [(q, r) for q, r in zip(qs, checked) if r.startswith(THINK_OPEN)]
    hedged = [(q, r) for q, r in short if "Hmm, let me check:" in r]
    assert 0.2 < len(hedged) / len(short) < 0.4
    # The check recovers the value before the last step, and the answer is still right.
    for q, r in hedged:
        prev, op, n, value = q.transitions()[-1]
        assert f"{check_text(prev, op, n, value)}.{THINK_CLOSE}" in r
        assert r.endswith(f"{BOXED}{q.answer}}}") and "step by step" not in r
    assert is_correct(hedged[0][1], str(hedged[0][0].answer))
    with pytest.raises(Exception, match="check_fraction"):
        WorldConfig.from_mapping({**cfg.to_dict(), "check_fraction": 1.5}, "test")


# --- tokenizer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(cfg, tmp_path_factory):
    """Built, saved and reloaded the way later stages load it."""
    from transformers import AutoTokenizer

    built = world.build_tokenizer(cfg.vocab_size, world.tokenizer_corpus(cfg))
    folder = tmp_path_factory.mktemp("tokenizer")
    built.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_tokenizer_round_trips_text(tokenizer, cfg):
    q = eval_questions(cfg)[-1]
    texts = [q.text, task.short_trace(q), task.direct_answer(q), world.REASONING_TEXT,
             "  two  spaces\nand a new line\t tab", "ünïcödé → ∑ 漢字 😀",
             world.chat_prompt(tokenizer, q.text) + task.short_trace(q) + IM_END]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer) <= cfg.vocab_size + 3


def test_digits_and_markers_are_single_tokens(tokenizer):
    def tokens(text):
        return tokenizer.convert_ids_to_tokens(
            tokenizer(text, add_special_tokens=False)["input_ids"])

    assert len(tokens("1234567890")) == 10
    assert len(tokens("19")) == 2
    for marker in (THINK_OPEN, THINK_CLOSE, BOXED, IM_END, world.IM_START, world.PAD):
        assert tokens(marker) == [marker]
    trace = tokens("<think> 3*4=12.</think> \\boxed{12}")
    assert trace[0] == THINK_OPEN and THINK_CLOSE in trace and BOXED in trace
    assert trace[-3:-1] == ["1", "2"]
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == world.PAD
    assert tokenizer.padding_side == "left"


@pytest.mark.parametrize("answer", ["\\boxed{12}",
                                    "<think> 3*4=12. 12-8=4. 4*3=12.</think> \\boxed{12}",
                                    "Let me solve this step by step.\n\\boxed{7}"])
def test_chat_template_masks_the_assistant_turn(tokenizer, answer):
    messages = [{"role": "user", "content": "3 *4 -8 *3"},
                {"role": "assistant", "content": answer}]
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    assert len(ids) == len(mask)
    masked = [i for i, m in zip(ids, mask) if m]
    assert masked == tokenizer(answer + IM_END, add_special_tokens=False)["input_ids"]
    start = mask.index(1)  # one contiguous span, ending with <|im_end|> before the newline
    assert all(mask[start:start + len(masked)]) and sum(mask) == len(masked)
    assert tokenizer.convert_ids_to_tokens(masked[-1]) == IM_END
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False,
                                           add_generation_prompt=True)
    assert tokenizer.decode(ids[:start]) == prompt


def test_encode_pairs_puts_the_loss_on_responses_only(tokenizer):
    prompts = [world.chat_prompt(tokenizer, "3 *4"), world.chat_prompt(tokenizer, "1 +2 +3 +4")]
    responses = ["\\boxed{12}", "<think> 1+2=3. 3+3=6. 6+4=10.</think> \\boxed{10}"]
    ids, mask, labels = world.encode_pairs(tokenizer, prompts, responses)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        kept = labels[row][labels[row] != -100].tolist()
        assert tokenizer.decode(kept) == r + IM_END
        n = int(mask[row].sum())
        assert tokenizer.decode(ids[row, :n].tolist()) == p + r + IM_END
        assert (labels[row, n:] == -100).all()


# --- model and training ---------------------------------------------------------------------

def test_one_training_step_changes_every_weight(tokenizer, tmp_path):
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = world.build_model(cfg, tokenizer)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    log = world.train_base(cfg, model, tokenizer, progress=False)
    assert log["step"].tolist() == [0, 1]
    assert all(math.isfinite(x) for x in log["loss"])
    assert log["loss"].iloc[0] > 0
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []
    assert not model.training


@pytest.mark.parametrize("lengths, groups", [
    ([25, 80, 24, 26, 81, 25], [[2, 0, 5, 3], [1, 4]]),  # direct answers apart from traces
    ([30, 30, 30], [[0, 1, 2]]),                           # equal rows: nothing to save
    ([10], [[0]]),
    ([5, 50], [[0], [1]]),
])
def test_length_buckets_pad_least(lengths, groups):
    assert length_groups.length_buckets(lengths, 2) == groups


def test_split_batch_has_the_loss_and_gradient_of_the_padded_batch(tokenizer, tmp_path):
    cfg = tiny_cfg(tmp_path)
    rng = random.Random(3)
    qs = [random_question(rng, rng.randint(1, 6), cfg.max_value) for _ in range(12)]
    responses = [task.short_trace(q) if i % 4 == 0 else task.direct_answer(q)
                 for i, q in enumerate(qs)]
    batch = world.training_batch(cfg, tokenizer, qs, responses)
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert len(length_groups.length_buckets(lengths, 2)) == 2 and max(lengths) > 2 * min(lengths)
    grads, losses = [], []
    for split in (False, True):
        torch.manual_seed(0)
        model = world.build_model(cfg, tokenizer)
        losses.append(length_groups.backward_mean_loss(model, batch, groups=2 if split else 1))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6)


def test_cosine_lr():
    assert world.cosine_lr(0, 100, 10) == pytest.approx(0.1)
    assert world.cosine_lr(9, 100, 10) == pytest.approx(1.0)
    assert world.cosine_lr(10, 100, 10) == pytest.approx(1.0)
    assert world.cosine_lr(100, 100, 10) == pytest.approx(0.1)
    assert world.cosine_lr(55, 100, 10) == pytest.approx(0.55)


def test_ensure_world_reuses_identical_params_and_retrains_otherwise(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    path, reused = world.ensure_world(cfg, progress=False)
    assert not reused and path.name == cfg.world_id()
    assert (path / "model" / "config.json").exists() and (path / "train_log.csv").exists()

    real_train = world.train_base

    def no_training(*args, **kwargs):
        raise AssertionError("an identical world must not be retrained")

    monkeypatch.setattr(world, "train_base", no_training)
    renamed = tiny_cfg(tmp_path, run_name="elsewhere")  # where a run is stored is no param
    assert renamed.world_id() == cfg.world_id()
    assert world.ensure_world(renamed, progress=False) == (path, True)

    monkeypatch.setattr(world, "train_base", real_train)
    changed = tiny_cfg(tmp_path, train_steps=3)
    assert changed.world_id() != cfg.world_id()
    assert tiny_cfg(tmp_path, seed=1).world_id() != cfg.world_id()
    other, reused = world.ensure_world(changed, progress=False)
    assert not reused and other != path and other.parent == path.parent
    assert (path / "world.json").exists()  # the first world is kept

    from synergy.generation import HFEngine

    engine = HFEngine.from_path(other / "model", device="cpu")  # loads like any saved model
    assert engine.model.config.hidden_size == 16


# --- bench/world_candidates.py: a candidate world is the profile with world keys changed --

def test_world_candidates_change_only_the_world_and_name_the_run_by_its_changes():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "world_candidates", ROOT / "bench" / "world_candidates.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    profile = load_profile(ROOT / "params" / "tiny.yaml")
    changes = bench.parse_set("long_fraction=0.06,max_steps=8")
    assert changes == {"long_fraction": 0.06, "max_steps": 8}
    name, candidate = bench.candidate_profile(profile, changes, "world")
    assert name == "world-long_fraction0.06-max_steps8"
    assert candidate["run"]["run_name"] == name and profile["run"]["run_name"] == "tiny"
    assert candidate["world"] == {**profile["world"], "long_fraction": 0.06, "max_steps": 8}
    assert {k: v for k, v in candidate.items() if k not in ("run", "world")} == \
        {k: v for k, v in profile.items() if k not in ("run", "world")}
    WorldConfig.from_mapping(profile_section(candidate, "world", "candidate"), "candidate")
    assert bench.candidate_profile(profile, {}, "world")[0] == "world"
    with pytest.raises(SystemExit, match=r"unknown world keys \['long_frac'\]"):
        bench.candidate_profile(profile, {"long_frac": 0.1}, "world")
    with pytest.raises(SystemExit, match="key=value"):
        bench.parse_set("long_fraction")
