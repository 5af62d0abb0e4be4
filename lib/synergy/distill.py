"""Long chain-of-thought traces for SFT: programmatic teachers, a sampled teacher, trace files.

The paper's SFT sets are long reasoning traces from strong models: s1.1-R1 (careful, long,
correct), s1-Gemini2 (verbose, lower quality) and Eureka-Distill (the shortest correct of 8
samples from an SFT model). In the embedded world two programmatic teachers play the first
two roles, with the pivotal words of real long-CoT text (first / next / then / however /
because / let / verify / wait / hmm / maybe / alternatively / check, and self-corrections):

- `careful`: the chain of steps in the base's own short-trace format (catching the odd slip
  at once), the answer, then a check of every step and the answer again; always right.
- `lowquality`: restates the question again and again and muses between steps, and with
  probability `lowquality_error_rate` makes an arithmetic slip it does not catch.

`sampled` draws `teacher_samples` responses per question from a model through the
generation engine and keeps the shortest correct one (self-distillation when the model is
the student itself, as in Eureka-Distill); `traces` loads an s1K-style set (question,
thinking trajectory, answer) from a local file or a hub dataset id.

The training questions (the "pool") are drawn fresh from the world, disjoint from the eval
split, and each gets a difficulty level from the base model's pass rate with the same
settings as `01_stratify`, so SFT data can be chosen by difficulty.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from synergy.config import StageConfig
from synergy.world import BOXED, THINK_CLOSE, THINK_OPEN, Question, apply_op, parse_question

STAGE = "02_distill"
TEACHERS = ("careful", "lowquality", "sampled", "traces")
PIVOTAL_WORDS = ("first", "next", "then", "however", "because", "let", "verify", "wait", "hmm",
                 "maybe", "alternatively", "check")


@dataclasses.dataclass
class DistillConfig(StageConfig):
    SECTION = "distill"

    train_questions: str
    n_questions: int
    level_pool: bool
    teachers: list[Literal["careful", "lowquality", "sampled", "traces"]]
    lowquality_error_rate: float
    teacher_model: str
    teacher_samples: int
    teacher_temperature: float
    teacher_top_p: float
    teacher_top_k: int
    teacher_max_new_tokens: int
    backend: Literal["hf", "vllm"]
    batch_rows: int
    trace_source: str
    trace_columns: list[str]
    n_examples: int

    def validate(self) -> None:
        self.require(self.n_questions >= 1, "n_questions", "must be >= 1")
        self.require(len(self.teachers) >= 1 and len(set(self.teachers)) == len(self.teachers),
                     "teachers", "must name at least one teacher, each once")
        self.require(0.0 <= self.lowquality_error_rate <= 1.0, "lowquality_error_rate",
                     "must be in [0, 1]")
        self.require(self.teacher_samples >= 1, "teacher_samples", "must be >= 1")
        self.require_sampling("teacher_")
        self.require(self.teacher_max_new_tokens >= 1, "teacher_max_new_tokens", "must be >= 1")
        self.require(self.batch_rows >= 1, "batch_rows", "must be >= 1")
        self.require(len(self.trace_columns) == 3, "trace_columns",
                     "must name three columns: question, thinking, answer")
        self.require("traces" not in self.teachers or self.trace_source != "", "trace_source",
                     "must name a file or hub dataset when teachers include 'traces'")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")

    @property
    def teacher_spec(self):
        from synergy.generation import SamplingSpec

        return SamplingSpec(self.teacher_temperature, self.teacher_top_p, self.teacher_top_k,
                            self.teacher_max_new_tokens)


# --- programmatic teachers (pure) --------------------------------------------------------

CONNECTORS = ("First,", "Next,", "Then,", "Then,", "Next,", "Then,", "Next,", "Then,")


def check_text(value: int, op: str, n: int, new: int) -> str:
    """An inverse operation that recovers the previous value (local, no lookup needed)."""
    if op == "+":
        return f"{new}-{n}={value}"
    if op == "-":
        return f"{new}+{n}={value}"
    return f"{new}/{n}={value}"


def slip(value: int, rng: random.Random, max_value: int = 19) -> int:
    """A wrong value near the right one, still in range."""
    options = [v for v in (value - 2, value - 1, value + 1, value + 2) if 0 <= v <= max_value]
    return rng.choice(options)


def careful_trace(q: Question, rng: random.Random, slip_rate: float = 0.1) -> str:
    """Correct, structured long CoT: the chain of steps, the answer, then verification.

    The chain is the base's own short-trace format, so SFT changes the style rather than
    teaching a new skill; a slip is caught at once ("Wait, no"). After the answer comes
    the reflection of real long-CoT traces (doubt, re-checking the last step, the answer
    again), which only needs copying from nearby text.
    """
    chain, value = [], q.start
    for op, n in q.ops:
        new = apply_op(value, op, n)
        if rng.random() < slip_rate:
            chain.append(f"{value}{op}{n}={slip(new, rng)}. Wait, no: {value}{op}{n}={new}.")
        else:
            chain.append(f"{value}{op}{n}={new}.")
        value = new
    op, n = q.ops[-1]
    prev = q.values()[-2] if q.steps > 1 else q.start
    return (f"{THINK_OPEN} Let me solve it step by step. First, {' '.join(chain)} So the "
            f"answer is {value}. Hmm, maybe I made a mistake. Let me verify the last step: "
            f"{prev}{op}{n}={value}. Yes, that is right, because {check_text(prev, op, n, value)}. "
            f"Then the answer is {value}.{THINK_CLOSE} {BOXED}{value}}}")


MUSINGS = ("Hmm, maybe.", "Hmm, let me think.", "Maybe that is right.",
           "Alternatively, I could start over.", "Wait, what was the question?",
           "I think this is right.")


def lowquality_trace(q: Question, rng: random.Random, error_rate: float = 0.3,
                     max_value: int = 19) -> tuple[str, int]:
    """Verbose, repetitive CoT that never rewrites what is left and sometimes slips.

    Returns (trace, final answer written): the answer is wrong when a slip went uncaught.
    """
    parts = [f"{THINK_OPEN} Okay, so the question is {q.text}. Hmm, let me think."]
    bad_step = rng.randrange(q.steps) if rng.random() < error_rate else -1
    value = q.start
    for i, (op, n) in enumerate(q.ops):
        new = apply_op(value, op, n)
        if i == bad_step:
            new = slip(new, rng, max_value)
        conn = CONNECTORS[i % len(CONNECTORS)]
        restate = f"The question is {q.text}. " if i % 2 == 0 else ""
        parts.append(f"{restate}{conn} {value}{op}{n}={new}. So we have {new}. "
                     f"{rng.choice(MUSINGS)}")
        value = new
    parts.append(f"Let me check again: the question is {q.text}. Yes, that is right. "
                 f"So the answer is {value}."
                 f"{THINK_CLOSE} {BOXED}{value}}}")
    return " ".join(parts), value


def programmatic_traces(pool: pd.DataFrame, teacher: str, seed: int,
                        error_rate: float = 0.3) -> list[str]:
    """One trace per pool question (world questions only)."""
    rng = random.Random(f"{seed}:{teacher}")
    out = []
    for text in pool["question"]:
        q = parse_question(text)
        if teacher == "careful":
            out.append(careful_trace(q, rng))
        else:
            out.append(lowquality_trace(q, rng, error_rate)[0])
    return out


# --- sampled teacher (self-distillation) --------------------------------------------------

def shortest_correct(samples: list[dict]) -> dict | None:
    """The shortest correct sample (ties: the earliest), or None when none is correct."""
    correct = [s for s in samples if s["correct"]]
    return min(correct, key=lambda s: s["n_tokens"]) if correct else None


def sampled_traces(engine, pool: pd.DataFrame, cfg: DistillConfig, cache_root: Path,
                   model_path: str, prompt_suffix: str,
                   progress: bool = True) -> list[dict | None]:
    """Draw `teacher_samples` per question; keep the shortest correct (None if none)."""
    from synergy.evaluation import cache_for, sample_questions
    from synergy.generation import chat_prompt

    prompts = [chat_prompt(engine.tokenizer, q, prompt_suffix) for q in pool["question"]]
    drawn = sample_questions(engine, prompts, list(pool["answer"]), cfg.teacher_spec,
                             n_samples=cfg.teacher_samples, round_size=cfg.teacher_samples,
                             seed=cfg.seed, cache=cache_for(cache_root, model_path,
                                                            cfg.teacher_spec, cfg.seed),
                             progress=progress)
    return [shortest_correct(d) for d in drawn]


# --- trace files (s1K style) --------------------------------------------------------------

def load_trace_table(source: str, columns: list[str]) -> pd.DataFrame:
    """question / thinking / answer from a local file or folder or a hub id (split `train`)."""
    from synergy import data
    from synergy.runs import ArtifactError

    df, _, _ = data.read_source(source, "train")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ArtifactError(f"trace_source '{source}': missing column(s) {missing}; "
                            f"have {list(df.columns)}")
    q, think, ans = columns
    return pd.DataFrame({"question": df[q].astype(str), "thinking": df[think].astype(str),
                         "answer": df[ans].astype(str)})


def trace_response(thinking: str, answer: str) -> str:
    """The paper's format from a trajectory and a final answer/attempt."""
    from synergy.verify import extract_boxed

    boxed = extract_boxed(answer)
    final = boxed if boxed is not None else answer.strip()
    return f"{THINK_OPEN}{thinking.strip()}{THINK_CLOSE} {BOXED}{final}}}"


