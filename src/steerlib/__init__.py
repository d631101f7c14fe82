"""steerlib: the library behind the steering-strength book.

One module per idea (each docstring says which chapter teaches it):

=====================  ===================================================================================
``store``              data paths, files inside wheels, atomic writes, content keys, load-or-compute, ``Result``
``models``             load any causal LM; blocks, final norm, unembedding; the unsteered residual stream
``vectors``            ``SteeringVector``, difference of means (Eq. 3), vectors and log-odds from prompt sets
``steering``           the one place ``α v`` is added: ``steer`` and the α-batched engine; ``LN(±v)Wᵀ``
``prompts``            prompt sets P and N (App. A) and the evaluation prompts
``corpora``            evaluation text: packaged corpora, FineWeb, token blocks
``judge``              judges of concept presence and their agreement with our labels
``choose``             choosing α per prompt from one next-token sweep (``choose_alpha``), and its validation
``stats``              confidence bands, fits, divergences, slopes
``experiments``        one module per measured quantity: parameters, ``Result``, ``run``, ``load_or_run``
``theory_checks``      measured curves held against Th. 3.3 and App. A
``ufm``                the theory, exactly (numpy)
``tinygpt``            the 1-layer GPT of Fig. A.4: data, training, checkpoints
``plots``, ``checks``  figures and check tables
``runs``               chapters over a grid of parameters (``steerlib-run``), resumable, on Dask if asked
=====================  ===================================================================================

The names below are importable from ``steerlib`` directly; modules load on first use, so ``from steerlib import
ufm`` does not import PyTorch. ``STEERLIB_TORCH_THREADS=N`` in the environment runs PyTorch with ``N`` threads
(the regression sets it with ``pytest --torch-threads N`` so that the notebook kernels it starts follow).

Example:
    >>> from steerlib import load_model, concept_vectors, experiments
    >>> lm = load_model()
    >>> v = concept_vectors(lm, "joy", "random", 32, "results/activations", layers=[15])[15]
    >>> params = experiments.next_token.NextTokenParameters("I think that", alphas=range(-200, 201, 20))
    >>> sweep = experiments.next_token.load_or_run(lm, v, params, "results/next_token")
"""

import importlib
import os

_EXPORTS = {
    "load_model": "models", "LoadedModel": "models", "DEFAULT_MODEL": "models", "early_middle_last": "models",
    "SteeringVector": "vectors", "steering_vectors": "vectors", "concept_vectors": "vectors",
    "concept_log_odds": "vectors",
    "steer": "steering", "steered_log_probs": "steering", "steered_next_token_log_probs": "steering",
    "steered_target_log_probs": "steering", "limit_logits": "steering", "alpha_grid": "steering",
    "symmetric_alpha_grid": "steering",
    "load_prompt_set": "prompts", "load_eval_prompts": "prompts", "corpus_blocks": "corpora",
    "CheckTable": "checks", "choose_alpha": "choose",
}
_MODULES = ("checks", "choose", "corpora", "experiments", "judge", "models", "plots", "prompts", "stats", "steering",
            "store", "theory_checks", "tinygpt", "ufm", "vectors")

__all__ = sorted(_EXPORTS) + list(_MODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"steerlib.{_EXPORTS[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"steerlib.{name}")
    raise AttributeError(f"module 'steerlib' has no attribute {name!r}")


if os.environ.get("STEERLIB_TORCH_THREADS"):
    import torch

    torch.set_num_threads(int(os.environ["STEERLIB_TORCH_THREADS"]))
