"""Measured next-token curves held against Th. 3.3 (bumps, peak order, extreme tokens) and App. A (log-odds).

Taught in the chapters "Next-token curves on LLMs" (``book/llm/next_token_curves.md``), "Log-odds of real
models" (``book/llm/log_odds.md``) and "A 1-layer GPT" (``book/llm/one_layer_gpt.md``).

Theorem 3.3 predicts three shapes for ``α ↦ Δp(z, α)``: a bump (rise then fall) for most tokens, increasing for
the tokens of maximal log-odds, decreasing for those of minimal log-odds; off-target tokens peak before target
tokens. It is stated for a perfectly trained UFM, where the log-odds ``M(z)`` (Def. 3.2) split the vocabulary by
sign: ``M(z) > 0`` exactly for the target tokens (Lemma B.4). An LLM has no labelled target concept, so we
*define* its target tokens the same way: ``z`` is a target token when the model's own log-odds
``M(z) = mean_P log p(z|c) - mean_N log p(z|c)`` (:func:`steerlib.vectors.log_odds`) is positive. With that
definition the theorem's claims become measurable on any sweep: the share of curves that bump, and whether
off-target tokens peak before target tokens. On the 1-layer GPT the target concept is known (uppercase words)
and :func:`theorem_3_3_agreement` holds each prediction against the curves token by token.

Example:
    >>> shapes = classify(sweep, sweep.token_ids, alpha_range=half_line("max"))
    >>> bump_share(shapes), peak_order(shapes, M, alpha_end=sweep.alphas.max()).share_ordered

The chapters steer any list of blocks; :func:`per_block_words` and :func:`majority_words` put per-block numbers and
verdicts into their prose (myst-nb glue), so a sentence stays true for one block or many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

CurveKind = Literal["bump", "increasing", "decreasing", "flat"]


def classify_curve(alphas: np.ndarray, delta_p: np.ndarray, tolerance: float = 0.05) -> tuple[CurveKind, float]:
    """The shape of one curve ``α ↦ Δp(z, α)`` on a sorted grid (Th. 3.3) and the ``α`` of its maximum.

    ``"bump"`` when the maximum is inside the grid and exceeds both ends by more than ``tolerance`` times the
    curve's range; otherwise ``"increasing"`` or ``"decreasing"`` by which end is higher; ``"flat"`` when the
    range is below 1e-9. On a finite grid this is what can be seen: a bump whose peak lies beyond the grid
    reads as monotone.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    delta_p = np.asarray(delta_p, dtype=np.float64)
    peak = int(np.argmax(delta_p))
    spread = float(delta_p.max() - delta_p.min())
    if spread < 1e-9:
        return "flat", float(alphas[peak])
    if 0 < peak < len(delta_p) - 1 and delta_p[peak] - max(delta_p[0], delta_p[-1]) > tolerance * spread:
        return "bump", float(alphas[peak])
    return ("increasing" if delta_p[-1] >= delta_p[0] else "decreasing"), float(alphas[peak])


@dataclass
class CurveShape:
    """The classified curve of one token: its shape, the ``α`` and height of its maximum."""

    token_id: int
    token: str
    shape: CurveKind
    peak_alpha: float
    peak_delta_p: float


def classify(sweep, token_ids: Sequence[int] | None = None, alpha_range: tuple[float, float] | None = None,
             tolerance: float = 0.05) -> list[CurveShape]:
    """Shapes of the curves (Th. 3.3) of ``token_ids`` in a next-token sweep (default its top tokens at the
    largest ``α``).

    Args:
        sweep: a :class:`steerlib.experiments.next_token.NextTokenSweep`.
        token_ids: tokens to classify.
        alpha_range: restrict the grid to ``[low, high]``, e.g. ``(0, inf)`` for Fig. 3's ``α >= 0``
            (:func:`half_line`).
        tolerance: see :func:`classify_curve`.
    """
    token_ids = sweep.top_at_max if token_ids is None else token_ids
    inside = np.ones(len(sweep.alphas), dtype=bool)
    if alpha_range is not None:
        inside = (sweep.alphas >= alpha_range[0]) & (sweep.alphas <= alpha_range[1])
        if inside.sum() < 3:
            raise ValueError(f"alpha_range {alpha_range} keeps fewer than 3 grid points.")
    shapes = []
    for token_id in token_ids:
        curve = sweep.curve(int(token_id))[inside]
        shape, peak_alpha = classify_curve(sweep.alphas[inside], curve, tolerance)
        shapes.append(CurveShape(int(token_id), sweep.token(int(token_id)), shape, peak_alpha, float(curve.max())))
    return shapes


