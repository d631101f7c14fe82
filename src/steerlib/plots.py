"""Plotting functions shared by the chapters: one function per figure kind, one look for the whole book.

Every function takes plain arrays (numpy) and labels, draws on a given ``ax`` (or a new figure) and returns
the axes, so a chapter cell stays a one-liner and every figure looks the same. Call :func:`apply_style`
once at the top of a chapter.

Colour convention used throughout the book: tokens (or concepts) of the target concept ``T`` are drawn in
:data:`TARGET_COLOR`, everything else in :data:`OFF_TARGET_COLOR`; concepts of a dataset are coloured with
:data:`CONCEPT_COLORS` in order (the first one is the target colour).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from steerlib.theory_checks import is_target_token, top_token_curves

TARGET_COLOR = "#1f6fb4"
"""Colour of target-concept tokens (``z in T``) and of the target concept."""

OFF_TARGET_COLOR = "#d9731a"
"""Colour of off-target tokens (``z notin T``) and of other concepts."""

CONCEPT_COLORS = ("#1f6fb4", "#d9731a", "#3a9a4a", "#9b59b6", "#c0392b", "#7f8c8d", "#b7950b", "#16a085")
"""Colours of concepts ``C_1, C_2, ...`` in order (cycled when there are more concepts)."""

REFERENCE_COLOR = "#444444"
"""Colour of reference lines (bounds, limits, closed forms drawn over measurements)."""

FIGURE_WIDTH = 6.4
"""Width in inches of a single-panel figure."""


def apply_style() -> None:
    """Set the book's matplotlib style (font sizes, grid, no top/right spines, tight layout)."""
    mpl.rcParams.update({
        "figure.figsize": (FIGURE_WIDTH, 3.6),
        "figure.dpi": 110,
        "figure.autolayout": True,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 8,
        "legend.frameon": False,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "lines.linewidth": 1.6,
    })


def concept_color(k: int) -> str:
    """Colour of concept ``C_{k+1}`` (``k`` is 0-based)."""
    return CONCEPT_COLORS[k % len(CONCEPT_COLORS)]


def _new_axes(ax: plt.Axes | None, figsize: tuple[float, float] | None = None) -> plt.Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_next_token_rows(token_names: Sequence[str], token_concepts: Sequence[int],
                         rows: Mapping[str, np.ndarray], *, concept_names: Sequence[str] | None = None,
                         ax: plt.Axes | None = None,
                         title: str = "Next-token probabilities p(z | c)") -> plt.Axes:
    """Grouped bar chart of next-token distributions ``p(. | c)`` over the vocabulary (Figure 2).

    Bars are coloured by the concept of the token; the first row is drawn solid, the following ones
    increasingly transparent and hatched, so ``a_z`` (context in the token's concept) and ``b_z`` (context
    elsewhere) are told apart at a glance.

    Args:
        token_names: the ``V`` token names, in vocabulary order.
        token_concepts: the 0-based concept index of each token.
        rows: context name -> its probability row ``p(. | c)`` of length ``V``.
        concept_names: optional names of the concepts for the legend.
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
    """
    ax = _new_axes(ax)
    n_tokens = len(token_names)
    n_rows = len(rows)
    if n_rows == 0:
        raise ValueError("rows is empty: give at least one context row to plot")
    width = 0.8 / n_rows
    x = np.arange(n_tokens)
    colors = [concept_color(int(k)) for k in token_concepts]
    hatches = ("", "//", "..", "xx")
    for i, (name, row) in enumerate(rows.items()):
        row = np.asarray(row, dtype=float)
        if row.shape != (n_tokens,):
            raise ValueError(f"row {name!r} has shape {row.shape}; expected ({n_tokens},), one entry per token")
        ax.bar(x + (i - (n_rows - 1) / 2) * width, row, width, color=colors, alpha=1.0 if i == 0 else 0.35,
               hatch=hatches[i % len(hatches)], edgecolor="white" if i == 0 else "#555555", linewidth=0.5)
    ax.set_xticks(x, list(token_names))
    ax.set_xlabel("next token z")
    ax.set_ylabel("p(z | c)")
    ax.set_title(title)
    row_handles = [mpl.patches.Patch(facecolor="#999999", alpha=1.0 if i == 0 else 0.35,
                                     hatch=hatches[i % len(hatches)], edgecolor="#555555", label=f"c = {name}")
                   for i, name in enumerate(rows)]
    concept_ids = sorted(set(int(k) for k in token_concepts))
    names = concept_names if concept_names is not None else [f"C{k + 1}" for k in concept_ids]
    concept_handles = [mpl.patches.Patch(facecolor=concept_color(k), label=str(names[k])) for k in concept_ids]
    ax.legend(handles=row_handles + concept_handles, ncol=2)
    return ax



def animate_next_token_rows(token_names: Sequence[str], token_concepts: Sequence[int], unsteered: np.ndarray,
                            steered: np.ndarray, alphas: Sequence[float], *, context: str,
                            concept_names: Sequence[str] | None = None, title: str = "σ(f_α(c))") -> str:
    """A slider over ``α`` as self-contained HTML (matplotlib's ``jshtml``): each frame is
    :func:`plot_next_token_rows` of the unsteered row and the row steered at one ``α`` (``steered[k]`` at
    ``alphas[k]``). The frames are precomputed, so the slider works on the static page and in a live notebook."""
    from matplotlib import animation

    steered = np.asarray(steered, dtype=float)
    if steered.shape[0] != len(alphas):
        raise ValueError(f"steered has {steered.shape[0]} rows for {len(alphas)} values of α: give one row per α.")
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=80)
    top = 1.05 * max(float(np.max(unsteered)), float(np.max(steered)))

    def frame(k: int):
        ax.clear()
        plot_next_token_rows(token_names, token_concepts,
                             {context: unsteered, f"{context}, α = {alphas[k]:.2f}": steered[k]},
                             concept_names=concept_names, ax=ax, title=f"{title}, α = {alphas[k]:.2f}")
        ax.set_ylim(0.0, top)

    movie = animation.FuncAnimation(fig, frame, frames=len(alphas), interval=120)
    page = movie.to_jshtml(default_mode="once")
    plt.close(fig)
    page = re.sub(r'<link rel="stylesheet"\s*href="[^"]*font-awesome[^"]*">', "", page)
    return re.sub(r'<i class="fa ([^"]+)"></i>', lambda icon: _PLAYER_SYMBOLS[icon.group(1)], page)


