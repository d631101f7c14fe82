"""Plotting functions shared by the chapters: one function per figure kind, one look for the whole book.

Every function takes plain arrays (numpy) and labels, draws on a given ``ax`` (or a new figure) and returns
the axes, so a chapter cell stays a one-liner and every figure looks the same. Call :func:`apply_style`
once at the top of a chapter.

Colour convention used throughout the book: tokens (or concepts) of the target concept ``T`` are drawn in
:data:`TARGET_COLOR`, everything else in :data:`OFF_TARGET_COLOR`; concepts of a dataset are coloured with
:data:`CONCEPT_COLORS` in order (the first one is the target colour).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

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


def plot_training_curve(losses: np.ndarray, bound: float, *, ax: plt.Axes | None = None,
                        title: str = "UFM training: cross-entropy vs the entropy bound") -> plt.Axes:
    """Loss of gradient descent against the step, with the entropy lower bound (App. B.1).

    Draws two panels side by side when ``ax`` is ``None``: the loss with the bound as a horizontal line,
    and the gap ``loss - bound`` on a log scale. With a given ``ax`` (a pair of axes) it draws on those.

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
    axes[0].plot(steps, losses, color=TARGET_COLOR, label="CE(f) during training")
    axes[0].axhline(bound, color=REFERENCE_COLOR, linestyle="--", label=f"entropy bound {bound:.4f}")
    axes[0].set_xlabel("gradient step")
    axes[0].set_ylabel("cross-entropy")
    axes[0].legend()
    gap = np.maximum(losses - bound, np.finfo(float).tiny)
    axes[1].semilogy(steps, gap, color=TARGET_COLOR)
    axes[1].set_xlabel("gradient step")
    axes[1].set_ylabel("CE(f) - entropy (log scale)")
    return axes