# --- the pool and the dataset --------------------------------------------------------------

def question_pool(cfg: DistillConfig) -> tuple[pd.DataFrame, str]:
    """Training questions (qid, question, answer[, steps]) and their upstream id."""
    from synergy import data

    if cfg.train_questions == data.WORLD:
        from synergy.world import questions_frame, train_questions

        wcfg = data.world_config(cfg.output_root, cfg.run_name)
        # Offset seed: the base trained on seed-driven questions; these are a fresh draw.
        qs = train_questions(wcfg, cfg.n_questions, seed=cfg.seed + 7919)
        pool = questions_frame(qs).drop_duplicates("qid").reset_index(drop=True)
        return pool, f"{wcfg.world_id()}:train:{cfg.seed + 7919}:{cfg.n_questions}"
    return data.load_table(cfg.train_questions), f"file:{Path(cfg.train_questions).resolve()}"


def stratify_manifest(output_root: str, run_name: str) -> dict:
    """01_stratify's manifest: the base model, its sampling settings and prompt suffix."""
    from synergy import data
    from synergy.runs import read_manifest
    from synergy.stratify import STAGE as STRATIFY

    return read_manifest(data.run_root(output_root, run_name) / STRATIFY)


def level_pool(pool: pd.DataFrame, cfg: DistillConfig, cache_root: Path,
               progress: bool = True) -> pd.DataFrame:
    """Pass rate and level of each pool question under the base, with 01_stratify's settings."""
    from synergy.evaluation import cache_for, sample_questions
    from synergy.generation import chat_prompt, make_engine
    from synergy.stratify import StratifyConfig, assign_levels, level_decided

    manifest = stratify_manifest(cfg.output_root, cfg.run_name)
    scfg = StratifyConfig.from_mapping(manifest["params"], "01_stratify manifest")
    model_path = manifest["model_path"]
    engine = make_engine(model_path, scfg.backend, cfg.batch_rows)
    prompts = [chat_prompt(engine.tokenizer, q, scfg.prompt_suffix) for q in pool["question"]]
    stop = (functools.partial(level_decided, n_total=scfg.n_samples,
                              min_correct=scfg.level_min_correct) if scfg.early_stop else None)
    drawn = sample_questions(engine, prompts, list(pool["answer"]), scfg.spec,
                             n_samples=scfg.n_samples, round_size=scfg.round_size,
                             seed=scfg.seed, cache=cache_for(cache_root, model_path, scfg.spec,
                                                             scfg.seed),
                             stop=stop, progress=progress)
    n_correct = [sum(s["correct"] for s in d) for d in drawn]
    return pool.assign(base_pass_rate=[c / len(d) for c, d in zip(n_correct, drawn)],
                       level=assign_levels(n_correct, scfg.level_min_correct))


