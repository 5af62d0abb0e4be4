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
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from synergy.evaluation import EvaluatingConfig

STAGE = "07_pivotal_tokens"


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


# --- token-level KL -----------------------------------------------------------------------

def load_scorer(path: str | Path):
    """(model, processor) for scoring: a VLM's processor, else the tokenizer (shared loader)."""
    from synergy.generation import HFEngine

    engine = HFEngine.from_path(path)
    return engine.model, engine.processor or engine.tokenizer


def _encode(processor, prompt: str, response: str, images: list | None) -> tuple[dict, int]:
    """Inputs of prompt + response for one row, and where the response starts."""
    if not images:
        tok = getattr(processor, "tokenizer", processor)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"]
        return {"input_ids": p + r}, len(p)
    # Images expand into many tokens inside the prompt; the processor knows how many.
    full = processor(text=[prompt + response], images=list(images), return_tensors="pt")
    start = processor(text=[prompt], images=list(images), return_tensors="pt")["input_ids"]
    return dict(full), start.shape[1]


def _logprobs(model, batch: list[tuple[dict, int]], pad_id: int):
    """Log-softmax over the vocabulary at each response position, per row (list of tensors)."""
    import torch

    if len(batch) == 1 and "pixel_values" in batch[0][0]:
        enc, start = batch[0]
        with torch.no_grad():
            logits = model(**{k: v.to(model.device) for k, v in enc.items()}).logits[0]
        return [torch.log_softmax(logits[start - 1:-1].float(), -1).cpu()]
    width = max(len(e["input_ids"]) for e, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (e, _) in enumerate(batch):
        ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, :len(e["input_ids"])] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
    return [torch.log_softmax(logits[i, s - 1:len(e["input_ids"]) - 1].float(), -1).cpu()
            for i, (e, s) in enumerate(batch)]


def token_kl(model_p, model_q, processor, prompts: list[str], responses: list[str],
             images: list | None = None, batch_size: int = 16) -> pd.DataFrame:
    """KL(p || q) of the next-token distributions at every response token.

    `model_p` is the model whose responses these are, `model_q` the reference; both share
    `processor`'s vocabulary; `images` holds one list of images per row (VLMs), or is None.
    One row per response token: response, position, token_id, token (decoded), kl, and
    logp_p and logp_q of the token actually produced.
    """
    import torch

    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows = []
    images = images if images is not None else [None] * len(prompts)
    step = 1 if any(images) else batch_size
    for b in range(0, len(prompts), step):
        batch = [_encode(processor, p, r, im) for p, r, im in
                 zip(prompts[b:b + step], responses[b:b + step], images[b:b + step])]
        lp, lq = _logprobs(model_p, batch, pad), _logprobs(model_q, batch, pad)
        for i, ((enc, start), a, c) in enumerate(zip(batch, lp, lq)):
            target = torch.as_tensor(enc["input_ids"]).reshape(-1)[start:]
            kl = (a.exp() * (a - c)).sum(-1).clamp_min(0)
            pick = target[:, None]
            rows.append(pd.DataFrame({
                "response": b + i, "position": np.arange(len(target)),
                "token_id": target.numpy(), "kl": kl.numpy(),
                "logp_p": a.gather(1, pick)[:, 0].numpy(),
                "logp_q": c.gather(1, pick)[:, 0].numpy()}))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["response", "position", "token_id", "kl", "logp_p", "logp_q"])
    names = {i: tok.decode([i]) for i in out["token_id"].unique()}
    return out.assign(token=out["token_id"].map(names))


def kl_by_token(kl: pd.DataFrame) -> pd.DataFrame:
    """Per token string: occurrences, total and mean KL, share of all KL, mean log-ratio.

    A positive mean log-ratio (log p - log q) means the response's model favours the token
    more than the reference does. Sorted by total KL, largest first.
    """
    key = kl["token"].str.strip().replace("", "␣")
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
    import plotly.express as px

    import html

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

def run(cfg: PivotalConfig, progress: bool = True) -> dict:
    """Evaluate reference and models, count categories, score KL; saves CSVs + manifest."""
    import torch

    from synergy import evaluation, stratify
    from synergy.merging import benchmark_questions, model_labels, resolve_parent
    from synergy.runs import now, read_manifest, set_seed, stage_dir, write_manifest, write_text

    started, t0 = now(), time.perf_counter()
    set_seed(cfg.seed)
    out = stage_dir(cfg, STAGE)
    specs = dict(zip(model_labels([cfg.reference_model, *cfg.models]),
                     [cfg.reference_model, *cfg.models]))
    resolved = {name: resolve_parent(s, cfg.output_root, cfg.run_name)
                for name, s in specs.items()}
    reference = next(iter(specs))
    levels = stratify.load_levels(cfg.output_root, cfg.run_name)
    questions = benchmark_questions(levels)
    suffix = read_manifest(out.parent / stratify.STAGE)["params"].get("prompt_suffix", "")
    results = {}
    for name, (path, _) in resolved.items():
        results[name] = evaluation.evaluate_for(cfg, path, questions, suffix, progress)
    table = evaluation.save_results(out, results)
    responses = responses_frame(results)
    counts = category_counts(responses, cfg.categories)
    use = use_vs_correctness(responses, cfg.categories)
    write_text(out / "category_counts.csv", counts.to_csv(index=False))
    write_text(out / "pivotal_use.csv", use.to_csv(index=False))

    ref_model, _ = load_scorer(resolved[reference][0])
    rng = np.random.default_rng(cfg.seed)
    tokens = []
    for name in [n for n in resolved if n != reference]:
        model, processor = load_scorer(resolved[name][0])
        rows = responses_frame({name: results[name]}).merge(
            questions.drop(columns=["level"]), on="qid")
        rows = rows.iloc[np.sort(rng.permutation(len(rows))[:cfg.kl_responses])]
        prompts, images = evaluation.build_prompts(SimpleNamespace(template=processor),
                                                   rows, suffix)
        kl = token_kl(model, ref_model, processor, prompts, list(rows["text"]), images,
                      cfg.kl_batch_size)
        tokens.append(kl_by_token(kl).assign(model=name, reference=reference))
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    tokens = pd.concat(tokens, ignore_index=True)
    write_text(out / "kl_tokens.csv", tokens.to_csv(index=False))
    write_manifest(out, cfg, started=started,
                   upstream={name: uid for name, (_, uid) in resolved.items()},
                   extra={"seconds": time.perf_counter() - t0,
                          "model_paths": {n: p for n, (p, _) in resolved.items()},
                          "reference": reference})
    return {"per_level": table, "responses": responses, "counts": counts, "use": use,
            "tokens": tokens}


def load_stage(output_root: str, run_name: str) -> dict:
    """The saved tables of this stage (for the report)."""
    folder = Path(output_root) / run_name / STAGE
    return {"per_level": pd.read_csv(folder / "per_level.csv"),
            "counts": pd.read_csv(folder / "category_counts.csv"),
            "use": pd.read_csv(folder / "pivotal_use.csv"),
            "tokens": pd.read_csv(folder / "kl_tokens.csv", keep_default_na=False)}
