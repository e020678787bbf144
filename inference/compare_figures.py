"""The Compare tab's three Plotly figures of an ``inference.compare_engine.Comparison``.

- ``group_accuracy_figure``  accuracy per group, one bar per run, Wilson intervals as error bars;
- ``margin_figure``          certainty-margin distributions per group (CMAC-MMD's "certainty gap" view),
                             as violins or Gaussian KDE curves;
- ``frontier_figure``        overall accuracy (or AUC) against a gap, one trace per method, and one per sweep
                             joined along its Pareto front;
- ``calibration_figure``     per run, reliability diagram and ROC curve per group (ECE and AUC per group).

Every figure lists the methods in the registry's order (``training.methods``) and colours each by its
``Method.colour``; a figure with nothing to show says why instead of drawing empty axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from numpy.typing import ArrayLike
from plotly.subplots import make_subplots
from scipy import stats

from inference.compare_engine import OVERALL_FIGURES, UNKNOWN_CHOICE, CompareError, Comparison, unreliable
from inference.compare_export import GAP_TITLES, OVERALL_TITLES, method_title, run_caption
from training import methods, metrics

METHOD_COLORS = {m.name: m.colour for m in methods.REGISTRY.values()}  # one colour per method, in every figure
OTHER_COLOR = "#8c564b"
PATTERNS = ("", "/", "x", ".", "\\", "+", "-", "|")  # tells apart runs of one method in the bars
HIGHER_IS_FAIRER = frozenset({"es_auc"})
MARGIN_KINDS = ("violin", "kde")
FRONTIER_METRICS = OVERALL_FIGURES
NOTHING_TO_SHOW = "No runs to show: {reason}"
# Legends below the plot, in rows: at the right they took half of a bar chart's width.
LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0}
FLAGGED_NAME = "⚠ flagged run (degenerate or one class): its gaps mean nothing"
NOISE_FLOOR_NAME = "noise floor: the gap chance alone gives"
SWEEP_NAME = "sweep {sweep} ({method})"
SWEEP_SYMBOLS = ("diamond", "square", "triangle-up", "star", "hexagon", "pentagon")  # single runs are circles


def _method_color(method: str) -> str:
    return METHOD_COLORS.get(method, OTHER_COLOR)


def _empty_figure(title: str, reason: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(
        text=NOTHING_TO_SHOW.format(reason=reason),
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        font={"size": 14},
    )
    figure.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, template="plotly_white")
    return figure


def _empty_reason(comparison: Comparison) -> str:
    return "; ".join(comparison.notes) if comparison.notes else "no run could be evaluated"


def _in_method_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the registry's method order (unknown methods last), keeping the given order within a method,
    so every figure lists the methods the same way whatever order the runs were picked in."""
    order = sorted(range(len(table)), key=lambda i: (methods.rank(table["method"].iloc[i]), i))
    return table.iloc[order]


def _pattern_for_runs(table: pd.DataFrame) -> dict[str, str]:
    """A bar pattern per run: the first run of each method plain, further ones hatched."""
    seen: dict[str, int] = {}
    patterns = {}
    for run, method in zip(table["run"], table["method"], strict=True):
        count = seen.get(method, 0)
        patterns[run] = PATTERNS[count % len(PATTERNS)]
        seen[method] = count + 1
    return patterns


def group_accuracy_figure(comparison: Comparison) -> go.Figure:
    """Grouped bars: accuracy per group, one trace (colour) per run, Wilson intervals as error bars."""
    title = f"Accuracy per {comparison.attribute} group ({comparison.split} split)"
    if comparison.empty:
        return _empty_figure(title, _empty_reason(comparison))
    figure = go.Figure()
    table = _in_method_order(comparison.table)
    patterns = _pattern_for_runs(table)
    level = f"{comparison.ci_level:.0%}"
    for row in table.to_dict("records"):
        groups = comparison.groups[comparison.groups["run"] == row["run"]]
        accuracy = groups["accuracy"].to_numpy(float)
        figure.add_bar(
            name=run_caption(row),
            x=groups["group"],
            y=accuracy,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": groups["accuracy_hi"].to_numpy(float) - accuracy,
                "arrayminus": accuracy - groups["accuracy_lo"].to_numpy(float),
            },
            marker={"color": _method_color(row["method"]), "pattern": {"shape": patterns[row["run"]]}},
            customdata=np.stack([groups["n"], groups["accuracy_lo"], groups["accuracy_hi"]], axis=1),
            hovertemplate=(
                f"<b>{run_caption(row)}</b><br>group %{{x}} (n=%{{customdata[0]}})<br>accuracy %{{y:.3f}}"
                f"<br>{level} Wilson interval [%{{customdata[1]:.3f}}, %{{customdata[2]:.3f}}]<extra></extra>"
            ),
        )
    figure.update_layout(
        title=title,
        barmode="group",
        xaxis_title=f"{comparison.attribute} group",
        yaxis_title=f"Accuracy ({level} Wilson interval)",
        yaxis_range=[0, 1.05],
        legend_title="Run (method)",
        legend=LEGEND_BELOW,
        margin={"b": 40},
        template="plotly_white",
    )
    return figure