def is_target_token(log_odds: np.ndarray, token_ids: Sequence[int]) -> np.ndarray:
    """Our definition of an LLM's target tokens, from Lemma B.4: ``M(z) > 0``."""
    return np.asarray(log_odds)[np.asarray(token_ids, dtype=np.int64)] > 0


def bump_share(shapes: Sequence[CurveShape]) -> float:
    """Share of the curves classified as a bump (Th. 3.3: all tokens but those of extremal log-odds)."""
    if not shapes:
        raise ValueError("no curves to classify")
    return float(np.mean([shape.shape == "bump" for shape in shapes]))


@dataclass
class PeakOrder:
    """Pairs (off-target token, target token) of rising curves and whether the off-target one peaks first.

    Args:
        n_pairs: pairs whose order can be decided on the grid.
        n_ordered: pairs where the off-target token peaks strictly before the target token (Th. 3.3).
        n_target, n_off_target: rising tokens of each kind that entered the comparison.
        median_target_peak, median_off_target_peak: median peak ``α`` of each kind (``nan`` if none).
    """

    n_pairs: int
    n_ordered: int
    n_target: int
    n_off_target: int
    median_target_peak: float
    median_off_target_peak: float

    @property
    def share_ordered(self) -> float:
        """``n_ordered / n_pairs`` (``nan`` when no pair can be decided)."""
        return self.n_ordered / self.n_pairs if self.n_pairs else float("nan")


def peak_order(shapes: Sequence[CurveShape], log_odds: np.ndarray, alpha_end: float,
               min_rise: float = 1e-4) -> PeakOrder:
    """Th. 3.3's peak order on measured curves: do off-target tokens (``M <= 0``) peak before target ones?

    Only curves that rise (peak ``Δp > min_rise``) and are classified ``"bump"`` or monotone towards
    ``alpha_end`` count. A monotone curve peaks at the end of the grid or beyond, so its true peak is only
    known to be ``>= alpha_end`` (``<=`` for a negative ``alpha_end``): a pair of two such curves is
    undecided and left out; a pair with one of them is decided by that bound.

    Args:
        shapes: classified curves, e.g. ``classify(sweep, sweep.token_ids, alpha_range=(0, np.inf))``.
        log_odds: ``M(z)`` over the vocabulary (:func:`concept_log_odds`).
        alpha_end: the end of the grid the curves were classified on (``α_max``, or ``α_min`` for ``α <= 0``).
        min_rise: smallest peak ``Δp`` for a curve to count.
    """
    direction = 1.0 if alpha_end > 0 else -1.0
    rising = [s for s in shapes if s.peak_delta_p > min_rise and s.shape in ("bump", "increasing", "decreasing")]
    # On α <= 0 the curves are read from 0 towards alpha_end: "far" means a larger |α|.
    entries = []
    for shape in rising:
        censored = shape.shape != "bump"
        if censored and not np.isclose(shape.peak_alpha, alpha_end):
            continue  # monotone, but its maximum sits at α = 0: it never rises in this direction
        entries.append((direction * shape.peak_alpha, censored, bool(log_odds[shape.token_id] > 0)))
    targets = [e for e in entries if e[2]]
    off_targets = [e for e in entries if not e[2]]
    n_pairs = n_ordered = 0
    for off_peak, off_censored, _ in off_targets:
        for target_peak, target_censored, _ in targets:
            if off_censored and target_censored:
                continue
            n_pairs += 1
            if off_censored:
                continue  # off-target still rising at the end: it cannot peak before the target
            n_ordered += int(target_censored or off_peak < target_peak)

    def median(group):
        return float(direction * np.median([e[0] for e in group])) if group else float("nan")

    return PeakOrder(n_pairs, n_ordered, len(targets), len(off_targets), median(targets), median(off_targets))


