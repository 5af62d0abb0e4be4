"""Judged questions: more questions where the benchmark leaves "ends above RL" open.

The claim rests on paired differences of a few points between a combination (a 05
strategy, a 06 merge) and its RL model, and 200 questions may not decide one: its interval
holds both a gain above the margin and none (`stats.Difference.exceeds` is None). For each
such pair the stage evaluates both models on more questions, at the samples per question of
their benchmark evaluation: 02's pool questions that no model of the run trained on or was
selected with (each training stage's `train_questions.csv`), none of the benchmark's, in the
benchmark's level shares, so that pooled with the benchmark they keep its mix. Pairs the
benchmark decides cost nothing more. The report pools each model's answers
(`with_judged`); the difference then rests on the questions both models answered.

The pool is leveled by the base's pass rate as the benchmark is (02_distill). Like any
training pool, its questions may overlap what the base itself trained on; both models of a
pair descend from that base. The pooled interval is read as if its questions had been fixed
in advance: adding them only where the benchmark left a pair open makes a decision somewhat
more likely than the nominal 95% would. A stage decides what is open at its own
`synergy_margin`; the report judges at `report.margin` (0.02 in every profile, as both).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from synergy import stages
from synergy.config import ConfigError
from synergy.evaluation import load_results, save_results
from synergy.files import ArtifactError, content_hash, write_text
from synergy.stats import level_counts, overall_difference

JUDGED = "judged"  # a stage's folder of results on its judged questions: eval/, per_level.csv,
#   questions.csv
TRAIN_QUESTIONS = "train_questions.csv"  # a training stage's questions (`qid`) its models
#   trained on or were selected with
TRAINING_STAGES = (stages.SFT, stages.GRPO, stages.STRATEGIES)
QUESTION_COLUMNS = ("qid", "question", "answer", "level", "steps", "images", "choices")


def trained_qids(run, among=TRAINING_STAGES) -> set[str]:
    """The questions any model of `run` trained on or was selected with: the union of the
    `train_questions.csv` of every stage of `among` that has run. Fails naming a stage that
    ran before it wrote one (its models are reused when it runs again)."""
    out: set[str] = set()
    for stage in among:
        if not run.has_run(stage):
            continue
        path = run.dir(stage) / TRAIN_QUESTIONS
        if not path.is_file():
            raise ArtifactError(
                f"{path}: missing, so the questions {stage.name} trained on cannot be kept out "
                f"of the judged questions; run {stage.name} again (its models are reused)")
        out |= set(pd.read_csv(path, usecols=["qid"], dtype=str)["qid"])
    return out


def questions(traces: pd.DataFrame, taken: set[str], benchmark: pd.DataFrame, n: int,
              seed: int, key: str) -> pd.DataFrame:
    """Up to `n` of 02's questions (from its `traces`: one row each, with level and
    whatever the benchmark carries, images and choices) outside `taken` and the benchmark,
    in a seeded order, as many per level as keeps the benchmark's level shares
    (`stats.level_counts`, at least one per level): the largest total up to `n` that every
    level can fill. Empty at 0 or below the benchmark's number of levels; fails naming `key`
    when the pool has no levels."""
    if n == 0:
        return benchmark.iloc[:0]
    if "level" not in traces:
        raise ConfigError(f"{key}: 02's pool has no levels (distill.level_pool: false), so "
                          "its questions cannot keep the benchmark's level shares; set it "
                          "to 0 or level the pool")
    rows = traces[~traces["qid"].isin(set(taken) | set(benchmark["qid"]))].drop_duplicates("qid")
    rows = rows.assign(_order=rows["qid"].map(lambda q: content_hash([seed, JUDGED, q], 16)))
    rows = rows.sort_values("_order")[[c for c in QUESTION_COLUMNS if c in rows.columns]]
    have = rows["level"].value_counts()
    shares = benchmark["level"].value_counts()
    shares = shares[shares > 0]
    total = min([n] + [int(have.get(level, 0) * shares.sum() // count)
                       for level, count in shares.items()])
    while total > 0:
        take = level_counts(shares, total)
        if take.sum() <= n and all(have.get(level, 0) >= k for level, k in take.items()):
            return pd.concat([rows[rows["level"] == level].iloc[:k]
                              for level, k in take.items()]).reset_index(drop=True)
        total -= 1
    return rows.iloc[:0].reset_index(drop=True)


def open_pairs(results: dict[str, pd.DataFrame], pairs: dict[str, str],
               margin: float) -> dict[str, str]:
    """Of `pairs` (model -> its RL model, both in `results`), those whose paired difference
    on the benchmark leaves "a gain of more than `margin` (0-1)" undecided."""
    return {m: rl for m, rl in pairs.items()
            if overall_difference(results[m], results[rl]).exceeds(100 * margin) is None}


def summary(pairs: dict[str, str], extra: pd.DataFrame, asked: int, key: str) -> str:
    """One line on what a stage judges: the open pairs and how many pool questions it
    found for them (fewer than `asked` when a level of the pool ran out)."""
    if not pairs:
        return f"{key}: every \"ends above RL\" is decided on the benchmark; no judged questions"
    found = (f"{len(extra)} pool questions" + (f" (of {asked} asked: the pool has no more in "
                                               f"the benchmark's level shares)"
                                               if len(extra) < asked else ""))
    return (f"{key}: open on the benchmark: "
            + ", ".join(f"{m} against {rl}" for m, rl in pairs.items()) + f"; {found}")


def save(folder: Path, results: dict[str, pd.DataFrame], questions: pd.DataFrame) -> None:
    """`folder/judged/`: each judged model's results and the questions (an earlier
    execution's are removed first; nothing is written when no pair was open)."""
    shutil.rmtree(folder / JUDGED, ignore_errors=True)
    if results:
        save_results(folder / JUDGED, results)
        write_text(folder / JUDGED / "questions.csv",
                   questions.drop(columns=["images"], errors="ignore").to_csv(index=False))


def load(folder: Path) -> dict[str, pd.DataFrame]:
    """A stage folder's judged results (`save`); empty where it saved none."""
    return load_results(folder / JUDGED) if (folder / JUDGED / "eval").is_dir() else {}


def with_judged(results: dict[str, pd.DataFrame],
                judged: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """`results` (per-question, on the benchmark) with each judged model's results on the
    judged questions appended (`judged` marks which rows are which): the answers "ends
    above RL" is decided on. Paired differences join on qid, so a judged model against one
    evaluated on the benchmark only still pairs over the benchmark."""
    return {m: pd.concat([df.assign(judged=False), judged[m].assign(judged=True)],
                         ignore_index=True) if m in judged else df
            for m, df in results.items()}
