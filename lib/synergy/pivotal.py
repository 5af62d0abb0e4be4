"""Pivotal tokens: which tokens does SFT (or RL) change the probability of, and do they matter?

For a model's own responses, both that model and a reference (the base) score every
response token; the KL divergence between their next-token distributions at each position,
summed by token string, shows the tokens where the two disagree most (the paper's "pivotal
tokens"). The paper's categories (structural, connectors, actions, meta-thinking) are then
counted in every model's evaluation responses, per level and per 1k tokens, and compared
with correctness: do responses that use them get more answers right?
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd

from synergy import evaluation, models, stages, stratify, training
from synergy.evaluation import EvaluatingConfig
from synergy.files import write_text
from synergy.runs import Run, StageResult, stage_run
from synergy.scoring import token_kl


@dataclasses.dataclass
class PivotalConfig(EvaluatingConfig):
    SECTION = "pivotal"

    reference_model: str
    models: list[str]
    categories: dict[str, list[str]]
    kl_responses: int
    kl_batch_size: int
    top_tokens: int

    def validate(self) -> None:
        super().validate()
        self.require(len(self.models) >= 1, "models", "must name at least one model")
        self.require(len(self.categories) >= 1 and all(
            len(words) >= 1 and all(re.fullmatch(r"[A-Za-z']+", w) for w in words)
            for words in self.categories.values()), "categories",
            "must map each category to a non-empty list of plain words")
        for key in ("kl_responses", "kl_batch_size", "top_tokens"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")


# --- token-level KL (scored by `scoring.token_kl`) -----------------------------------------

def kl_by_token(kl: pd.DataFrame) -> pd.DataFrame:
    """Per token string: occurrences, total and mean KL, share of all KL, mean log-ratio.

    A positive mean log-ratio (log p - log q) means the response's model favours the token
    more than the reference does. Sorted by total KL, largest first.
    """
    key = kl["token"].str.strip().replace("", "␣")
    # Sums in float64: float32 shares of a few hundred tokens miss 1 by ~1e-7.
    kl = kl.astype({c: "float64" for c in ("kl", "logp_p", "logp_q")})
    out = (kl.assign(token=key, log_ratio=kl["logp_p"] - kl["logp_q"])
           .groupby("token").agg(count=("kl", "size"), total_kl=("kl", "sum"),
                                 mean_kl=("kl", "mean"), mean_log_ratio=("log_ratio", "mean"))
           .sort_values("total_kl", ascending=False).reset_index())
    return out.assign(kl_share=out["total_kl"] / max(out["total_kl"].sum(), 1e-12))


# --- categories of pivotal words ----------------------------------------------------------

def word_pattern(word: str) -> re.Pattern:
    """A word and the words it starts (alternative -> alternatively; check -> checking)."""
    return re.compile(rf"\b{re.escape(word)}\w*", re.IGNORECASE)


def count_words(text: str, words: list[str]) -> dict[str, int]:
    return {w: len(word_pattern(w).findall(text)) for w in words}


def responses_frame(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per sampled response: model, qid, level, text, n_tokens, correct."""
    parts = []
    for name, df in results.items():
        long = df[["qid", "level", "samples", "lengths", "correct"]].explode(
            ["samples", "lengths", "correct"])
        parts.append(pd.DataFrame({"model": name, "qid": long["qid"].values,
                                   "level": long["level"].map(lambda v: f"L{v}").values,
                                   "text": long["samples"].astype(str).values,
                                   "n_tokens": long["lengths"].astype(int).values,
                                   "correct": long["correct"].astype(bool).values}))
    return pd.concat(parts, ignore_index=True)


