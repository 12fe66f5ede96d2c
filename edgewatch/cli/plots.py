"""The report and compare figures (matplotlib, behind the ``plot`` extra).

One module for both figures: they share panels, axes limits and event markers.

Panels share the step axis and are left out when the run has no data for them. The sharpness
panel is Cohen et al.'s plot (2021, https://arxiv.org/abs/2103.00065; 2022 for adaptive
methods, https://arxiv.org/abs/2207.14484): λ_1 against the threshold c/η, dashed, as logged per
step, so it follows learning-rate schedules. For SGD that is the raw λ_1 of H against 2/η (or
(2+2β)/η); for adaptive optimizers the preconditioned λ_1 of P^-½ H P^-½ against c/η (38/η for
Adam at β1 = 0.9), with the raw λ_1 drawn too.

One diverged run (r in the millions) would flatten every other curve of the r and λ_1 panels
into a line at zero, so those panels are cut: r above :data:`RATIO_CAP` (10), λ_1 above 10× the
threshold c/η. The y range then holds only the values under the cap, a curve that goes above
runs off the top edge with a ▲ where it leaves, and the panel says so with the largest value.
Nothing is cut when every value is under the cap. Events are markers on the curve they concern
(:data:`EVENT_PANELS`: eos_reached on r, loss_spike on the loss, ...), at the value logged at
the event's step or the last step before it; on the top edge when that value is out of view.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` and saved by the Agg canvas:
pyplot's global state and the caller's backend are never touched, and no display is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgewatch import names
from edgewatch.cli.rundir import Run, Series
from edgewatch.extras import require
from edgewatch.hooks.events import KINDS, SEVERITIES

#: One curve: a series, its legend label (None: unlabelled) and its matplotlib keywords.
Line = tuple[Series, Union[str, None], dict[str, Any]]

__all__ = ["EVENT_PANELS", "RATIO_CAP", "compare_figure", "report_figure"]

#: The r panel shows r up to this: ten times past the edge of stability the run has left
#: edge-of-stability dynamics behind, and a curve above it would flatten the others.
RATIO_CAP = 10.0

SEVERITY_COLORS = {"info": "#2ca02c", "warning": "#ff7f0e", "critical": "#d62728"}
_MARKERS = "v^sDPX*o<>hpd"
_DASHED = {"color": "C0", "ls": "--", "lw": 1.2, "marker": None}
_NORMS = ((names.GRAD_NORM, "‖g‖ gradient"), (names.PARAM_NORM, "‖θ‖ parameters"), (names.UPDATE_NORM, "‖Δθ‖ update"),
          (names.UPDATE_RATIO, "‖Δθ‖/‖θ‖"))
_OUTPUT_LOGITS = ((names.LOGITS_MAX, "max |z|"), (names.LOGITS_LOG_Z_MAX, "max log Z"), (names.LOGITS_LOG_Z_MEAN, "mean log Z"))



def report_figure(run: Run, path: Path, progress: Any = None) -> Any:
    """One run: loss, sharpness against threshold, ratio r, logits, attention, norms; returns the saved figure.

    Events are faint vertical lines colored by severity on every panel and a marker per kind on
    the curve they concern (:data:`EVENT_PANELS`); r and λ_1 are cut as described in the module
    docstring.
    """
    panels: list[tuple[str, str, str, Callable[[Any], None]]] = []
    if run.has(names.LOSS):
        panels.append(("loss", "loss, with events", "loss", lambda ax: _lines(ax, [(run.series(names.LOSS), "loss", {"color": "#333"})])))
    if run.has(names.LAMBDA_MAX) or run.has(names.PRECOND_LAMBDA_MAX):
        panels.append(("sharpness", "sharpness against the stability threshold (dashed)", "eigenvalue", lambda ax: _sharpness(ax, run)))
    if run.has(names.STABILITY_RATIO):
        panels.append(("ratio", "stability ratio r = ηλ/c", "r", lambda ax: _ratio(ax, [(run, "r", "C0")])))
    logits: list[Line] = [(run.series(name), label, {}) for name, label in _OUTPUT_LOGITS if run.has(name)]
    if logits:
        panels.append(("logits", "output logits", "logit", lambda ax: _lines(ax, logits)))
    attention = _attention_lines(run)
    if attention:
        panels.append(("attention", "attention logits", "max |q·k|/√d", lambda ax: _lines(ax, attention)))
    if run.has(names.ATTN_ENTROPY_MIN):
        entropy = [(run.series(names.ATTN_ENTROPY_MIN), "min attention entropy", {"color": "C5"})]
        panels.append(("entropy", "attention entropy", "nats", lambda ax: _lines(ax, entropy)))
    norms: list[Line] = [(run.series(name), label, {}) for name, label in _NORMS if run.has(name)]
    if norms:
        panels.append(("grad", "gradient, parameter and update norms", "norm (log)", lambda ax: _lines(ax, norms, log=True)))

    if progress is not None:
        progress.add(len(panels))
    figure, axes = _figure(len(panels), f"{run.name} — {run.optimizer()}")
    for ax, (_, title, ylabel, draw) in zip(axes, panels):
        draw(ax)
        _event_lines(ax, run.events)
        _label(ax, title, ylabel)
        if progress is not None:
            progress.tick(title)
    by_key = {key: ax for ax, (key, *_) in zip(axes, panels)}
    for event in run.events if by_key else ():
        key = _event_panel(event["kind"], by_key)
        _event_marker(by_key[key], run, key, event, kinds=_kinds([run]), color=_severity(event["severity"]))
    if run.events:
        _events_legend(axes[0], [run], severities=True)
    _save(figure, axes, path)
    return figure


def compare_figure(runs: Sequence[Run], labels: Sequence[str], path: Path, progress: Any = None) -> Any:
    """Runs overlaid, one color each: loss, sharpness with each run's threshold dashed, r, ‖g‖, attention.

    Returns the saved figure. Each run's events are markers in its color on the curve they
    concern; r and λ_1 are cut as described in the module docstring, the loss and attention
    logit at 10× the largest starting value.
    """
    colors = [f"C{i % 10}" for i in range(len(runs))]
    panels: list[tuple[str, str, str, Callable[[Any], None]]] = []

    def overlay(name: str, log: bool = False) -> Callable[[Any], None]:
        """One line per run; a diverging run is cut at 10× the largest starting value, so the others stay readable."""
        starts = [s.values[np.isfinite(s.values)][:1] for s in (r.series(name) for r in runs)]
        cap = 10 * float(np.concatenate(starts).max()) if len(runs) > 1 and np.concatenate(starts).size else None
        return lambda ax: _lines(ax, [(r.series(name), None, {"color": c}) for r, c in zip(runs, colors)], log=log, cap=cap,
                                 note="cut at 10× the largest starting value")

    if any(r.has(names.LOSS) for r in runs):
        panels.append(("loss", "loss", "loss", overlay(names.LOSS)))
    if any(r.has(names.LAMBDA_MAX) or r.has(names.PRECOND_LAMBDA_MAX) for r in runs):
        panels.append(("sharpness", "sharpness λ_1 (preconditioned for adaptive optimizers) and threshold c/η (dashed)",
                       "eigenvalue", lambda ax: _compare_sharpness(ax, runs, colors)))
    if any(r.has(names.STABILITY_RATIO) for r in runs):
        panels.append(("ratio", "stability ratio r = ηλ/c (dotted: first eos_reached)", "r",
                       lambda ax: _ratio(ax, list(zip(runs, labels, colors)), eos=True)))
    if any(r.has(names.GRAD_NORM) for r in runs):
        panels.append(("grad", "gradient norm", "‖g‖ (log)", overlay(names.GRAD_NORM, log=True)))
    if any(r.has(names.ATTN_MAX_LOGIT) for r in runs):
        panels.append(("attention", "attention max logit", "max |q·k|/√d", overlay(names.ATTN_MAX_LOGIT)))

    if progress is not None:
        progress.add(len(panels))
    figure, axes = _figure(len(panels), "edgewatch compare")
    for ax, (_, title, ylabel, draw) in zip(axes, panels):
        draw(ax)
        _label(ax, title, ylabel, legend=False)
        if progress is not None:
            progress.tick(title)
    by_key = {key: ax for ax, (key, *_) in zip(axes, panels)}
    kinds = _kinds(runs)
    for run, color in zip(runs, colors):
        for event in run.events if by_key else ():
            key = _event_panel(event["kind"], by_key)
            _event_marker(by_key[key], run, key, event, kinds, color)
    handles = [_line2d(color=c, label=_text(label)) for label, c in zip(labels, colors)]
    styles = [_line2d(color="0.3", label="λ_1, r, loss, ‖g‖"), _line2d(color="0.3", ls="--", label="threshold c/η"),
              _line2d(color="0.3", ls=":", label="first eos_reached"), _line2d(color="#d62728", ls="--", label="r = 1")]
    axes[0].legend(handles=handles + styles, loc="upper left", bbox_to_anchor=(1.01, 1), title="runs", fontsize=9, frameon=False)
    if kinds:
        _events_legend(axes[-1], runs, severities=False)
    _save(figure, axes, path)
    return figure


# --- panels ---------------------------------------------------------------------------------------


def _sharpness(ax: Any, run: Run) -> None:
    raw, precond = run.series(names.LAMBDA_MAX), run.series(names.PRECOND_LAMBDA_MAX)
    threshold = f"threshold {_constant(run)}/η"
    lines: list[Line]
    if _adaptive(run):
        lines = [(precond, "preconditioned λ_1", {"color": "C0"}), (run.series(names.THRESHOLD), threshold, _DASHED),
                 (raw, "raw λ_1 of H", {"color": "C4"})]
    else:
        lines = [(raw if len(raw.steps) else precond, "λ_1", {"color": "C0"}),
                 (run.series(names.THRESHOLD), threshold, _DASHED)]
        lines += [(run.series(name), f"λ_{name.rsplit('_', 1)[1]}", {"color": "0.6", "lw": 0.8})
                  for name in run.names(names.stem(names.LAMBDA_I))
                  if name.rsplit("_", 1)[1].isdigit() and name != names.family(names.LAMBDA_I, i=1)]
    _lines(ax, lines, **_lambda_cut([run]))


def _compare_sharpness(ax: Any, runs: Sequence[Run], colors: Sequence[str]) -> None:
    lines: list[Line] = []
    for run, color in zip(runs, colors):
        lines += [(_sharpness_series(run), None, {"color": color}),
                  (run.series(names.THRESHOLD), None, {**_DASHED, "color": color})]
    _lines(ax, lines, **_lambda_cut(runs))


def _sharpness_series(run: Run) -> Series:
    """The λ_1 drawn against the threshold: preconditioned for adaptive optimizers, else raw."""
    raw, precond = run.series(names.LAMBDA_MAX), run.series(names.PRECOND_LAMBDA_MAX)
    return precond if _adaptive(run) or not len(raw.steps) else raw


def _lambda_cut(runs: Sequence[Run]) -> dict[str, Any]:
    """λ_1's cap: :data:`RATIO_CAP` × the threshold c/η, the median over each run's steps, of the run where it is largest.

    The median, so that a warm-up from η ≈ 0 (a threshold near infinity) does not lift the cap;
    the largest run's, so that every run's points up to r = 10 stay in view.
    """
    medians = []
    for run in runs:
        threshold = run.series(names.THRESHOLD).values
        threshold = threshold[np.isfinite(threshold) & (threshold > 0)]
        if len(threshold):
            medians.append(float(np.median(threshold)))
    if not medians:
        return {}
    cap = RATIO_CAP * max(medians)
    return {"cap": cap, "note": f"cut at {RATIO_CAP:g}× the threshold c/η = {cap:.3g}"}


def _ratio(ax: Any, runs: Sequence[tuple[Run, str, str]], eos: bool = False) -> None:
    _lines(ax, [(run.series(names.STABILITY_RATIO), None if eos else label, {"color": color}) for run, label, color in runs],
           cap=RATIO_CAP, note=f"cut at r = {RATIO_CAP:g}", include=1.0)
    ax.axhline(1.0, color="#d62728", ls="--", lw=1, label="edge of stability, r = 1")
    for run, _, color in runs if eos else ():
        first = next((e["step"] for e in run.events if e["kind"] == "eos_reached"), None)
        if first is not None:
            ax.axvline(first, color=color, ls=":", lw=1.2)


def _attention_lines(run: Run) -> list[Line]:
    family = names.stem(names.ATTN_MAX_LOGIT_MODULE)
    layers: list[Line] = [(run.series(name), name.removeprefix(family), {"lw": 0.7, "alpha": 0.7}) for name in run.names(family)]
    overall: list[Line] = ([(run.series(names.ATTN_MAX_LOGIT), "max over layers", {"color": "k", "lw": 1.6})]
                           if run.has(names.ATTN_MAX_LOGIT) else [])
    if len(layers) == 1 and overall:
        return overall  # the one layer is the maximum
    return overall + (layers if len(layers) <= 12 else [(s, None, kw) for s, _, kw in layers])  # unlabeled when many


def _lines(ax: Any, lines: Sequence[Line], log: bool = False, cap: float | None = None,
           note: str = "", include: float | None = None) -> None:
    """Plot (series, label, style) lines; non-finite points are gaps; log y when positive and wide.

    With ``cap``, values above it are left out of the y range (which still holds ``include``):
    the curves run off the top edge, a ▲ in the curve's color marks each place one leaves, and
    ``note`` is written in the panel's top right corner with the largest value.
    """
    finite, drawn = [], []
    for series, label, style in lines:
        values = np.where(np.isfinite(series.values), series.values, np.nan)
        sparse = len(values) <= 80
        (line,) = ax.plot(series.steps, values, label=_text(label) if label else None,
                          **{"lw": 1.2, "marker": "o" if sparse else None, "ms": 2.5, **style})
        finite.append(values[np.isfinite(values)])
        drawn.append((series.steps, values, line.get_color()))
    values = np.concatenate(finite) if finite else np.zeros(0)
    kept = values[values <= cap] if cap is not None else values
    cut = len(kept) < len(values) and len(kept) > 0  # all above the cap: nothing to keep in view, so no cut
    values = kept if cut else values
    positive = len(values) and values.min() > 0
    if log or (positive and values.max() / values.min() > 50):
        ax.set_yscale("log", nonpositive="mask")
    if cut:  # autoscaling would have used the values above the cap too
        low, high = values.min(), values.max()
        if include is not None:
            low, high = min(low, include), max(high, include)
        log = ax.get_yscale() == "log"
        pad = 0.05 * (high - low or abs(high) or 1.0)
        ax.set_ylim(*((low / 1.5, high * 1.5) if log and low > 0 else (low - pad, high + pad)))
        _mark_leaving(ax, drawn)
        peak = max(float(np.nanmax(v)) for _, v, _ in drawn if np.isfinite(v).any())
        ax.text(0.995, 0.97, f"{note} (max {peak:.3g}); ▲ where a curve leaves the plot", transform=ax.transAxes, ha="right",
                va="top", fontsize=8, color="0.3", zorder=5, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})


def _mark_leaving(ax: Any, drawn: Sequence[tuple[np.ndarray, np.ndarray, str]]) -> None:
    """A ▲ on the top edge at each step where a curve goes above the y range (after being in it)."""
    top = ax.get_ylim()[1]
    for steps, values, color in drawn:
        above = np.nan_to_num(values, nan=-np.inf) > top
        leaves = above & ~np.concatenate([[False], above[:-1]])
        if leaves.any():
            ax.scatter(steps[leaves], np.full(int(leaves.sum()), top), marker="^", color=color, s=40, edgecolors="k",
                       linewidths=0.5, zorder=4, clip_on=False)


# --- events ---------------------------------------------------------------------------------------

#: The panel each event kind is marked on (by the panel's key); kinds not listed, and kinds whose
#: panel is missing, go on the loss panel, else the first.
EVENT_PANELS = {
    "eos_reached": "ratio", "eos_sustained": "ratio", "progressive_sharpening": "sharpness", "catapult": "loss",
    "loss_spike": "loss", "grad_spike": "grad", "attention_logit_growth": "attention",
    "output_logit_divergence": "logits", "attention_entropy_collapse": "entropy", "nonfinite": "loss",
}


def _event_panel(kind: str, by_key: dict[str, Any]) -> str:
    key = EVENT_PANELS.get(kind, "loss")
    if key in by_key:
        return key
    return "loss" if "loss" in by_key else next(iter(by_key))


def _anchor(run: Run, key: str) -> Series:
    """The curve of panel ``key`` that a run's events sit on."""
    if key == "sharpness":
        return _sharpness_series(run)
    if key == "ratio":
        return run.series(names.STABILITY_RATIO)
    if key == "logits":
        return next((run.series(name) for name, _ in _OUTPUT_LOGITS if run.has(name)), run.series(names.LOGITS_MAX))
    if key == "attention":
        candidates = [names.ATTN_MAX_LOGIT, *run.names(names.stem(names.ATTN_MAX_LOGIT_MODULE))]
        return next((run.series(name) for name in candidates if run.has(name)), run.series(names.ATTN_MAX_LOGIT))
    if key == "entropy":
        return run.series(names.ATTN_ENTROPY_MIN)
    if key == "grad":
        return run.series(names.GRAD_NORM)
    return run.series(names.LOSS)


