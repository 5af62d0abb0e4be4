"""The stage: train every model of `families` (or reuse it), evaluate all of them beside
base, SFT and RL on the stratified evaluation set, with the router, the oracle and the
hybrid's forced-mode check, and write the training budget of every model and parent. A
combination whose "ends above RL" the benchmark leaves open is evaluated with its RL model on
up to `control_eval_questions` more of 02's pool questions (`judging`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from synergy import distill, evaluation, grpo, judging, mixing, models, parallel, stages, stratify
from synergy.config import ConfigError
from synergy.evaluation import load_results, per_level
from synergy.files import write_text
from synergy.runs import Run, StageResult, stage_run
from synergy.strategies import (
    analysis,
    aux_sft,
    data_mixing,
    hybrid,
    interleaved,
    progressive,
    router,
    shared,
    two_stage,
)
from synergy.strategies.config import (
    COMBINATIONS,
    CONTROL,
    Spec,
    StrategiesConfig,
    control_group,
    rl_reference,
)

# The trainer of each GRPO family with a plan of its own (the others: 04's plain trainer).
TRAINERS = {"interleaved": interleaved.trainer_class, "progressive": progressive.trainer_class,
            "aux_sft": aux_sft.trainer_class, "hybrid": hybrid.trainer_class}


def specs(cfg: StrategiesConfig) -> list[Spec]:
    """The models of `cfg.families`, in the order they train (a model after its start)."""
    out = []
    for family in cfg.families:
        if family == CONTROL:
            out.append(Spec(CONTROL, CONTROL, "base", "grpo"))
        elif family == "two_stage":
            out += two_stage.specs(cfg)
        elif family == "interleaved":
            out += interleaved.specs(cfg)
        elif family == "progressive":
            out += progressive.specs(cfg)
        elif family == "aux_sft":
            out += aux_sft.specs(cfg)
        elif family in data_mixing.BLENDS:
            out += data_mixing.specs(cfg, family)
        elif family == "hybrid":
            out += hybrid.specs(cfg)
    return out


def headlines(cfg: StrategiesConfig) -> dict[str, str]:
    """The model that stands for each of the paper's strategies in the report: two-stage at
    its longest response budget (the paper's working 16k), the first listed mode/schedule."""
    out = {}
    for spec in specs(cfg):
        if spec.family == "two_stage":
            out[spec.family] = two_stage.headline(cfg)
        elif spec.family in ("interleaved", "progressive", "data_mixing"):
            out.setdefault(spec.family, spec.name)
    return out


def parent_budgets(run: Run, refs: dict[str, str]) -> list[dict]:
    """`analysis.budget_row` of the SFT and RL parents from their stages' records (a model
    from outside the run has none)."""
    rows = []
    for role, stage in (("sft", stages.SFT), ("rl", stages.GRPO)):
        spec = refs[role]
        found = stages.find(spec.split(":")[0]) if spec[:2].isdigit() else None
        if found is None or found != stage or not run.has_run(stage):
            continue
        name = spec.split(":", 1)[1] if ":" in spec else models.main_model(run, stage)
        record = next((r for r in run.manifest(stage).get("runs", [])
                       if name in (r.get("name"), r.get("label"))), None)
        if record is not None:
            rows.append(analysis.budget_row(f"{role} ({name})", stage.name, "base", record))
    return rows


@dataclasses.dataclass
class StrategiesResult(StageResult):
    runs: pd.DataFrame                  # one row per trained model
    curves: pd.DataFrame                # every logged step of every run (long: run, step, ...)
    blends: pd.DataFrame                # data-mixing and adaptive SFT data (blend column)
    results: dict[str, pd.DataFrame]    # per-question evaluation per model (+ router, oracle)
    table: pd.DataFrame                 # evaluation.per_level
    router: pd.DataFrame                # threshold candidates on the validation split
    budget: pd.DataFrame                # analysis.budget_table: parents and every model
    warmup: pd.DataFrame                # the hybrid's warm-up rows (mode, level, tokens)
    forced: pd.DataFrame                # hybrid.mode_table of the warm-up, each mode forced
    modes: pd.DataFrame                 # hybrid.mode_table of hybrid, parents, router, oracle
    judged: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # the
    #   combinations open on the benchmark and their RL models on more pool questions
    #   (control_eval_questions; `judging`)


def run(cfg: StrategiesConfig, progress: bool = True) -> StrategiesResult:
    """Train every strategy (or reuse it), evaluate all models, the router and the oracle."""
    cpu0 = time.process_time()  # CPU seconds: the stage's cost on a machine others share
    with stage_run(cfg, stages.STRATEGIES) as ctx:
        suffix = stratify.config_of(ctx.run).prompt_suffix
        ctx.needs(stages.STRATIFY)
        refs = {role: ctx.model(getattr(cfg, f"{role}_model"), f"{role}_model")
                for role in ("base", "sft", "rl")}
        ctx.needs(stages.DISTILL)
        traces = distill.load(cfg.output_root, cfg.run_name).traces
        train_q, val_q = shared.training_split(traces, cfg.teacher, cfg.n_train_questions,
                                               cfg.n_val_questions, cfg.seed)
        if "progressive" in cfg.families and "images" in train_q and any(
                x is not None and len(x) for x in train_q["images"]):
            raise ConfigError(f"{cfg._key('families')}: progressive rolls out from expert "
                              "prefixes, which needs text questions; these have images "
                              "(drop progressive from families)")
        plan = specs(cfg)
        starts = {r: str(grpo.starting_copy(refs[r].path, ctx.dir / "starts" / r))
                  for r in {"base"} | {s.start for s in plan if s.start in ("sft", "rl")}}
        processing = models.load_processing(starts["base"])
        dataset = shared.grpo_dataset(train_q, processing, suffix)

        hybrid_q = shared.hybrid_questions(traces, cfg, val_q) \
            if "hybrid" in cfg.families else train_q.iloc[:0]
        # What this stage's models train on or choose with (`judging.TRAIN_QUESTIONS`): the
        # strategies' questions first, then the router's and the hybrid's.
        write_text(ctx.dir / judging.TRAIN_QUESTIONS, pd.concat(
            [part.assign(use=use) for use, part in (("train", train_q), ("router_val", val_q),
                                                    ("hybrid", hybrid_q))]).drop(
            columns=["images"], errors="ignore").to_csv(index=False))
        drawn = None
        if {"data_mixing", "adaptive", "hybrid"} & set(cfg.families):
            asked = pd.concat([train_q, hybrid_q]).drop_duplicates("qid")
            drawn = data_mixing.rl_samples(cfg, refs["rl"].path, asked, ctx.run.samples_cache,
                                           suffix, progress)
        blends = data_mixing.blends(cfg, drawn[drawn["qid"].isin(train_q["qid"])]) \
            if drawn is not None else {}
        warmup = hybrid.warmup_rows(drawn[drawn["qid"].isin(
            hybrid_q["qid"].iloc[:cfg.hybrid_warmup_questions])]) \
            if "hybrid" in cfg.families else pd.DataFrame(columns=hybrid.WARMUP_COLUMNS)

        common = {"cfg": cfg, "dataset": dataset, "blends": blends, "warmup": warmup,
                  "hybrid_q": hybrid_q, "suffix": suffix, "folder": ctx.dir, "run": ctx.run,
                  "progress": progress}
        trained_records = parallel.run(
            [parallel.Job(spec.name, train_spec, {
                **common, "spec": spec,
                "start": starts.get(spec.start) or parallel.From(spec.start, "model_path")})
             for spec in plan], cfg.train_jobs, progress)
        records = list(trained_records.values())
        trained = {name: r["model_path"] for name, r in trained_records.items()}
        runs = pd.DataFrame(records)
        curves = analysis.load_curves(ctx.dir, list(trained))
        write_text(ctx.dir / "curves.csv", curves.to_csv(index=False))
        blend_table = pd.concat(list(blends.values()), ignore_index=True) if blends else \
            pd.DataFrame(columns=[*mixing.BLEND_COLUMNS, "blend"])
        write_text(ctx.dir / "blends.csv",
                   blend_table.drop(columns=["images"], errors="ignore").to_csv(index=False))
        write_text(ctx.dir / "warmup.csv",
                   warmup.drop(columns=["images"], errors="ignore").to_csv(index=False))

        questions = stratify.benchmark_questions(
            stratify.load(cfg.output_root, cfg.run_name).levels)
        results, samples = {}, {}
        sampled_more = control_group(list(trained))  # the "ends above RL" claim's models
        paths = {**{r: refs[r].path for r in ("base", "sft", "rl")}, **trained}
        for name, path in paths.items():
            samples[name] = (cfg.control_eval_samples or cfg.eval_samples) \
                if name in sampled_more else cfg.eval_samples
            if progress:
                print(f"evaluating {name} ({samples[name]} samples per question)", flush=True)
            results[name] = evaluation.evaluate_for(cfg, path, questions, suffix, progress,
                                                    n_samples=samples[name])
        # Combinations whose "ends above RL" the benchmark leaves open, with their RL model,
        # on more pool questions (`judging`).
        has_control = CONTROL in trained
        pairs = judging.open_pairs(results, {
            m: rl_reference(m, has_control) for m in trained
            if m.split("-")[0] in COMBINATIONS}, cfg.synergy_margin) \
            if cfg.control_eval_questions else {}
        extra = judging.questions(traces, judging.trained_qids(
            ctx.run, (stages.SFT, stages.GRPO)) | set(pd.concat(
                [train_q, val_q, hybrid_q])["qid"]), questions, cfg.control_eval_questions,
            cfg.seed, cfg._key("control_eval_questions")) if pairs else questions.iloc[:0]
        if progress and cfg.control_eval_questions:
            print(judging.summary(pairs, extra, cfg.control_eval_questions,
                                  cfg._key("control_eval_questions")), flush=True)
        judged_results = {}
        for name in dict.fromkeys([*pairs.values(), *pairs]) if len(extra) else []:
            if progress:
                why = (f"the RL model of {', '.join(m for m, rl in pairs.items() if rl == name)}"
                       if name in pairs.values() else "its \"ends above RL\" is open on the "
                       "benchmark")
                print(f"evaluating {name} on {len(extra)} more pool questions ({why}: "
                      f"control_eval_questions)", flush=True)
            judged_results[name] = evaluation.evaluate_for(
                cfg, paths[name], extra, suffix, progress, n_samples=samples[name])
        judging.save(ctx.dir, judged_results, extra)
        forced = pd.DataFrame()
        if "hybrid" in cfg.families:
            for name in (hybrid.WARMUP, hybrid.RL):
                results[name]["think_share"] = hybrid.think_shares(results[name])
            forced = hybrid.forced_modes(cfg, trained[hybrid.WARMUP], questions, suffix,
                                         {"sft": results["sft"], "rl": results["rl"]},
                                         progress)
            write_text(ctx.dir / "forced_modes.csv", forced.to_csv(index=False))
        router_table = pd.DataFrame()
        if "router" in cfg.families:
            results["router"], router_table, threshold = router.route_questions(
                cfg, refs["rl"].path, refs["sft"].path, questions, val_q, results["sft"],
                ctx.run.samples_cache, suffix, progress)
            write_text(ctx.dir / "router.csv", router_table.to_csv(index=False))
            ctx.record(router_threshold=threshold)
        results["oracle"] = router.oracle_results(results["sft"], results["rl"])
        table = evaluation.save_results(ctx.dir, results, record=ctx.record)
        # What is stored (runs.csv, the manifest) holds paths relative to the run folder.
        stored = [r | {"model_path": ctx.run.relative(r["model_path"])} for r in records]
        write_text(ctx.dir / "runs.csv", pd.DataFrame(stored).to_csv(index=False))
        budget = analysis.budget_table(parent_budgets(ctx.run, {
            "sft": cfg.sft_model, "rl": cfg.rl_model}), runs)
        write_text(ctx.dir / "budget.csv", budget.to_csv(index=False))
        if trained:
            ctx.set_models(trained, main=next(iter(trained)))
        ctx.record(cpu_seconds=time.process_time() - cpu0, paper_roles=headlines(cfg),
                   train_questions=len(train_q), val_questions=len(val_q),
                   judged_questions=len(extra) if judged_results else 0,
                   judged_models=list(judged_results),
                   hybrid_questions=len(hybrid_q),
                   runs=[{k: v for k, v in r.items() if k != "key"} for r in stored])
    return StrategiesResult(ctx.manifest, ctx.dir, runs, curves, blend_table, results, table,
                            router_table, budget, warmup, forced,
                            hybrid.mode_table(results, mode_models(results)), judged_results)


def mode_models(results: dict[str, pd.DataFrame]) -> list[str]:
    """The models the mode table compares: the parents, the hybrid and what chooses per
    question (router, oracle)."""
    return [m for m in ("sft", "rl", hybrid.WARMUP, hybrid.RL, "router", "oracle")
            if m in results]


def train_spec(spec: Spec, cfg: StrategiesConfig, start: str, dataset, blends: dict,
               warmup: pd.DataFrame, hybrid_q: pd.DataFrame, suffix: str, folder: Path,
               run: Run, progress: bool = True, reuse_only: bool = False) -> dict | None:
    """Train one model of the plan from `start` (a parallel job: resumed, or reused by
    content key; with `reuse_only`, the finished record or None)."""
    if spec.family == "hybrid":
        return train_hybrid(spec, cfg, start, warmup, hybrid_q, suffix, folder, run,
                            progress, reuse_only)
    if spec.trainer == "grpo":
        return shared.train_grpo(
            spec, cfg, shared.grpo_settings(cfg, run, **spec.settings), start, dataset, folder,
            progress, trainer_cls=TRAINERS[spec.family]() if spec.plan is not None else None,
            reward_funcs=progressive.prefixed_rewards()
            if spec.family == "progressive" else None, reuse_only=reuse_only,
            **({"plan": spec.plan} if spec.plan is not None else {}))
    return shared.train_sft(spec, cfg, start, shared.chat_rows(blends[spec.family], suffix),
                            folder, progress, shared.sft_settings(run), reuse_only=reuse_only)


def train_hybrid(spec: Spec, cfg: StrategiesConfig, start: str, warmup: pd.DataFrame,
                 questions: pd.DataFrame, suffix: str, folder: Path, run: Run, progress: bool,
                 reuse_only: bool = False) -> dict | None:
    """The hybrid's two trainings: the warm-up SFT (from `start` with the mode tokens added)
    and its decoupled GRPO (from the warm-up model)."""
    if spec.trainer == "sft":
        tokened = hybrid.with_mode_tokens(start, folder / "starts" / "hybrid")
        steps = cfg.hybrid_warmup_steps
        return shared.train_sft(
            spec, cfg, str(tokened), shared.chat_rows(warmup, suffix), folder, progress,
            shared.sft_settings(run),
            args=shared.sft_args(cfg, len(warmup), lr=cfg.hybrid_warmup_lr, max_steps=steps),
            shaping={k: getattr(cfg, k) for k in (
                "hybrid_warmup_lr", "hybrid_warmup_steps", "sft_lr_scheduler",
                "sft_warmup_ratio", "sft_batch_size", "sft_grad_accum", "sft_max_length")},
            reuse_only=reuse_only)
    gcfg = shared.grpo_settings(cfg, run, **spec.settings)
    train = questions.iloc[:cfg.hybrid_train_questions]
    dataset = shared.grpo_dataset(train, models.load_processing(start), suffix)
    if "level" in train:
        dataset = dataset.add_column("level", [int(x) for x in train["level"]])
    return shared.train_grpo(spec, cfg, gcfg, start, dataset, folder, progress,
                             trainer_cls=hybrid.trainer_class(),
                             reward_funcs=hybrid.reward_functions(spec.plan.long_margin),
                             reward_weights=[*cfg.reward_weights, cfg.reward_weights[0]],
                             plan=spec.plan, reuse_only=reuse_only)


def load(output_root: str, run_name: str) -> StrategiesResult:
    """What `run` returned, read back from disk."""
    r = Run(output_root, run_name)
    folder, manifest = r.dir(stages.STRATEGIES), r.manifest(stages.STRATEGIES)
    runs = pd.DataFrame(manifest["runs"])
    if len(runs):
        runs["model_path"] = [str(r.resolve(p)) for p in runs["model_path"]]
    results = load_results(folder)

    def csv(name: str) -> pd.DataFrame:
        path = folder / name
        return pd.read_csv(path) if path.exists() and path.stat().st_size > 1 \
            else pd.DataFrame()

    return StrategiesResult(manifest, folder, runs, analysis.load_curves(folder, list(
        runs.get("label", []))), csv("blends.csv"), results, per_level(results),
        csv("router.csv"), csv("budget.csv"), csv("warmup.csv"), csv("forced_modes.csv"),
        hybrid.mode_table(results, mode_models(results)), judging.load(folder))