def _with_all(responses: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([responses, responses.assign(level="all")], ignore_index=True)


def category_counts(responses: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
    """Per model, level (and "all"), category and word: count and count per 1k tokens."""
    rows = []
    for (model, level), part in _with_all(responses).groupby(["model", "level"]):
        tokens = int(part["n_tokens"].sum())
        for category, words in categories.items():
            counts = {w: 0 for w in words}
            for text in part["text"]:
                for w, n in count_words(text, words).items():
                    counts[w] += n
            for w, n in counts.items():
                rows.append({"model": model, "level": level, "category": category, "word": w,
                             "count": n, "tokens": tokens,
                             "per_1k_tokens": 1000 * n / max(tokens, 1)})
    return pd.DataFrame(rows)


def category_table(counts: pd.DataFrame, level: str = "all",
                   value: str = "count") -> pd.DataFrame:
    """The paper's Table 5 layout: one row per (category, word), one column per model."""
    part = counts[counts["level"] == level]
    order = list(dict.fromkeys(zip(part["category"], part["word"])))
    table = part.pivot_table(index=["category", "word"], columns="model", values=value,
                             aggfunc="sum", sort=False).reindex(order)
    return table.astype(int) if value == "count" else table


def word_probabilities(kl: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
    """Where a model writes a category word, how likely was it under that model and under
    the reference? One row per category and word: occurrences in the scored responses and
    the mean probability of writing the word there (the product of the probabilities of
    the tokens that spell the word itself, not a suffix such as "-ing") under the model
    (`p_model`) and the reference (`p_reference`), from a `token_kl` frame.

    A reference probability well above zero means the model raised a habit the reference
    already has in that context (a change of mode); near zero, it wrote words the
    reference would not (an invention). Words never written get NaN probabilities."""
    spans: dict[str, list[tuple[float, float]]] = {w: [] for ws in categories.values()
                                                    for w in ws}
    for _, part in kl.groupby("response", sort=False):
        tokens = part["token"].astype(str).tolist()
        ends = np.cumsum([len(t) for t in tokens])
        starts = ends - np.array([len(t) for t in tokens])
        text = "".join(tokens)
        lp, lq = part["logp_p"].to_numpy(float), part["logp_q"].to_numpy(float)
        for word in spans:
            for m in word_pattern(word).finditer(text):
                cover = (starts < m.start() + len(word)) & (ends > m.start())
                spans[word].append((float(np.exp(lp[cover].sum())),
                                    float(np.exp(lq[cover].sum()))))
    rows = []
    for category, words in categories.items():
        for w in words:
            found = np.array(spans[w], float).reshape(-1, 2)
            rows.append({"category": category, "word": w, "occurrences": len(found),
                         "p_model": found[:, 0].mean() if len(found) else np.nan,
                         "p_reference": found[:, 1].mean() if len(found) else np.nan})
    return pd.DataFrame(rows)


def category_probabilities(words: pd.DataFrame) -> pd.DataFrame:
    """`word_probabilities` rows (with a `model` column) summed up per model and category:
    occurrences and the occurrence-weighted mean probabilities."""
    w = words.dropna(subset=["p_model"])
    w = w.assign(pm=w["p_model"] * w["occurrences"], pq=w["p_reference"] * w["occurrences"])
    out = w.groupby(["model", "category"], sort=False, as_index=False)[
        ["occurrences", "pm", "pq"]].sum()
    return out.assign(p_model=out.pop("pm") / out["occurrences"],
                      p_reference=out.pop("pq") / out["occurrences"])


def use_vs_correctness(responses: pd.DataFrame,
                       categories: dict[str, list[str]]) -> pd.DataFrame:
    """Per model, level and category: accuracy of responses with vs without its words."""
    rows = []
    for category, words in categories.items():
        pattern = re.compile("|".join(word_pattern(w).pattern for w in words), re.IGNORECASE)
        uses = responses["text"].map(lambda t: bool(pattern.search(t)))
        for (model, level), part in _with_all(responses.assign(uses=uses)).groupby(
                ["model", "level"]):
            yes, no = part[part["uses"]], part[~part["uses"]]
            rows.append({"model": model, "level": level, "category": category,
                         "n_with": len(yes), "accuracy_with": yes["correct"].mean()
                         if len(yes) else np.nan, "n_without": len(no),
                         "accuracy_without": no["correct"].mean() if len(no) else np.nan})
    return pd.DataFrame(rows)


# --- figures ------------------------------------------------------------------------------

def top_tokens_figure(tokens: pd.DataFrame, n: int):
    """Top-n tokens by total KL, one panel per compared model (input: saved kl_tokens)."""
    import html

    import plotly.express as px

    top = tokens.groupby("model", group_keys=False).head(n)
    # Plotly reads labels as a subset of HTML: escape model tokens such as "</think>".
    top = top.assign(token=top["token"].astype(str).map(html.escape))
    return px.bar(top, x="total_kl", y="token", color="model", facet_col="model",
                  orientation="h", hover_data=["count", "mean_kl", "mean_log_ratio"],
                  title=f"Top {n} tokens by total KL to the reference, on each model's "
                        "own responses").update_yaxes(matches=None, autorange="reversed",
                                                      showticklabels=True)


def category_figure(counts: pd.DataFrame):
    """Pivotal words per 1k tokens by category and model, per level."""
    import plotly.express as px

    per_cat = (counts.groupby(["model", "level", "category"], as_index=False)
               .agg(count=("count", "sum"), tokens=("tokens", "first")))
    per_cat["per_1k_tokens"] = 1000 * per_cat["count"] / per_cat["tokens"].clip(lower=1)
    return px.bar(per_cat, x="level", y="per_1k_tokens", color="model", barmode="group",
                  facet_col="category", hover_data=["count", "tokens"],
                  title="Pivotal words per 1k response tokens, by category and level")


# --- the stage ----------------------------------------------------------------------------

@dataclasses.dataclass
class PivotalResult(StageResult):
    per_level: pd.DataFrame   # evaluation.per_level of the reference and compared models
    counts: pd.DataFrame      # category_counts
    use: pd.DataFrame         # use_vs_correctness
    tokens: pd.DataFrame      # kl_by_token per compared model (column `model`)
    responses: pd.DataFrame | None = None  # responses_frame (only after `run`)
    words: pd.DataFrame | None = None      # word_probabilities per compared model (None:
    #   a run saved before they were scored)


def run(cfg: PivotalConfig, progress: bool = True) -> PivotalResult:
    """Evaluate reference and models, count categories, score KL; saves CSVs + manifest."""
    with stage_run(cfg, stages.PIVOTAL) as ctx:
        specs = dict(zip(models.labels([cfg.reference_model, *cfg.models]),
                         [cfg.reference_model, *cfg.models]))
        paths = {name: ctx.model(spec, name).path for name, spec in specs.items()}
        reference = next(iter(specs))
        questions = stratify.benchmark_questions(
            stratify.load(cfg.output_root, cfg.run_name).levels)
        suffix = stratify.config_of(ctx.run).prompt_suffix
        results = {name: evaluation.evaluate_for(cfg, path, questions, suffix, progress)
                   for name, path in paths.items()}
        table = evaluation.save_results(ctx.dir, results, record=ctx.record)
        responses = responses_frame(results)
        counts = category_counts(responses, cfg.categories)
        use = use_vs_correctness(responses, cfg.categories)
        write_text(ctx.dir / "category_counts.csv", counts.to_csv(index=False))
        write_text(ctx.dir / "pivotal_use.csv", use.to_csv(index=False))

        ref_model, _ = models.load_for_scoring(paths[reference])
        rng = np.random.default_rng(cfg.seed)
        tokens, words = [], []
        for name in [n for n in paths if n != reference]:
            model, processor = models.load_for_scoring(paths[name])
            rows = responses_frame({name: results[name]}).merge(
                questions.drop(columns=["level"]), on="qid")
            rows = rows.iloc[np.sort(rng.permutation(len(rows))[:cfg.kl_responses])]
            prompts, images = evaluation.build_prompts(SimpleNamespace(template=processor),
                                                       rows, suffix)
            kl = token_kl(model, ref_model, processor, prompts,
                          list(rows["text"]), images, cfg.kl_batch_size)
            tokens.append(kl_by_token(kl).assign(model=name, reference=reference))
            words.append(word_probabilities(kl, cfg.categories).assign(
                model=name, reference=reference))
            del model  # the next model takes its place on the device
            training.release_memory()
        tokens = pd.concat(tokens, ignore_index=True)
        write_text(ctx.dir / "kl_tokens.csv", tokens.to_csv(index=False))
        words = pd.concat(words, ignore_index=True)
        write_text(ctx.dir / "word_probabilities.csv", words.to_csv(index=False))
        ctx.record(reference=reference, compared=list(paths))
    return PivotalResult(ctx.manifest, ctx.dir, table, counts, use, tokens, responses, words)


def load(output_root: str, run_name: str) -> PivotalResult:
    """The saved tables of this stage (for the report)."""
    r = Run(output_root, run_name)
    folder = r.dir(stages.PIVOTAL)
    return PivotalResult(r.manifest(stages.PIVOTAL), folder,
                         pd.read_csv(folder / "per_level.csv"),
                         pd.read_csv(folder / "category_counts.csv"),
                         pd.read_csv(folder / "pivotal_use.csv"),
                         pd.read_csv(folder / "kl_tokens.csv", keep_default_na=False),
                         words=pd.read_csv(folder / "word_probabilities.csv")
                         if (folder / "word_probabilities.csv").exists() else None)


def statement(res: PivotalResult, categories: dict[str, list[str]]) -> str:
    """What the pivotal-token analysis of this run shows (markdown)."""
    counts = res.counts[res.counts["level"] == "all"]
    per_cat = counts.groupby(["category", "model"]).agg(n=("count", "sum"),
                                                       tokens=("tokens", "first"))
    per_1k = (1000 * per_cat["n"] / per_cat["tokens"].clip(lower=1)).unstack("model")
    lines = []
    for category in categories:
        if category in per_1k.index:
            row = per_1k.loc[category]
            lines.append(f"- **{category}** words per 1k tokens: "
                         + ", ".join(f"{m} {v:.2f}" for m, v in row.items()) + ".")
    for model, part in res.tokens.groupby("model", sort=False):
        top = part.sort_values("total_kl", ascending=False).head(5)
        lines.append(f"- Tokens where **{model}** differs most from the reference: "
                     + ", ".join(f"`{t}` ({s:.0%})" for t, s in zip(top["token"],
                                                                    top["kl_share"]))
                     + " of its total KL.")
    if res.words is not None:
        for r in category_probabilities(res.words).itertuples():
            lines.append(f"- Where **{r.model}** writes **{r.category}** words "
                         f"({r.occurrences} times in its scored responses), it gives them "
                         f"probability {r.p_model:.2f} on average; the reference "
                         f"{r.p_reference:.2f}.")
    return "\n".join(lines)
