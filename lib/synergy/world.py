"""The embedded world: a tiny base model trained here on the synthetic task (`synergy.task`).

The base "instruct" model (a real Qwen2 architecture, ~1M parameters) is trained from
scratch to answer in the paper's format, mostly directly (`\\boxed{12}`), sometimes with a
short trace (`<think> 3*4=12. 12-8=4. 4*3=12.</think> \\boxed{12}`) and rarely with a careful
long trace (`long_fraction`: the long-CoT mode a real instruct model has at a low prior),
stopped early enough that its pass rates spread over all five difficulty levels. A trained
world is cached by its params (`world_dir`) and shared by every run that asks for it.

The image world (`kind: image`) is the same task for a vision-language model: the starting
value is only in an image, drawn as a count of marks, and the text reads "? *4 -8 *3"; a
model that ignores the image can only guess it (`task.blind_accuracy`: the best such model's
score). Its base is a tiny Qwen2.5-VL (`synergy.vlm`) trained here the same way, and
00_world writes the task in the real data sets' schemas (MathVision jsonl + images,
MM-Eureka queries, Eureka-Distill traces), which the profile names as `"<schema>:world"`
sources (see the image-world section below).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import pandas as pd

from synergy import reuse, stages, vlm
from synergy.config import StageConfig
from synergy.files import atomic_path, clean_interrupted, read_json, write_text
from synergy.generation import HFEngine, SamplingSpec, chat_prompt
from synergy.length_groups import backward_mean_loss
from synergy.progress import progress_bar
from synergy.runs import Run, StageResult, set_seed, stage_run
from synergy.task import (BOXED, THINK_CLOSE, THINK_OPEN, Question, blind_accuracy, careful_trace,
                          checked_trace, direct_answer, eval_questions, image_text, image_trace,
                          questions_frame, random_question, short_trace, start_image,
                          train_questions)
from synergy.verify import is_correct
from synergy.vlm import tiny_vlm

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, with the assistant turn inside {% generation %} so TRL can mask the loss to it.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Words of real long-CoT traces, so later teachers' traces tokenize compactly.
REASONING_TEXT = (
    "Let me solve this step by step. First, we start with the number. Second, next, then, "
    "finally. However, because of that, let me consider and verify. Wait, hmm, maybe I made "
    "a mistake. Alternatively, let me check again: yes, that is right. So the answer is. "
    "Now we have. Therefore. Actually, no. I think. Let me double-check the result. "
    "The question asks. Recall that. This means. Good. Hold on. Perhaps. Overall."
)

# World keys added after worlds were trained and cached, at the value those worlds trained
# with: an old run's manifest reads as that value (`MANIFEST_DEFAULTS`), and a world at that
# value keeps the id it had before the key (`WorldConfig.world_id`: its cache stays valid).
ADDED_KEYS = {"check_fraction": 0.0}

# Packages whose version changes the trained world (its reuse key).
WORLD_CODE = ("torch", "transformers", "tokenizers")
# Version of `train_base`'s arithmetic, also in the reuse key: bump it when a change trains a
# different model from the same params (2: length-bucketed micro-batches, `backward_mean_loss`;
# 3: three length groups instead of two, `TRAIN_GROUPS`).
TRAINER_VERSION = 3


@dataclasses.dataclass
class WorldConfig(StageConfig):
    SECTION = "world"
    MANIFEST_DEFAULTS = {"kind": "text", **ADDED_KEYS}  # runs before kinds were text worlds

    min_steps: int
    max_steps: int
    max_value: int
    n_eval_questions: int
    eval_seed: int
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    train_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    trace_fraction: float
    long_fraction: float
    check_fraction: float
    log_every: int
    kind: Literal["text", "image"]

    def validate(self) -> None:
        self.require(1 <= self.min_steps <= self.max_steps, "min_steps",
                     "must be >= 1 and <= max_steps")
        self.require(self.max_value >= 9, "max_value", "must be >= 9 (single-digit starts)")
        self.require(self.n_eval_questions >= 1, "n_eval_questions", "must be >= 1")
        self.require(self.vocab_size >= 300, "vocab_size", "must be >= 300 (256 bytes + merges)")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_positions", "train_steps", "batch_size", "log_every"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require(self.hidden_size % self.num_heads == 0, "hidden_size",
                     f"must be divisible by num_heads ({self.num_heads})")
        # Rotary embeddings rotate pairs of dimensions: each head needs an even width.
        self.require(self.hidden_size // self.num_heads % 2 == 0, "hidden_size",
                     f"/ num_heads ({self.num_heads}) must be even (rotary embeddings)")
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(0 <= self.warmup_steps <= self.train_steps, "warmup_steps",
                     "must be in 0..train_steps")
        self.require(0.0 <= self.trace_fraction <= 1.0, "trace_fraction", "must be in [0, 1]")
        self.require(0.0 <= self.long_fraction <= 1.0 - self.trace_fraction, "long_fraction",
                     f"must be in [0, 1 - trace_fraction ({self.trace_fraction})]")
        self.require(0.0 <= self.check_fraction <= 1.0, "check_fraction", "must be in [0, 1]")
        self.require(self.kind == "text" or self.long_fraction == 0, "long_fraction",
                     "must be 0 in the image world (its long traces are 02's image traces)")
        self.require(self.kind == "text" or (self.hidden_size // self.num_heads) % 16 == 0,
                     "hidden_size", "must give heads of a multiple of 16 dimensions in the "
                     "image world (Qwen2.5-VL's multimodal rotary sections)")

    def world_id(self) -> str:
        """Content id of everything that shapes the trained world: every param but where
        the run lives, and the versions of the code that trains it."""
        params = {k: v for k, v in reuse.own_params(self).items()
                  if k not in ADDED_KEYS or v != ADDED_KEYS[k]}
        return "world-" + reuse.key({**params, "trainer": TRAINER_VERSION}, code=WORLD_CODE)[:12]


# --- tokenizer and model ------------------------------------------------------------------

def build_tokenizer(vocab_size: int, corpus: Iterable[str]):
    """Byte-level BPE with one token per digit; reloadable with `AutoTokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=[PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([THINK_OPEN, THINK_CLOSE, BOXED])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE, padding_side="left",
                                   model_max_length=4096)


def tokenizer_corpus(cfg: WorldConfig, n: int = 3000) -> list[str]:
    qs = train_questions(cfg, n, seed=cfg.seed + 1)
    turns = [f"{IM_START}user\n{q.text}{IM_END}\n{IM_START}assistant\n" for q in qs[:200]]
    images = [image_trace(q) for q in qs[:200]] if cfg.kind == "image" else []
    return turns + [short_trace(q) for q in qs] + [direct_answer(q) for q in qs] \
        + [REASONING_TEXT] * 200 + images


def build_model(cfg: WorldConfig, tokenizer):
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


def encode_pairs(tokenizer, prompts: list[str], responses: list[str]):
    """Right-padded input ids, attention mask and labels with the loss on responses only."""
    import torch

    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r + IM_END for r in responses], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(r) for p, r in zip(p_ids, r_ids))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    labels = torch.full((len(prompts), width), -100)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        seq = p + r
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(p):len(seq)] = torch.tensor(r)
        mask[i, :len(seq)] = 1
    return ids, mask, labels


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Multiplier: linear warm-up, then cosine down to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_base(cfg: WorldConfig, model, tokenizer,
               on_log: Callable[[dict[str, Any]], None] | None = None,
               progress: bool = True) -> pd.DataFrame:
    """Train the base from scratch on fresh random questions; returns the loss log.
    `tokenizer` is the image world's processor when `cfg.kind` is "image"."""
    import torch

    rng = random.Random(cfg.seed)
    held_out = {q.text for q in eval_questions(cfg)}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.train_steps, cfg.warmup_steps))
    model.train()
    rows, t0 = [], time.perf_counter()
    bar = progress_bar(range(cfg.train_steps), desc="training base", unit="step",
                       disable=not progress)
    for step in bar:
        qs, responses = training_rows(cfg, rng, held_out)
        opt.zero_grad()
        loss = backward_mean_loss(model, training_batch(cfg, tokenizer, qs, responses),
                                  groups=TRAIN_GROUPS if cfg.kind == "text" else 1)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.train_steps - 1:
            row = {"step": step, "loss": loss, "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            # refresh=False: the iterator draws the bar (a refresh from here would print
            # the step count tqdm last synced, not this step's).
            bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            if on_log:
                on_log(row)
    model.eval()
    return pd.DataFrame(rows)


def training_rows(cfg: WorldConfig, rng: random.Random,
                  held_out: set[str]) -> tuple[list[Question], list[str]]:
    """One training batch's questions (none of `held_out`'s texts) and target responses: a
    careful long trace with probability `long_fraction` (the long-CoT mode a real instruct
    base already has at a low prior), a short trace with probability `trace_fraction` (of
    which `check_fraction` end with a hedged check of the last step: the base's rare
    meta-thinking words), else the direct answer. With `long_fraction` and `check_fraction`
    0 the draws are those of a world without them."""
    qs = []
    while len(qs) < cfg.batch_size:
        q = random_question(rng, rng.randint(cfg.min_steps, cfg.max_steps), cfg.max_value)
        if q.text not in held_out:
            qs.append(q)
    responses = []
    for q in qs:
        u = rng.random()
        if u < cfg.long_fraction:
            responses.append(careful_trace(q, rng))
        elif u < cfg.long_fraction + cfg.trace_fraction:
            # No draw at check_fraction 0: worlds without checks keep their random stream.
            checked = cfg.check_fraction > 0 and rng.random() < cfg.check_fraction
            responses.append(checked_trace(q) if checked else short_trace(q))
        else:
            responses.append(direct_answer(q))
    return qs, responses


# Length groups of one world training step: the world's batches are 3/4 direct answers
# (~25 tokens), 1/4 short traces (~80) and, at `long_fraction`, a few careful long traces.
# bench/world_buckets.py on the default profile (2 threads): 1 group 0.574 s per step, 2
# groups 0.210, 3 groups 0.151, 4 groups 0.150.
TRAIN_GROUPS = 3


def training_batch(cfg: WorldConfig, processing, qs: list[Question],
                   responses: list[str]) -> dict:
    """Model inputs and response-only labels of one batch, as the world's kind shows it."""
    if cfg.kind == "image":
        return vlm.encode_pairs(processing, [chat_prompt(processing, image_text(q), "", 1)
                                             for q in qs], responses,
                                [[start_image(q.start)] for q in qs])
    ids, mask, labels = encode_pairs(processing, [chat_prompt(processing, q.text) for q in qs],
                                     responses)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def world_dir(cfg: WorldConfig) -> Path:
    """Content-addressed home of a trained world, shared by every run with these params."""
    return Path(cfg.output_root) / "cache" / cfg.world_id()


def ensure_world(cfg: WorldConfig, progress: bool = True,
                 fallback: Path | None = None) -> tuple[Path, bool]:
    """Train and save the world unless a whole, identical one exists. Returns (dir, reused).

    The shared cache folder is checked first, then `fallback` (a run's own `00_world/`, so a
    run folder moved without the cache still reuses its world); a damaged one is set aside."""
    out = world_dir(cfg)
    clean_interrupted(out.parent, recursive=False)
    if reuse.reusable(out / WORLD_RECORD, cfg.world_id(), out / "model"):
        return out, True
    if fallback is not None and reuse.reusable(fallback / WORLD_RECORD, cfg.world_id(),
                                               fallback / "model"):
        copy_into(fallback, out, names=("model", WORLD_RECORD, "train_log.csv"))
        return out, True
    set_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.vocab_size, tokenizer_corpus(cfg))
    if cfg.kind == "image":
        model, tokenizer = build_image_model(cfg, tokenizer)  # the processor from here on
    else:
        model = build_model(cfg, tokenizer)
    t0 = time.perf_counter()
    log = train_base(cfg, model, tokenizer, progress=progress)
    seconds = time.perf_counter() - t0
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        log.to_csv(tmp / "train_log.csv", index=False)
        reuse.seal(tmp / WORLD_RECORD, cfg.world_id(), tmp / "model", world_id=cfg.world_id(),
                   params=cfg.to_dict(), train_seconds=seconds,
                   n_parameters=sum(p.numel() for p in model.parameters()))
    return out, False


WORLD_RECORD = "world.json"


# --- the stage: the world in this run ----------------------------------------------------

@dataclasses.dataclass
class WorldResult(StageResult):
    model_path: Path    # this run's copy of the base model
    world: dict         # world.json of the trained world (params, train time, size)


def greedy_accuracy_by_steps(model_dir: str | Path, cfg: WorldConfig) -> pd.DataFrame:
    """A quick look at the trained base: greedy accuracy and trace use per step count."""
    engine = HFEngine.from_path(model_dir)
    qs = eval_questions(cfg)
    frame = questions_frame(qs, cfg.kind)
    images = list(frame["images"]) if cfg.kind == "image" else None
    out = engine.generate([chat_prompt(engine.template, q, "", len(images[0]) if images else 0)
                           for q in frame["question"]], [q.qid for q in qs], 0, 1,
                          SamplingSpec(0.0, 1.0, 0, 64), cfg.seed, images=images)
    frame = frame.assign(
        correct=[is_correct(c[0].text, str(q.answer)) for q, c in zip(qs, out)],
        uses_trace=[THINK_OPEN in c[0].text for c in out],
        tokens=[c[0].n_tokens for c in out])
    return frame.groupby("steps")[["correct", "uses_trace", "tokens"]].mean().reset_index()


def copy_into(src: Path, dst: Path, names: tuple[str, ...] | None = None) -> Path:
    """`src` folder (only `names` of it when given) copied to `dst` atomically, hard-linking
    files where the file system allows; a no-op when `dst` holds the same content."""
    import os
    import shutil

    parts = [src / n for n in names] if names else sorted(src.iterdir())
    if dst.is_dir() and sorted(p.name for p in dst.iterdir() if not p.name.startswith(".")) \
            == sorted(p.name for p in parts) \
            and all(reuse.tree_digest(dst / p.name) == reuse.tree_digest(p) for p in parts):
        return dst

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with atomic_path(dst) as tmp:
        tmp.mkdir()
        for part in parts:
            if part.is_dir():
                shutil.copytree(part, tmp / part.name, copy_function=link)
            else:
                link(part, tmp / part.name)
    return dst


def run(cfg: WorldConfig, progress: bool = True) -> WorldResult:
    """Train (or reuse) the world; this run keeps its own copy of the base model, its
    training log and record in `00_world/`, so the run folder stands on its own."""
    with stage_run(cfg, stages.WORLD, artifact_id=cfg.world_id()) as ctx:
        path, reused = ensure_world(cfg, progress=progress, fallback=ctx.dir)
        meta = read_json(path / WORLD_RECORD)
        model = copy_into(path / "model", ctx.dir / "model")
        for name in (WORLD_RECORD, "train_log.csv"):
            write_text(ctx.dir / name, (path / name).read_text())
        ctx.set_models({"base": model}, main="base")
        if cfg.kind == "image":
            files = write_task_files(cfg, ctx.dir / TASK_FOLDER)
            ctx.record(task_files={k: ctx.run.relative(v) for k, v in files.items()},
                       blind_accuracy=blind_accuracy(eval_questions(cfg), cfg.max_value))
        ctx.record(reused=reused, train_seconds=meta["train_seconds"],
                   n_parameters=meta["n_parameters"], kind=cfg.kind)
    return WorldResult(ctx.manifest, ctx.dir, model, meta)


def load(output_root: str, run_name: str) -> WorldResult:
    """This run's world, as `run` returned it."""
    r = Run(output_root, run_name)
    manifest = r.manifest(stages.WORLD)
    return WorldResult(manifest, r.dir(stages.WORLD), r.resolve(manifest["model_paths"]["base"]),
                       {"params": manifest["params"], "train_seconds": manifest["train_seconds"],
                        "n_parameters": manifest["n_parameters"]})


def config_of(run) -> WorldConfig:
    """The world config a run used (from its 00_world manifest)."""
    return WorldConfig.from_manifest(run.manifest(stages.WORLD)["params"], stages.WORLD.name)


def task_examples(cfg: WorldConfig, per_step: int = 1) -> pd.DataFrame:
    """One eval question per step count with both answer styles the base was trained on."""
    qs = eval_questions(cfg)
    picks = [next(q for q in qs if q.steps == s) for s in range(cfg.min_steps, cfg.max_steps + 1)
             for _ in range(per_step)]
    return pd.DataFrame({"steps": [q.steps for q in picks], "question": [q.text for q in picks],
                         "direct answer": [direct_answer(q) for q in picks],
                         "short trace": [short_trace(q) for q in picks]})


def loss_figure(stage_dir: str | Path):
    """The base's training loss (input: the 00_world folder of a run, or a world folder)."""
    import plotly.express as px

    log = pd.read_csv(Path(stage_dir) / "train_log.csv")
    return px.line(log, x="step", y="loss", hover_data=["lr", "seconds"], log_y=True,
                   title="Base model training loss (answer tokens only)")


# --- the image world: the starting value only in the image --------------------------------
#
# The task's image variant is `task`'s last section. The base is `synergy.vlm.tiny_vlm` with
# this section's sizes, trained like the text base. 00_world writes the task in the real sets'
# schemas into `00_world/task/` (TASK_FILES); `data.world_source` finds them for a profile
# that names a source "world" (e.g. `benchmark: "mathvision:world"`).

TASK_FOLDER = "task"
TASK_FILES = {"mathvision": "mathvision_test.jsonl", "mm_eureka": "mm_eureka_train.jsonl",
              "eureka_distill": "eureka_distill_train.jsonl"}
TRAIN_FILE_FACTOR = 4  # the RL and trace files hold this many times n_eval_questions rows


def build_image_model(cfg: WorldConfig, tokenizer):
    """(tiny Qwen2.5-VL with this config's language-model sizes, its processor)."""
    return tiny_vlm(tokenizer, cfg.seed, hidden_size=cfg.hidden_size,
                    num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                    intermediate_size=cfg.intermediate_size, max_positions=cfg.max_positions)


def _chat(text: str, image: str, reply: str | None = None) -> str:
    """A `message` field as MM-Eureka writes it: JSON chat turns, images as file:// paths."""
    import json

    turns = [{"role": "user", "content": [{"type": "image", "image": f"file://{image}"},
                                          {"type": "text", "text": text}]}]
    if reply is not None:
        turns.append({"role": "assistant", "content": reply})
    return json.dumps(turns)


def write_task_files(cfg: WorldConfig, folder: str | Path) -> dict[str, Path]:
    """The image world in the real sets' schemas, in `folder` (written atomically):
    MathVision jsonl (the eval split: id, question, options, image, answer, solution,
    level = steps capped at 5, subject), MM-Eureka queries and Eureka-Distill-style traces
    (fresh questions, disjoint from the eval split), the images in `images/`. Returns the
    path of each file by schema (TASK_FILES)."""
    import json

    evals = eval_questions(cfg)
    train = train_questions(cfg, TRAIN_FILE_FACTOR * cfg.n_eval_questions, seed=cfg.seed + 31)
    train = list({q.qid: q for q in train}.values())  # one row per id, as the loaders want

    def jsonl(rows: list[dict]) -> str:
        return "".join(json.dumps(r) + "\n" for r in rows)

    def image(q: Question) -> str:
        return f"images/start-{q.start}.png"

    with atomic_path(Path(folder)) as tmp:
        (tmp / "images").mkdir(parents=True)
        for value in range(10):
            start_image(value).save(tmp / f"images/start-{value}.png")
        (tmp / TASK_FILES["mathvision"]).write_text(jsonl([
            {"id": q.qid, "question": image_text(q), "options": [], "image": image(q),
             "answer": str(q.answer), "solution": image_trace(q), "level": min(q.steps, 5),
             "subject": "arithmetic"} for q in evals]))
        (tmp / TASK_FILES["mm_eureka"]).write_text(jsonl([
            {"id": q.qid, "message": _chat(image_text(q), image(q)), "answer": str(q.answer)}
            for q in train]))
        (tmp / TASK_FILES["eureka_distill"]).write_text(jsonl([
            {"id": q.qid, "message": _chat(image_text(q), image(q), image_trace(q)),
             "answer": str(q.answer)} for q in train]))
    return {schema: Path(folder) / name for schema, name in TASK_FILES.items()}