def margin_figure(
    comparison: Comparison, runs: Sequence[str] | None = None, *, kind: str = "violin", label: int | None = None
) -> go.Figure:
    """Certainty-margin distributions per group for each run (CMAC-MMD's "certainty gap" view).

    ``kind="violin"``: one trace per group, runs side by side on the x axis. ``kind="kde"``: one
    panel per run, one Gaussian KDE curve (scipy.stats.gaussian_kde, Scott's bandwidth) per group.
    ``label=1`` keeps the positives only: margin < 0 there is a missed diagnosis, the gap CMAC-MMD
    reports. Margin 0 is the decision boundary.
    """
    if kind not in MARGIN_KINDS:
        raise CompareError(UNKNOWN_CHOICE.format(name="kind", choices=", ".join(MARGIN_KINDS), value=kind))
    if label not in (None, 0, 1):
        raise CompareError(UNKNOWN_CHOICE.format(name="label", choices="None, 0, 1", value=label))
    who = {None: "all samples", 1: "positives (label 1)", 0: "negatives (label 0)"}[label]
    title = f"Certainty margin per {comparison.attribute} group, {who}"
    margins = comparison.margins.dropna(subset=["margin"])
    if runs is not None:
        margins = margins[margins["run"].isin(list(runs))]
    if label is not None:
        margins = margins[margins["label"] == label]
    if margins.empty:
        return _empty_figure(title, _empty_reason(comparison) if comparison.empty else "no margins for these runs")
    captions = {row["run"]: run_caption(row) for row in comparison.table.to_dict("records")}
    order = [run for run in _in_method_order(comparison.table)["run"] if run in set(margins["run"])]
    groups = sorted(margins["group"].unique())
    if kind == "violin":
        figure = _margin_violins(margins, order, groups, captions)
    else:
        figure = _margin_kdes(margins, order, groups, captions)
    figure.update_layout(
        title=title, legend_title=f"{comparison.attribute} group", legend=LEGEND_BELOW, template="plotly_white"
    )
    return figure


def _margin_violins(margins: pd.DataFrame, order: list[str], groups: list[str], captions: dict) -> go.Figure:
    figure = go.Figure()
    for group in groups:
        chosen = margins[margins["group"] == group]
        figure.add_violin(
            name=group,
            x=chosen["run"].map(captions),
            y=chosen["margin"],
            box_visible=True,
            meanline_visible=True,
            points=False,
            scalegroup=group,
            hoverinfo="y+name",
        )
    figure.add_hline(
        y=0,
        line_dash="dash",
        line_color="black",
        annotation_text="decision boundary",
        annotation_position="bottom right",
    )
    figure.update_layout(
        violinmode="group",
        xaxis={"title": "Run (method)", "categoryorder": "array", "categoryarray": [captions[r] for r in order]},
        yaxis_title="Certainty margin (true-class score − other class)",
    )
    return figure


def _margin_kdes(margins: pd.DataFrame, order: list[str], groups: list[str], captions: dict) -> go.Figure:
    figure = make_subplots(
        rows=len(order),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[captions[r] for r in order],
        vertical_spacing=min(0.08, 0.3 / max(1, len(order))),
    )
    grid = np.linspace(margins["margin"].min(), margins["margin"].max(), 200)
    palette = _group_palette(groups)
    for panel, run in enumerate(order, start=1):
        for group in groups:
            values = margins.loc[(margins["run"] == run) & (margins["group"] == group), "margin"].to_numpy(float)
            if len(np.unique(values)) < 2:
                continue  # a KDE needs spread; such a group has no curve in this panel
            density = stats.gaussian_kde(values)(grid)
            figure.add_scatter(
                x=grid,
                y=density,
                mode="lines",
                name=group,
                legendgroup=group,
                showlegend=panel == 1,
                line={"color": palette[group]},
                hovertemplate=f"{group} (n={len(values)})<br>margin %{{x:.2f}}<br>density %{{y:.3f}}<extra></extra>",
                row=panel,
                col=1,
            )
        figure.add_vline(x=0, line_dash="dash", line_color="black", row=panel, col=1)
        figure.update_yaxes(title_text="density", row=panel, col=1)
    figure.update_xaxes(title_text="Certainty margin (true-class score − other class)", row=len(order), col=1)
    figure.update_layout(height=max(400, 220 * len(order)))
    return figure


