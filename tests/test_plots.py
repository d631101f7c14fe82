"""Tests of steerlib.plots: the figure functions draw what they are given and reject mismatched shapes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from steerlib.plots import (OFF_TARGET_COLOR, TARGET_COLOR, plot_concept_curves, plot_delta_ce,
                            plot_delta_p_curves)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_delta_p_curves_styles_peaks_and_limits():
    alphas = np.linspace(0, 5, 11)
    curves = np.stack([np.sin(alphas), -alphas / 5, np.cos(alphas)], axis=1)
    ax = plot_delta_p_curves(alphas, curves, ["a", "A", "b"], [True, False, True],
                             peaks=[1.0, -np.inf, 9.0], limits=[0.1, -0.2, 0.0])
    token_lines = [line for line in ax.get_lines() if line.get_label() in ("a", "A", "b")]
    assert [line.get_linestyle() for line in token_lines] == ["-", "--", "-"]
    assert token_lines[0].get_color() == TARGET_COLOR and token_lines[1].get_color() == OFF_TARGET_COLOR
    # only the finite, in-range peak becomes a vertical line
    vertical = [line for line in ax.get_lines() if np.ptp(line.get_xdata()) == 0 and len(line.get_xdata()) == 2
                and line.get_linestyle() == ":"]
    assert len(vertical) == 1 and vertical[0].get_xdata()[0] == 1.0
    assert ax.get_legend() is not None


def test_delta_p_curves_rejects_bad_shapes():
    alphas = np.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="one column per token"):
        plot_delta_p_curves(alphas, np.zeros((5, 2)), ["a", "b", "c"], [True, False, True])
    with pytest.raises(ValueError, match="one per token"):
        plot_delta_p_curves(alphas, np.zeros((5, 2)), ["a", "b"], [True])
    with pytest.raises(ValueError, match="limit_side"):
        plot_delta_p_curves(alphas, np.zeros((5, 2)), ["a", "b"], [True, False], limit_side="up")


def test_concept_curves_draw_reference_and_two_sided_limits():
    alphas = np.linspace(-2, 2, 50)
    curves = np.stack([np.tanh(alphas), -np.tanh(alphas)], axis=1)
    ax = plot_concept_curves(alphas, curves, ["T", "C"], reference=curves, limits=([1, -1], [-1, np.nan]))
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(markers) == 2
    triangles = [line for line in ax.get_lines() if line.get_marker() in (">", "<")]
    assert len(triangles) == 3                       # the nan limit is skipped
    with pytest.raises(ValueError, match="must match"):
        plot_concept_curves(alphas, curves, ["T", "C"], reference=curves[:, :1])


def test_delta_ce_draws_parabola_and_asymptotes():
    alphas = np.linspace(-3, 3, 61)
    values = np.log(np.cosh(alphas))
    ax = plot_delta_ce(alphas, values, quadratic_coefficient=0.5, asymptotes=[(1.0, -np.log(2)), (-1.0, -np.log(2))])
    labels = [line.get_label() for line in ax.get_lines()]
    assert "ΔCE(α)" in labels and any("α²" in label for label in labels) and "asymptotes" in labels
    assert len(ax.get_lines()) == 4
    with pytest.raises(ValueError, match="one value per α"):
        plot_delta_ce(alphas, values[:-1])


def test_the_alpha_slider_is_self_contained_html_with_one_frame_per_alpha():
    from steerlib.plots import animate_next_token_rows

    alphas = np.linspace(-2.0, 2.0, 5)
    base = np.full(4, 0.25)
    steered = np.exp(np.outer(alphas, [1.0, 0.0, 0.0, -1.0])) * base
    steered /= steered.sum(axis=1, keepdims=True)
    page = animate_next_token_rows(["a", "b", "A", "B"], [0, 0, 1, 1], base, steered, alphas, context="ab")
    assert page.count("data:image/png;base64") == len(alphas) and "<script" in page and "://" not in page
    with pytest.raises(ValueError, match="one row per α"):
        animate_next_token_rows(["a", "b", "A", "B"], [0, 0, 1, 1], base, steered[:3], alphas, context="ab")


def test_token_labels_are_escaped_and_panels_have_one_colour_per_token():
    from steerlib.plots import panel_grid, plot_delta_p_band, token_colors, token_label

    assert token_label("\n") == "'\\n'" and token_label("$x$") == "'\\$x\\$'"
    fig, axes = panel_grid(3)
    assert len(axes) == 3 and len(fig.axes) == 3
    alphas = np.linspace(0, 1, 5)
    mean = np.stack([alphas, alphas**2, -alphas], axis=1)
    labels = [token_label(t) for t in ("a", "$b", "\n")]
    ax = plot_delta_p_band(alphas, mean, 0.1 * np.ones_like(mean), labels, [True, False, True], ax=axes[0])
    lines = ax.get_lines()[:3]
    assert [line.get_color() for line in lines] == token_colors(3)
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-"]
    fig.canvas.draw()  # an unescaped '$' would be parsed as mathtext here
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == labels
    with pytest.raises(ValueError):
        plot_delta_p_band(alphas, mean, np.ones((5, 2)), labels, [True] * 3)
    with pytest.raises(ValueError):
        panel_grid(0)