def top_token_curves(sweep, at: str = "max", k: int = 8) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """The curves of the ``k`` most probable tokens at the largest (``"max"``) or smallest (``"min"``) ``α``,
    on the half-line they are read on (``α >= 0`` or ``α <= 0``), as in Figs. 6 and A.10.

    Args:
        sweep: a :class:`steerlib.experiments.next_token.NextTokenSweep`.
        at: ``"max"`` or ``"min"``.
        k: how many tokens.

    Returns:
        ``(alphas, delta_p, token_ids, tokens)`` with ``delta_p`` of shape ``(len(alphas), k)``.
    """
    token_ids = [int(t) for t in sweep.top_tokens(at, k)]
    inside = sweep.alphas >= 0 if at == "max" else sweep.alphas <= 0
    curves = np.stack([sweep.curve(t)[inside] for t in token_ids], axis=1)
    return sweep.alphas[inside], curves, token_ids, [sweep.token(t) for t in token_ids]


def half_line(at: str) -> tuple[float, float]:
    """The ``alpha_range`` of :meth:`NextTokenSweep.classify` for ``at="max"`` (``α >= 0``) or ``"min"``."""
    if at not in ("max", "min"):
        raise ValueError(f"at={at!r}: use 'max' (α >= 0) or 'min' (α <= 0)")
    return (0.0, np.inf) if at == "max" else (-np.inf, 0.0)


def log_odds_ranks(log_odds: np.ndarray, token_ids: Sequence[int], side: str = "max") -> np.ndarray:
    """Rank of each token's ``M(z)`` in the vocabulary: 1 for the largest (``side="max"``) or smallest
    (``"min"``) log-odds, ``V`` for the other end (ties share the best rank).
    """
    if side not in ("max", "min"):
        raise ValueError(f"side={side!r}: use 'max' (rank 1 = largest M) or 'min' (rank 1 = smallest M)")
    values = np.asarray(log_odds, dtype=np.float64)
    values = -values if side == "max" else values
    ordered = np.sort(values)
    return np.searchsorted(ordered, values[np.asarray(token_ids, dtype=np.int64)], side="left") + 1


@dataclass
class TokenVerdict:
    """One token of one sweep, with what Th. 3.3 says about its curve and what the curve did.

    Args:
        prompt: index of the sweep (prompt).
        token_id, token: the token ``z``.
        in_target: whether ``z`` belongs to the target concept ``T``.
        log_odds: ``M(z)`` (Def. 3.2).
        excess: ``M(z) − E_{p(·|c)}[M]``: Lemma B.5 makes ``Δp`` rise at ``α = 0`` exactly when it is positive.
        shape: the observed shape on ``α >= 0`` (:func:`classify_curve`).
        peak_alpha, peak_delta_p: where the observed curve is highest, and how high.
        top: whether ``z`` is among the most probable tokens at the largest ``α`` (the curves of Fig. A.4).
    """

    prompt: int
    token_id: int
    token: str
    in_target: bool
    log_odds: float
    excess: float
    shape: str
    peak_alpha: float
    peak_delta_p: float
    top: bool


