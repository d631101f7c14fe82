"""The theory of steering strength, exactly: concept datasets, the unconstrained features model (UFM), and
every closed form of Sec. 3 and App. B of the paper.

Taught in Part I of the book (``book/theory/``): the dataset and the UFM in ``ufm_dataset.md``, next-token
probabilities in ``next_token.md``, concept probability in ``concept_probability.md`` and cross-entropy in
``cross_entropy.md``.

Notation (as in the paper):

- ``V`` tokens split into ``G`` concepts; ``m`` contexts ``c_j`` with weights ``pi_j``; ``rows[j] = p(. | c_j)``.
- Assumption 1: ``p(z | c_j) = a_z`` if ``z`` and ``c_j`` share a concept, else ``b_z`` (``a_z > b_z > 0``).
- ``P`` / ``N``: positive / negative context indices (``|P| = |N| = q``, disjoint), target concept ``T``.
- ``M``: the log-odds of Def. 3.2, one value per token.
- Under Assumption 2 (perfect training) steering ``c_j`` with strength ``alpha`` is exponential tilting of
  ``p(. | c_j)`` by ``alpha M`` (Lemma B.3); every function below that takes ``(p, M, alphas)`` uses that
  closed form, in log space, so it is exact and stable for ``|alpha|`` up to ``1e4`` and beyond.

Arrays in, arrays out (numpy, float64).

Example:
    >>> data = eq2_dataset()
    >>> sets = eq2_steering_sets(data, "contrastive")
    >>> M = data.log_odds(sets)
    >>> p = data.rows[data.context_index("ABB")]
    >>> probs = steered_probs(p, M, [0.0, 1.0, 10.0])    # [3, 9]
    >>> alpha_b = bump_location(p, M, data.token_index("b"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

ROW_SUM_TOLERANCE = 1e-9
"""How far from 1 a probability row may sum before it is rejected."""

TIE_TOLERANCE = 1e-10
"""Relative tolerance under which two log-odds count as equal (membership of the arg-max / arg-min sets)."""

EQ2_TOKENS = ("a", "b", "c", "A", "B", "C", "α", "β", "γ")
"""The vocabulary of Eq. (2): three concepts of three tokens; uppercase is the "opposite" of lowercase."""

EQ2_CONTEXTS = ("aab", "bba", "acc", "cca", "ABB", "AAB", "CAC", "CBA", "BAB", "αβγ", "γβγ", "ααβ")
"""The contexts of our Eq. (2) dataset: all those the paper names (Sec. 2.2), plus ``ααβ``."""

EQ2_POSITIVE = ("aab", "bba", "acc", "cca")
"""The paper's positive contexts ``P`` for the Eq. (2) example (Sec. 2.2)."""

EQ2_NEGATIVE = {
    "contrastive": ("ABB", "AAB", "CAC", "CBA"),
    "random": ("ABB", "αβγ", "γβγ", "BAB"),
}
"""The paper's negative contexts ``N`` for the Eq. (2) example, in the contrastive and random settings."""


# ---------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------

def _as_row(p, name: str = "p") -> np.ndarray:
    """``p`` as a float64 probability vector, or a ValueError that says what is wrong."""
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"{name} must be one probability row of shape [V]; got shape {p.shape}")
    _check_rows(p[None, :], name)
    return p


def _as_rows(rows, name: str = "rows") -> np.ndarray:
    """``rows`` as a float64 [k, V] array of probability rows, or a ValueError."""
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-d array [number of contexts, V]; got shape {rows.shape}")
    _check_rows(rows, name)
    return rows


def _check_rows(rows: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(rows)) or np.any(rows < 0):
        raise ValueError(f"{name} must hold finite non-negative probabilities")
    sums = rows.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad.size:
        raise ValueError(f"{name}: row {int(bad[0])} sums to {sums[bad[0]]:.12g}, not 1; "
                         "pass probability rows p(. | c_j) (normalise them first)")


def _as_log_odds(M, size: int) -> np.ndarray:
    M = np.asarray(M, dtype=float)
    if M.shape != (size,):
        raise ValueError(f"log-odds M must have shape ({size},), one value per token; got {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError("log-odds M must be finite (do the positive and negative rows have zeros?)")
    return M


def _as_alphas(alphas) -> np.ndarray:
    alphas = np.atleast_1d(np.asarray(alphas, dtype=float))
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas)):
        raise ValueError("alphas must be a finite scalar or 1-d array of steering strengths")
    return alphas


def _as_members(members, size: int) -> np.ndarray:
    members = np.unique(np.asarray(members, dtype=int).ravel())
    if members.size == 0:
        raise ValueError("members is empty: give the token indices of the concept C")
    if members.min() < 0 or members.max() >= size:
        raise ValueError(f"members must be token indices in [0, {size}); got {members.tolist()}")
    return members


