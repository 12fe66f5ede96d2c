"""Every metric name edgewatch logs, defined once: the constants, and the table that documents them.

Probes, detectors, plots and loggers use these constants, never their own string literals, and
:data:`METRICS` holds one :class:`Metric` per name or name family (``grad/norm/{module}``): its
meaning, unit and when it is logged. The tables of ``docs/metrics.md`` are :func:`markdown_tables`
(:func:`with_tables` rewrites them in a document's text), and a test checks that every key a
Monitor logs matches an entry (:func:`entry_for`).

Names are ``[A-Za-z0-9_./-]``, grouped by ``/``: the first part is the family (``curvature``,
``grad``, ...), and a family of keys has one placeholder in braces (``{module}``, ``{i}``), shown
in the documentation as ``<module>``.

Outside the run directory every name carries :data:`PREFIX` (:func:`prefixed`): W&B, TensorBoard,
MLflow and the trainer loggers alike, so ``edgewatch/loss`` never collides with a script's own
``loss``. The run directory (``metrics.jsonl``) holds the plain names.

Renamed keys stay readable in old run directories: :data:`ALIASES` maps an old name to its new
one, and the run reader (:func:`edgewatch.cli.rundir.load_run`) applies it (:func:`current_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "ALIASES", "METRICS", "PREFIX", "Metric", "current_name", "documented", "entry_for", "failed", "family",
    "markdown_tables", "prefixed", "stem", "with_tables",
]

#: The prefix of every name written outside the run directory (W&B, TensorBoard, MLflow, trainer loggers).
PREFIX = "edgewatch/"

# -- training loop ---------------------------------------------------------------------------
LOSS = "loss"
LR = "lr"
LR_GROUP = "lr/group_{index}"

# -- gradients ---------------------------------------------------------------------------------
GRAD_NORM = "grad/norm"
GRAD_NORM_MODULE = "grad/norm/{module}"
GRAD_NONFINITE = "grad/nonfinite_params"
GRAD_PROBE_NORM = "grad/probe_norm"

# -- parameters and updates --------------------------------------------------------------------
PARAM_NORM = "param/norm"
UPDATE_NORM = "update/norm"
UPDATE_RATIO = "update/ratio"
ADAM_EPSILON_FRACTION = "adam/epsilon_fraction"

# -- curvature ---------------------------------------------------------------------------------
CURVATURE = "curvature"  # the family of H's own solve; PRECOND that of the preconditioned operator
PRECOND = "curvature/precond"
PROBE_LOSS = "curvature/probe_loss"
LAMBDA_MAX = "curvature/lambda_max"
LAMBDA_MAX_RESIDUAL = "curvature/lambda_max_residual"
CONVERGED = "curvature/converged"
HVPS = "curvature/hvps"
STREAMED = "curvature/streamed"
LAMBDA_I = "curvature/lambda_{i}"
DIRECTIONAL_SHARPNESS = "curvature/directional_sharpness"
GRADIENT_OVERLAP = "curvature/gradient_overlap"
TOP_ENERGY = "curvature/top_energy/{module}"
THRESHOLD = "curvature/threshold"
REFERENCE_LR = "curvature/reference_lr"
PRECOND_LAMBDA_MAX = "curvature/precond/lambda_max"
STABILITY_RATIO = "curvature/stability_ratio"
PRECOND_LAMBDA_MAX_RESIDUAL = "curvature/precond/lambda_max_residual"
PRECOND_CONVERGED = "curvature/precond/converged"
PRECOND_HVPS = "curvature/precond/hvps"
PRECOND_STREAMED = "curvature/precond/streamed"

# -- output logits -----------------------------------------------------------------------------
LOGITS_MAX = "logits/max"
LOGITS_RMS = "logits/rms"
LOGITS_LOG_Z_MEAN = "logits/log_z_mean"
LOGITS_LOG_Z_MAX = "logits/log_z_max"
LOGITS_Z_LOSS = "logits/z_loss"

# -- attention logits --------------------------------------------------------------------------
ATTN_MAX_LOGIT = "attn/max_logit"
ATTN_MAX_LOGIT_MODULE = "attn/max_logit/{module}"
ATTN_ENTROPY_MEAN = "attn/entropy_mean"
ATTN_ENTROPY_MIN = "attn/entropy_min"

# -- the Monitor itself ------------------------------------------------------------------------
MONITOR_OVERHEAD = "monitor/overhead"
PROBE_SECONDS = "monitor/probe_seconds"
PROBE_HVPS = "monitor/probe_hvps"
FAILED = "{what}/failed"  # what: one of FAILURES
FAILURES = ("metrics", "curvature", "param", "adam")

#: Old name -> current name, for run directories written before a rename.
ALIASES: dict[str, str] = {
    "curvature/precond_lambda_max": PRECOND_LAMBDA_MAX,
}


class Metric(NamedTuple):
    """One row of the metric table: a name (or a family, with one ``{placeholder}``), what it
    means, its unit, when it is logged, and the section of ``docs/metrics.md`` it belongs to."""

    name: str
    meaning: str
    unit: str
    when: str
    section: str


_LOOP = "Training loop"
_GRAD = "Gradients (`grad/`)"
_NORMS = "Parameters and updates (`param/`, `update/`, `adam/`)"
_CURV = "Curvature (`curvature/`)"
_LOGITS = "Output logits (`logits/`)"
_ATTN = "Attention logits (`attn/`)"
_SELF = "The Monitor itself (`monitor/`) and failures"

_PRECOND_AS = ("as its `curvature/` namesake, for the preconditioned operator's own solve")
_PRECOND_WHEN = ("probe steps where S^½(H + W)S^½ differs from H (adaptive optimizers, coupled weight decay, "
                 "groups with different η or c)")
_ATTN_WHEN = "probe steps, models with attention"

#: Every metric the Monitor logs, in the order of ``docs/metrics.md``.
METRICS: tuple[Metric, ...] = (
    Metric(LOSS, "the training loss of the step, as the loop reports it (`monitor.observe(loss)`, `monitor.step(loss)`, "
           "or the Lightning / Hugging Face callback); under DDP the mean over ranks. On a step where none was reported "
           "but a probe ran, the probe loss (`curvature/probe_loss`)", "loss", "cheap-metric steps (and probe steps)", _LOOP),
    Metric(LR, "the first parameter group's `lr`, read after `optimizer.step()` (before `scheduler.step()`: the η of the "
           "step just taken)", "θ²/loss (η)", "cheap-metric steps", _LOOP),
    Metric(LR_GROUP, "the same for parameter group `index` ≥ 1", "θ²/loss", "cheap-metric steps, optimizers with several groups",
           _LOOP),
    Metric(GRAD_NORM, "‖g‖₂ over every trained parameter, read at the end of the backward pass: before any clipping the loop "
           "applies, after DDP's all-reduce, divided by the `GradScaler`'s scale when one is given", "loss/θ",
           "cheap-metric steps", _GRAD),
    Metric(GRAD_NORM_MODULE, "the same over the parameters of one part of the model (`module_metrics=`): by default a "
           "*block* (`blocks.0`, `head`: see below), with `module_metrics=\"leaf\"` each module that owns parameters "
           "directly (`blocks.0.attn.qkv`); `root` for parameters of the model itself", "loss/θ", "cheap-metric steps", _GRAD),
    Metric(GRAD_NONFINITE, "number of parameter tensors whose gradient holds a NaN or ±inf entry", "count",
           "cheap-metric steps", _GRAD),
    Metric(GRAD_PROBE_NORM, "‖∇L(θ)‖₂ of the probe loss (the fixed probe set, not the training batch)", "loss/θ",
           "probe steps", _GRAD),
    Metric(PARAM_NORM, "‖θ‖₂ over every trained parameter", "θ", "norm steps", _NORMS),
    Metric(UPDATE_NORM, "‖θ_{t−1} − θ_t‖₂, the update of this one step", "θ", "norm steps after the first", _NORMS),
    Metric(UPDATE_RATIO, "‖Δθ‖ / ‖θ‖", "1", "with `update/norm`", _NORMS),
    Metric(ADAM_EPSILON_FRACTION, "share of coordinates where √v̂_t < ε, i.e. ε dominates Adam's denominator "
           "(Everett et al. 2024)", "1 (0 to 1)", "norm steps, Adam and AdamW only", _NORMS),
    Metric(PROBE_LOSS, "L(θ), the loss on the probe set (size-weighted mean over its batches)", "loss", "probe steps", _CURV),
    Metric(LAMBDA_MAX, "λ₁(H), the sharpness, by warm-started Lanczos (full) or a few Lanczos steps from the kept "
           "eigenvector (streamed)", "loss/θ²", "probe steps; left out of a streamed point whose residual was too large "
           "and could not escalate", _CURV),
    Metric(LAMBDA_MAX_RESIDUAL, "‖Hy − θy‖ for the top Ritz pair plus the products' rounding noise: some eigenvalue lies "
           "within this of `lambda_max`", "loss/θ²", "probe steps", _CURV),
    Metric(CONVERGED, "1 when every requested pair met its tolerance (full: tol·\\|λ\\|, default 1e-3; streamed: 5% of "
           "λ₁), else 0", "flag", "probe steps", _CURV),
    Metric(HVPS, "Hessian-vector products the H solve used", "count", "probe steps", _CURV),
    Metric(STREAMED, "1 for a streamed point, 0 for a full solve", "flag", "probe steps", _CURV),
    Metric(LAMBDA_I, "λ_i(H) for i = 2 … k (`k=` on the Monitor, default 1)", "loss/θ²", "full solves with k ≥ 2", _CURV),
    Metric(DIRECTIONAL_SHARPNESS, "gᵀHg / gᵀg, the curvature along the probe gradient", "loss/θ²", "full solves", _CURV),
    Metric(GRADIENT_OVERLAP, "‖V_kᵀg‖² / ‖g‖², the share of the probe gradient in the top-k eigenspace (Gur-Ari et al. "
           "2018)", "1 (0 to 1)", "full solves", _CURV),
    Metric(TOP_ENERGY, "Σ v_i² over one part of the model's coordinates (a block, or a leaf module with "
           "`module_metrics=\"leaf\"`, as for `grad/norm/<module>`) for the top eigenvector v: where the sharpest "
           "direction lives (sums to 1)", "1", "full solves", _CURV),
    Metric(THRESHOLD, "c/η for the reference parameter group: 2/η (GD), (2+2β)/η (momentum), 38/η (Adam, β₁ = 0.9), …",
           "loss/θ²", "probe steps, optimizers with an adapter (adaptive ones from their first step)", _CURV),
    Metric(REFERENCE_LR, "η of the reference group (the first with η > 0) that `threshold` and `stability_ratio` use, "
           "including decays the optimizer applies itself (Adagrad's `lr_decay`)", "θ²/loss", "with `threshold`", _CURV),
    Metric(PRECOND_LAMBDA_MAX, "the preconditioned sharpness λ₁(S^½(H + W)S^½); for SGD without weight decay equal to "
           "`lambda_max` (formerly `curvature/precond_lambda_max`: old run directories are read under the new name)",
           "loss/θ²", "with `threshold`, when trusted", _CURV),
    Metric(STABILITY_RATIO, "r = η·`precond/lambda_max`/c: 1 at the edge of stability, > 1 unstable along the top "
           "direction", "1", "with `precond/lambda_max`", _CURV),
    Metric(PRECOND_LAMBDA_MAX_RESIDUAL, _PRECOND_AS, "loss/θ²", _PRECOND_WHEN, _CURV),
    Metric(PRECOND_CONVERGED, _PRECOND_AS, "flag", _PRECOND_WHEN, _CURV),
    Metric(PRECOND_HVPS, _PRECOND_AS, "count", _PRECOND_WHEN, _CURV),
    Metric(PRECOND_STREAMED, _PRECOND_AS, "flag", _PRECOND_WHEN, _CURV),
    Metric(LOGITS_MAX, "max \\|z\\| over every logit", "logit", "probe steps", _LOGITS),
    Metric(LOGITS_RMS, "√mean(z²)", "logit", "probe steps", _LOGITS),
    Metric(LOGITS_LOG_Z_MEAN, "mean over tokens/examples of log Z = logsumexp(z)", "nats", "probe steps", _LOGITS),
    Metric(LOGITS_LOG_Z_MAX, "max of log Z (output-logit divergence, Wortsman et al. 2023)", "nats", "probe steps", _LOGITS),
    Metric(LOGITS_Z_LOSS, "PaLM's z-loss 10⁻⁴·mean((log Z)²)", "nats²", "probe steps", _LOGITS),
    Metric(ATTN_MAX_LOGIT, "max \\|s\\| over all attention calls, heads and positions", "logit", _ATTN_WHEN, _ATTN),
    Metric(ATTN_MAX_LOGIT_MODULE, "the same for the attention calls of one module: the innermost module running when "
           "the call was made (`blocks.0.attn`; an `nn.MultiheadAttention` itself; `root` when the model's own forward "
           "makes it); a module's second call in one forward pass is `<module>-2`, and so on (earlier versions named "
           "it by the call's index, `attn/max_logit/0`)", "logit", "same", _ATTN),
    Metric(ATTN_ENTROPY_MEAN, "mean attention entropy −Σ p log p over queries that see at least two keys, averaged over "
           "calls", "nats", "same", _ATTN),
    Metric(ATTN_ENTROPY_MIN, "the lowest per-call minimum of that entropy", "nats", "same", _ATTN),
    Metric(MONITOR_OVERHEAD, "the Monitor's own time / the training loop's time so far", "1", "cheap-metric steps", _SELF),
    Metric(PROBE_SECONDS, "wall time of this probe", "s", "probe steps", _SELF),
    Metric(PROBE_HVPS, "every Hessian-vector product of this probe (both operators, and an operator's rounding-noise "
           "measurement when it is taken)", "count", "probe steps", _SELF),
    *(Metric(FAILED.format(what=what), f"1 when the {what} measurement raised: training goes on, with one warning per "
             "kind of failure", "flag", "the step it failed", _SELF) for what in FAILURES),
)

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _pattern(template: str) -> re.Pattern[str]:
    """The keys of ``template``: its text as it is, any non-empty text for each placeholder."""
    return re.compile(".+".join(re.escape(piece) for piece in _PLACEHOLDER.split(template)[::2]) + r"\Z")


_FAMILIES = [(_pattern(m.name), m) for m in METRICS if _PLACEHOLDER.search(m.name)]


def family(template: str, **parts: object) -> str:
    """A key of a family: ``family(GRAD_NORM_MODULE, module="fc")`` is ``"grad/norm/fc"``."""
    return template.format(**parts)


def stem(template: str) -> str:
    """The fixed start of a family's keys: ``stem(ATTN_MAX_LOGIT_MODULE)`` is ``"attn/max_logit/"``."""
    return _PLACEHOLDER.split(template)[0]