@dataclass
class Theorem33Agreement:
    """Th. 3.3's predictions held against next-token sweeps of a real model, token by token.

    Args:
        verdicts: the tokens examined (per prompt: the top tokens at the largest ``α`` and the tokens whose
            ``Δp`` rises highest).
        agreements: prediction -> ``(agreeing cases, cases)``.
        target_share: share of tokens of ``T`` among the top tokens at the largest ``α``, over all prompts.
    """

    verdicts: list[TokenVerdict]
    agreements: dict[str, tuple[int, int]]
    target_share: float

    def rate(self, prediction: str) -> float:
        """Share of the cases of ``prediction`` that agree (``nan`` when it has no case)."""
        agreeing, cases = self.agreements[prediction]
        return agreeing / cases if cases else float("nan")

    @property
    def overall_rate(self) -> float:
        """Mean of the rates of the predictions that have cases (each prediction weighs the same, whether it
        is checked on a handful of tokens or on the whole vocabulary)."""
        rates = [agree / cases for agree, cases in self.agreements.values() if cases]
        return sum(rates) / len(rates) if rates else float("nan")

    def table(self) -> str:
        """The agreement of each prediction, as a fixed-width text table."""
        width = max(len(name) for name in self.agreements)
        lines = [f"{'prediction of Th. 3.3 / Lemma B.4-B.5':{width}}  agree  cases   rate"]
        for name, (agree, cases) in self.agreements.items():
            rate = f"{agree / cases:.2f}" if cases else "  -"
            lines.append(f"{name:{width}}  {agree:5d}  {cases:5d}  {rate:>5}")
        return "\n".join(lines)


def _pairs(items: list, condition) -> tuple[int, int]:
    """``(pairs satisfying condition, pairs)`` over ordered pairs ``(a, b)`` the condition applies to."""
    agree = total = 0
    for a in items:
        for b in items:
            verdict = condition(a, b)
            if verdict is not None:
                total += 1
                agree += bool(verdict)
    return agree, total