def _as_weights(weights, m: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (m,):
        raise ValueError(f"weights must have shape ({m},), one pi_j per context row; got {weights.shape}")
    if np.any(weights < 0) or abs(weights.sum() - 1.0) > ROW_SUM_TOLERANCE:
        raise ValueError(f"weights pi_j must be non-negative and sum to 1; they sum to {weights.sum():.12g}")
    return weights


# ---------------------------------------------------------------------------------------------------------
# Datasets satisfying Assumption 1
# ---------------------------------------------------------------------------------------------------------

def _context_name(tokens: Sequence[str]) -> str:
    """Display name of a context: ``aab`` when all token names are single characters, else space-joined."""
    return "".join(tokens) if all(len(t) == 1 for t in tokens) else " ".join(tokens)


@dataclass(frozen=True, eq=False)
class ConceptDataset:
    """A concept dataset satisfying Assumption 1 (Sec. 2.1, Def. 2.1).

    ``p(z | c_j) = a_z`` when token ``z`` and context ``c_j`` lie in the same concept, ``b_z`` otherwise, with
    ``1 > a_z > b_z > 0`` and every row summing to one. Contexts stay explicit (``m`` of them, with weights
    ``pi_j``) as in the paper, even though under Assumption 1 a context matters only through its concept.

    Args:
        token_names: the ``V`` token names (unique).
        token_concepts: the 0-based concept index of each token (concepts ``0..G-1``, none empty).
        a: ``a_z`` for every token, shape ``[V]``.
        b: ``b_z`` for every token, shape ``[V]``.
        contexts: the ``m`` contexts, each a sequence of token names all in one concept.
        pi: the weights ``pi_j`` (fraction of training pairs with context ``c_j``); uniform when ``None``.
        concept_names: names of the concepts (``C1, C2, ...`` when ``None``).
        opposite: concept index -> index of its "opposite" concept, used by the contrastive setting.
    """

    token_names: tuple[str, ...]
    token_concepts: np.ndarray
    a: np.ndarray
    b: np.ndarray
    contexts: tuple[tuple[str, ...], ...]
    pi: np.ndarray | None = None
    concept_names: tuple[str, ...] | None = None
    opposite: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def set_(name: str, value) -> None:  # the dataclass is frozen: normalise fields in place once
            object.__setattr__(self, name, value)

        token_names = tuple(str(t) for t in self.token_names)
        if len(set(token_names)) != len(token_names):
            raise ValueError("token_names must be unique")
        V = len(token_names)
        concepts = np.asarray(self.token_concepts, dtype=int)
        a = np.asarray(self.a, dtype=float)
        b = np.asarray(self.b, dtype=float)
        for name, arr in (("token_concepts", concepts), ("a", a), ("b", b)):
            if arr.shape != (V,):
                raise ValueError(f"{name} must have one entry per token, shape ({V},); got {arr.shape}")
        G = int(concepts.max()) + 1 if V else 0
        if V == 0 or concepts.min() < 0 or set(concepts.tolist()) != set(range(G)):
            raise ValueError("token_concepts must use every concept index 0..G-1 (no empty concept)")
        if G < 2:
            raise ValueError("a concept dataset needs at least two concepts (G >= 2)")
        if not (np.all(b > 0) and np.all(a < 1)):
            raise ValueError("Assumption 1 needs 0 < b_z and a_z < 1 for every token")
        bad = np.flatnonzero(a <= b)
        if bad.size:
            z = int(bad[0])
            raise ValueError(f"Assumption 1 needs a_z > b_z for every token; token {token_names[z]!r} has "
                             f"a_z = {a[z]:.6g} <= b_z = {b[z]:.6g}")
        for k in range(G):
            total = a[concepts == k].sum() + b[concepts != k].sum()
            if abs(total - 1.0) > ROW_SUM_TOLERANCE:
                raise ValueError(f"rows must sum to 1: for concept {k}, sum of a_z inside plus b_z outside is "
                                 f"{total:.12g}; rescale a and b")
        index = {t: i for i, t in enumerate(token_names)}
        contexts = tuple(tuple(str(t) for t in c) for c in self.contexts)
        if not contexts:
            raise ValueError("give at least one context")
        context_concepts = []
        for c in contexts:
            if not c:
                raise ValueError("a context must hold at least one token")
            unknown = [t for t in c if t not in index]
            if unknown:
                raise ValueError(f"context {c!r} uses unknown token name(s) {unknown}; known: {list(token_names)}")
            ks = {int(concepts[index[t]]) for t in c}
            if len(ks) != 1:
                raise ValueError(f"context {_context_name(c)!r} mixes concepts {sorted(ks)}; "
                                 "a context must lie inside one concept (Sec. 2.1)")
            context_concepts.append(ks.pop())
        names = [_context_name(c) for c in contexts]
        if len(set(names)) != len(names):
            raise ValueError("contexts must be distinct")
        m = len(contexts)
        pi = np.full(m, 1.0 / m) if self.pi is None else _as_weights(self.pi, m)
        concept_names = (tuple(f"C{k + 1}" for k in range(G)) if self.concept_names is None
                         else tuple(str(n) for n in self.concept_names))
        if len(concept_names) != G:
            raise ValueError(f"concept_names must have {G} names, one per concept; got {len(concept_names)}")
        opposite = dict(self.opposite)
        for k, o in opposite.items():
            if not (0 <= k < G and 0 <= o < G and k != o):
                raise ValueError(f"opposite maps concepts to other concepts in [0, {G}); got {k} -> {o}")
        set_("token_names", token_names)
        set_("token_concepts", concepts)
        set_("a", a)
        set_("b", b)
        set_("contexts", contexts)
        set_("pi", pi)
        set_("concept_names", concept_names)
        set_("opposite", opposite)
        set_("context_concepts", np.asarray(context_concepts, dtype=int))
        set_("context_names", tuple(names))
        same = self.context_concepts[:, None] == concepts[None, :]
        set_("rows", np.where(same, a[None, :], b[None, :]))

    # Filled in by __post_init__ (declared for readers and type checkers).
    context_concepts: np.ndarray = field(init=False, repr=False)
    """The concept of each context, shape ``[m]``."""
    context_names: tuple[str, ...] = field(init=False, repr=False)
    """Display names of the contexts, e.g. ``"aab"``."""
    rows: np.ndarray = field(init=False, repr=False)
    """``p(z | c_j)`` for every context and token, shape ``[m, V]`` (Def. 2.1 under Assumption 1)."""

    @property
    def V(self) -> int:
        """Vocabulary size."""
        return len(self.token_names)

    @property
    def G(self) -> int:
        """Number of concepts."""
        return len(self.concept_names)

    @property
    def m(self) -> int:
        """Number of distinct contexts."""
        return len(self.contexts)

    @property
    def entropy(self) -> float:
        """``sum_j pi_j H(p(. | c_j))``: the smallest cross-entropy any model can reach (App. B.1)."""
        return float(dataset_entropy(self.rows, self.pi))

    def token_index(self, name: str) -> int:
        """Index of the token called ``name``."""
        try:
            return self.token_names.index(name)
        except ValueError:
            raise ValueError(f"unknown token name {name!r}; known: {list(self.token_names)}") from None

    def context_index(self, name: str) -> int:
        """Index ``j`` of the context called ``name`` (e.g. ``"aab"``)."""
        try:
            return self.context_names.index(name)
        except ValueError:
            raise ValueError(f"unknown context {name!r}; known: {list(self.context_names)}") from None

    def concept_index(self, name: str) -> int:
        """Index of the concept called ``name``."""
        try:
            return self.concept_names.index(name)
        except ValueError:
            raise ValueError(f"unknown concept {name!r}; known: {list(self.concept_names)}") from None

    def members(self, concept: int) -> np.ndarray:
        """Token indices of concept ``concept`` (0-based)."""
        if not 0 <= concept < self.G:
            raise ValueError(f"concept index must be in [0, {self.G}); got {concept}")
        return np.flatnonzero(self.token_concepts == concept)

    def contexts_in(self, concept: int) -> np.ndarray:
        """Indices ``j`` of the contexts lying in concept ``concept``."""
        if not 0 <= concept < self.G:
            raise ValueError(f"concept index must be in [0, {self.G}); got {concept}")
        return np.flatnonzero(self.context_concepts == concept)

    def log_odds(self, sets: "SteeringSets") -> np.ndarray:
        """The log-odds ``M`` (Def. 3.2) of this dataset for positive / negative sets ``sets``."""
        sets.check_against(self)
        return log_odds(self.rows[list(sets.positive)], self.rows[list(sets.negative)])


def eq2_dataset(epsilon: float = 0.2, gamma: Sequence[float] | None = (0.45, 0.35, 0.2),
                omega: Sequence[float] | None = (0.2, 0.35, 0.45), contexts: Sequence[str] = EQ2_CONTEXTS,
                pi: Sequence[float] | None = None) -> ConceptDataset:
    """The running example of Eq. (2): tokens ``a, b, c | A, B, C | α, β, γ`` (``V = 9``, ``G = 3``).

    Probabilities follow the App. B.3 form ``a_z = (1 - ε) γ_z``, ``b_z = ε ω_z / (G - 1)``, with the same
    within-concept weights ``gamma`` and ``omega`` (three numbers each, summing to 1) in every concept.
    ``gamma = omega = None`` gives uniform weights ``1/s``: the App. B.1 instantiation
    ``a_z = (1 - ε)/s``, ``b_z = ε/((G - 1) s)``. The default (non-uniform) weights make the log-odds differ
    inside a concept, so that bumps (Th. 3.3) appear. Uppercase is the opposite of lowercase: concepts
    ``C1 = {a,b,c}`` and ``C2 = {A,B,C}`` are each other's opposite, ``C3 = {α,β,γ}`` has none.

    Args:
        epsilon: smoothing ``ε`` in ``(0, (G-1)/G)``: the probability of leaving the context's concept.
        gamma: within-concept weights of ``a_z`` (``None``: uniform).
        omega: within-concept weights of ``b_z`` (``None``: uniform).
        contexts: context strings, one character per token (default :data:`EQ2_CONTEXTS`).
        pi: context weights ``pi_j`` (uniform when ``None``).
    """
    s = 3
    gamma_all = np.tile(np.full(s, 1.0 / s) if gamma is None else np.asarray(gamma, dtype=float), 3)
    omega_all = np.tile(np.full(s, 1.0 / s) if omega is None else np.asarray(omega, dtype=float), 3)
    if gamma_all.shape != (9,) or omega_all.shape != (9,):
        raise ValueError("gamma and omega must each hold 3 weights (one per token of a concept)")
    return app_b3_dataset(gamma_all, omega_all, epsilon, token_concepts=np.repeat(np.arange(3), s),
                          token_names=EQ2_TOKENS, contexts=[tuple(c) for c in contexts], pi=pi,
                          concept_names=("lowercase", "uppercase", "greek"), opposite={0: 1, 1: 0})


def app_b3_dataset(gamma: Sequence[float], omega: Sequence[float], epsilon: float, *,
                   token_concepts: Sequence[int], token_names: Sequence[str] | None = None,
                   contexts: Sequence[Sequence[str]] | None = None, contexts_per_concept: int = 3,
                   context_length: int = 3, pi: Sequence[float] | None = None,
                   concept_names: Sequence[str] | None = None, opposite: Mapping[int, int] | None = None,
                   seed: int = 0) -> ConceptDataset:
    """The App. B.3 instantiation (Remark 3.4): ``a_z = (1 - ε) γ_z``, ``b_z = ε ω_z / (G - 1)``.

    ``gamma`` and ``omega`` must each sum to 1 over every concept; then every row sums to
    ``(1 - ε) + (G - 1) ε/(G - 1) = 1``. Assumption 1 further needs ``a_z > b_z``, which is checked.

    Args:
        gamma: ``γ_z`` for every token, shape ``[V]``, summing to 1 inside each concept.
        omega: ``ω_z`` for every token, shape ``[V]``, summing to 1 inside each concept.
        epsilon: smoothing ``ε`` in ``(0, 1)``.
        token_concepts: 0-based concept of each token.
        token_names: names (default ``"k.i"``: concept letter and position, e.g. ``"A0"``).
        contexts: explicit contexts (sequences of token names); default: :func:`default_contexts`.
        contexts_per_concept: number of generated contexts per concept when ``contexts`` is ``None``.
        context_length: length of generated contexts.
        pi: weights ``pi_j`` (uniform when ``None``).
        concept_names: names of the concepts.
        opposite: opposite concept of each concept (default: ``k <-> k+1`` for pairs ``(0,1), (2,3), ...``).
        seed: seed of the generated contexts.
    """
    concepts = np.asarray(token_concepts, dtype=int)
    gamma = np.asarray(gamma, dtype=float)
    omega = np.asarray(omega, dtype=float)
    if gamma.shape != concepts.shape or omega.shape != concepts.shape:
        raise ValueError("gamma, omega and token_concepts must all have one entry per token")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1); got {epsilon}")
    G = int(concepts.max()) + 1
    if G < 2:
        raise ValueError("App. B.3 needs at least two concepts")
    for name, w in (("gamma", gamma), ("omega", omega)):
        if np.any(w <= 0):
            raise ValueError(f"{name} must be positive")
        for k in range(G):
            if abs(w[concepts == k].sum() - 1.0) > ROW_SUM_TOLERANCE:
                raise ValueError(f"{name} must sum to 1 inside every concept; concept {k} sums to "
                                 f"{w[concepts == k].sum():.12g}")
    a = (1.0 - epsilon) * gamma
    b = epsilon * omega / (G - 1)
    names = _default_token_names(concepts) if token_names is None else tuple(token_names)
    if contexts is None:
        contexts = default_contexts(names, concepts, contexts_per_concept, context_length, seed)
    if opposite is None:
        opposite = {k: k ^ 1 for k in range(G) if (k ^ 1) < G}
    return ConceptDataset(names, concepts, a, b, tuple(tuple(c) for c in contexts), pi=pi,
                          concept_names=concept_names, opposite=opposite)