# The player's buttons as characters: matplotlib's jshtml draws them with Font Awesome icons loaded from a CDN,
# which an offline page cannot reach.
_PLAYER_SYMBOLS = {"fa-minus": "−", "fa-plus": "+", "fa-fast-backward": "⏮", "fa-step-backward": "◀|",
                   "fa-play fa-flip-horizontal": "◀", "fa-pause": "⏸", "fa-play": "▶", "fa-step-forward": "|▶",
                   "fa-fast-forward": "⏭"}

def plot_training_curve(losses: np.ndarray, bound: float, *, ax: plt.Axes | None = None,
                        title: str = "UFM training: cross-entropy vs the entropy bound") -> plt.Axes:
    """Loss of gradient descent against the step, with the entropy lower bound (App. B.1).

    Draws two panels side by side when ``ax`` is ``None``: the loss against the step (log scale, so the
    fast initial drop is visible) with the bound as a horizontal line, and the gap ``loss - bound`` on a
    log scale against the step. With a given ``ax`` (a pair of axes) it draws on those.

    Args:
        losses: the loss at each gradient step.
        bound: the dataset entropy ``sum_j pi_j H(p(. | c_j))``, the smallest achievable loss.
        ax: a sequence of two axes, or ``None`` for a new figure.
        title: figure title.
    """
    losses = np.asarray(losses, dtype=float)
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH * 1.6, 3.4))
        fig.suptitle(title, fontsize=11)
    else:
        axes = ax
    steps = np.arange(len(losses))
    axes[0].semilogx(steps + 1, losses, color=TARGET_COLOR, label="CE(f) during training")
    axes[0].axhline(bound, color=REFERENCE_COLOR, linestyle="--", label=f"entropy bound {bound:.4f}")
    axes[0].set_xlabel("gradient step + 1 (log scale)")
    axes[0].set_ylabel("cross-entropy")
    axes[0].legend()
    gap = np.maximum(losses - bound, np.finfo(float).tiny)
    axes[1].semilogy(steps, gap, color=TARGET_COLOR)
    axes[1].set_xlabel("gradient step")
    axes[1].set_ylabel("CE(f) - entropy (log scale)")
    return axes


def _draw_limit_ticks(ax: plt.Axes, lo: float, hi: float, values: Sequence[float], side: str) -> None:
    """Short grey ticks ending in a triangle at the ``side`` edge of ``[lo, hi]``, one per finite value."""
    span = 0.06 * (hi - lo)
    edge = hi if side == "right" else lo
    xs = [edge - span, edge] if side == "right" else [edge, edge + span]
    for value in values:
        if not np.isfinite(value):
            continue
        ax.plot(xs, [value] * 2, color=REFERENCE_COLOR, linewidth=2.2, alpha=0.7, solid_capstyle="butt")
        ax.plot([edge], [value], marker=">" if side == "right" else "<", color=REFERENCE_COLOR, markersize=4,
                linestyle="none")


def plot_delta_p_curves(alphas: np.ndarray, delta_p: np.ndarray, labels: Sequence[str],
                        is_target: Sequence[bool], *, ax: plt.Axes | None = None,
                        peaks: Sequence[float] | None = None, limits: Sequence[float] | None = None,
                        limit_side: str = "right", colors: Sequence[str] | None = None,
                        title: str = "Next-token probability increase Δp(z | c, α)",
                        ylabel: str = "Δp(z | c, α)", legend: bool = True) -> plt.Axes:
    """Probability increase ``Δp(z | c, α)`` against ``α``, one curve per token (Figures 3, B.1, 6).

    Target tokens (``z in T``) are drawn solid, off-target tokens dashed; by default target curves use
    :data:`TARGET_COLOR` and off-target ones :data:`OFF_TARGET_COLOR` (pass ``colors`` to colour by concept
    instead). Optional overlays: the predicted bump locations ``α(j, z)`` of Th. 3.3 as vertical dotted lines
    in the curve's colour (infinite or out-of-range values are skipped), and predicted limits (Prop. B.1) as
    short horizontal ticks with a triangle marker at the ``limit_side`` edge of the plot.

    Works for any model: the UFM of the theory chapters or the top tokens of a steered LLM.

    Args:
        alphas: the steering strengths, shape ``(A,)``.
        delta_p: ``Δp`` for each strength and token, shape ``(A, K)``.
        labels: the ``K`` token names (legend entries).
        is_target: for each token, whether it belongs to the target concept ``T``.
        ax: axes to draw on (a new figure when ``None``).
        peaks: predicted peak location of each token (``±inf`` or ``nan`` for none), shape ``(K,)``.
        limits: predicted limit of each curve as ``α -> ±∞``, shape ``(K,)``.
        limit_side: ``"right"`` (limits as ``α -> +∞``) or ``"left"`` (``α -> -∞``).
        colors: one colour per token; defaults to target/off-target colours.
        title: axes title.
        ylabel: label of the vertical axis.
        legend: whether to draw the legend (turn it off on all but one panel of a grid).
    """
    alphas = np.asarray(alphas, dtype=float)
    delta_p = np.asarray(delta_p, dtype=float)
    n_tokens = len(labels)
    if delta_p.shape != (alphas.size, n_tokens):
        raise ValueError(f"delta_p has shape {delta_p.shape}; expected (len(alphas), len(labels)) = "
                         f"({alphas.size}, {n_tokens}): one column per token")
    if len(is_target) != n_tokens:
        raise ValueError(f"is_target has {len(is_target)} entries; give one per token ({n_tokens})")
    if limit_side not in ("right", "left"):
        raise ValueError(f"limit_side must be 'right' (α -> +∞) or 'left' (α -> -∞), got {limit_side!r}")
    if colors is None:
        colors = [TARGET_COLOR if target else OFF_TARGET_COLOR for target in is_target]
    ax = _new_axes(ax)
    lo, hi = float(alphas.min()), float(alphas.max())
    for k in range(n_tokens):
        ax.plot(alphas, delta_p[:, k], color=colors[k], linestyle="-" if is_target[k] else "--",
                label=str(labels[k]))
        if peaks is not None and np.isfinite(peaks[k]) and lo <= peaks[k] <= hi:
            ax.axvline(float(peaks[k]), color=colors[k], linestyle=":", linewidth=0.9, alpha=0.8)
    if limits is not None:
        _draw_limit_ticks(ax, lo, hi, limits, limit_side)
    ax.axhline(0.0, color=REFERENCE_COLOR, linewidth=0.6)
    ax.set_xlabel("steering strength α")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    extra = []
    if peaks is not None:
        extra.append(mpl.lines.Line2D([], [], color=REFERENCE_COLOR, linestyle=":", label="predicted peak α(j, z)"))
    if limits is not None:
        extra.append(mpl.lines.Line2D([], [], color=REFERENCE_COLOR, linewidth=2.2, alpha=0.7,
                                      label="predicted limit"))
    if legend:
        ax.legend(handles=handles + extra, ncol=2 if n_tokens + len(extra) > 6 else 1, fontsize=7,
                  loc="best")
    return ax