def _value_at(series: Series, step: int) -> float:
    """The series' value at ``step``, or at the last step before it that logged one (curvature is sparse)."""
    if not len(series.steps):
        return float("nan")
    index = max(int(np.searchsorted(series.steps, step, side="right")) - 1, 0)
    return float(series.values[index])


def _event_marker(ax: Any, run: Run, key: str, event: dict, kinds: list[str], color: str) -> None:
    """The event's kind marker on the panel's curve at its step; on the top edge when the value is not in view."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high)  # the marker must not rescale the panel
    value = _value_at(_anchor(run, key), event["step"])
    y = min(max(value, low), high) if np.isfinite(value) else high
    ax.scatter([event["step"]], [y], marker=_marker(event["kind"], kinds), c=[color], s=60, edgecolors="k",
               linewidths=0.8, zorder=6, clip_on=False, gid=f"event:{event['kind']}")


def _event_lines(ax: Any, events: Sequence[dict]) -> None:
    """Faint vertical lines at events, colored by severity."""
    by_severity: dict[str, list[int]] = {}
    for event in events:
        by_severity.setdefault(event["severity"], []).append(event["step"])
    for severity, steps in by_severity.items():
        ax.vlines(steps, 0, 1, transform=ax.get_xaxis_transform(), color=_severity(severity), lw=0.8, alpha=0.35, zorder=0)


def _kinds(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(event["kind"] for run in runs for event in run.events))


def _events_legend(ax: Any, runs: Sequence[Run], severities: bool) -> None:
    """The kinds' markers (and the severities' colors), outside the panel at its lower right."""
    kinds = _kinds(runs)
    handles = [_line2d(marker=_marker(k, kinds), color="0.5", mec="k", ls="", label=_text(k)) for k in kinds]
    if severities:
        present = {event["severity"] for run in runs for event in run.events}
        handles += [_line2d(color=_severity(s), lw=3, label=_text(s)) for s in sorted(present, key=_severity_rank)]
    title = "events (on their curves)" if severities else "events, in the run's color"
    ax.add_artist(ax.legend(handles=handles, title=title, loc="lower left", bbox_to_anchor=(1.01, 0), fontsize=8,
                            title_fontsize=8, frameon=False))


# --- figure plumbing ------------------------------------------------------------------------------


def _figure(panels: int, title: str) -> tuple[Any, list[Any]]:
    """A column of panels sharing the step axis, with a fixed 2.4-inch margin on the right for legends.

    Fixed margins instead of constrained layout: it would measure every tick label again (half the time).
    """
    figure_module = require("matplotlib.figure", "plot", what="edgewatch's report and compare figures")
    rows = max(panels, 1)
    width, height = 11.0, 1.0 + 2.3 * rows
    figure = figure_module.Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.9 / width, right=1 - 2.4 / width, top=1 - 0.5 / height, bottom=0.5 / height, hspace=0.32)
    figure.suptitle(_text(title), y=1 - 0.12 / height, va="top")
    axes = list(figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])
    if not panels:
        axes[0].text(0.5, 0.5, "no metrics to plot", ha="center", va="center", transform=axes[0].transAxes)
    return figure, axes


def _label(ax: Any, title: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)


def _save(figure: Any, axes: Sequence[Any], path: Path) -> None:
    axes[-1].set_xlabel("step")
    figure.savefig(path, format="png")


def _line2d(**kwargs: Any) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], **kwargs)


def _adaptive(run: Run) -> bool:
    """Whether the preconditioned sharpness differs from the raw one (it equals it for SGD)."""
    raw, precond = run.series(names.LAMBDA_MAX), run.series(names.PRECOND_LAMBDA_MAX)
    if not len(precond.steps):
        return False
    same = np.array_equal(raw.steps, precond.steps) and np.allclose(raw.values, precond.values, equal_nan=True)
    return not same


def _constant(run: Run) -> str:
    constant = run.stability_constant()
    return f"{constant:.3g}" if constant is not None else "c"


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def _severity(severity: str) -> str:
    return SEVERITY_COLORS.get(severity, "0.4")


def _marker(kind: str, kinds: list[str]) -> str:
    index = KINDS.index(kind) if kind in KINDS else len(KINDS) + kinds.index(kind)
    return _MARKERS[index % len(_MARKERS)]


def _text(text: str) -> str:
    """Text from a run, shown literally: ``$`` would start matplotlib mathtext."""
    return str(text).replace("$", r"\$")