def app_b1_dataset(n_concepts: int, concept_size: int, epsilon: float, **kwargs) -> ConceptDataset:
    """The App. B.1 instantiation: ``a_z = (1 - ε)/s``, ``b_z = ε/((G - 1) s)``, ``ε in (0, (G-1)/G)``.

    ``V = G s`` tokens in ``G`` concepts of ``s`` tokens each. Extra keyword arguments go to
    :func:`app_b3_dataset` (names, contexts, weights, seed). For ``G = 3``, ``s = 3`` prefer
    ``eq2_dataset(epsilon, gamma=None, omega=None)``, which carries the Eq. (2) token names.

    Args:
        n_concepts: ``G >= 2``.
        concept_size: ``s >= 1``.
        epsilon: smoothing ``ε`` in ``(0, (G-1)/G)`` (so that ``a_z > b_z``).
    """
    if n_concepts < 2 or concept_size < 1:
        raise ValueError("App. B.1 needs n_concepts >= 2 and concept_size >= 1")
    if not 0 < epsilon < (n_concepts - 1) / n_concepts:
        raise ValueError(f"epsilon must lie in (0, (G-1)/G) = (0, {(n_concepts - 1) / n_concepts:.4g}) so "
                         f"that a_z > b_z; got {epsilon}")
    uniform = np.full(n_concepts * concept_size, 1.0 / concept_size)
    return app_b3_dataset(uniform, uniform, epsilon,
                          token_concepts=np.repeat(np.arange(n_concepts), concept_size), **kwargs)


def app_b1_entropy(n_concepts: int, concept_size: int, epsilon: float) -> float:
    """Entropy of every row of the App. B.1 dataset, ``-(1-ε) log((1-ε)/s) - ε log(ε/((G-1)s))``.

    All rows are permutations of one another, so this is also ``sum_j pi_j H(p(. | c_j))``, the lower bound
    of the UFM's cross-entropy, whatever the contexts and weights.
    """
    G, s = n_concepts, concept_size
    if G < 2 or s < 1 or not 0 < epsilon < 1:
        raise ValueError("need n_concepts >= 2, concept_size >= 1 and 0 < epsilon < 1")
    return float(-(1 - epsilon) * np.log((1 - epsilon) / s) - epsilon * np.log(epsilon / ((G - 1) * s)))


def general_dataset(a: Sequence[float], b: Sequence[float], token_concepts: Sequence[int], **kwargs
                    ) -> ConceptDataset:
    """A dataset from arbitrary ``a_z``, ``b_z`` (Assumption 1 is checked: ``a_z > b_z``, rows sum to 1).

    Keyword arguments: ``token_names``, ``contexts`` (or ``contexts_per_concept``, ``context_length``,
    ``seed`` to generate them), ``pi``, ``concept_names``, ``opposite`` -- as in :func:`app_b3_dataset`.
    """
    concepts = np.asarray(token_concepts, dtype=int)
    names = kwargs.pop("token_names", None)
    names = _default_token_names(concepts) if names is None else tuple(names)
    contexts = kwargs.pop("contexts", None)
    if contexts is None:
        contexts = default_contexts(names, concepts, kwargs.pop("contexts_per_concept", 3),
                                    kwargs.pop("context_length", 3), kwargs.pop("seed", 0))
    G = int(concepts.max()) + 1 if concepts.size else 0
    opposite = kwargs.pop("opposite", None)
    if opposite is None:
        opposite = {k: k ^ 1 for k in range(G) if (k ^ 1) < G}
    return ConceptDataset(names, concepts, a, b, tuple(tuple(c) for c in contexts), opposite=opposite, **kwargs)


def _default_token_names(concepts: np.ndarray) -> tuple[str, ...]:
    counters: dict[int, int] = {}
    names = []
    for k in concepts.tolist():
        i = counters.get(k, 0)
        counters[k] = i + 1
        names.append(f"{_concept_letter(k)}{i}")
    return tuple(names)