def plot_concept_curves(alphas: np.ndarray, delta_p: np.ndarray, labels: Sequence[str], *,
                        colors: Sequence[str] | None = None, reference: np.ndarray | None = None,
                        reference_label: str = "closed form",
                        limits: tuple[Sequence[float], Sequence[float]] | None = None,
                        ax: plt.Axes | None = None,
                        title: str = "Concept probability increase Δp(C | c, α)",
                        ylabel: str = "Δp(C | c, α)", legend: bool = True) -> plt.Axes:
    """Concept probability increase ``Δp(C | c, α)`` against ``α``, one curve per concept (Figure 4, 7 top).

    Optionally overlays a second computation of the same curves (e.g. the tanh representation of Th. 3.6)
    as sparse markers, and the predicted limits as grey ticks at the two edges of the plot (``α -> +∞`` on the
    right, ``α -> -∞`` on the left).

    Args:
        alphas: the steering strengths, shape ``(A,)``.
        delta_p: one column per concept, shape ``(A, K)``.
        labels: the ``K`` concept names.
        colors: one colour per concept (defaults to :data:`CONCEPT_COLORS` in order).
        reference: the same curves computed another way, shape ``(A, K)``, drawn as markers.
        reference_label: legend entry of the markers.
        limits: ``(limits_plus, limits_minus)``, the predicted limits of each curve as ``α -> +∞`` and
            ``α -> -∞`` (``nan`` where nothing is predicted), each of shape ``(K,)``.
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
        ylabel: label of the vertical axis.
        legend: whether to draw the legend (turn it off on all but one panel of a grid).
    """
    alphas = np.asarray(alphas, dtype=float)
    delta_p = np.asarray(delta_p, dtype=float)
    n_concepts = len(labels)
    if delta_p.shape != (alphas.size, n_concepts):
        raise ValueError(f"delta_p has shape {delta_p.shape}; expected (len(alphas), len(labels)) = "
                         f"({alphas.size}, {n_concepts}): one column per concept")
    if reference is not None and np.shape(reference) != delta_p.shape:
        raise ValueError(f"reference has shape {np.shape(reference)}; it must match delta_p {delta_p.shape}")
    colors = colors if colors is not None else [concept_color(k) for k in range(n_concepts)]
    ax = _new_axes(ax)
    every = max(1, alphas.size // 25)
    for k in range(n_concepts):
        ax.plot(alphas, delta_p[:, k], color=colors[k], label=str(labels[k]))
        if reference is not None:
            ax.plot(alphas[::every], np.asarray(reference)[::every, k], color=colors[k], marker="o",
                    markersize=3.5, markerfacecolor="none", linestyle="none")
    if limits is not None:
        _draw_limit_ticks(ax, float(alphas.min()), float(alphas.max()), limits[0], "right")
        _draw_limit_ticks(ax, float(alphas.min()), float(alphas.max()), limits[1], "left")
    ax.axhline(0.0, color=REFERENCE_COLOR, linewidth=0.6)
    handles, _ = ax.get_legend_handles_labels()
    if reference is not None:
        handles.append(mpl.lines.Line2D([], [], color=REFERENCE_COLOR, marker="o", markerfacecolor="none",
                                        linestyle="none", markersize=3.5, label=reference_label))
    if limits is not None:
        handles.append(mpl.lines.Line2D([], [], color=REFERENCE_COLOR, linewidth=2.2, alpha=0.7,
                                        label="predicted limit"))
    if legend:
        ax.legend(handles=handles)
    ax.set_xlabel("steering strength α")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def plot_delta_ce(alphas: np.ndarray, delta_ce: np.ndarray, *, quadratic_coefficient: float | None = None,
                  asymptotes: Sequence[tuple[float, float]] = (), ax: plt.Axes | None = None,
                  label: str = "ΔCE(α)",
                  title: str = "Cross-entropy increase ΔCE(α)") -> plt.Axes:
    """``ΔCE(α) = CE(f_α) - CE(f)`` against ``α`` with its predicted shapes (Figure 5, Figure 7 bottom).

    Args:
        alphas: the steering strengths, shape ``(A,)``.
        delta_ce: the measured increase of cross-entropy, shape ``(A,)``.
        quadratic_coefficient: ``c`` of the local law ``ΔCE(α) ≈ c α²`` (Th. 3.8), drawn in black.
        asymptotes: lines ``α -> slope * α + intercept`` drawn dashed (e.g. the large-|α| asymptotes).
        ax: axes to draw on (a new figure when ``None``).
        label: legend entry of the measured curve.
        title: axes title.
    """
    alphas = np.asarray(alphas, dtype=float)
    delta_ce = np.asarray(delta_ce, dtype=float)
    if delta_ce.shape != alphas.shape:
        raise ValueError(f"delta_ce has shape {delta_ce.shape}; expected {alphas.shape}, one value per α")
    ax = _new_axes(ax)
    ax.plot(alphas, delta_ce, color=TARGET_COLOR, label=label, linewidth=2.2)
    top = float(np.nanmax(delta_ce))
    bottom = min(0.0, float(np.nanmin(delta_ce)))
    margin = 0.08 * (top - bottom if top > bottom else 1.0)
    if quadratic_coefficient is not None:
        quad = quadratic_coefficient * alphas**2
        quad = np.where(quad <= top + margin, quad, np.nan)
        ax.plot(alphas, quad, color="black", linewidth=1.2, label=f"{quadratic_coefficient:.4g} α² (Th. 3.8)")
    for i, (slope, intercept) in enumerate(asymptotes):
        line = slope * alphas + intercept
        line = np.where((line >= bottom - margin) & (line <= top + margin), line, np.nan)
        ax.plot(alphas, line, color=REFERENCE_COLOR, linestyle="--", linewidth=1.0, zorder=3,
                label="asymptotes" if i == 0 else None)
    ax.set_ylim(bottom - margin, top + margin)
    ax.set_xlabel("steering strength α")
    ax.set_ylabel("ΔCE(α)")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_limit_convergence(alphas: np.ndarray, values: np.ndarray, layers: Sequence[int], *,
                           ax: plt.Axes | None = None, reference_slope: float | None = -2.0,
                           ylabel: str = "KL(σ(y(α)) ‖ σ(LN(±v)Wᵀ))",
                           title: str = "Distance to the large-α limit (Prop. 4.1)") -> plt.Axes:
    """A distance to the Prop. 4.1 limit against ``|α|`` on log-log axes, per layer and sign.

    Layers are coloured with :data:`CONCEPT_COLORS` in order; ``α > 0`` is drawn solid, ``α < 0`` dashed.
    An optional reference line of slope ``reference_slope`` (``|α|^-2`` for a KL divergence) is drawn over
    the last two decades, just above the highest curve.

    Args:
        alphas: the magnitudes ``|α|``, shape ``(A,)``.
        values: the distance, shape ``(2, L, A)`` (sign ``+`` first, then ``-``), positive.
        layers: the ``L`` steered blocks (legend entries).
        ax: axes to draw on (a new figure when ``None``).
        reference_slope: slope of the dotted reference line, or ``None`` for none.
        ylabel: label of the vertical axis.
        title: axes title.
    """
    alphas = np.asarray(alphas, dtype=float)
    values = np.asarray(values, dtype=float)
    if values.shape != (2, len(layers), alphas.size):
        raise ValueError(f"values has shape {values.shape}; expected (2, len(layers), len(alphas)) = "
                         f"(2, {len(layers)}, {alphas.size}): sign, layer, |α|")
    ax = _new_axes(ax)
    for li, layer in enumerate(layers):
        for si, (sign, style) in enumerate((("+", "-"), ("−", "--"))):
            ax.loglog(alphas, np.maximum(values[si, li], np.finfo(float).tiny), color=concept_color(li),
                      linestyle=style, marker="o", markersize=2.5, label=f"layer {layer}, α {sign}")
    if reference_slope is not None:
        tail = alphas[alphas >= alphas[-1] / 100]
        anchor = 3 * values[:, :, -1].max()
        ax.loglog(tail, anchor * (tail / alphas[-1]) ** reference_slope, color=REFERENCE_COLOR,
                  linestyle=":", linewidth=1.2, label=f"slope {reference_slope:g}")
    ax.set_xlabel("steering strength |α|")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(ncol=2)
    return ax


def plot_closed_form_vs_model(alphas: np.ndarray, closed_form: np.ndarray, measured: np.ndarray,
                              labels: Sequence[str], *, colors: Sequence[str] | None = None,
                              linestyles: Sequence[str] | None = None, marker_every: int = 10, ax: plt.Axes | None = None,
                              title: str = "Closed form (lines) vs trained model (markers)",
                              ylabel: str = "σ_z(f_α(c))") -> plt.Axes:
    """A closed-form prediction as lines and the same quantity measured on a model as markers, per token.

    Used to show that a trained UFM steers exactly as Lemma B.3 predicts: where the markers sit on the
    lines, theory and model agree.

    Args:
        alphas: steering strengths, shape ``(A,)``.
        closed_form: predicted values, shape ``(A, K)``.
        measured: values measured on the model, shape ``(A, K)``.
        labels: the ``K`` token names.
        colors: one colour per token (default: the concept colours in order).
        linestyles: one line style per token (default: solid), to tell apart tokens sharing a colour.
        marker_every: draw a marker every this many grid points.
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
        ylabel: label of the vertical axis.
    """
    alphas = np.asarray(alphas, dtype=float)
    closed_form = np.asarray(closed_form, dtype=float)
    measured = np.asarray(measured, dtype=float)
    if closed_form.shape != (alphas.size, len(labels)) or measured.shape != closed_form.shape:
        raise ValueError(f"closed_form {closed_form.shape} and measured {measured.shape} must both be "
                         f"(len(alphas), len(labels)) = ({alphas.size}, {len(labels)})")
    if colors is None:
        colors = [concept_color(k) for k in range(len(labels))]
    if linestyles is None:
        linestyles = ["-"] * len(labels)
    ax = _new_axes(ax)
    for k, label in enumerate(labels):
        ax.plot(alphas, closed_form[:, k], color=colors[k], linestyle=linestyles[k], label=str(label))
        ax.plot(alphas[::marker_every], measured[::marker_every, k], color=colors[k], marker="o",
                markersize=3.5, linestyle="none", markerfacecolor="white")
    handles, names = ax.get_legend_handles_labels()
    handles += [mpl.lines.Line2D([], [], color=REFERENCE_COLOR, label="closed form"),
                mpl.lines.Line2D([], [], color=REFERENCE_COLOR, marker="o", markerfacecolor="white",
                                 linestyle="none", label="trained model")]
    ax.legend(handles=handles, ncol=2, fontsize=7)
    ax.set_xlabel("steering strength α")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def plot_language_model_loss(train_losses: Sequence[float], eval_steps: Sequence[int],
                             val_losses: Sequence[float], *, smooth: int = 25, ax: plt.Axes | None = None,
                             title: str = "Training a language model: next-token cross-entropy") -> plt.Axes:
    """Training loss of every step (faint, and its running mean over ``smooth`` steps) and validation loss.

    Args:
        train_losses: loss of each optimisation step (nats per token).
        eval_steps: steps at which the validation loss was measured.
        val_losses: the validation losses (nats per token), one per entry of ``eval_steps``.
        smooth: window of the running mean drawn over the training loss.
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
    """
    train_losses = np.asarray(train_losses, dtype=float)
    if len(eval_steps) != len(val_losses):
        raise ValueError(f"{len(eval_steps)} eval_steps for {len(val_losses)} val_losses: give one step per loss")
    ax = _new_axes(ax)
    steps = np.arange(1, train_losses.size + 1)
    ax.plot(steps, train_losses, color=OFF_TARGET_COLOR, alpha=0.25, linewidth=0.6)
    window = max(1, min(smooth, train_losses.size))
    running = np.convolve(train_losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1:], running, color=OFF_TARGET_COLOR, label=f"training (mean of {window} steps)")
    ax.plot(eval_steps, val_losses, color=TARGET_COLOR, marker="o", markersize=3, label="validation (held out)")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_judged_concept_probability(alphas: np.ndarray, probability: np.ndarray, low: np.ndarray,
                                    high: np.ndarray, *, fit=None, label: str = "", color: str | None = None,
                                    ax: plt.Axes | None = None,
                                    title: str = "Concept probability of steered completions") -> plt.Axes:
    """Judged concept probability p̂(α) with its confidence band and a fitted logistic (Figure 7 top, A.11).

    Args:
        alphas: the steering strengths, shape ``(A,)``.
        probability: p̂(α), shape ``(A,)``.
        low, high: the confidence band, shape ``(A,)``.
        fit: a callable ``fit(α)`` (e.g. :class:`steerlib.stats.SigmoidFit`) drawn dashed on a fine grid.
        label: legend entry (e.g. the concept).
        color: line colour (default :data:`TARGET_COLOR`).
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
    """
    alphas = np.asarray(alphas, dtype=float)
    color = color or TARGET_COLOR
    ax = _new_axes(ax)
    ax.fill_between(alphas, low, high, color=color, alpha=0.18, linewidth=0)
    ax.plot(alphas, probability, color=color, marker="o", markersize=3.5, label=label or None)
    if fit is not None:
        fine = np.linspace(alphas.min(), alphas.max(), 200)
        ax.plot(fine, fit(fine), color=color, linestyle="--", linewidth=1.1,
                label=f"{label} logistic fit" if label else "logistic fit")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("steering strength α")
    ax.set_ylabel("concept probability p̂(α)")
    ax.set_title(title)
    if label or fit is not None:
        ax.legend()
    return ax