def failed(what: str) -> str:
    """The key that says the ``what`` measurement raised (``"curvature/failed"``)."""
    return FAILED.format(what=what)


def entry_for(key: str) -> Metric | None:
    """The table entry ``key`` belongs to (exact names before families), or None when it has none.

    >>> entry_for("grad/norm/blocks.0").name, entry_for("grad/norm").name
    ('grad/norm/{module}', 'grad/norm')
    """
    exact = next((m for m in METRICS if m.name == key), None)
    if exact is not None:
        return exact
    return next((m for pattern, m in _FAMILIES if pattern.match(key)), None)


def current_name(name: str) -> str:
    """``name`` as it is logged now (an old name from :data:`ALIASES` renamed, any other as it is)."""
    return ALIASES.get(name, name)


def prefixed(name: str) -> str:
    """``name`` as written outside the run directory: ``"loss"`` -> ``"edgewatch/loss"``."""
    return PREFIX + name


def documented(name: str) -> str:
    """A name as the documentation shows it: placeholders in angle brackets (``grad/norm/<module>``)."""
    return _PLACEHOLDER.sub(r"<\1>", name)


def markdown_tables(metrics: Iterable[Metric] = METRICS) -> dict[str, str]:
    """Section title -> its Markdown table (``| key | meaning | unit | when |``), as in ``docs/metrics.md``."""
    rows: dict[str, list[str]] = {}
    for m in metrics:
        rows.setdefault(m.section, ["| key | meaning | unit | when |", "|---|---|---|---|"])
        rows[m.section].append(f"| `{documented(m.name)}` | {m.meaning} | {m.unit} | {m.when} |")
    return {section: "\n".join(lines) for section, lines in rows.items()}


def with_tables(text: str) -> str:
    """``text`` (``docs/metrics.md``) with the table under each section heading of :data:`METRICS`
    (``## <section>``) replaced by :func:`markdown_tables`'; the prose around them is kept.

    Raises:
        ValueError: a section without its heading, or a heading without a table below it.
    """
    for title, table in markdown_tables().items():
        heading = text.find(f"\n## {title}\n")
        start = text.find("\n| key |", heading)
        if heading < 0 or start < 0:
            raise ValueError(f"no table under the heading '## {title}'")
        end = start + 1
        while text.startswith("|", end):
            end = text.find("\n", end) + 1 or len(text)
        text = text[: start + 1] + table + "\n" + text[end:]
    return text