def _concept_letter(k: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[k] if k < 26 else f"K{k}_"


def default_contexts(token_names: Sequence[str], token_concepts: Sequence[int], per_concept: int = 3,
                     length: int = 3, seed: int = 0) -> list[tuple[str, ...]]:
    """``per_concept`` distinct random contexts of ``length`` tokens inside each concept (seeded).

    Args:
        token_names: the token names.
        token_concepts: concept of each token.
        per_concept: contexts per concept.
        length: tokens per context.
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    concepts = np.asarray(token_concepts, dtype=int)
    contexts: list[tuple[str, ...]] = []
    for k in range(int(concepts.max()) + 1):
        members = [token_names[i] for i in np.flatnonzero(concepts == k)]
        available = len(members) ** length
        if per_concept > available:
            raise ValueError(f"concept {k} has only {available} distinct contexts of length {length}; "
                             f"ask for fewer than {per_concept} or use longer contexts")
        seen: set[tuple[str, ...]] = set()
        while len(seen) < per_concept:
            c = tuple(members[i] for i in rng.integers(len(members), size=length))
            if c not in seen:
                seen.add(c)
                contexts.append(c)
    return contexts


def dataset_entropy(rows, weights) -> float:
    """``sum_j pi_j H(p(. | c_j))``: the lower bound of the cross-entropy (attained iff Assumption 2)."""
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(rows > 0, rows * np.log(rows), 0.0)
    return float(-(weights * plogp.sum(axis=1)).sum())


# ---------------------------------------------------------------------------------------------------------
# Positive and negative sets
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SteeringSets:
    """Positive and negative contexts of a steering vector (Sec. 2.2).

    Args:
        target: the target concept ``T`` (0-based index).
        positive: indices ``j`` of the positive contexts ``P`` (all in ``T``).
        negative: indices ``j`` of the negative contexts ``N`` (none in ``T``), ``|N| = |P|``, ``P ∩ N = ∅``.
        setting: ``"contrastive"``, ``"random"`` or ``"custom"``, for labels.
    """

    target: int
    positive: tuple[int, ...]
    negative: tuple[int, ...]
    setting: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "positive", tuple(int(j) for j in self.positive))
        object.__setattr__(self, "negative", tuple(int(j) for j in self.negative))
        if not self.positive:
            raise ValueError("P is empty: give at least one positive context")
        if len(self.positive) != len(self.negative):
            raise ValueError(f"|P| = {len(self.positive)} but |N| = {len(self.negative)}: the paper's setting "
                             "needs |P| = |N| = q; give as many negative as positive contexts")
        if len(set(self.positive)) != len(self.positive) or len(set(self.negative)) != len(self.negative):
            raise ValueError("P and N must not repeat a context")
        both = sorted(set(self.positive) & set(self.negative))
        if both:
            raise ValueError(f"P and N overlap in contexts {both}; they must be disjoint")

    @property
    def q(self) -> int:
        """``q = |P| = |N|``."""
        return len(self.positive)

    def check_against(self, dataset: ConceptDataset) -> None:
        """Raise ValueError unless ``P`` lies in the target concept and ``N`` outside it."""
        if not 0 <= self.target < dataset.G:
            raise ValueError(f"target concept must be in [0, {dataset.G}); got {self.target}")
        for j in self.positive + self.negative:
            if not 0 <= j < dataset.m:
                raise ValueError(f"context index {j} out of range [0, {dataset.m})")
        off = [dataset.context_names[j] for j in self.positive if dataset.context_concepts[j] != self.target]
        if off:
            raise ValueError(f"positive contexts {off} are not in the target concept "
                             f"{dataset.concept_names[self.target]!r}")
        inside = [dataset.context_names[j] for j in self.negative if dataset.context_concepts[j] == self.target]
        if inside:
            raise ValueError(f"negative contexts {inside} lie in the target concept "
                             f"{dataset.concept_names[self.target]!r}; N must hold non-target contexts")


def steering_sets(dataset: ConceptDataset, positive: Sequence[str], negative: Sequence[str],
                  setting: str = "custom") -> SteeringSets:
    """Steering sets from context names; the target is the concept of the positive contexts.

    Args:
        dataset: the dataset the contexts belong to.
        positive: names of the positive contexts (e.g. ``["aab", "bba"]``).
        negative: names of the negative contexts.
        setting: label (``"contrastive"``, ``"random"`` or ``"custom"``).
    """
    pos = [dataset.context_index(c) for c in positive]
    neg = [dataset.context_index(c) for c in negative]
    if not pos:
        raise ValueError("P is empty: give at least one positive context")
    sets = SteeringSets(int(dataset.context_concepts[pos[0]]), tuple(pos), tuple(neg), setting)
    sets.check_against(dataset)
    return sets


def eq2_steering_sets(dataset: ConceptDataset, setting: str = "contrastive") -> SteeringSets:
    """The paper's sets for the Eq. (2) example: ``P = {aab, bba, acc, cca}`` and ``N`` contrastive
    ``{ABB, AAB, CAC, CBA}`` or random ``{ABB, αβγ, γβγ, BAB}`` (Sec. 2.2).

    Args:
        dataset: an :func:`eq2_dataset` (it must contain these contexts).
        setting: ``"contrastive"`` or ``"random"``.
    """
    if setting not in EQ2_NEGATIVE:
        raise ValueError(f"setting must be one of {list(EQ2_NEGATIVE)}; got {setting!r}")
    return steering_sets(dataset, EQ2_POSITIVE, EQ2_NEGATIVE[setting], setting)


def select_steering_sets(dataset: ConceptDataset, target: int, q: int, setting: str = "random",
                         seed: int = 0) -> SteeringSets:
    """Random ``P`` (``q`` contexts of ``target``) and ``N`` (``q`` non-target contexts), seeded.

    Random setting: ``N`` drawn among all contexts outside ``target``. Contrastive setting: ``N`` drawn among
    the contexts of the opposite concept ``dataset.opposite[target]``.

    Args:
        dataset: the dataset.
        target: target concept index.
        q: number of positive (and negative) contexts.
        setting: ``"random"`` or ``"contrastive"``.
        seed: random seed.
    """
    if setting not in ("random", "contrastive"):
        raise ValueError(f"setting must be 'random' or 'contrastive'; got {setting!r}")
    if q < 1:
        raise ValueError(f"q must be at least 1; got {q}")
    rng = np.random.default_rng(seed)
    pool_pos = dataset.contexts_in(target)
    if setting == "contrastive":
        if target not in dataset.opposite:
            raise ValueError(f"concept {dataset.concept_names[target]!r} has no opposite concept; use the "
                             "random setting or give `opposite` when building the dataset")
        pool_neg = dataset.contexts_in(dataset.opposite[target])
    else:
        pool_neg = np.flatnonzero(dataset.context_concepts != target)
    if q > len(pool_pos) or q > len(pool_neg):
        raise ValueError(f"q = {q} but only {len(pool_pos)} positive and {len(pool_neg)} negative contexts "
                         "are available; lower q or add contexts")
    pos = np.sort(rng.choice(pool_pos, size=q, replace=False))
    neg = np.sort(rng.choice(pool_neg, size=q, replace=False))
    return SteeringSets(target, tuple(pos.tolist()), tuple(neg.tolist()), setting)


# ---------------------------------------------------------------------------------------------------------
# Log-odds and exponential tilting (Def. 3.2, Lemmas B.3-B.5)
# ---------------------------------------------------------------------------------------------------------

def log_odds(p_pos, p_neg) -> np.ndarray:
    """``M(z) = (1/q) log( prod_{i in P} p(z|c_i) / prod_{i in N} p(z|c_i) )`` (Def. 3.2).

    Args:
        p_pos: rows ``p(. | c_i)`` of the ``q`` positive contexts, shape ``[q, V]``.
        p_neg: rows of the ``q`` negative contexts, shape ``[q, V]``.

    Returns:
        ``M``, shape ``[V]``.
    """
    p_pos = _as_rows(p_pos, "p_pos")
    p_neg = _as_rows(p_neg, "p_neg")
    if p_pos.shape[1] != p_neg.shape[1]:
        raise ValueError(f"p_pos and p_neg must share the vocabulary size V; got {p_pos.shape[1]} and "
                         f"{p_neg.shape[1]}")
    if p_pos.shape[0] != p_neg.shape[0]:
        raise ValueError(f"|P| = {p_pos.shape[0]} but |N| = {p_neg.shape[0]}: Def. 3.2 needs |P| = |N| = q")
    if np.any(p_pos <= 0) or np.any(p_neg <= 0):
        raise ValueError("log-odds need strictly positive probabilities (Assumption 1 gives b_z > 0)")
    q = p_pos.shape[0]
    return (np.log(p_pos).sum(axis=0) - np.log(p_neg).sum(axis=0)) / q


def lemma_b4_log_odds(dataset: ConceptDataset, sets: SteeringSets) -> np.ndarray:
    """The log-odds in closed form (Lemma B.4): ``M(z) = log(a_z / b_z)`` for ``z in T`` and
    ``M(z) = -(q_z / q) log(a_z / b_z)`` for ``z notin T``, with ``q_z`` the number of negative contexts in the
    concept of ``z``. Equal to :func:`log_odds` of the rows under Assumption 1. Shape ``[V]``.
    """
    sets.check_against(dataset)
    ratio = np.log(dataset.a / dataset.b)
    negative_concepts = dataset.context_concepts[list(sets.negative)]
    q_z = np.array([np.sum(negative_concepts == k) for k in dataset.token_concepts])
    return np.where(dataset.token_concepts == sets.target, ratio, -q_z / sets.q * ratio)


def log_odds_sign_separation(M, target_members) -> float:
    """Lemma B.4 margin: ``min_{z in T} M(z) - max(0, max_{z notin T} M(z))`` (> 0 when B.4 holds).

    Lemma B.4 states ``M(z) > 0`` on ``T`` and ``M(z) <= 0`` off ``T``; the margin is positive exactly then.

    Args:
        M: log-odds, shape ``[V]``.
        target_members: token indices of the target concept ``T``.
    """
    M = np.asarray(M, dtype=float)
    members = _as_members(target_members, M.size)
    outside = np.setdiff1d(np.arange(M.size), members)
    top_outside = max(0.0, float(M[outside].max())) if outside.size else 0.0
    return float(M[members].min() - top_outside)


def _tilted_log_probs(p: np.ndarray, M: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """``log σ(f_α(c_j))`` under Assumption 2 (Lemma B.3), shape ``[len(alphas), V]``."""
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    logits = log_p[None, :] + alphas[:, None] * M[None, :]
    return logits - logsumexp(logits, axis=1, keepdims=True)


def steered_log_probs(p, M, alphas) -> np.ndarray:
    """``log σ_z(f_α(c_j))`` via Lemma B.3, shape ``[len(alphas), V]`` (stable in log space)."""
    p = _as_row(p)
    return _tilted_log_probs(p, _as_log_odds(M, p.size), _as_alphas(alphas))


def steered_probs(p, M, alphas) -> np.ndarray:
    """Steered next-token distribution under Assumption 2: exponential tilting (Lemma B.3),

    ``σ_z(f_α(c_j)) = p(z|c_j) e^{α M(z)} / sum_{z'} p(z'|c_j) e^{α M(z')}``.

    Args:
        p: the context row ``p(. | c_j)``, shape ``[V]``.
        M: log-odds, shape ``[V]``.
        alphas: steering strengths (scalar or 1-d), any magnitude (computed with logsumexp).

    Returns:
        shape ``[len(alphas), V]``.
    """
    return np.exp(steered_log_probs(p, M, alphas))


def delta_p(p, M, alphas) -> np.ndarray:
    """``Δp(z | c_j, α) = σ_z(f_α(c_j)) - p(z | c_j)`` (Def. 3.1), shape ``[len(alphas), V]``."""
    p = _as_row(p)
    return steered_probs(p, M, alphas) - p[None, :]


def tilted_mean(p, M, alphas) -> np.ndarray:
    """``E_{Z ~ σ(f_α(c_j))}[M(Z)]`` for each α, shape ``[len(alphas)]`` (Lemma B.5)."""
    return (steered_probs(p, M, alphas) * np.asarray(M, dtype=float)[None, :]).sum(axis=1)


def tilted_variance(p, M, alphas) -> np.ndarray:
    """``Var_{Z ~ σ(f_α(c_j))}(M(Z))`` = ``d/dα E[M]`` (Lemma B.5), shape ``[len(alphas)]``."""
    probs = steered_probs(p, M, alphas)
    M = np.asarray(M, dtype=float)
    mean = (probs * M[None, :]).sum(axis=1, keepdims=True)
    return (probs * (M[None, :] - mean) ** 2).sum(axis=1)


def delta_p_derivative(p, M, alphas) -> np.ndarray:
    """``d/dα Δp(z|c_j,α) = σ_z(f_α(c_j)) (M(z) - E_{σ(f_α(c_j))}[M])`` (Lemma B.5), ``[len(alphas), V]``."""
    probs = steered_probs(p, M, alphas)
    M = np.asarray(M, dtype=float)
    mean = (probs * M[None, :]).sum(axis=1, keepdims=True)
    return probs * (M[None, :] - mean)


def _tie_tolerance(M: np.ndarray) -> float:
    return TIE_TOLERANCE * max(1.0, float(np.abs(M).max()))


def max_log_odds_tokens(M) -> np.ndarray:
    """``M̄``: indices of the tokens attaining ``max_z M(z)`` (ties within :data:`TIE_TOLERANCE`)."""
    M = np.asarray(M, dtype=float)
    return np.flatnonzero(M >= M.max() - _tie_tolerance(M))


def min_log_odds_tokens(M) -> np.ndarray:
    """``M̲``: indices of the tokens attaining ``min_z M(z)`` (ties within :data:`TIE_TOLERANCE`)."""
    M = np.asarray(M, dtype=float)
    return np.flatnonzero(M <= M.min() + _tie_tolerance(M))


def classify_tokens(M) -> np.ndarray:
    """Shape of ``α -> Δp(z | c_j, α)`` per Th. 3.3, the same for every context ``c_j``:

    ``"increasing"`` for ``z in M̄``, ``"decreasing"`` for ``z in M̲``, ``"bump"`` otherwise (unique maximum
    at ``α(j, z)``). Returns an array of strings, shape ``[V]``. (If ``M`` is constant every token is flat;
    this cannot happen under Assumption 1.)
    """
    M = np.asarray(M, dtype=float)
    labels = np.full(M.size, "bump", dtype=object)
    labels[min_log_odds_tokens(M)] = "decreasing"
    labels[max_log_odds_tokens(M)] = "increasing"
    return labels.astype(str)


def delta_p_limits(p, M) -> tuple[np.ndarray, np.ndarray]:
    """Limits of ``Δp(z | c_j, α)`` as ``α -> +∞`` and ``α -> -∞`` (Prop. B.1, Eq. (5)).

    ``lim_{+∞} = 1{z in M̄} p(z|c_j) / sum_{z' in M̄} p(z'|c_j) - p(z|c_j)``; ``M̲`` replaces ``M̄`` for ``-∞``.

    Returns:
        ``(limit_plus, limit_minus)``, each of shape ``[V]``.
    """
    p = _as_row(p)
    M = _as_log_odds(M, p.size)
    limits = []
    for top in (max_log_odds_tokens(M), min_log_odds_tokens(M)):
        mass = p[top].sum()
        if mass <= 0:
            raise ValueError("p puts no mass on the extreme log-odds tokens; the limit is then not Eq. (5)")
        limit = np.zeros_like(p)
        limit[top] = p[top] / mass
        limits.append(limit - p)
    return limits[0], limits[1]


def bump_location(p, M, z: int, *, xtol: float = 1e-12) -> float:
    """``α(j, z)`` of Th. 3.3: the unique root of ``E_{σ(f_α(c_j))}[M] = M(z)``, where ``Δp(z|c_j,.)`` peaks.

    The map ``α -> E[M]`` increases strictly from ``min M`` to ``max M`` (Lemma B.5, derivative ``Var``), so the
    root is bracketed by doubling an interval around 0 and refined with Brent's method.

    Args:
        p: context row ``p(. | c_j)`` (full support), shape ``[V]``.
        M: log-odds, shape ``[V]``.
        z: token index.
        xtol: absolute tolerance on ``α``.

    Returns:
        ``α(j, z)``; ``+inf`` for ``z in M̄`` (increasing on R), ``-inf`` for ``z in M̲`` (decreasing on R).
    """
    p = _as_row(p)
    M = _as_log_odds(M, p.size)
    z = int(z)
    if not 0 <= z < p.size:
        raise ValueError(f"token index z must be in [0, {p.size}); got {z}")
    if np.any(p <= 0):
        raise ValueError("bump_location needs a row with full support (Assumption 1 gives p > 0)")
    if z in max_log_odds_tokens(M):
        return float("inf")
    if z in min_log_odds_tokens(M):
        return float("-inf")
    target = M[z]
    log_p = np.log(p)

    def gap(alpha: float) -> float:
        logits = log_p + alpha * M
        weights = np.exp(logits - logits.max())
        return float(weights @ M / weights.sum() - target)

    lo, hi = -1.0, 1.0
    while gap(hi) < 0:
        lo, hi = hi, 2.0 * hi
    while gap(lo) > 0:
        lo, hi = 2.0 * lo, lo
    return float(brentq(gap, lo, hi, xtol=xtol, rtol=4 * np.finfo(float).eps))


def bump_locations(p, M) -> np.ndarray:
    """``α(j, z)`` (Th. 3.3) for every token ``z``, shape ``[V]`` (``±inf`` for monotone tokens)."""
    M = np.asarray(M, dtype=float)
    return np.array([bump_location(p, M, z) for z in range(M.size)])


def min_target_bump_outside(dataset: ConceptDataset, sets: SteeringSets) -> float:
    """``min_{c_j notin T, z in T} α(j, z)``: the earliest target bump over the non-target contexts (Remark 3.4).

    Remark 3.4 states that this is positive (target tokens only gain from positive steering) for the App. B.3
    dataset and ``ε`` small enough; :func:`remark_3_4_bound` is the proof's sufficient condition.

    Args:
        dataset: a dataset satisfying Assumption 1.
        sets: the steering sets; ``T = sets.target`` and ``M = dataset.log_odds(sets)``.
    """
    M = dataset.log_odds(sets)
    target = dataset.members(sets.target)
    outside = np.flatnonzero(dataset.context_concepts != sets.target)
    if outside.size == 0:
        raise ValueError("every context lies in the target concept: Remark 3.4 is about contexts outside T")
    return float(min(bump_locations(dataset.rows[j], M)[target].min() for j in outside))


def remark_3_4_bound(dataset: ConceptDataset, target: int) -> float:
    """The sufficient condition of the proof of Remark 3.4: ``F = M(z_1) - β log(ρ/β)``.

    ``z_1`` is the target token of smallest log-odds, ``M(z_1) = min_{z in T} log(a_z / b_z)`` (Lemma B.4, which
    holds for every choice of ``P`` in ``T`` and ``N`` outside it), ``β = sum_{z in T} b_z`` and
    ``ρ = sum_{z in T} a_z``. The proof bounds ``E_{p(.|c_j)}[M] <= β log(ρ/β)`` for every context
    ``c_j notin T`` (``M <= 0`` off ``T``, then Gibbs' inequality), so ``F > 0`` gives
    ``M(z_1) > E_{p(.|c_j)}[M]``, i.e. ``α(j, z) >= α(j, z_1) > 0`` for all ``z in T``. For the App. B.3 form
    ``β = ε/(G-1)`` and ``ρ = 1 - ε``, which is the paper's
    ``F(ε) = M(z_1) - ε/(G-1) log((1-ε)(G-1)/ε)``. The condition is sufficient, not necessary.

    Args:
        dataset: a dataset satisfying Assumption 1.
        target: index of the target concept ``T``.
    """
    members = dataset.members(target)
    m_z1 = np.log(dataset.a[members] / dataset.b[members]).min()
    beta = dataset.b[members].sum()
    rho = dataset.a[members].sum()
    return float(m_z1 - beta * np.log(rho / beta))


# ---------------------------------------------------------------------------------------------------------
# Concept probability (Def. 3.5, Th. 3.6)
# ---------------------------------------------------------------------------------------------------------

def concept_probability(p, M, members, alphas) -> np.ndarray:
    """``F_{C,j}(α) = sum_{z in C} σ_z(f_α(c_j))`` (Th. 3.6), shape ``[len(alphas)]``."""
    p = _as_row(p)
    members = _as_members(members, p.size)
    return np.exp(logsumexp(steered_log_probs(p, M, alphas)[:, members], axis=1))


def concept_increase(p, M, members, alphas) -> np.ndarray:
    """``Δp(C | c_j, α) = (1/|C|) sum_{z in C} Δp(z | c_j, α)`` (Def. 3.5), by the direct sum.

    Args:
        p: context row ``p(. | c_j)``, shape ``[V]``.
        M: log-odds, shape ``[V]``.
        members: token indices of the concept ``C``.
        alphas: steering strengths.

    Returns:
        shape ``[len(alphas)]``.
    """
    p = _as_row(p)
    members = _as_members(members, p.size)
    return delta_p(p, M, alphas)[:, members].mean(axis=1)


def concept_conditional_means(p, M, members, alphas) -> tuple[np.ndarray, np.ndarray]:
    """``μ_C(α) = E[M(Z) | Z in C]`` and ``μ_{C^c}(α) = E[M(Z) | Z notin C]``, ``Z ~ σ(f_α(c_j))`` (Th. 3.6).

    Computed from log-probabilities normalised inside ``C`` and inside its complement, so they stay exact
    when one side carries vanishing mass. Returns two arrays of shape ``[len(alphas)]``.
    """
    p = _as_row(p)
    M = _as_log_odds(M, p.size)
    members = _as_members(members, p.size)
    outside = np.setdiff1d(np.arange(p.size), members)
    if outside.size == 0:
        raise ValueError("C is the whole vocabulary: its complement is empty and μ_{C^c} is undefined")
    log_probs = steered_log_probs(p, M, alphas)
    means = []
    for idx in (members, outside):
        part = log_probs[:, idx]
        weights = np.exp(part - logsumexp(part, axis=1, keepdims=True))
        means.append((weights * M[idx][None, :]).sum(axis=1))
    return means[0], means[1]


def concept_logit_at_zero(p, members) -> float:
    """``r_j = logit F_{C,j}(0) = log( p(C|c_j) / (1 - p(C|c_j)) )`` (Th. 3.6)."""
    p = _as_row(p)
    members = _as_members(members, p.size)
    inside = p[members].sum()
    if not 0 < inside < 1:
        raise ValueError("r_j needs 0 < p(C | c_j) < 1")
    return float(np.log(inside) - np.log1p(-inside))


def _cumulative_integral(func: Callable[[np.ndarray], np.ndarray], alphas: np.ndarray, step: float,
                         nodes: int = 8) -> np.ndarray:
    """``∫_0^α func(t) dt`` for every α: composite Gauss-Legendre on panels of width <= ``step``."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    out = np.zeros_like(alphas)
    for sign in (1.0, -1.0):
        chosen = np.flatnonzero(sign * alphas > 0)
        if chosen.size == 0:
            continue
        ends = np.unique(np.concatenate([[0.0], sign * alphas[chosen]]))
        edges = [np.linspace(lo, hi, int(np.ceil((hi - lo) / step)) + 1)[:-1] for lo, hi in zip(ends[:-1], ends[1:])]
        left = np.concatenate(edges + [ends[-1:]])
        widths = np.diff(left)
        mids = left[:-1] + widths / 2
        t = mids[:, None] + widths[:, None] / 2 * x[None, :]
        values = func((sign * t).ravel()).reshape(t.shape)
        panel = sign * (values * w[None, :]).sum(axis=1) * widths / 2
        cumulative = np.concatenate([[0.0], np.cumsum(panel)])
        positions = np.searchsorted(left, sign * alphas[chosen])
        out[chosen] = cumulative[positions]
    return out


def concept_nu(p, M, members, alphas, *, step: float | None = None) -> np.ndarray:
    """``ν_j(α) = ∫_0^α (μ_C(t) - μ_{C^c}(t)) dt`` (Th. 3.6), by Gauss-Legendre quadrature.

    The integrand is computed from :func:`concept_conditional_means`; it is not the closed form
    ``logit F(α) - r_j``, so comparing the two checks Th. 3.6.

    Args:
        p: context row, shape ``[V]``.
        M: log-odds, shape ``[V]``.
        members: token indices of ``C``.
        alphas: steering strengths.
        step: panel width (default ``0.25 / (max M - min M)``: the integrand varies on the scale
            ``1 / (max M - min M)``).
    """
    p = _as_row(p)
    M = _as_log_odds(M, p.size)
    alphas = _as_alphas(alphas)
    if step is None:
        step = 0.25 / max(float(np.ptp(M)), 1e-12)

    def integrand(t: np.ndarray) -> np.ndarray:
        mu_in, mu_out = concept_conditional_means(p, M, members, t)
        return mu_in - mu_out

    return _cumulative_integral(integrand, alphas, step)


def concept_increase_tanh(p, M, members, alphas, *, step: float | None = None) -> np.ndarray:
    """``Δp(C | c_j, α) = (1/(2|C|)) [tanh((ν_j(α) + r_j)/2) - tanh(r_j/2)]`` (Th. 3.6), with ``ν_j`` by
    quadrature (:func:`concept_nu`) and ``r_j`` from :func:`concept_logit_at_zero`. Shape ``[len(alphas)]``."""
    members = _as_members(members, np.asarray(p).size)
    r = concept_logit_at_zero(p, members)
    nu = concept_nu(p, M, members, alphas, step=step)
    return (np.tanh((nu + r) / 2) - np.tanh(r / 2)) / (2 * members.size)


CONCEPT_CASES = ("target: increasing", "decreasing", "common limit at ±∞", "not covered")
"""The labels :func:`concept_case` returns, one per case of Th. 3.6 (and the case it leaves open)."""


def concept_case(M, members, is_target: bool = False) -> str:
    """Which consequence of Th. 3.6 applies to ``α -> Δp(C | c_j, α)`` (the same for every context ``c_j``).

    - ``"target: increasing"``: ``C = T``, strictly increasing (point 1; ``is_target`` says so, since
      ``M`` alone does not name the target);
    - ``"decreasing"``: ``max_{z in C} M(z) <= min_{z notin C} M(z)``, decreasing (point 4);
    - ``"common limit at ±∞"``: ``C ∩ (M̄ ∪ M̲) = ∅``, same limit ``-(1/|C|) sum_{z in C} p(z|c_j)`` on both
      sides (point 3; ties of the extremes within :data:`TIE_TOLERANCE`);
    - ``"not covered"``: none of these; Th. 3.6 then gives only its ``tanh`` form.

    The two non-target cases exclude each other: under point 4, ``C`` holds a token of ``M̲``.

    Args:
        M: log-odds, shape ``[V]``.
        members: token indices of the concept ``C``.
        is_target: whether ``C`` is the target concept ``T`` of ``M``.

    Returns:
        one of :data:`CONCEPT_CASES`.
    """
    M = np.asarray(M, dtype=float)
    if M.ndim != 1 or not np.all(np.isfinite(M)):
        raise ValueError(f"log-odds M must be a finite 1-d array, one value per token; got shape {M.shape}")
    members = _as_members(members, M.size)
    outside = np.setdiff1d(np.arange(M.size), members)
    if outside.size == 0:
        raise ValueError("C is the whole vocabulary; give the token indices of a proper concept")
    if is_target:
        return CONCEPT_CASES[0]
    if M[members].max() <= M[outside].min():
        return CONCEPT_CASES[1]
    extremes = np.union1d(max_log_odds_tokens(M), min_log_odds_tokens(M))
    if np.intersect1d(members, extremes).size == 0:
        return CONCEPT_CASES[2]
    return CONCEPT_CASES[3]


def concept_limits(p, M, members) -> tuple[float, float]:
    """Limits of ``Δp(C | c_j, α)`` as ``α -> +∞`` and ``α -> -∞``: the token limits of Prop. B.1 (Eq. (5))
    averaged over ``C`` (Def. 3.5).

    ``lim_{+∞} = (1/|C|) sum_{z in C} (1{z in M̄} p(z|c_j) / p(M̄|c_j) - p(z|c_j))``; ``M̲`` for ``-∞``. When
    ``C`` holds no extreme token both reduce to ``-(1/|C|) sum_{z in C} p(z|c_j)`` (Th. 3.6, point 3).

    Args:
        p: context row ``p(. | c_j)``, shape ``[V]``.
        M: log-odds, shape ``[V]``.
        members: token indices of the concept ``C``.

    Returns:
        ``(limit_plus, limit_minus)``.
    """
    p = _as_row(p)
    members = _as_members(members, p.size)
    plus, minus = delta_p_limits(p, M)
    return float(plus[members].mean()), float(minus[members].mean())


# ---------------------------------------------------------------------------------------------------------
# Cross-entropy (Def. 3.7, Th. 3.8)
# ---------------------------------------------------------------------------------------------------------

def delta_ce(rows, weights, M, alphas) -> np.ndarray:
    """``ΔCE(α) = CE(f_α) - CE(f)`` under Assumption 2 (Def. 3.7), shape ``[len(alphas)]``.

    With Lemma B.3, ``ΔCE(α) = sum_j pi_j ( log sum_z p(z|c_j) e^{α M(z)} - α E_{p(.|c_j)}[M] )``, i.e. the
    ``pi``-weighted KL divergence from ``p(.|c_j)`` to the steered distribution (so ``ΔCE >= 0``).

    Args:
        rows: ``p(. | c_j)`` for every context, shape ``[m, V]``.
        weights: ``pi_j``, shape ``[m]``.
        M: log-odds, shape ``[V]``.
        alphas: steering strengths.
    """
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    M = _as_log_odds(M, rows.shape[1])
    alphas = _as_alphas(alphas)
    with np.errstate(divide="ignore"):
        log_rows = np.log(rows)
    logits = log_rows[:, None, :] + alphas[None, :, None] * M[None, None, :]
    per_context = logsumexp(logits, axis=2) - alphas[None, :] * (rows @ M)[:, None]
    return weights @ per_context


def delta_ce_derivative(rows, weights, M, alphas) -> np.ndarray:
    """``ΔCE'(α) = sum_j pi_j (E_{σ(f_α(c_j))}[M] - E_{p(.|c_j)}[M])`` (proof of Th. 3.8)."""
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    M = _as_log_odds(M, rows.shape[1])
    return sum(w * (tilted_mean(row, M, alphas) - row @ M) for w, row in zip(weights, rows))


def delta_ce_second_derivative(rows, weights, M, alphas) -> np.ndarray:
    """``ΔCE''(α) = sum_j pi_j Var_{σ(f_α(c_j))}(M) >= 0`` (proof of Th. 3.8): ΔCE is convex on R."""
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    M = _as_log_odds(M, rows.shape[1])
    return sum(w * tilted_variance(row, M, alphas) for w, row in zip(weights, rows))


def ce_quadratic_coefficient(rows, weights, M) -> float:
    """``(1/2) sum_j pi_j Var_{Z ~ p(.|c_j)}(M(Z))``: ``ΔCE(α) = coefficient · α² + o(α²)`` (Th. 3.8)."""
    return float(delta_ce_second_derivative(rows, weights, M, 0.0)[0] / 2)


def delta_ce_asymptotes(rows, weights, M) -> tuple[tuple[float, float], tuple[float, float]]:
    """Slopes and intercepts of ``ΔCE(α) = s_± α + b_± + o(1)`` as ``α -> ±∞`` (from the proof of Th. 3.8).

    ``ΔCE'(α) -> s_+ = max M - sum_j pi_j E_{p(.|c_j)}[M]`` and ``s_- = min M - sum_j pi_j E_{p(.|c_j)}[M]``,
    since the tilted mean tends to ``max M`` (resp. ``min M``). In
    ``ΔCE(α) = sum_j pi_j (log sum_z p(z|c_j) e^{α M(z)} - α E_{p(.|c_j)}[M])`` the sum inside the logarithm is
    ``e^{α max M} p(M̄|c_j) (1 + o(1))``, hence ``b_+ = sum_j pi_j log p(M̄ | c_j)``; ``M̲`` gives ``b_-``.
    ``s_+ > 0 > s_-`` unless ``M`` is constant: ``ΔCE`` grows linearly on both sides, without plateau.

    Args:
        rows: ``p(. | c_j)`` for every context, shape ``[m, V]``.
        weights: ``pi_j``, shape ``[m]``.
        M: log-odds, shape ``[V]``.

    Returns:
        ``((s_plus, b_plus), (s_minus, b_minus))``.
    """
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    M = _as_log_odds(M, rows.shape[1])
    mean_p = weights @ (rows @ M)
    lines = []
    for extreme, tokens in ((M.max(), max_log_odds_tokens(M)), (M.min(), min_log_odds_tokens(M))):
        mass = rows[:, tokens].sum(axis=1)
        if np.any(mass <= 0):
            raise ValueError("some context puts no mass on the extreme log-odds tokens; its ΔCE has another "
                             "asymptote (give rows with full support)")
        lines.append((float(extreme - mean_p), float(weights @ np.log(mass))))
    return lines[0], lines[1]


# ---------------------------------------------------------------------------------------------------------
# The unconstrained features model (Def. 2.2), trained by gradient descent
# ---------------------------------------------------------------------------------------------------------

@dataclass
class TrainedUFM:
    """A UFM ``f(c_j) = W h_j`` trained on a dataset (Def. 2.2), with its training record.

    Attributes:
        W: decoder, shape ``[V, d]``.
        H: free features ``(h_1 .. h_m)`` as columns, shape ``[d, m]``.
        losses: cross-entropy at every gradient step (before the step), then the final loss.
        entropy: ``sum_j pi_j H(p(. | c_j))``, the lower bound of the loss.
        max_prob_error: ``max_{j,z} |σ_z(W h_j) - p(z | c_j)|`` at the end (Assumption 2 residual).
        tol: the requested tolerance on ``max_prob_error``.
        converged: whether ``max_prob_error <= tol`` was reached within the step budget.
        learning_rate: the gradient-descent step size used.
    """

    W: np.ndarray
    H: np.ndarray
    losses: np.ndarray
    entropy: float
    max_prob_error: float
    tol: float
    converged: bool
    learning_rate: float

    @property
    def steps(self) -> int:
        """Number of gradient steps taken."""
        return len(self.losses) - 1

    @property
    def final_loss(self) -> float:
        """Cross-entropy ``CE(f)`` of the trained model."""
        return float(self.losses[-1])

    def logits(self) -> np.ndarray:
        """``ℓ_j = W h_j`` for every context, shape ``[m, V]``."""
        return (self.W @ self.H).T

    def probs(self) -> np.ndarray:
        """``σ(W h_j)`` for every context, shape ``[m, V]``."""
        logits = self.logits()
        return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))

    def steering_vector(self, sets: SteeringSets) -> np.ndarray:
        """The difference of means ``v`` (Eq. (3)) of this model's features for ``sets``."""
        return difference_of_means(self.H, sets.positive, sets.negative)

    def steered_probs(self, j: int, v, alphas) -> np.ndarray:
        """``σ(W (h_j + α v))`` for context ``j``, shape ``[len(alphas), V]``."""
        return ufm_steered_probs(self.W, self.H, v, j, alphas)


def ufm_cross_entropy(logits, rows, weights) -> float:
    """``CE(f) = - sum_j pi_j sum_z p(z|c_j) log σ_z(ℓ_j)`` for logits ``ℓ_j`` (rows of ``logits``, ``[m, V]``)."""
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    logits = np.asarray(logits, dtype=float)
    if logits.shape != rows.shape:
        raise ValueError(f"logits must have the shape of rows {rows.shape}; got {logits.shape}")
    log_probs = logits - logsumexp(logits, axis=1, keepdims=True)
    return float(-(weights * (rows * log_probs).sum(axis=1)).sum())


def ufm_loss_and_gradients(W: np.ndarray, H: np.ndarray, rows: np.ndarray, weights: np.ndarray
                           ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Cross-entropy of the UFM and its exact gradients (Def. 2.2).

    With ``S_j = σ(W h_j)`` and ``G_j = pi_j (S_j - p(. | c_j))`` (the gradient of the loss in the logits
    ``ℓ_j = W h_j``), the chain rule gives ``∇_W CE = sum_j G_j h_j^T = G^T H^T`` and ``∇_H CE = W^T G^T``.

    Args:
        W: decoder, ``[V, d]``.
        H: features as columns, ``[d, m]``.
        rows: ``p(. | c_j)``, ``[m, V]``.
        weights: ``pi_j``, ``[m]``.

    Returns:
        ``(loss, probs, grad_W, grad_H)`` with ``probs = σ(W h_j)`` as rows ``[m, V]``.
    """
    logits = (W @ H).T
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    loss = float(-(weights * (rows * log_probs).sum(axis=1)).sum())
    G = weights[:, None] * (probs - rows)
    return loss, probs, G.T @ H.T, W.T @ G.T


def train_ufm(rows, weights, *, dim: int = 16, learning_rate: float = 5.0, tol: float = 1e-8,
              max_steps: int = 200_000, init_scale: float = 1.0, seed: int = 0) -> TrainedUFM:
    """Train a UFM ``f(c_j) = W h_j`` (Def. 2.2) by full-batch gradient descent on the weighted
    cross-entropy ``CE = - sum_j pi_j sum_z p(z|c_j) log σ_z(W h_j)``, without regularisation, in float64.

    Plain gradient descent ``W <- W - η ∇_W CE``, ``H <- H - η ∇_H CE`` from a Gaussian initialisation, with
    the exact gradients of :func:`ufm_loss_and_gradients` (numpy: on matrices this small a step costs
    microseconds, where an autograd framework spends milliseconds on overhead; ``tests/test_ufm.py`` checks
    the gradients against torch autograd). Training stops as soon as Assumption 2 holds to ``tol``:
    ``max_{j,z} |σ_z(W h_j) - p(z|c_j)| <= tol``. The loss is then within about ``tol²`` of the entropy bound
    ``sum_j pi_j H(p(.|c_j))`` (App. B.1). With ``d >= G`` the bound is reachable.

    Args:
        rows: ``p(. | c_j)``, shape ``[m, V]``.
        weights: ``pi_j``, shape ``[m]``.
        dim: feature dimension ``d``.
        learning_rate: step size ``η`` (the default suits ``pi_j ≈ 1/m`` with ``m`` around 10; lower it if
            training diverges).
        tol: Assumption 2 tolerance on probabilities.
        max_steps: step budget; ``converged`` is ``False`` if it runs out.
        init_scale: standard deviation of the Gaussian initialisation of ``W`` and ``H``.
        seed: seed of the initialisation.
    """
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    if dim < 1 or max_steps < 1 or learning_rate <= 0 or tol <= 0:
        raise ValueError("dim and max_steps must be >= 1; learning_rate and tol must be > 0")
    m, V = rows.shape
    rng = np.random.default_rng(seed)
    W = init_scale * rng.standard_normal((V, dim))
    H = init_scale * rng.standard_normal((dim, m))
    losses = []
    for _ in range(max_steps + 1):
        with np.errstate(over="ignore", invalid="ignore"):
            loss, probs, grad_W, grad_H = ufm_loss_and_gradients(W, H, rows, weights)
        if not np.isfinite(loss):
            raise ValueError(f"gradient descent diverged after {len(losses)} steps; lower learning_rate "
                             f"(now {learning_rate}) or init_scale")
        losses.append(loss)
        error = float(np.abs(probs - rows).max())
        if error <= tol or len(losses) > max_steps:
            break
        W = W - learning_rate * grad_W
        H = H - learning_rate * grad_H
    return TrainedUFM(W, H, np.asarray(losses), dataset_entropy(rows, weights), error, tol, error <= tol,
                      learning_rate)


def difference_of_means(H, positive: Iterable[int], negative: Iterable[int]) -> np.ndarray:
    """``v = (1/|P|) sum_{j in P} h_j - (1/|N|) sum_{j in N} h_j`` (Eq. (3)), ``H`` of shape ``[d, m]``."""
    H = np.asarray(H, dtype=float)
    positive, negative = list(positive), list(negative)
    if H.ndim != 2:
        raise ValueError(f"H must be [d, m] (features as columns); got shape {H.shape}")
    if not positive or not negative:
        raise ValueError("P and N must both be non-empty")
    return H[:, positive].mean(axis=1) - H[:, negative].mean(axis=1)


def ufm_steered_probs(W, H, v, j: int, alphas) -> np.ndarray:
    """``σ(W (h_j + α v))`` for every α: the steered UFM (Sec. 2.2), shape ``[len(alphas), V]``."""
    W = np.asarray(W, dtype=float)
    H = np.asarray(H, dtype=float)
    v = np.asarray(v, dtype=float)
    if v.shape != (H.shape[0],) or W.shape[1] != H.shape[0]:
        raise ValueError(f"shapes do not chain: W {W.shape}, H {H.shape}, v {v.shape}; need W [V, d], "
                         "H [d, m], v [d]")
    alphas = _as_alphas(alphas)
    logits = (W @ H[:, j])[None, :] + alphas[:, None] * (W @ v)[None, :]
    return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))


def ufm_log_odds(W, v) -> np.ndarray:
    """``W v``: by Lemma B.2 it equals ``(1/q)(sum_P ℓ_i - sum_N ℓ_i)``, hence ``M`` plus a constant under
    Assumption 2 (the constant cancels in the softmax). Shape ``[V]``."""
    return np.asarray(W, dtype=float) @ np.asarray(v, dtype=float)


def distance_up_to_constant(x, y) -> float:
    """``min_c max_z |x_z - y_z - c|`` = half the range of ``x - y``: how far ``x`` is from ``y + const``."""
    diff = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    return float(np.ptp(diff) / 2)


# ---------------------------------------------------------------------------------------------------------
# Choosing α exactly (chapter "Choosing α"): the sweet spot of Th. 3.3 and the ΔCE budget of Th. 3.6/3.8
# ---------------------------------------------------------------------------------------------------------

def sweet_spot(p, M, target_members) -> tuple[float, float]:
    """The α interval between the last off-target peak and the first target peak of Th. 3.3, for context ``c_j``.

    ``lo = max_{z notin T, z bump} α(j, z)`` and ``hi = min_{z in T, z bump} α(j, z)`` (:func:`bump_location`;
    tokens of ``M̄`` or ``M̲`` are monotone and have no peak). By Th. 3.3 (peak position) ``lo < hi``: on
    ``[lo, hi]`` every off-target token is past its peak and fading while every target token still rises.
    ``lo = -inf`` when no off-target token has a bump; ``hi = +inf`` when every target token lies in ``M̄``.

    Args:
        p: context row ``p(. | c_j)`` (full support), shape ``[V]``.
        M: log-odds, shape ``[V]``.
        target_members: token indices of the target concept ``T``.

    Returns:
        ``(lo, hi)``.
    """
    M = np.asarray(M, dtype=float)
    members = _as_members(target_members, M.size)
    peaks = bump_locations(p, M)
    in_target = np.zeros(M.size, dtype=bool)
    in_target[members] = True
    finite = np.isfinite(peaks)
    off, on = peaks[finite & ~in_target], peaks[finite & in_target]
    return (float(off.max()) if off.size else float("-inf"), float(on.min()) if on.size else float("inf"))


def budget_alpha(rows, weights, M, budget: float, *, xtol: float = 1e-12) -> float:
    """The α >= 0 that maximises the target concept probability under the budget ``ΔCE(α) <= budget``.

    Every context's ``F_{T,j}(α)`` increases with α (Th. 3.6, point 1) and ``ΔCE`` is convex with
    ``ΔCE(0) = ΔCE'(0) = 0`` (Th. 3.8 and its exact derivatives), so ``{α : ΔCE(α) <= budget}`` is an interval
    around 0 and the best α is its right end: the unique root of ``ΔCE(α) = budget`` on ``(0, ∞)``. It exists for
    every ``budget > 0`` because ``ΔCE`` grows linearly (:func:`delta_ce_asymptotes`); it is bracketed by doubling
    and refined by Brent's method. With one row and weight 1 the budget is on that context's KL divergence
    ``KL(p(.|c_j) ‖ σ(f_α(c_j)))``.

    Args:
        rows: ``p(. | c_j)`` for every context, shape ``[m, V]``.
        weights: ``pi_j``, shape ``[m]``.
        M: log-odds, shape ``[V]`` (not constant).
        budget: largest accepted ``ΔCE`` (nats), > 0.
        xtol: absolute tolerance on α.
    """
    rows = _as_rows(rows)
    weights = _as_weights(weights, rows.shape[0])
    M = _as_log_odds(M, rows.shape[1])
    budget = float(budget)
    if not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of nats; got {budget}")
    if np.ptp(M) == 0:
        raise ValueError("M is constant: steering does not change any distribution, every α fits the budget")

    def excess(alpha: float) -> float:
        return float(delta_ce(rows, weights, M, alpha)[0] - budget)

    hi = 1.0
    while excess(hi) < 0:
        hi *= 2.0
    return float(brentq(excess, 0.0, hi, xtol=xtol, rtol=4 * np.finfo(float).eps))