def plot_layer_profiles(profiles: Mapping[str, np.ndarray], *, styles: Mapping[str, dict] | None = None,
                        ax: plt.Axes | None = None, logy: bool = True, ylabel: str = "norm",
                        title: str = "Norms per block") -> plt.Axes:
    """One quantity per block, several curves (e.g. ``‖v^(ℓ)‖`` per concept against the residual norm).

    Args:
        profiles: curve label -> values, one per block (block ``ℓ`` at x = ``ℓ``).
        styles: optional matplotlib keyword arguments per label (colour, linestyle, ...); by default curves
            are coloured with :data:`CONCEPT_COLORS` in order.
        ax: axes to draw on (a new figure when ``None``).
        logy: logarithmic vertical axis.
        ylabel: label of the vertical axis.
        title: axes title.
    """
    if not profiles:
        raise ValueError("profiles is empty: give at least one curve")
    ax = _new_axes(ax)
    for k, (label, values) in enumerate(profiles.items()):
        values = np.asarray(values, dtype=float)
        style = {"color": concept_color(k)} | dict((styles or {}).get(label, {}))
        ax.plot(np.arange(values.size), values, label=label, **style)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("block ℓ")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(ncol=2)
    return ax


def plot_similarity_matrix(matrix: np.ndarray, labels: Sequence[str], *, ax: plt.Axes | None = None,
                           title: str = "Cosine similarity of steering vectors") -> plt.Axes:
    """Heat map of a symmetric similarity matrix in ``[-1, 1]`` with its values written in the cells.

    Args:
        matrix: shape ``(n, n)``.
        labels: the ``n`` row/column names.
        ax: axes to draw on (a new square figure when ``None``).
        title: axes title.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix has shape {matrix.shape}; expected ({len(labels)}, {len(labels)}), one row per label")
    ax = _new_axes(ax, figsize=(0.9 * len(labels) + 2.4, 0.75 * len(labels) + 1.6))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.grid(False)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(matrix[i, j]) > 0.6 else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    return ax


def plot_delta_ce_near_zero(alphas: np.ndarray, curves: Mapping[str, np.ndarray], *,
                            fits: Mapping[str, tuple[float, float]] | None = None,
                            predictions: Mapping[str, tuple[float, float]] | None = None,
                            ax: plt.Axes | None = None, xlabel: str = "steering strength α",
                            title: str = "ΔCE(α) near α = 0: the local quadratic law (Th. 3.8)") -> plt.Axes:
    """Measured ``ΔCE`` near 0 (markers) with a fitted and a predicted ``b α + c α²`` per curve (Fig. 5, 7).

    Args:
        alphas: the strengths shown, shape ``(A,)``.
        curves: label -> ``ΔCE`` on ``alphas``; coloured with :data:`CONCEPT_COLORS` in order.
        fits: label -> ``(slope, curvature)`` of the least-squares fit, drawn solid.
        predictions: label -> ``(slope, curvature)`` predicted, drawn dashed.
        ax: axes to draw on (a new figure when ``None``).
        xlabel: label of the horizontal axis (e.g. ``"relative strength α_rel"``).
        title: axes title.
    """
    alphas = np.asarray(alphas, dtype=float)
    fine = np.linspace(alphas.min(), alphas.max(), 200)
    ax = _new_axes(ax)
    for k, (label, values) in enumerate(curves.items()):
        color = concept_color(k)
        ax.plot(alphas, np.asarray(values, dtype=float), "o", color=color, markersize=4, label=f"{label}: measured")
        if fits and label in fits:
            slope, curvature = fits[label]
            ax.plot(fine, slope * fine + curvature * fine**2, color=color, linewidth=1.3, label=f"{label}: fit")
        if predictions and label in predictions:
            slope, curvature = predictions[label]
            ax.plot(fine, slope * fine + curvature * fine**2, color=color, linestyle="--", linewidth=1.1,
                    label=f"{label}: predicted")
    ax.axhline(0.0, color=REFERENCE_COLOR, linewidth=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ΔCE(α) (nats / token)")
    ax.set_title(title)
    ax.legend(ncol=2)
    return ax


def plot_delta_ce_plateau(alphas: np.ndarray, curves: Mapping[str, np.ndarray],
                          plateaus: Mapping[str, tuple[float, float]], *, linear_threshold: float = 0.1,
                          ax: plt.Axes | None = None, xlabel: str = "steering strength α",
                          title: str = "ΔCE(α) over the whole range: the plateau (Prop. 4.1)") -> plt.Axes:
    """``ΔCE`` over a wide range on a symmetric-log ``α`` axis, with the Prop. 4.1 plateau of each sign dashed.

    Args:
        alphas: the strengths, shape ``(A,)``, both signs.
        curves: label -> ``ΔCE`` on ``alphas``; coloured with :data:`CONCEPT_COLORS` in order.
        plateaus: label -> ``(CE(+∞) - CE(0), CE(-∞) - CE(0))``, drawn over ``α > 0`` and ``α < 0``.
        linear_threshold: ``|α|`` below which the axis is linear.
        ax: axes to draw on (a new figure when ``None``).
        xlabel: label of the horizontal axis.
        title: axes title.
    """
    alphas = np.asarray(alphas, dtype=float)
    ax = _new_axes(ax)
    for k, (label, values) in enumerate(curves.items()):
        color = concept_color(k)
        ax.plot(alphas, np.asarray(values, dtype=float), color=color, marker="o", markersize=3, label=label)
        if label in plateaus:
            plus, minus = plateaus[label]
            ax.hlines(plus, 0, alphas.max(), colors=color, linestyles="--", linewidth=1.0,
                      label=f"{label}: CE of σ(LN(±v)Wᵀ) − CE(0)")
            ax.hlines(minus, alphas.min(), 0, colors=color, linestyles="--", linewidth=1.0)
    ax.set_xscale("symlog", linthresh=linear_threshold)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ΔCE(α) (nats / token)")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_accuracy_curve(alphas: np.ndarray, accuracy: np.ndarray, *, chance: float | None = 0.25,
                        band: tuple[np.ndarray, np.ndarray] | None = None, color: str = TARGET_COLOR,
                        label: str = "", ax: plt.Axes | None = None, ylabel: str = "accuracy",
                        title: str = "Accuracy under steering (Fig. A.6)") -> plt.Axes:
    """A benchmark accuracy against ``α`` with the chance level dashed (MMLU: 25 %).

    Args:
        alphas: the strengths, shape ``(A,)``.
        accuracy: the accuracy at each ``α``, shape ``(A,)``.
        chance: accuracy of uniform guessing (``None`` to omit the line).
        band: ``(low, high)`` confidence band drawn shaded (e.g. a Wilson interval), or ``None``.
        color: colour of the curve and its band (several curves on one axes: :func:`concept_color`).
        label: legend entry of the curve.
        ax: axes to draw on (a new figure when ``None``).
        ylabel: label of the vertical axis.
        title: axes title.
    """
    ax = _new_axes(ax)
    alphas = np.asarray(alphas, dtype=float)
    if band is not None:
        ax.fill_between(alphas, np.asarray(band[0], dtype=float), np.asarray(band[1], dtype=float), color=color,
                        alpha=0.2, linewidth=0)
    ax.plot(alphas, np.asarray(accuracy, dtype=float), color=color, marker="o", markersize=3.5, label=label or None)
    if chance is not None:
        ax.axhline(chance, color=REFERENCE_COLOR, linestyle="--", linewidth=1.0, label="chance")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("steering strength α")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return ax


def plot_letter_shares(alphas: np.ndarray, shares: np.ndarray, *, letters: Sequence[str] = ("A", "B", "C", "D"),
                       answer_shares: Sequence[float] | None = None, ax: plt.Axes | None = None,
                       title: str = "Which letter the steered model answers") -> plt.Axes:
    """Share of questions given each answer letter against ``α``, stacked to 1.

    Args:
        alphas: the strengths, shape ``(A,)``.
        shares: share of questions answered with each letter, shape ``(A, len(letters))``.
        letters: the letters, in the order of ``shares``' columns.
        answer_shares: share of questions whose right answer is each letter, written in the legend.
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
    """
    ax = _new_axes(ax)
    shares = np.asarray(shares, dtype=float)
    labels = [f"{letter} (the right answer of {100 * answer_shares[k]:.0f} % of them)" if answer_shares is not None
              else letter
              for k, letter in enumerate(letters)]
    ax.stackplot(np.asarray(alphas, dtype=float), shares.T, labels=labels,
                 colors=[concept_color(k) for k in range(len(letters))], alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_xlabel("steering strength α")
    ax.set_ylabel("share of questions")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ax


TOKEN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")
"""One colour per token of a next-token panel (cycled beyond ten), so each curve matches its legend entry."""


def token_colors(n: int) -> list[str]:
    """``n`` colours from :data:`TOKEN_COLORS`, one per token of a panel."""
    return [TOKEN_COLORS[k % len(TOKEN_COLORS)] for k in range(n)]


def token_label(token: str) -> str:
    """A token as a legend or table label: its Python ``repr`` (so ``'\\n'``, ``' '`` and ``'~~~~'`` are visible and
    quoted) with ``$`` escaped, so matplotlib never reads a token as mathtext."""
    return repr(token).replace("$", r"\$")


def panel_grid(n_panels: int, ncols: int = 2, panel_size: tuple[float, float] = (4.6, 3.4)):
    """A figure of ``n_panels`` axes in rows of ``ncols`` (at most two side by side, so a panel keeps a readable
    size at the page's width); axes beyond ``n_panels`` are removed. Returns ``(figure, list of axes)``."""
    if n_panels < 1:
        raise ValueError("n_panels must be at least 1")
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.remove()
    return fig, flat[:n_panels]


def plot_top_token_curves(sweep, log_odds: np.ndarray, at: str = "max", k: int = 8, *, ax: plt.Axes | None = None,
                          title: str | None = None) -> plt.Axes:
    """Fig. 6-style panel of a next-token sweep: the curves of the ``k`` most probable tokens at the largest
    (``"max"``, on ``α >= 0``) or smallest (``"min"``, on ``α <= 0``) ``α``, one colour per token
    (:func:`token_colors`), target tokens (``M > 0``, our reading of Lemma B.4 on an LLM) solid, the others dashed;
    legend labels escaped by :func:`token_label`.

    Args:
        sweep: a :class:`steerlib.experiments.next_token.NextTokenSweep`.
        log_odds: the model's ``M(z)`` for the vocabulary (:func:`steerlib.vectors.concept_log_odds`).
        at: ``"max"`` or ``"min"``.
        k: how many tokens.
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
    """
    alphas, curves, ids, tokens = top_token_curves(sweep, at, k)
    return plot_delta_p_curves(alphas, curves, [token_label(t) for t in tokens], is_target_token(log_odds, ids),
                               ax=ax, colors=token_colors(len(ids)), title=title or "")


def plot_delta_p_band(alphas: np.ndarray, mean: np.ndarray, spread: np.ndarray, labels: Sequence[str],
                      is_target: Sequence[bool], *, ax: plt.Axes | None = None, title: str = "",
                      band_label: str = "± 1 std") -> plt.Axes:
    """Mean curves ``Δp(z, α)`` with a band ``mean ± spread`` (App. A's resampling, Fig. A.3), one colour per
    token, target tokens solid and the others dashed, as :func:`plot_delta_p_curves`.

    Args:
        alphas: shape ``(A,)``.
        mean, spread: shape ``(A, K)``: the mean curve and the half-width of its band.
        labels, is_target: the ``K`` token labels and whether each is a target token.
        ax: axes to draw on (a new figure when ``None``).
        title: axes title.
        band_label: legend entry of the band.
    """
    mean, spread = np.asarray(mean, dtype=float), np.asarray(spread, dtype=float)
    if spread.shape != mean.shape:
        raise ValueError(f"spread has shape {spread.shape}; it must match mean {mean.shape}")
    colors = token_colors(len(labels))
    ax = plot_delta_p_curves(alphas, mean, labels, is_target, ax=ax, colors=colors, title=title, legend=False)
    for k, color in enumerate(colors):
        ax.fill_between(np.asarray(alphas, dtype=float), mean[:, k] - spread[:, k], mean[:, k] + spread[:, k],
                        color=color, alpha=0.18, linewidth=0)
    handles, _ = ax.get_legend_handles_labels()
    band = mpl.patches.Patch(color=REFERENCE_COLOR, alpha=0.18, label=band_label)
    ax.legend(handles=handles + [band], fontsize=7, loc="best")
    return ax


MACHINE_MARKERS = ("o", "s", "^", "D", "v", "P")
"""Markers of the machines on a benchmark figure, in order (the line style follows the way of computing)."""


def plot_benchmark_cost(x: np.ndarray, authors: np.ndarray, steerlib: np.ndarray, bound: np.ndarray | None = None,
                        *, machine: str | None = None, machine_index: int = 0, ax: plt.Axes | None = None,
                        xlabel: str = "", ylabel: str = "seconds", title: str = "") -> plt.Axes:
    """Cost of one workload against one size (Appendix "Performance"): the authors' way, steerlib's and the bound.

    Colours say the way (steerlib :data:`TARGET_COLOR`, the authors' :data:`OFF_TARGET_COLOR`, the bound
    :data:`REFERENCE_COLOR`, dashed); the marker says the machine, so calls with ``machine_index`` 0, 1, ... draw
    several machines on the same axes. The y axis is logarithmic (a GPU and a CPU differ by orders of magnitude).

    Args:
        x: the sizes, shape ``(S,)`` (number of α, tokens, block, texts).
        authors: the authors' way's cost at each size, shape ``(S,)``.
        steerlib: steerlib's cost, shape ``(S,)``.
        bound: the lower bound's cost (``nan`` or ``None`` where there is none), shape ``(S,)``.
        machine: the machine's name for the legend (left out when ``None``).
        machine_index: which marker the machine gets (:data:`MACHINE_MARKERS`).
        ax: axes to draw on (a new figure when ``None``).
        xlabel, ylabel, title: labels.
    """
    x = np.asarray(x, dtype=float)
    curves = {"authors' way": np.asarray(authors, dtype=float), "steerlib": np.asarray(steerlib, dtype=float)}
    if bound is not None:
        curves["bound"] = np.asarray(bound, dtype=float)
    for name, values in curves.items():
        if values.shape != x.shape:
            raise ValueError(f"{name} has shape {values.shape}; expected {x.shape}, one value per size")
    ax = _new_axes(ax)
    marker = MACHINE_MARKERS[machine_index % len(MACHINE_MARKERS)]
    styles = {"authors' way": dict(color=OFF_TARGET_COLOR), "steerlib": dict(color=TARGET_COLOR),
              "bound": dict(color=REFERENCE_COLOR, linestyle="--", linewidth=1.0)}
    suffix = f" ({machine})" if machine else ""
    for name, values in curves.items():
        if np.isfinite(values).any():
            ax.plot(x, values, marker=marker, markersize=4, label=name + suffix, **styles[name])
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return ax


def plot_benchmark_panels(rows, panels: Sequence[tuple[str, str, str]], *, ncols: int = 2,
                          columns: Mapping[str, tuple[str, str, str, str]] | None = None) -> plt.Figure:
    """One :func:`plot_benchmark_cost` panel per ``(workload, axis, xlabel)``, every machine of ``rows`` in each.

    Args:
        rows: the rows of :func:`steerlib.benchmarks.load_benchmark_rows` (a ``pandas.DataFrame``).
        panels: ``(workload, size column, x label)`` per panel; panels with no rows are left out.
        ncols: panels per line.
        columns: per workload, the columns drawn instead of time: ``(authors, steerlib, bound, y label)``
            (e.g. the judge's MiniLM forwards); default ``authors_s``, ``steerlib_s``, ``bound_s``, "seconds".
    """
    from steerlib.benchmarks import axis_rows

    columns = dict(columns or {})
    chosen = []
    for workload, axis, xlabel in panels:
        picked = axis_rows(rows, workload, axis)
        if "positions" in picked and picked["positions"].notna().any():
            for positions, part in picked.groupby("positions"):
                chosen.append((part, workload, axis, xlabel, f"{part['title'].iloc[0]}, {positions} positions"))
        elif len(picked):
            chosen.append((picked, workload, axis, xlabel, picked["title"].iloc[0]))
    if not chosen:
        raise ValueError("no benchmark rows for these panels: check the workloads and size columns.")
    nrows = -(-len(chosen) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(FIGURE_WIDTH * 1.5, 3.2 * nrows), squeeze=False)
    machines = sorted(rows["machine"].unique())
    for ax, (picked, workload, axis, xlabel, title) in zip(axes.flat, chosen):
        authors, ours, bound, ylabel = columns.get(workload, ("authors_s", "steerlib_s", "bound_s", "seconds"))
        for machine, part in picked.groupby("machine"):
            plot_benchmark_cost(part[axis].to_numpy(), part[authors].to_numpy(), part[ours].to_numpy(),
                                part[bound].to_numpy() if bound in part else None,
                                machine=machine if len(machines) > 1 else None,
                                machine_index=machines.index(machine), ax=ax, xlabel=xlabel, ylabel=ylabel,
                                title=title)
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    return fig


def plot_share_heatmap(shares, *, ax: plt.Axes | None = None, title: str | None = None,
                       cmap: str = "viridis", reference: float | Mapping[str, float] | None = None) -> plt.Axes:
    """Heatmap of a share over block (rows) × concept (columns), from :func:`steerlib.grid.shares`' frame (its
    ``share`` column, indexed by block and concept); blank where nothing could be measured. With ``reference``
    (e.g. a base rate; one number, or one per concept), cells whose bootstrap interval lies wholly above it are
    marked ``+`` and wholly below ``−``."""
    ax = _new_axes(ax, (FIGURE_WIDTH, 6.0))
    matrix = shares["share"].unstack("concept")
    image = ax.imshow(matrix.to_numpy(float), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.grid(False)
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right")
    step = max(1, matrix.shape[0] // 10)
    ax.set_yticks(range(0, matrix.shape[0], step), matrix.index[::step])
    ax.set_ylabel("block")
    if reference is not None:
        low, high = shares["low"].unstack("concept"), shares["high"].unstack("concept")
        references = [reference[c] if isinstance(reference, Mapping) else reference for c in matrix.columns]
        for i in range(matrix.shape[0]):
            for j, level in enumerate(references):
                mark = "+" if low.iat[i, j] > level else "−" if high.iat[i, j] < level else ""
                ax.text(j, i, mark, ha="center", va="center", fontsize=8, color="white")
    ax.figure.colorbar(image, ax=ax, fraction=0.05, label="share")
    if title:
        ax.set_title(title)
    return ax


def plot_share_by_block(curves: Mapping[str, "object"], *, ax: plt.Axes | None = None, title: str | None = None,
                        reference: float | None = None, reference_label: str = "") -> plt.Axes:
    """Shares against the block, one line per entry of ``curves`` (a frame indexed by block with ``share``,
    ``low``, ``high``: :func:`steerlib.grid.shares` grouped by block), with their bootstrap band."""
    ax = _new_axes(ax, (FIGURE_WIDTH, 3.6))
    for k, (label, frame) in enumerate(curves.items()):
        blocks = np.asarray(frame.index, dtype=float)
        color = concept_color(k)
        ax.plot(blocks, frame["share"], color=color, label=label)
        ax.fill_between(blocks, frame["low"], frame["high"], color=color, alpha=0.2, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color=REFERENCE_COLOR, linestyle=":", linewidth=1, label=reference_label or None)
    ax.set_xlabel("block")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
