"""The run report's figures: pure functions of the tables `report` gathers.

Every figure names the question set its bars rest on (`question_set`), and every model keeps
one colour in every figure of a run (`model_colors`: base grey, SFT blue, RL red, the rest
from one palette in name order). Many models are shown in facets per question set, many
logged metrics behind a selector, never as a grid of mostly empty panels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from synergy import stages
from synergy.report_roles import LEVELS, PARENTS, STRATEGY_PREFIX

PARENT_COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "rl": "#d62728"}
# Palette colours a reader would take for base, SFT or RL (greys, the blues, the reds).
TOO_CLOSE = {"#2E91E5", "#FB0D0D", "#222A2A", "#778AAE", "#1616A7", "#FD3216", "#0D2A63",
             "#AF0038", "#FC6955", "#6E899C", "#00B5F7", "#6A76FC",  # and the palest:
             "#FED4C4", "#C9FBE5", "#E3EE9E", "#F6F926", "#0DF9FF", "#22FFA7", "#00FE35"}
PARENT_NAMES = {"base": "base", "sft": "SFT", "rl": "RL"}
LEVEL_ORDER = {"level": LEVELS + ["all"]}


def _color_key(name: str, aliases: dict[str, str]) -> str:
    """The model a role, curve or label stands for: a stage's own evaluation of base, SFT
    or RL ("06_merging/sft") is that parent; aliases name the main models' training runs."""
    name = aliases.get(name, name)
    last = name.rsplit("/", 1)[-1]
    return last if last in PARENTS else name


def model_colors(names: Iterable[str], aliases: dict[str, str] | None = None) -> dict[str, str]:
    """{name: colour} for every name given (roles, curve series) and every alias: one colour
    per model across all of a run's figures (plotly's default cycle repeats after 10)."""
    import plotly.express as px

    aliases = aliases or {}
    palette = [c for c in px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
               if c not in TOO_CLOSE]
    names = set(names) | set(aliases)
    keys = sorted({_color_key(n, aliases) for n in names} - set(PARENTS))
    by_key = {**PARENT_COLORS, **{k: palette[i % len(palette)] for i, k in enumerate(keys)}}
    return {n: by_key[_color_key(n, aliases)] for n in names} | by_key


def _colors_for(names: Iterable[str], colors: dict[str, str] | None) -> dict[str, str]:
    names = list(dict.fromkeys(names))
    colors = colors or {}
    missing = [n for n in names if n not in colors]
    return {**colors, **model_colors(missing)} if missing else colors


def question_set(table: pd.DataFrame) -> str:
    """Which questions a table's accuracies rest on: "05_strategies, 200 questions" (one
    entry per evaluating stage, from the rows of level "all")."""
    overall = table[table["level"] == "all"].drop_duplicates(["stage", "questions"])
    return "; ".join(f"{r.stage}, {int(r.questions)} questions"
                     for r in overall.itertuples()) or "no questions"


def _placeholder(title: str, note: str):
    import plotly.graph_objects as go

    fig = go.Figure().update_layout(title=title, xaxis_visible=False, yaxis_visible=False,
                                    height=250)
    return fig.add_annotation(text=note, showarrow=False, font_size=16)


def _bars(data: pd.DataFrame, color: str, colors: dict[str, str], title: str, **kw):
    import plotly.express as px

    bars = {}
    if "accuracy_low" in data and data["accuracy_low"].notna().any():
        data = data.assign(above=100 * (data["accuracy_high"] - data["accuracy"]),
                           below=100 * (data["accuracy"] - data["accuracy_low"]))
        bars = {"error_y": "above", "error_y_minus": "below"}
    data = data.assign(accuracy=100 * data["accuracy"])
    return px.bar(data, x="level", y="accuracy", color=color, barmode="group",
                  range_y=[0, 100], category_orders=LEVEL_ORDER, color_discrete_map=colors,
                  hover_data=["stage", "questions", "mean_length"],
                  labels={"accuracy": "accuracy (%)", "level": "difficulty level (L1 easiest)"},
                  title=title, **bars, **kw)


def headline_figure(headline: pd.DataFrame, colors: dict[str, str] | None = None):
    """Accuracy per level of base, SFT, RL and the best combination strategy (`report.
    headline_roles`: one stage, one question set, named in the title), with the 95%
    interval of each bar where the stage saved one."""
    if headline.empty:
        return _placeholder("Accuracy by level", "base, SFT and RL not evaluated yet")
    label = {r: PARENT_NAMES.get(r, f"best strategy: {r[len(STRATEGY_PREFIX):]}")
             for r in headline["role"].unique()}
    colors = _colors_for(headline["role"], colors)
    return _bars(headline.assign(model=headline["role"].map(label)), "model",
                 {label[r]: colors[r] for r in label},
                 f"Base, SFT, RL and the best combination, per level (95% intervals)<br>"
                 f"<sup>on {question_set(headline)}</sup>")


def accuracy_figure(roles: pd.DataFrame, title: str = "Accuracy by difficulty level",
                    colors: dict[str, str] | None = None):
    """Accuracy per level of the given roles, one question set per facet row (a model is
    compared only with models evaluated on the same questions)."""
    if roles.empty:
        return _placeholder(title, "no evaluated models yet")
    sizes = roles[roles["level"] == "all"].groupby("stage")["questions"].max()
    label = {st: f"{st}, {int(n)} questions" for st, n in sizes.items()}
    data = roles.assign(questions_of=roles["stage"].map(label).fillna(roles["stage"]))
    rows = data["questions_of"].nunique()
    fig = _bars(data, "role", _colors_for(data["role"], colors), title,
                facet_row="questions_of", height=120 + 260 * rows,
                facet_row_spacing=min(0.08, 0.4 / rows))
    # px aligns bars across facets (one slot per model of every facet): per facet instead.
    fig.for_each_trace(lambda t: t.update(alignmentgroup=t.yaxis))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1], textangle=0,
                                               x=0, xanchor="left", yanchor="bottom",
                                               y=a.y + 0.5 / rows - 0.01))
    return fig.update_yaxes(title=None)