def theorem_3_3_agreement(sweeps: list, log_odds: np.ndarray, in_target: Callable[[str], bool],
                          in_complement: Callable[[str], bool], names: tuple[str, str] = ("target", "off-target"),
                          top_k: int = 8, rising_k: int = 8, tolerance: float = 0.05) -> Theorem33Agreement:
    """Hold Th. 3.3 (with Lemmas B.4 and B.5) against next-token sweeps of a concept ``T`` known token by token
    (on the 1-layer GPT: ``T`` = uppercase words, its complement lowercase words).

    Each sweep must keep the whole vocabulary (``NextTokenParameters(..., keep_tokens=None)``) so that
    ``E_{p(·|c)}[M]`` can be computed. For each prompt the tokens examined are the ``top_k`` most probable
    at the largest ``α`` and the ``rising_k`` whose ``Δp`` rises highest; curves are read on ``α >= 0``.
    The predictions, each counted as agreeing cases over cases:

    - *rises first iff M(z) > E[M]*: Lemma B.5 at ``α = 0``, ``d/dα Δp = p(z|c) (M(z) − E_{p(·|c)}[M])``
      (all tokens of the vocabulary whose first step is not flat);
    - *max-M token increases throughout*: Th. 3.3, ``z ∈ M̄`` is increasing on R (one case per prompt);
    - *rising tokens below max M bump*: Th. 3.3, every other token with ``M(z) > E[M]`` has a peak ``α(j,z) > 0``;
    - *increasing curves have larger M than bumps*: a curve still rising at the end of the grid peaks
      later, hence (Lemma B.5) has larger ``M`` than one that has peaked (pairs);
    - *peaks ordered by M*: ``α(j,z)`` is the root of ``E_{σ(f_α)}[M] = M(z)`` with ``E[M]`` increasing in
      ``α``, so a larger ``M`` peaks later (pairs of bumps with different peaks);
    - *<target> peaks after other tokens*: Th. 3.3's peak position, ``z ∈ T``, ``z' ∉ T`` ⇒
      ``α(j,z') < α(j,z)`` (pairs of rising tokens with different peaks);
    - *<target> tokens have M > 0*, *<complement> tokens have M <= 0*: Lemma B.4's sign separation, over the
      whole vocabulary. Assumption 1 puts every token in one concept; tokens in neither (for uppercase words:
      punctuation, digits, spaces, written the same in both cases) are left out.

    Under Assumptions 1-2 and the UFM's linear readout every prediction holds (up to what a finite grid
    can show: a bump must peak inside the grid and stand out by ``tolerance``, see
    :func:`classify_curve`); the model here reads the residual stream through a LayerNorm
    and is not perfectly trained, so the rates measure how far the theory carries over.

    Args:
        sweeps: one :class:`~steerlib.experiments.next_token.NextTokenSweep` per prompt, whole vocabulary kept.
        log_odds: ``M(z)`` for the whole vocabulary (e.g. :func:`steerlib.vectors.log_odds`).
        in_target, in_complement: whether a token (its decoded string) is in ``T``, in its complement.
        names: how ``T`` and its complement are called in the names of the predictions.
        top_k, rising_k: how many top tokens at the largest ``α``, and highest-rising tokens, to examine.
        tolerance: how far a bump must rise above both ends of the grid, as a share of the curve's range.
    """
    log_odds = np.asarray(log_odds, dtype=np.float64)
    max_token = int(np.argmax(log_odds))
    verdicts: list[TokenVerdict] = []
    slope_agree = slope_cases = top_upper = top_total = 0
    monotone = []
    for index, sweep in enumerate(sweeps):
        if len(sweep.token_ids) != len(log_odds):
            raise ValueError(f"sweep {index} keeps {len(sweep.token_ids)} tokens, not the whole vocabulary of "
                             f"{len(log_odds)}: sweep with NextTokenParameters(..., keep_tokens=None).")
        positive = sweep.alphas >= 0
        delta_p = sweep.delta_p[positive]
        p0 = sweep.p0
        excess = log_odds - float(p0 @ log_odds) / float(p0.sum())
        first_step = delta_p[1]
        moving = np.abs(first_step) > 1e-12
        slope_cases += int(moving.sum())
        slope_agree += int(((first_step > 0) == (excess > 0))[moving].sum())
        top = [int(t) for t in sweep.top_tokens("max", top_k)]
        rising = [int(t) for t in np.argsort(-delta_p.max(axis=0), kind="stable")[:rising_k]]
        monotone.append(classify(sweep, [max_token], (0, np.inf), tolerance)[0].shape == "increasing")
        for shape in classify(sweep, list(dict.fromkeys(top + rising)), (0, np.inf), tolerance):
            target = in_target(shape.token)
            verdicts.append(TokenVerdict(index, shape.token_id, shape.token, target,
                                         float(log_odds[shape.token_id]), float(excess[shape.token_id]),
                                         shape.shape, shape.peak_alpha, shape.peak_delta_p,
                                         shape.token_id in top))
            if shape.token_id in top:
                top_total += 1
                top_upper += target
    rising_verdicts = [v for v in verdicts if v.excess > 0 and v.token_id != max_token]
    agreements: dict[str, tuple[int, int]] = {
        "rises first iff M(z) > E[M] (whole vocabulary)": (slope_agree, slope_cases),
        "max-M token increases throughout": (sum(monotone), len(monotone)),
        "rising tokens below max M bump": (sum(v.shape == "bump" for v in rising_verdicts), len(rising_verdicts)),
    }
    by_prompt = [[v for v in verdicts if v.prompt == i and v.excess > 0] for i in range(len(sweeps))]

    def summed(condition) -> tuple[int, int]:
        counts = [_pairs(items, condition) for items in by_prompt]
        return sum(a for a, _ in counts), sum(t for _, t in counts)

    agreements["increasing curves have larger M than bumps"] = summed(
        lambda a, b: a.log_odds > b.log_odds if a.shape == "increasing" and b.shape == "bump" else None)
    agreements["peaks ordered by M"] = summed(
        lambda a, b: a.log_odds > b.log_odds
        if a.shape == b.shape == "bump" and a.peak_alpha > b.peak_alpha else None)
    agreements[f"{names[0]} peaks after other tokens"] = summed(
        lambda a, b: a.peak_alpha > b.peak_alpha
        if a.in_target and not b.in_target and a.peak_alpha != b.peak_alpha else None)
    vocabulary = sweeps[0].tokens
    upper = np.array([in_target(t) for t in vocabulary])
    lower = np.array([in_complement(t) for t in vocabulary])
    agreements[f"{names[0]} tokens have M > 0 (whole vocabulary)"] = (int((log_odds[upper] > 0).sum()),
                                                                       int(upper.sum()))
    agreements[f"{names[1]} tokens have M <= 0 (whole vocabulary)"] = (int((log_odds[lower] <= 0).sum()),
                                                                      int(lower.sum()))
    return Theorem33Agreement(verdicts, agreements, top_upper / top_total if top_total else float("nan"))