def _group_palette(groups: list[str]) -> dict[str, str]:
    import plotly.express as px

    colors = px.colors.qualitative.Safe + px.colors.qualitative.Dark24
    return {group: colors[i % len(colors)] for i, group in enumerate(groups)}


CALIBRATION_BINS = 10


def calibration_figure(comparison: Comparison, *, max_runs: int = 6) -> go.Figure:
    """Per run, two panels: reliability per group (mean predicted probability against the observed share of
    positives in 10 equal-width bins; the diagonal is perfect calibration; ECE of Guo et al. in the legend)
    and the ROC curve per group (sklearn's roc_curve; AUC in the legend). A model can rank every group well
    and still be over-confident for one of them, or equally calibrated and rank one group at chance."""
    from sklearn.metrics import roc_curve

    title = f"Calibration and ROC per {comparison.attribute} group ({comparison.split} split)"
    samples = comparison.margins
    if comparison.empty or samples.empty:
        return _empty_figure(title, _empty_reason(comparison) if comparison.empty else "no predictions")
    captions = {row["run"]: run_caption(row) for row in comparison.table.to_dict("records")}
    order = [run for run in _in_method_order(comparison.table)["run"] if run in set(samples["run"])][:max_runs]
    groups = sorted(samples["group"].unique())
    palette = _group_palette(groups)
    ece = comparison.groups.set_index(["run", "group"])["ece"]
    auc = comparison.groups.set_index(["run", "group"])["auc"]
    titles = [text for run in order for text in (f"{captions[run]}: reliability", f"{captions[run]}: ROC")]
    figure = make_subplots(rows=len(order), cols=2, subplot_titles=titles, vertical_spacing=0.3 / max(1, len(order)))
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    for panel, run in enumerate(order, start=1):
        mine = samples[samples["run"] == run]
        for group in groups:
            chosen = mine[mine["group"] == group]
            if chosen.empty:
                continue
            prob, label = chosen["prob"].to_numpy(float), chosen["label"].to_numpy(int)
            bins = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, CALIBRATION_BINS - 1)
            counts = np.bincount(bins, minlength=CALIBRATION_BINS)
            filled = counts > 0
            mean_prob = np.bincount(bins, weights=prob, minlength=CALIBRATION_BINS)[filled] / counts[filled]
            observed = np.bincount(bins, weights=label, minlength=CALIBRATION_BINS)[filled] / counts[filled]
            group_ece, group_auc = ece.get((run, group)), auc.get((run, group))
            figure.add_scatter(
                x=mean_prob,
                y=observed,
                mode="lines+markers",
                name=group,
                legendgroup=group,
                showlegend=panel == 1,
                line={"color": palette[group]},
                customdata=counts[filled],
                hovertemplate=(
                    f"{group} (ECE {_maybe(group_ece)})<br>predicted %{{x:.2f}}, observed %{{y:.2f}}"
                    "<br>%{customdata} samples<extra></extra>"
                ),
                row=panel,
                col=1,
            )
            if len(np.unique(label)) == 2:
                fpr, tpr, _ = roc_curve(label, prob)
                figure.add_scatter(
                    x=fpr,
                    y=tpr,
                    mode="lines",
                    name=group,
                    legendgroup=group,
                    showlegend=False,
                    line={"color": palette[group]},
                    hovertemplate=f"{group} (AUC {_maybe(group_auc)})<br>FPR %{{x:.2f}}, TPR %{{y:.2f}}<extra></extra>",
                    row=panel,
                    col=2,
                )
        for col in (1, 2):
            figure.add_scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line={"dash": "dot", "color": "grey"},
                showlegend=False,
                hoverinfo="skip",
                row=panel,
                col=col,
            )
        figure.update_xaxes(range=[0, 1], row=panel, col=1, title_text="predicted probability")
        figure.update_yaxes(range=[0, 1], row=panel, col=1, title_text="observed share positive")
        figure.update_xaxes(range=[0, 1], row=panel, col=2, title_text="false-positive rate")
        figure.update_yaxes(range=[0, 1], row=panel, col=2, title_text="true-positive rate")
    figure.update_layout(
        title=title,
        height=max(420, 300 * len(order)),
        legend_title=f"{comparison.attribute} group",
        legend=LEGEND_BELOW,
        template="plotly_white",
    )
    return figure