def tradeoff_figure(roles: pd.DataFrame, colors: dict[str, str] | None = None):
    """Accuracy vs mean response length per model and level: the long-CoT trade-off."""
    import plotly.express as px

    if roles.empty:
        return _placeholder("Accuracy vs length", "no evaluated models yet")
    return px.scatter(roles, x="mean_length", y="accuracy", color="role", facet_col="level",
                      facet_col_wrap=3, log_x=True, hover_data=["stage", "questions"],
                      color_discrete_map=_colors_for(roles["role"], colors),
                      category_orders=LEVEL_ORDER,
                      title="Accuracy vs mean response length (tokens), per level "
                            "(each model on its stage's questions)")


# The RL curves the paper discusses (collapse without KL, truncation of two-stage runs).
PAPER_CURVES = {"reward": "reward", "rewards/accuracy_reward/mean": "accuracy reward",
                "kl": "KL to start", "entropy": "entropy",
                "completions/mean_length": "completion length",
                "completions/clipped_ratio": "clipped ratio"}


def curve_series(curves: pd.DataFrame) -> pd.Series:
    """The name a training log is drawn and coloured under: "<stage>/<run>"."""
    run = curves["run"].astype(str)
    return curves["stage"].where((run == "") | (run == curves["stage"]),
                                 curves["stage"] + "/" + run)


def training_figure(curves: pd.DataFrame, colors: dict[str, str] | None = None):
    """The six curves the paper discusses (`PAPER_CURVES`), one panel each, each panel on
    its own step axis."""
    import plotly.express as px

    keep = curves[curves["metric"].isin(list(PAPER_CURVES))] if len(curves) else curves
    if keep.empty:
        return _placeholder("Training curves", "no RL stage has run")
    keep = keep.assign(series=curve_series(keep),
                       metric=keep["metric"].map(PAPER_CURVES))
    order = [m for m in PAPER_CURVES.values() if m in set(keep["metric"])]
    fig = px.line(keep, x="step", y="value", color="series", facet_col="metric",
                  facet_col_wrap=3, category_orders={"metric": order}, title="Training curves",
                  color_discrete_map=_colors_for(keep["series"], colors),
                  height=330 * -(-len(order) // 3), facet_row_spacing=0.08)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_xaxes(matches=None, showticklabels=True)
    return fig.update_yaxes(matches=None, showticklabels=True, title=None)


def other_logs_figure(curves: pd.DataFrame, colors: dict[str, str] | None = None):
    """Every other logged metric (losses, learning rates, norms, ...), one at a time: a
    selector over "<stage>: <metric>", each drawn on its own axes with only its own runs."""
    import plotly.graph_objects as go

    keep = curves[~curves["metric"].isin(list(PAPER_CURVES))].dropna(subset=["value"]) \
        if len(curves) else curves
    if keep.empty:
        return _placeholder("Other training logs", "no training stage has run")
    keep = keep.assign(series=curve_series(keep))
    colors = _colors_for(keep["series"], colors)
    fig, owner, buttons = go.Figure(), [], []
    panels = list(keep.groupby(["stage", "metric"], sort=True))
    for i, ((stage, metric), part) in enumerate(panels):
        for series, one in part.groupby("series", sort=True):
            one = one.sort_values("step")
            fig.add_scatter(x=one["step"], y=one["value"], name=series, mode="lines",
                            line_color=colors[series], visible=i == 0)
            owner.append(i)
    for i, ((stage, metric), _) in enumerate(panels):
        buttons.append({"label": f"{stage}: {metric}", "method": "update",
                        "args": [{"visible": [o == i for o in owner]},
                                 {"yaxis.title.text": metric, "xaxis.autorange": True,
                                  "yaxis.autorange": True}]})
    return fig.update_layout(
        title=f"Other training logs ({len(panels)}: pick one)", height=460,
        xaxis_title="step", yaxis_title=panels[0][0][1], showlegend=True,
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.12,
                      "yanchor": "bottom", "active": 0}])


def merge_figure(merge_curves: pd.DataFrame | None):
    from synergy import merging

    if merge_curves is None:
        return _placeholder("Merge curves", f"{stages.MERGING.name} not run")
    return merging.merge_curve_figure(merge_curves)


def static_accuracy_png(roles: pd.DataFrame, path: str | Path) -> bytes:
    """Paper-style static bars (seaborn) of base / SFT / RL per level, saved as a PNG at
    `path`; returns the PNG's bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from synergy.files import atomic_path

    data = roles[roles["role"].isin(PARENTS) & roles["level"].isin(LEVELS)]
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=120)
    if data.empty:
        ax.text(0.5, 0.5, "base / SFT / RL not evaluated yet", ha="center", va="center")
        ax.set_axis_off()
    else:
        sns.barplot(data=data.assign(accuracy=100 * data["accuracy"]), x="level", y="accuracy",
                    hue="role", hue_order=[r for r in PARENTS if r in set(data["role"])],
                    order=LEVELS, palette=PARENT_COLORS, ax=ax)
        ax.set(ylabel="accuracy (%)", xlabel="difficulty level (L1 easiest)", ylim=(0, 100))
        ax.set_title(f"on {question_set(roles[roles['role'].isin(PARENTS)])}", fontsize=9)
        ax.legend(title="model", frameon=False)
        sns.despine(ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return buf.getvalue()


def png(data: bytes):
    """A PNG for display in the notebook."""
    from IPython.display import Image

    return Image(data=data, format="png")