def block_words(blocks: Sequence[int]) -> str:
    """Blocks named in prose: ``"block 6"``, ``"blocks 6 and 15"``, ``"blocks 6, 15 and 29"``."""
    names = [str(int(b)) for b in blocks]
    if not names:
        raise ValueError("no blocks to name")
    if len(names) == 1:
        return f"block {names[0]}"
    return f"blocks {', '.join(names[:-1])} and {names[-1]}"


def per_block_words(values: Mapping[int, float], fmt: str = "{:.0%}") -> str:
    """One number per block in prose: ``"58% at block 6, 42% at block 15 and 46% at block 29"`` (``"58% at block
    6"`` for one block), each value written with ``fmt``."""
    phrases = [f"{fmt.format(value)} at block {int(block)}" for block, value in values.items()]
    if not phrases:
        raise ValueError("no blocks to describe")
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def majority_words(shares: Mapping[int, float]) -> str:
    """Where per-block shares exceed one half, in prose: ``"more than half at every block"``, ``"more than half at
    block 6 only"``, ``"not more than half at any block"``; for one block ``"(not) more than half at block 15"``."""
    if not shares:
        raise ValueError("no blocks to describe")
    above = [block for block, share in shares.items() if share > 0.5]
    if len(shares) == 1:
        return f"{'' if above else 'not '}more than half at {block_words(list(shares))}"
    if len(above) == len(shares):
        return "more than half at every block"
    if not above:
        return "not more than half at any block"
    return f"more than half at {block_words(above)} only"


def pooled_peak_order(orders: Sequence[PeakOrder]) -> PeakOrder:
    """Several :class:`PeakOrder` (one per concept) as one: pairs and tokens summed, each median peak the median
    of the concepts' medians that exist (``nan`` when no concept has a rising token of that kind, e.g. no
    off-target token rises at all), so a block without off-target curves is a count, not an empty median."""
    if not orders:
        raise ValueError("no peak orders to pool")

    def median(values):
        present = [value for value in values if np.isfinite(value)]
        return float(np.median(present)) if present else float("nan")

    return PeakOrder(sum(o.n_pairs for o in orders), sum(o.n_ordered for o in orders),
                     sum(o.n_target for o in orders), sum(o.n_off_target for o in orders),
                     median([o.median_target_peak for o in orders]), median([o.median_off_target_peak for o in orders]))


def poisson_binomial_tail(probabilities: Sequence[float], observed: int) -> float:
    """``P(X >= observed)`` for ``X`` a sum of independent Bernoulli variables of the given probabilities (the
    exact Poisson-binomial law, by convolution): the one-sided p-value of a count against its base rates."""
    law = np.array([1.0])
    for p in np.asarray(probabilities, dtype=np.float64):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability {p} is not in [0, 1]")
        law = np.convolve(law, [1.0 - p, p])
    return float(np.clip(law[max(int(observed), 0):].sum(), 0.0, 1.0))


@dataclass
class BaseRateTest:
    """A share of chosen tokens on one side of ``M = 0`` held against the same share over the whole vocabulary.

    Args:
        n_tokens: tokens tested (pooled over concepts).
        n_hits: those on the side tested (``M > 0``, or ``M <= 0``).
        share: ``n_hits / n_tokens``.
        base_rate: the share expected by chance: the mean over the tokens of their concept's share of the
            vocabulary on that side.
        p_value: ``P(X >= n_hits)`` when each token falls on that side with its concept's base rate
            (:func:`poisson_binomial_tail`); small when the chosen tokens are on that side more often than a
            token drawn at random from the vocabulary.
    """

    n_tokens: int
    n_hits: int
    share: float
    base_rate: float
    p_value: float