def _maybe(value) -> str:
    return "–" if value is None or value != value else f"{float(value):.3f}"


def frontier_figure(comparison: Comparison, *, gap: str = "max_acc_gap", metric: str = "accuracy") -> go.Figure:
    """Accuracy (or AUC) against a gap across runs: one trace per method, intervals as error bars.

    The runs of one sweep (a Studio grid over λ, w_max, seeds: ``TrainConfig.sweep``) are one trace of their
    own, named after the sweep, with a line along its Pareto front (``pareto_front``): the trade-off the
    sweep found, which is what a sweep is run for. Points carry no text (labels of a few runs already
    overlapped): hovering names the run, the legend the method or sweep. A flagged run (degenerate, or one
    class) is drawn as ✕ with '⚠' and its flag beside it, in a legend entry of its own, and is never on a
    front, so it never passes for a fair model. A dotted line marks the runs' mean noise floor: gaps left
    of it are what chance alone gives these groups. Both axes stay inside the figure's range, [0, 1].
    """
    if gap not in metrics.GAPS:
        raise CompareError(UNKNOWN_CHOICE.format(name="gap", choices=", ".join(metrics.GAPS), value=gap))
    if metric not in FRONTIER_METRICS:
        raise CompareError(UNKNOWN_CHOICE.format(name="metric", choices=", ".join(FRONTIER_METRICS), value=metric))
    direction = "higher is fairer" if gap in HIGHER_IS_FAIRER else "lower is fairer"
    title = f"{OVERALL_TITLES[metric]} vs {GAP_TITLES[gap]} on {comparison.attribute}"
    if comparison.empty:
        return _empty_figure(title, _empty_reason(comparison))
    figure = go.Figure()
    table = _in_method_order(comparison.table)
    flagged_all = np.array([unreliable(flags) for flags in table["flags"]], dtype=bool)
    swept = table["sweep"].notna().to_numpy() & ~flagged_all
    for method in dict.fromkeys(table["method"]):
        chosen = (table["method"] == method).to_numpy()
        for flagged in (False, True):
            rows = table[chosen & (flagged_all == flagged) & ~swept]
            if rows.empty:
                continue
            _frontier_trace(figure, rows, method, gap, metric, flagged)
    for index, sweep in enumerate(dict.fromkeys(table.loc[swept, "sweep"])):
        rows = table[swept & (table["sweep"] == sweep).to_numpy()]
        _sweep_traces(figure, rows, str(sweep), gap, metric, SWEEP_SYMBOLS[index % len(SWEEP_SYMBOLS)])
    floor = pd.to_numeric(table[f"{gap}_floor"], errors="coerce").dropna()
    if len(floor):
        figure.add_vline(
            x=float(floor.mean()),
            line_dash="dot",
            line_color="grey",
            annotation_text=NOISE_FLOOR_NAME,
            annotation_position="top right",
            annotation_font_size=10,
        )
    level = f"{comparison.ci_level:.0%}"
    figure.update_layout(
        title=title,
        xaxis_title=f"{GAP_TITLES[gap]} on {comparison.attribute} ({direction}; {level} bootstrap range)",
        yaxis_title=f"{OVERALL_TITLES[metric]} ({level} bootstrap interval)",
        xaxis_range=_bounded_range(table[gap], table[f"{gap}_lo"], table[f"{gap}_hi"], floor),
        yaxis_range=_bounded_range(table[metric], table[f"{metric}_lo"], table[f"{metric}_hi"]),
        legend_title="Method or sweep",
        legend=LEGEND_BELOW,
        template="plotly_white",
    )
    return figure


