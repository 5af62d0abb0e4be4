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
the student itself, as in Eureka-Distill); `api` does the same with a model behind any
OpenAI-compatible endpoint (`api_url`, `api_model`, the key in the environment variable
`api_key_env`: a vLLM server with a reasoning model, or a hosted one, as the paper's s1
traces came from Gemini and DeepSeek-R1), through the same sample cache; `traces` loads a
trace set through `synergy.data`: s1K / s1K-1.1 (`trace_set` s1k-deepseek or s1k-gemini) or
Eureka-Distill with its images (`eureka-distill`), from a local file, a hub dataset id, or
"world" (the image world's Eureka-Distill-style file).

The training questions (the "pool") are drawn fresh from the world, disjoint from the eval
split, and each gets a difficulty level from the base model's pass rate with the same
settings as `01_stratify`, so SFT data can be chosen by difficulty.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from synergy import data, generation, judge, stages, stratify, task, trace_sets, world
from synergy.config import StageConfig
from synergy.evaluation import sample_table, to_dataset
from synergy.files import load_dataset_dir, save_dataset, write_text
from synergy.generation import SamplingSpec, VllmDtype, engine_for, user_text
from synergy.runs import Run, StageResult, stage_run
from synergy.verify import format_ok, is_correct
from synergy.task import (
    BOXED,
    THINK_CLOSE,
    THINK_OPEN,
    Question,
    apply_op,
    careful_trace,
    parse_question,
    slip,
)

TEACHERS = ("careful", "lowquality", "sampled", "api", "traces")
# Teachers that sample a model per question and keep the shortest correct answer.
SAMPLING_TEACHERS = ("sampled", "api")
PIVOTAL_WORDS = ("first", "next", "then", "however", "because", "let", "verify", "wait", "hmm",
                 "maybe", "alternatively", "check")


@dataclasses.dataclass
class DistillConfig(StageConfig):
    SECTION = "distill"

    train_questions: str
    n_questions: int
    level_pool: bool
    teachers: list[Literal["careful", "lowquality", "sampled", "api", "traces"]]
    lowquality_error_rate: float
    teacher_model: str
    teacher_samples: int
    teacher_temperature: float
    teacher_top_p: float
    teacher_top_k: int
    teacher_max_new_tokens: int
    backend: Literal["hf", "vllm"]
    batch_rows: int
    vllm_dtype: VllmDtype
    vllm_memory: float
    trace_source: str
    trace_set: Literal["s1k-deepseek", "s1k-gemini", "eureka-distill"]
    api_url: str
    api_model: str
    api_key_env: str
    api_timeout: float     # seconds per request (the judge of `synergy eval` uses these too)
    api_retries: int
    api_max_failures: int  # failed attempts in all before the stage stops
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
        self.require(0 <= self.vllm_memory < 1, "vllm_memory", "must be in [0, 1) (0: auto)")
        self.require("traces" not in self.teachers or self.trace_source != "", "trace_source",
                     "must name a file or hub dataset when teachers include 'traces'")
        for key in ("api_url", "api_model"):
            self.require("api" not in self.teachers or getattr(self, key).strip() != "", key,
                         "must be set when teachers include 'api'")
        self.require(self.api_url == "" or self.api_url.startswith(("http://", "https://")),
                     "api_url", "must be an http(s) URL up to /v1")
        self.require(self.api_timeout > 0, "api_timeout", "must be > 0 seconds")
        self.require(self.api_retries >= 0, "api_retries", "must be >= 0")
        self.require(self.api_max_failures >= 1, "api_max_failures", "must be >= 1")
        pooled = sorted(set(self.teachers) & {"careful", "lowquality", *SAMPLING_TEACHERS})
        self.require(not pooled or self.train_questions != "", "train_questions",
                     f"must be 'world' or a file: teachers {pooled} write traces for it")
        world_only = sorted(set(self.teachers) & {"careful", "lowquality"})
        self.require(not world_only or self.train_questions == "world", "train_questions",
                     f"must be 'world': teachers {world_only} write traces for the embedded "
                     "world only")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")

    @property
    def teacher_spec(self):
        return SamplingSpec(self.teacher_temperature, self.teacher_top_p, self.teacher_top_k,
                            self.teacher_max_new_tokens)


# --- programmatic teachers (pure) --------------------------------------------------------

CONNECTORS = ("First,", "Next,", "Then,", "Then,", "Next,", "Then,", "Next,", "Then,")


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
    drawn = sample_table(engine, model_path, pool, cfg.teacher_spec,
                         n_samples=cfg.teacher_samples, seed=cfg.seed, cache_root=cache_root,
                         prompt_suffix=prompt_suffix, progress=progress)
    return [shortest_correct(d) for d in drawn]


def api_engine(cfg: DistillConfig):
    """The `api` teacher: `api_model` at `api_url` behind the sampling-engine interface (the
    key read from `api_key_env` at request time, never stored)."""
    endpoint = judge.Endpoint(cfg.api_url, cfg.api_model, cfg.api_key_env)
    # Every answer cached as it arrives: a stage stopped by a failing endpoint resumes.
    client = judge.Client(endpoint, Run.of(cfg).root / "cache" / "api",
                          **judge.client_settings(cfg))
    return judge.ChatEngine(client, cfg.batch_rows)


def trace_set(cfg: DistillConfig, run=None) -> pd.DataFrame:
    """The `traces` teacher's rows: an s1K / s1K-1.1 set (`trace_set` picks the teacher:
    DeepSeek-R1 = the paper's s1.1-R1, Gemini = s1-Gemini2), or Eureka-Distill with its
    images (`trace_source` "world": the image world's Eureka-Distill-style file of `run`)."""

    if cfg.trace_set == "eureka-distill":
        rows = trace_sets.load_eureka_distill(data.world_source(cfg.trace_source, run,
                                                                "eureka_distill")).table
    else:
        rows = trace_sets.load_s1(cfg.trace_source, teacher=cfg.trace_set.split("-", 1)[1]).table
        rows = rows.drop(columns="images")  # text-only sets
    return rows.assign(response=[m[-1]["content"] for m in rows["messages"]]).drop(
        columns="messages")


# --- the pool and the dataset --------------------------------------------------------------

def question_pool(cfg: DistillConfig, run) -> tuple[pd.DataFrame, str]:
    """Training questions (qid, question, answer[, steps]) and their upstream id."""

    if cfg.train_questions == data.WORLD:
        wcfg = world.config_of(run)
        # Offset seed: the base trained on seed-driven questions; these are a fresh draw.
        qs = task.train_questions(wcfg, cfg.n_questions, seed=cfg.seed + 7919)
        pool = task.questions_frame(qs, wcfg.kind).drop_duplicates("qid").reset_index(drop=True)
        return pool, f"{wcfg.world_id()}:train:{cfg.seed + 7919}:{cfg.n_questions}"
    return data.load_table(cfg.train_questions), f"file:{Path(cfg.train_questions).resolve()}"


def level_pool(pool: pd.DataFrame, base_path: str, run, batch_rows: int,
               progress: bool = True) -> pd.DataFrame:
    """Pass rate and level of each pool question under the base, with 01_stratify's settings."""
    scfg = stratify.config_of(run)
    engine = generation.make_engine(base_path, scfg.backend, batch_rows, scfg.vllm_dtype,
                                    scfg.vllm_memory)
    leveled = stratify.level_questions(engine, base_path, pool, scfg, run.samples_cache,
                                       progress)
    return pool.assign(base_pass_rate=leveled["pass_rate"].to_numpy(),
                       level=leveled["level"].to_numpy())


def trace_rows(pool: pd.DataFrame, responses: list[str | None], teacher: str, source: str,
               tokenizer) -> pd.DataFrame:
    """Chat-format rows for the responses that exist (None: the teacher gave nothing)."""
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
    user = [user_text(q, prompt_suffix) for q in df["question"]]
    return df.assign(messages=[[{"role": "user", "content": u},
                                {"role": "assistant", "content": r}]
                               for u, r in zip(user, df["response"])])


@dataclasses.dataclass
class DistillResult(StageResult):
    traces: pd.DataFrame  # one row per teacher x question (chat `messages`, level, length)
    pool: pd.DataFrame    # the training questions with the base's pass rate and level


def run(cfg: DistillConfig, progress: bool = True) -> DistillResult:
    """Build every teacher's traces; saves `traces/` (a `datasets` dataset) and the manifest."""
    from transformers import AutoTokenizer

    with stage_run(cfg, stages.DISTILL) as ctx:
        scfg = stratify.config_of(ctx.run)
        ctx.needs(stages.STRATIFY)
        base = ctx.model(scfg.model, "base")
        suffix = scfg.prompt_suffix
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        timings = {}
        needs_pool = bool(set(cfg.teachers) & {"careful", "lowquality", *SAMPLING_TEACHERS})
        sampler = (ctx.model(cfg.teacher_model, "teacher_model",
                             lengths={"teacher_max_new_tokens": cfg.teacher_max_new_tokens})
                   if "sampled" in cfg.teachers else None)
        pool, ctx.upstream["questions"] = question_pool(cfg, ctx.run) if needs_pool else (
            pd.DataFrame(columns=["qid", "question", "answer"]), "none")
        if cfg.level_pool and needs_pool:
            t = time.perf_counter()
            pool = level_pool(pool, base.path, ctx.run, cfg.batch_rows, progress)
            timings["level_pool"] = time.perf_counter() - t
        else:
            pool = pool.assign(base_pass_rate=np.nan, level=0)
        frames = []
        for teacher in cfg.teachers:
            t = time.perf_counter()
            if teacher in ("careful", "lowquality"):
                responses = programmatic_traces(pool, teacher, cfg.seed,
                                                cfg.lowquality_error_rate)
                frames.append(trace_rows(pool, responses, teacher, "programmatic", tokenizer))
            elif teacher == "sampled":
                engine = engine_for(cfg, sampler.path)
                kept = sampled_traces(engine, pool, cfg, ctx.run.samples_cache, sampler.path,
                                      suffix, progress)
                frames.append(trace_rows(pool, [k["text"] if k else None for k in kept],
                                         teacher, f"shortest correct of {cfg.teacher_samples}",
                                         tokenizer))
            elif teacher == "api":
                engine = api_engine(cfg)
                ctx.upstream["api_teacher"] = engine.id
                kept = sampled_traces(engine, pool, cfg, ctx.run.samples_cache, engine.id,
                                      suffix, progress)
                frames.append(trace_rows(pool, [k["text"] if k else None for k in kept],
                                         teacher, f"shortest correct of {cfg.teacher_samples} "
                                         f"from {cfg.api_model}", tokenizer))
                timings["api_calls"] = engine.client.calls
            else:
                table = trace_set(cfg, ctx.run).assign(level=0, base_pass_rate=np.nan)
                ctx.upstream["traces"] = f"{cfg.trace_set}:{cfg.trace_source}"
                frames.append(trace_rows(table.drop(columns="response"), list(table["response"]),
                                         teacher, cfg.trace_set, tokenizer))
            timings[teacher] = time.perf_counter() - t
        traces = with_messages(pd.concat(frames, ignore_index=True), suffix)
        if "images" in traces:  # teachers without images (programmatic) have none
            traces["images"] = [x if isinstance(x, list) else [] for x in traces["images"]]
        save_dataset(to_dataset(traces), ctx.dir / "traces")
        write_text(ctx.dir / "pool.csv", pool.to_csv(index=False))
        ctx.record(timings=timings,
                   rows={t: int((traces["teacher"] == t).sum()) for t in cfg.teachers},
                   pool_levels={f"L{k}": int(v) for k, v in
                                pool["level"].value_counts().sort_index().items()})
    return DistillResult(ctx.manifest, ctx.dir, traces, pool)


def load(output_root: str, run_name: str) -> DistillResult:
    """What `run` returned, read back from disk."""
    r = Run(output_root, run_name)
    folder = r.dir(stages.DISTILL)
    return DistillResult(r.manifest(stages.DISTILL), folder,
                         load_dataset_dir(folder / "traces").to_pandas(),
                         pd.read_csv(folder / "pool.csv"))


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


def sampled_yield(traces: pd.DataFrame, pool: pd.DataFrame,
                  teacher: str = "sampled") -> pd.DataFrame:
    """Per level: pool questions, kept by a sampling teacher ("sampled" or "api"), and the
    yield (kept / pool)."""
    kept = traces[traces["teacher"] == teacher].groupby("level").size()
    total = pool.groupby("level").size()
    table = pd.DataFrame({"pool": total, "kept": kept.reindex(total.index, fill_value=0)})
    table["yield"] = table["kept"] / table["pool"]
    return table.rename(index=lambda v: f"L{v}").rename_axis("level").reset_index()


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


def statement(traces: pd.DataFrame, pool: pd.DataFrame) -> str:
    """What the traces of this run look like, computed from them (markdown)."""
    table = teacher_table(traces)
    lines = [f"- **{r.teacher}**: {r.rows} traces, {r.mean_tokens:.0f} tokens on average, "
             f"{r.correct:.0%} with the right final answer, {r.formatted:.0%} in the paper's "
             f"format, {r.pivotal_words_per_trace:.1f} pivotal words per trace."
             for r in table.itertuples()]
    if "sampled" in set(traces["teacher"]) and pool["level"].gt(0).any():
        y = sampled_yield(traces, pool).set_index("level")["yield"]
        lines.append("- Self-distillation keeps a trace for " + ", ".join(
            f"{lv} {v:.0%}" for lv, v in y.items()) + " of the pool questions: the hard "
            "levels, where long CoT should help, are the ones it covers least.")
    if "api" in set(traces["teacher"]) and pool["level"].gt(0).any():
        y = sampled_yield(traces, pool, "api").set_index("level")["yield"]
        lines.append("- The API teacher keeps a trace for " + ", ".join(
            f"{lv} {v:.0%}" for lv, v in y.items()) + " of the pool questions.")
    if {"careful", "lowquality"} <= set(traces["teacher"]):
        t = table.set_index("teacher")
        lines.append(f"- The low-quality teacher writes {t.at['lowquality', 'mean_tokens'] / max(t.at['careful', 'mean_tokens'], 1e-9):.1f}x "
                     f"the careful teacher's tokens and is right {t.at['lowquality', 'correct']:.0%} "
                     f"of the time against {t.at['careful', 'correct']:.0%}.")
    return "\n".join(lines)