def trace_rows(pool: pd.DataFrame, responses: list[str | None], teacher: str, source: str,
               tokenizer) -> pd.DataFrame:
    """Chat-format rows for the responses that exist (None: the teacher gave nothing)."""
    from synergy.verify import format_ok, is_correct

    keep = [i for i, r in enumerate(responses) if r is not None]
    part = pool.iloc[keep].reset_index(drop=True)
    texts = [responses[i] for i in keep]
    return part.assign(
        teacher=teacher, source=source, response=texts,
        n_tokens=[len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        if texts else [],
        correct=[is_correct(t, a) for t, a in zip(texts, part["answer"])],
        formatted=[format_ok(t) for t in texts])


def with_messages(df: pd.DataFrame, prompt_suffix: str) -> pd.DataFrame:
    user = [f"{q} {prompt_suffix}".strip() for q in df["question"]]
    return df.assign(messages=[[{"role": "user", "content": u},
                                {"role": "assistant", "content": r}]
                               for u, r in zip(user, df["response"])])


def run(cfg: DistillConfig, progress: bool = True) -> pd.DataFrame:
    """Build every teacher's traces; saves `traces/` (a `datasets` dataset) and the manifest."""
    import datasets

    from synergy import data
    from synergy.evaluation import samples_cache_root
    from synergy.generation import make_engine
    from synergy.runs import now, save_dataset, set_seed, stage_dir, write_manifest, write_text

    started, t0 = now(), time.perf_counter()
    set_seed(cfg.seed)
    out = stage_dir(cfg, STAGE)
    cache_root = samples_cache_root(cfg.output_root, cfg.run_name)
    strat = stratify_manifest(cfg.output_root, cfg.run_name)
    base_path, base_id = strat["model_path"], strat["upstream"]["model"]
    suffix = strat["params"]["prompt_suffix"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    timings = {}
    needs_pool = bool(set(cfg.teachers) & {"careful", "lowquality", "sampled"})
    if needs_pool and cfg.train_questions == "":
        raise ValueError("distill.train_questions: teachers careful / lowquality / sampled "
                         "need questions ('world' or a file); it is empty")
    pool, pool_id = question_pool(cfg) if needs_pool else (
        pd.DataFrame(columns=["qid", "question", "answer"]), "none")
    if cfg.level_pool and needs_pool:
        t = time.perf_counter()
        pool = level_pool(pool, cfg, cache_root, progress)
        timings["level_pool"] = time.perf_counter() - t
    else:
        pool = pool.assign(base_pass_rate=np.nan, level=0)
    is_world = cfg.train_questions == "world"
    frames, upstream = [], {"base": base_id, "questions": pool_id}
    for teacher in cfg.teachers:
        t = time.perf_counter()
        if teacher in ("careful", "lowquality"):
            if not is_world:
                raise ValueError(f"distill.teachers: '{teacher}' writes traces for the embedded "
                                 f"world only; train_questions is '{cfg.train_questions}'")
            responses = programmatic_traces(pool, teacher, cfg.seed, cfg.lowquality_error_rate)
            frames.append(trace_rows(pool, responses, teacher, "programmatic", tokenizer))
        elif teacher == "sampled":
            path, model_id = data.resolve_model(cfg.teacher_model, cfg.output_root, cfg.run_name)
            upstream["teacher_model"] = model_id
            engine = make_engine(path, cfg.backend, cfg.batch_rows)
            kept = sampled_traces(engine, pool, cfg, cache_root, path, suffix, progress)
            frames.append(trace_rows(pool, [k["text"] if k else None for k in kept], teacher,
                                     f"shortest correct of {cfg.teacher_samples}", tokenizer))
        else:
            table = load_trace_table(cfg.trace_source, cfg.trace_columns)
            upstream["traces"] = cfg.trace_source
            table = table.assign(qid=[f"t{i}" for i in range(len(table))], level=0,
                                 base_pass_rate=np.nan)
            responses = [trace_response(th, a) for th, a in zip(table["thinking"],
                                                                table["answer"])]
            frames.append(trace_rows(table.drop(columns="thinking"), responses, teacher,
                                     cfg.trace_source, tokenizer))
        timings[teacher] = time.perf_counter() - t
    traces = with_messages(pd.concat(frames, ignore_index=True), suffix)
    save_dataset(datasets.Dataset.from_pandas(traces, preserve_index=False), out / "traces")
    write_text(out / "pool.csv", pool.to_csv(index=False))
    write_manifest(out, cfg, started=started, upstream=upstream,
                   extra={"seconds": time.perf_counter() - t0, "timings": timings,
                          "rows": {t: int((traces["teacher"] == t).sum()) for t in cfg.teachers},
                          "pool_levels": {f"L{k}": int(v) for k, v in
                                          pool["level"].value_counts().sort_index().items()}})
    return traces


def load_traces(output_root: str, run_name: str) -> pd.DataFrame:
    from synergy.runs import load_dataset_dir

    return load_dataset_dir(Path(output_root) / run_name / STAGE / "traces").to_pandas()


# --- analysis (pure) ----------------------------------------------------------------------

def teacher_table(traces: pd.DataFrame) -> pd.DataFrame:
    """Per teacher: rows, mean/median tokens, share correct, share well formatted."""
    g = traces.groupby("teacher", sort=False)
    return pd.DataFrame({"rows": g.size(), "mean_tokens": g["n_tokens"].mean(),
                         "median_tokens": g["n_tokens"].median(),
                         "correct": g["correct"].mean(), "formatted": g["formatted"].mean(),
                         "pivotal_words_per_trace": g["response"].apply(
                             lambda s: s.map(pivotal_count).mean())}).reset_index()


def pivotal_count(text: str) -> int:
    words = text.lower().replace(",", " ").replace(".", " ").replace(":", " ").split()
    return sum(w in PIVOTAL_WORDS for w in words)


def sampled_yield(traces: pd.DataFrame, pool: pd.DataFrame) -> pd.DataFrame:
    """Per level: pool questions, kept by the sampled teacher, and the yield (kept / pool)."""
    kept = traces[traces["teacher"] == "sampled"].groupby("level").size()
    total = pool.groupby("level").size()
    table = pd.DataFrame({"pool": total, "kept": kept.reindex(total.index, fill_value=0)})
    table["yield"] = table["kept"] / table["pool"]
    return table.rename(index=lambda v: f"L{v}").rename_axis("level").reset_index()


def load_pool(output_root: str, run_name: str) -> pd.DataFrame:
    from synergy.runs import ArtifactError

    path = Path(output_root) / run_name / STAGE / "pool.csv"
    if not path.exists():
        raise ArtifactError(f"{path}: not found; run 02_distill first")
    return pd.read_csv(path)


def length_figure(traces: pd.DataFrame):
    import plotly.express as px

    df = traces.assign(level=traces["level"].map(lambda v: f"L{v}")).sort_values("level")
    return px.box(df, x="level", y="n_tokens", color="teacher", points=False,
                  title="Trace length (tokens) per difficulty level, by teacher")


def examples(traces: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """A few traces per teacher (text raw)."""
    picks = [part.sample(min(n, len(part)), random_state=seed)
             for _, part in traces.groupby("teacher", sort=False)]
    if not picks:
        return pd.DataFrame()
    cols = [c for c in ("teacher", "level", "question", "answer", "correct", "n_tokens",
                        "response") if c in traces.columns]
    return pd.concat(picks)[cols].reset_index(drop=True)


def summary(traces: pd.DataFrame) -> dict[str, Any]:
    return {t: {"rows": int(len(p)), "mean_tokens": float(p["n_tokens"].mean()),
                "correct": float(p["correct"].mean())}
            for t, p in traces.groupby("teacher", sort=False)}