def base_rate_test(log_odds: Sequence[np.ndarray], token_ids: Sequence[Sequence[int]],
                   side: str = "positive") -> BaseRateTest:
    """Are the tokens ``token_ids[c]`` of each concept ``c`` on one side of ``M = 0`` more often than the
    vocabulary is?

    Th. 3.3 says that the tokens dominating at large ``α > 0`` are target tokens, ``M(z) > 0`` (Lemma B.4), and
    those dominating at large ``α < 0`` off-target ones. On an LLM most of the vocabulary can have ``M > 0``
    (the base rate), so a share above one half says nothing: only a share above the base rate does. Each token
    of concept ``c`` is a Bernoulli draw with that concept's base rate; the p-value is the upper tail of their sum.

    Args:
        log_odds: ``M(z)`` over the vocabulary, one array per concept.
        token_ids: the tokens tested, one sequence per concept (e.g. the top tokens of its sweeps).
        side: ``"positive"`` (``M > 0``, target tokens) or ``"nonpositive"`` (``M <= 0``, off-target tokens).
    """
    if side not in ("positive", "nonpositive"):
        raise ValueError(f"side={side!r}: use 'positive' (M > 0) or 'nonpositive' (M <= 0)")
    if len(log_odds) != len(token_ids):
        raise ValueError(f"{len(log_odds)} log-odds arrays for {len(token_ids)} token lists: give one per concept")
    rates, hits = [], 0
    for values, ids in zip(log_odds, token_ids):
        on_side = np.asarray(values) > 0 if side == "positive" else np.asarray(values) <= 0
        ids = np.asarray(ids, dtype=np.int64)
        rates += [float(on_side.mean())] * len(ids)
        hits += int(on_side[ids].sum())
    if not rates:
        raise ValueError("no tokens to test")
    return BaseRateTest(len(rates), hits, hits / len(rates), float(np.mean(rates)), poisson_binomial_tail(rates, hits))


def word_token_ids(tokenizer, words: Sequence[str]) -> dict[str, int]:
    """The vocabulary tokens that are whole words of ``words``: each word as written, with a leading space and
    capitalised with a leading space (how a word appears inside a sentence), kept when the tokenizer writes it
    as one token. Returns ``{token string: token id}`` (each id once)."""
    found: dict[str, int] = {}
    for word in words:
        for variant in (word, f" {word}", f" {word.capitalize()}"):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] not in found.values():
                found[variant] = int(ids[0])
    return found


def quadratic_zone(alphas: np.ndarray, delta_ce: np.ndarray, slope: float, curvature: float,
                   tolerance: float = 0.1) -> float:
    """How far from ``α = 0`` the local law of Th. 3.8 holds on a measured curve: the largest ``a`` of the grid such
    that at every grid point with ``0 < |α| <= a``, ``ΔCE(α) = b α + c α²`` within ``tolerance·(|b α| + |c| α²)``
    (``b``, ``c`` fitted near 0, :func:`steerlib.stats.quadratic_fit`; the scale is the size of the law's two terms,
    not of ``ΔCE``, which crosses 0 at ``α = −b/c``); ``0`` when even the smallest ``|α|`` misses."""
    alphas = np.asarray(alphas, dtype=np.float64)
    delta_ce = np.asarray(delta_ce, dtype=np.float64)
    if alphas.shape != delta_ce.shape:
        raise ValueError(f"alphas {alphas.shape} and delta_ce {delta_ce.shape} must have the same shape")
    zone = 0.0
    for size in np.unique(np.abs(alphas[alphas != 0])):
        at = np.abs(alphas) == size
        law = slope * alphas[at] + curvature * alphas[at] ** 2
        scale = np.abs(slope * alphas[at]) + abs(curvature) * alphas[at] ** 2
        if np.any(np.abs(delta_ce[at] - law) > tolerance * scale):
            break
        zone = float(size)
    return zone
