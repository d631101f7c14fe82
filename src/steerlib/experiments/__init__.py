"""The measured quantities of the book, one module each: a parameters dataclass, a :class:`steerlib.store.Result`,
``run`` and ``load_or_run`` (the result saved under a key of everything that determined it).

- :mod:`~steerlib.experiments.next_token`: ``Δp(z, α)`` for one prompt (Def. 3.1, Th. 3.3, Fig. 6)
- :mod:`~steerlib.experiments.large_alpha`: distance to the limit ``σ(LN(±v)Wᵀ)`` and the ΔCE plateau (Prop. 4.1)
- :mod:`~steerlib.experiments.concept_probability`: steered samples judged for the concept (Th. 3.6, Fig. 7 top)
- :mod:`~steerlib.experiments.cross_entropy`: ``ΔCE(α)`` on a corpus and the terms of Th. 3.8 (Fig. 7 bottom)
- :mod:`~steerlib.experiments.mmlu`: MMLU accuracy under steering (Fig. A.6)

The modules never import each other: what two of them share lives in :mod:`steerlib.steering` (the engine),
:mod:`steerlib.stats` or :mod:`steerlib.store`. A new experiment is a new module of the same shape.
"""

from steerlib.experiments import concept_probability, cross_entropy, large_alpha, mmlu, next_token

__all__ = ["concept_probability", "cross_entropy", "large_alpha", "mmlu", "next_token"]