def pareto_front(gaps: ArrayLike, scores: ArrayLike, *, lower_gap_is_fairer: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (at least as fair and as accurate, better on
    one), from the fairest to the most accurate; points with a missing figure are on no front.

    Walking the points from the fairest gap on, a point is on the front when it is more accurate than
    every fairer one; among equal gaps only the most accurate can be.
    """
    gap, score = np.asarray(gaps, dtype=float), np.asarray(scores, dtype=float)
    fairness = -gap if lower_gap_is_fairer else gap
    usable = [i for i in range(len(gap)) if np.isfinite(gap[i]) and np.isfinite(score[i])]
    front: list[int] = []
    best = -np.inf
    for i in sorted(usable, key=lambda i: (-fairness[i], -score[i])):
        if score[i] > best:
            front.append(i)
            best = score[i]
    return front


def _sweep_traces(figure: go.Figure, rows: pd.DataFrame, sweep: str, gap: str, metric: str, symbol: str) -> None:
    """A sweep's runs: their points (one legend entry, the sweep's name) and the line along their Pareto front,
    in the colour of their method, toggled together from the legend."""
    methods_in = list(dict.fromkeys(rows["method"]))
    method = methods_in[0] if len(methods_in) == 1 else None
    title = method_title(method) if method else ", ".join(method_title(m) for m in methods_in)
    name = SWEEP_NAME.format(sweep=sweep, method=title)
    colour = _method_color(method) if method else OTHER_COLOR
    _frontier_trace(figure, rows, methods_in[0], gap, metric, False, name=name, colour=colour, symbol=symbol)
    x, y = rows[gap].to_numpy(float), rows[metric].to_numpy(float)
    front = pareto_front(x, y, lower_gap_is_fairer=gap not in HIGHER_IS_FAIRER)
    if len(front) > 1:
        figure.add_scatter(
            name=f"{name}: Pareto front",
            x=x[front],
            y=y[front],
            mode="lines",
            line={"color": colour, "dash": "dash", "width": 2},
            legendgroup=name,
            showlegend=False,
            hoverinfo="skip",
        )


def _frontier_trace(
    figure: go.Figure,
    rows: pd.DataFrame,
    method: str,
    gap: str,
    metric: str,
    flagged: bool,
    *,
    name: str | None = None,
    colour: str | None = None,
    symbol: str = "circle",
) -> None:
    """One trace of runs: a method's (its title, its colour), or, given `name`, `colour` and `symbol`, a sweep's
    (`name` is then also its legend group, which its Pareto front line joins)."""
    group = name
    x, y = rows[gap].to_numpy(float), rows[metric].to_numpy(float)
    captions = [run_caption(row) for row in rows.to_dict("records")]
    if name is None:
        name = f"⚠ {method_title(method)}: {FLAGGED_NAME}" if flagged else method_title(method)
    figure.add_scatter(
        name=name,
        legendgroup=group,
        x=x,
        y=y,
        mode="markers+text" if flagged else "markers",
        text=[f"⚠ {flags}" for flags in rows["flags"]] if flagged else None,
        textposition="bottom center",
        marker={
            "size": 14 if flagged else 12,
            "color": colour or _method_color(method),
            "symbol": "x" if flagged else symbol,
        },
        error_x=_error_bars(x, rows[f"{gap}_lo"], rows[f"{gap}_hi"]),
        error_y=_error_bars(y, rows[f"{metric}_lo"], rows[f"{metric}_hi"]),
        customdata=list(
            zip(
                captions,
                *(_numbers(rows[c]) for c in (f"{gap}_lo", f"{gap}_hi", f"{metric}_lo", f"{metric}_hi")),
                _numbers(rows[f"{gap}_floor"]),
                strict=True,
            )
        ),
        hovertemplate=(
            f"<b>%{{customdata[0]}}</b>{' ⚠ flagged' if flagged else ''}<br>{GAP_TITLES[gap]} %{{x:.3f}} "
            f"[%{{customdata[1]:.3f}}, %{{customdata[2]:.3f}}] (chance %{{customdata[5]:.3f}})<br>"
            f"{OVERALL_TITLES[metric]} %{{y:.3f}} [%{{customdata[3]:.3f}}, %{{customdata[4]:.3f}}]<extra></extra>"
        ),
    )


def _bounded_range(values, low, high, *extra) -> list[float]:
    """An axis range around the points and their intervals, padded, never outside [0, 1]."""
    numbers = np.concatenate([_numbers(v) for v in (values, low, high, *extra)])
    numbers = numbers[np.isfinite(numbers)]
    if not len(numbers):
        return [0.0, 1.0]
    pad = max(0.02, 0.08 * float(numbers.max() - numbers.min()))
    return [max(0.0, float(numbers.min()) - pad), min(1.0, float(numbers.max()) + pad)]


def _numbers(values) -> np.ndarray:
    """Floats with NaN for None (interval columns hold None when a run has no bootstrap)."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)


def _error_bars(values: np.ndarray, low, high) -> dict:
    """Asymmetric error bars; a run without an interval (bootstrap 0) gets none."""
    low, high = _numbers(low), _numbers(high)
    return {
        "type": "data",
        "symmetric": False,
        "array": np.nan_to_num(high - values),
        "arrayminus": np.nan_to_num(values - low),
        "visible": bool(np.isfinite(low).any()),
    }
