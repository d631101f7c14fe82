"""Adding ``α v`` to the residual stream of a real transformer (Sec. 4): the one place it is done.

A steering vector ``v`` is added to the output of decoder block ``ℓ`` (the residual stream ``h^(ℓ+1)`` in the
paper's Sec. 4 notation ``h^(ℓ) <- h^(ℓ) + α v``), either at every position (``positions="all"``) or only at the
last one (``positions="last"``, App. A). :func:`add_steering` computes ``h + α v``; everything else here calls it:

- :func:`steer`, a context manager that registers a forward hook on the block and removes it on exit (even on
  error); the model itself is never modified. Use it for generation and anything that calls the model's own
  ``forward``.
- the α-batched engine :func:`steered_residuals`, which computes only what depends on ``α``, for many ``α`` at
  once, and its two readers: :func:`steered_log_probs` (next-token distributions of one prompt, Fig. 6) and
  :func:`steered_target_log_probs` (the log-probability of every next token of a text, for cross-entropy):

  * blocks ``0..ℓ`` run once (their output does not depend on ``α``) and that hidden state is reused for every α;
  * blocks ``ℓ+1..L-1`` run on the α-batch, each called with exactly the arguments the model's own forward gave it
    (position embeddings, masks, caches; recorded by a pre-hook during the first pass), so rotary embeddings,
    sliding windows and Gemma's local/global layers are handled by the model's code;
  * with ``positions="last"``, the prompt minus its last token is run once with a KV cache, and each α costs one
    position through blocks ``ℓ+1..L-1`` (earlier positions cannot see the last one).

The large-α limit ``LN(±v) Wᵀ`` of Prop. 4.1 (:func:`limit_logits`) and the α grid (:func:`alpha_grid`, :func:`symmetric_alpha_grid`) live here
too.

Numerics: ``α v`` is computed in fp32 and softmax is taken in fp32; every block runs in the model's dtype, on
exactly the arguments of the model's own forward, so each α-batch row equals the model's own forward under
:func:`steer` (up to the rounding of a different batch shape), fp16 included. With ``positions="last"`` the
prompt's prefix goes once through a KV cache, as in ``generate``: in half precision the sums are then taken in
another order, and the rows differ from a full forward by the dtype's own rounding. In fp16 a large ``α``
overflows the residual stream (fp16 stops at 65504), as it does in the model's own forward: those rows, and only
those, are computed again through the later blocks in float32 (a float32 copy of one block at a time, so memory
grows by one block), which gives finite values close to a float32 model; before the final norm their residual
stream is divided, position by position, by what brings it back into fp16's range (the norm does not see a
positive scale). fp32 and bf16 have the range of fp32 and never need this. The hook of :func:`steer` cannot redo the
model's own forward: it raises a ``ValueError`` instead of returning infinities.

Example:
    >>> lm = load_model()
    >>> with steer(lm, vector, alpha=8.0):                 # vector: a SteeringVector of this model
    ...     out = lm.model.generate(**inputs, max_new_tokens=20)
    >>> log_probs = steered_next_token_log_probs(lm, "I feel", vector, torch.linspace(-50, 50, 101))
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

from steerlib.models import LoadedModel, block_hidden, run_until_stopped, stop_after
from steerlib.vectors import SteeringVector

Positions = Literal["all", "last"]
POSITIONS = ("all", "last")


def check_positions(positions: str) -> str:
    """Return ``positions`` if it is ``"all"`` or ``"last"``, else raise a ``ValueError``."""
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r}: use 'all' (steer every position) or 'last' (the last token only).")
    return positions


def alpha_grid(alphas: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """The sorted, de-duplicated grid of ``alphas`` with ``0`` inserted if absent (curves are relative to ``α = 0``)."""
    grid = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise ValueError("the α grid is empty: give at least one steering strength.")
    if not np.all(np.isfinite(grid)):
        raise ValueError("the α grid must contain finite numbers only.")
    return np.unique(np.concatenate([grid, [0.0]]))


ALPHA_SPACINGS = ("linear", "log")


def symmetric_alpha_grid(alpha_max: float, n_alphas: int, spacing: str = "linear",
                         alpha_min: float | None = None) -> np.ndarray:
    """The chapters' one form of α grid: ``n_alphas`` magnitudes on each half-line, both signs, and ``0``.

    The magnitudes run from ``alpha_min`` to ``alpha_max``, evenly spaced (``"linear"``; ``alpha_min`` defaults to
    the step ``alpha_max / n_alphas``, so the grid is ``linspace(-alpha_max, alpha_max, 2 n_alphas + 1)``) or evenly
    spaced in log (``"log"``, which needs ``alpha_min > 0``). Values are rounded to 12 significant digits, so a grid,
    and every cache key made from it, is the same on every platform's ``pow``.
    """
    if spacing not in ALPHA_SPACINGS:
        raise ValueError(f"alpha_spacing={spacing!r}: use 'linear' or 'log'.")
    if isinstance(n_alphas, bool) or not isinstance(n_alphas, (int, np.integer)) or n_alphas < 1:
        raise ValueError(f"n_alphas={n_alphas!r}: give the number of α > 0 on each half-line, an integer >= 1.")
    if not (np.isfinite(alpha_max) and alpha_max > 0):
        raise ValueError(f"alpha_max={alpha_max!r} must be a finite number > 0.")
    if spacing == "log" and alpha_min is None:
        raise ValueError("a log-spaced α grid needs alpha_min, its smallest magnitude > 0 (e.g. alpha_min=1).")
    if alpha_min is not None and not (np.isfinite(alpha_min) and 0 < alpha_min <= alpha_max):
        raise ValueError(f"alpha_min={alpha_min!r} must be > 0 and at most alpha_max={alpha_max!r}.")
    if spacing == "log":
        magnitudes = np.geomspace(alpha_min, alpha_max, n_alphas)
    elif alpha_min is None:
        magnitudes = np.linspace(0.0, alpha_max, n_alphas + 1)[1:]
    else:
        magnitudes = np.linspace(alpha_min, alpha_max, n_alphas)
    magnitudes = np.array([float(f"{m:.12g}") for m in magnitudes])
    return alpha_grid(np.concatenate([-magnitudes, magnitudes]))


def resolve_vector(lm: LoadedModel, vector, layer: int | None) -> tuple[torch.Tensor, int]:
    """The fp32 direction ``v`` on ``lm``'s device and the block to steer, checked against ``lm``.

    Args:
        lm: the model to steer.
        vector: a :class:`steerlib.vectors.SteeringVector` (its model name and width are checked) or a
            1-D tensor of size ``lm.hidden_size``.
        layer: block whose output is steered; default the vector's own layer (required for a bare tensor).
    """
    if isinstance(vector, SteeringVector):
        vector.check_model(lm, layer)
        layer = vector.layer if layer is None else layer
        tensor = vector.vector
    else:
        tensor = torch.as_tensor(vector)
        if layer is None:
            raise ValueError("a bare tensor carries no layer: pass layer=... (or use a SteeringVector).")
        if tensor.ndim != 1 or tensor.shape[0] != lm.hidden_size:
            raise ValueError(
                f"the steering vector has shape {tuple(tensor.shape)} but {lm.name} has hidden size "
                f"{lm.hidden_size}: compute the vector on this model (steerlib.vectors.steering_vectors)."
            )
    if not torch.isfinite(tensor).all():
        raise ValueError("the steering vector has NaN or infinite entries: recompute it (Eq. 3 on P and N) or check "
                         "the file it was loaded from.")
    return tensor.detach().to(device=lm.device, dtype=torch.float32), lm.check_layer(layer)


def add_steering(hidden: torch.Tensor, alphas: torch.Tensor, v: torch.Tensor,
                 positions: Positions = "all") -> torch.Tensor:
    """``h + α v`` (Sec. 4), in fp32: the one function that steers.

    Args:
        hidden: residual streams ``(N, T, d)``.
        alphas: one ``α`` per row, shape ``(N,)``, or one for all, shape ``(1,)``.
        v: the steering direction ``(d,)``, fp32.
        positions: ``"all"`` adds ``α v`` at every position, ``"last"`` at position ``T - 1`` only.
    """
    delta = alphas.reshape(-1, 1, 1).to(torch.float32) * v
    steered = hidden.float()
    if positions == "all":
        return steered + delta
    steered = steered.clone()
    steered[:, -1:] += delta
    return steered


def _alpha_column(alpha, device) -> torch.Tensor:
    alphas = torch.as_tensor(alpha, dtype=torch.float32, device=device)
    if alphas.ndim > 1:
        raise ValueError(f"alpha must be a number or a 1-D sequence (one α per batch row), got shape {tuple(alphas.shape)}.")
    if not torch.isfinite(alphas).all():
        raise ValueError(f"alpha must be finite, got {alphas.tolist()}.")
    return alphas.reshape(-1)


def _with_hidden(output, hidden: torch.Tensor):
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def steer(
    lm: LoadedModel,
    vector,
    alpha: float | Sequence[float] | torch.Tensor,
    layer: int | None = None,
    positions: Positions = "all",
) -> Iterator[None]:
    """Within the ``with`` block, every forward of ``lm.model`` adds ``α v`` to the output of block ``layer``.

    ``h^(ℓ) <- h^(ℓ) + α v`` (Sec. 4, :func:`add_steering`), at every position or at the last position of each
    sequence only. The sum is computed in fp32 and cast back to the model's dtype. A forward hook does it; the
    hook is removed on exit, also when the body raises, and the model's parameters are never touched.

    Sharp edges: ``positions="last"`` steers index ``-1`` of each sequence, so pad batches on the left;
    during ``generate`` with a KV cache each new token is the last position of its step, so both modes
    steer every generated token. In fp16, an ``α v`` that overflows raises a ``ValueError`` (use
    :func:`steered_log_probs`, which computes such rows in float32, or load the model in bf16/fp32).

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give ``layer``).
        alpha: the steering strength ``α``; a 1-D sequence gives one ``α`` per batch row.
        layer: block whose output is steered; default ``vector.layer``.
        positions: ``"all"`` or ``"last"``.
    """
    check_positions(positions)
    v, layer = resolve_vector(lm, vector, layer)
    alphas = _alpha_column(alpha, lm.device)

    def hook(module, args, output):
        hidden = block_hidden(output)
        if alphas.shape[0] not in (1, hidden.shape[0]):
            raise ValueError(f"{alphas.shape[0]} values of alpha for a batch of {hidden.shape[0]} sequences: "
                             "give one α, or one per batch row.")
        steered = add_steering(hidden, alphas, v, positions).to(hidden.dtype)
        if not torch.isfinite(steered).all() and torch.isfinite(hidden).all():
            raise ValueError(f"α v overflows the {hidden.dtype} residual stream (largest |α| = "
                             f"{alphas.abs().max().item():.3g}): use steered_log_probs (it computes such rows in float32) "
                             "or load the model in bf16 or fp32.")
        return _with_hidden(output, steered)

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _cache_keyword(model) -> str:
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _new_cache(lm: LoadedModel):
    from transformers import DynamicCache

    return DynamicCache(config=lm.model.config)


def _run_recording(lm: LoadedModel, layer: int, input_ids: torch.Tensor, position_ids: torch.Tensor, cache=None):
    """One forward of the model's own code; returns block ``layer``'s output and the calls of later blocks.

    Each block after ``layer`` is recorded as the ``(args, kwargs)`` the model passed it, so that it can be
    called again on the α-batch with the same position embeddings, masks and cache. The pass stops after
    the last block (the final norm and the full unembedding are not computed).
    """
    calls: dict[int, tuple[tuple, dict]] = {}
    recorded: dict[str, torch.Tensor] = {}

    def record_output(module, args, output):
        recorded["hidden"] = block_hidden(output).detach()

    def record_call(index):
        def hook(module, args, kwargs):
            calls[index] = (args, kwargs)

        return hook

    handles = [lm.blocks[layer].register_forward_hook(record_output)]
    try:
        for index in range(layer + 1, lm.n_layers):
            handles.append(lm.blocks[index].register_forward_pre_hook(record_call(index), with_kwargs=True))
        handles.append(stop_after(lm.blocks[lm.n_layers - 1]))
        kwargs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": cache is not None}
        if cache is not None:
            kwargs[_cache_keyword(lm.model)] = cache
        run_until_stopped(lambda: lm.model(**kwargs))
    finally:
        for handle in handles:
            handle.remove()
    return recorded["hidden"], calls


def _expand_over_alphas(value, batch: int, repeats: int):
    """Tile the per-text tensors of a recorded block call (masks) ``repeats`` times along the batch, α-major."""
    if isinstance(value, torch.Tensor):
        if batch > 1 and value.ndim >= 1 and value.shape[0] == batch:
            return value.repeat(repeats, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_expand_over_alphas(item, batch, repeats) for item in value)
    if isinstance(value, list):
        return [_expand_over_alphas(item, batch, repeats) for item in value]
    return value


def _select_in_float32(value, batch: int, texts: torch.Tensor):
    """The per-text tensors of a recorded block call for the rows of ``texts`` (text index of each row), floating
    tensors (rotary position embeddings, additive masks) in float32."""
    if isinstance(value, torch.Tensor):
        if batch > 1 and value.ndim >= 1 and value.shape[0] == batch:
            value = value[texts]
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_select_in_float32(item, batch, texts) for item in value)
    if isinstance(value, list):
        return [_select_in_float32(item, batch, texts) for item in value]
    return value


def _call_block(block, call: tuple[tuple, dict], hidden: torch.Tensor, adapt, cache=None) -> torch.Tensor:
    """Call ``block`` on the α-batch ``hidden`` with the arguments recorded for it, each passed through ``adapt``
    (tiled over the α values, or selected for some rows) and the recorded cache replaced by ``cache``."""
    from transformers import Cache

    args, kwargs = call
    rest = tuple(cache if isinstance(value, Cache) else adapt(value) for value in args[1:])
    kwargs = {key: cache if isinstance(value, Cache) else adapt(value) for key, value in kwargs.items()}
    if args:
        return block_hidden(block(hidden, *rest, **kwargs))
    return block_hidden(block(hidden_states=hidden, **kwargs))


def _repeat_cache(cache, repeats: int, from_layer: int, dtype: torch.dtype | None = None) -> None:
    """Repeat the batch-1 KV cache ``repeats`` times along the batch, for the layers the α-batch runs (in ``dtype``
    when given)."""
    for layer in cache.layers[from_layer:]:
        layer.batch_repeat_interleave(repeats)
        if dtype is not None:
            layer.keys, layer.values = layer.keys.to(dtype), layer.values.to(dtype)


def _into_float16_range(u32: torch.Tensor) -> torch.Tensor:
    """``u / s`` in fp16 with ``s >= 1`` per position, so that the largest entry is at most 4096: the final norm,
    invariant to a positive scale of each position's vector, gives the same result."""
    scale = torch.clamp(u32.abs().amax(dim=-1, keepdim=True) / 4096.0, min=1.0)
    return (u32 / scale).to(torch.float16)


def _check_alphas(alphas, device) -> torch.Tensor:
    alphas = torch.as_tensor(alphas, dtype=torch.float32, device=device).reshape(-1)
    if alphas.numel() == 0:
        raise ValueError("alphas is empty: give at least one steering strength.")
    if not torch.isfinite(alphas).all():
        raise ValueError("alphas must be finite numbers.")
    return alphas


def steered_residuals(lm: LoadedModel, ids: torch.Tensor, v: torch.Tensor, layer: int, alphas: torch.Tensor,
                      positions: Positions = "all", alphas_per_forward: int | None = None,
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The α-batched engine: the last block's output for every ``α`` and text, ``alphas_per_forward`` α at a time.

    Blocks ``0..layer`` run once on ``ids`` (the model's own forward, stopped after the last block); blocks
    ``layer+1..L-1`` run on the α-batch with the recorded call arguments (module docstring). Yields ``(chunk, u)``:
    ``chunk`` the α values of this step and ``u`` of shape ``(len(chunk)·B, T', d)`` in the model's dtype (α-major,
    row ``a·B + b``; ``T' = 1`` with ``positions="last"``, which reuses a KV cache of the first ``T - 1`` tokens).
    In fp16, rows that overflow are computed in float32 and divided, position by position, back into fp16's range
    (module docstring): read ``u`` through the final norm only.

    Args:
        lm: the model.
        ids: token ids ``(B, T)`` without padding (``B = 1`` with ``positions="last"``).
        v: the fp32 steering direction on ``lm.device`` (:func:`resolve_vector`).
        layer: the steered block.
        alphas: 1-D fp32 tensor of strengths.
        positions: ``"all"`` or ``"last"``.
        alphas_per_forward: α values per forward through the later blocks (default all; lower it if memory is short).
    """
    batch, length = ids.shape
    position_ids = torch.arange(length, device=lm.device)[None]
    saved_cache = None
    if positions == "last" and length > 1:
        if batch != 1:
            raise ValueError("positions='last' reuses the KV cache of one prompt: give one sequence (B = 1).")
        prefix_cache = _new_cache(lm)
        with torch.no_grad():
            lm.model(input_ids=ids[:, :-1], position_ids=position_ids[:, :-1], use_cache=True,
                     **{_cache_keyword(lm.model): prefix_cache})
        saved_cache = copy.deepcopy(prefix_cache)
        hidden, calls = _run_recording(lm, layer, ids[:, -1:], position_ids[:, -1:], prefix_cache)
    else:
        hidden, calls = _run_recording(lm, layer, ids, position_ids)

    def cache_for(rows: int, dtype: torch.dtype | None = None):
        if saved_cache is None:
            return None
        cache = copy.deepcopy(saved_cache)
        _repeat_cache(cache, rows, from_layer=layer + 1, dtype=dtype)
        return cache

    alphas_per_forward = alphas_per_forward or alphas.numel()
    if alphas_per_forward < 1:
        raise ValueError(f"alphas_per_forward must be >= 1, got {alphas_per_forward}.")
    for start in range(0, alphas.numel(), alphas_per_forward):
        chunk = alphas[start:start + alphas_per_forward]
        repeats = chunk.numel()
        with torch.no_grad():
            steered = add_steering(hidden.repeat(repeats, 1, 1), chunk.repeat_interleave(batch), v)
            u, cache = steered.to(lm.dtype), cache_for(repeats)
            for index in range(layer + 1, lm.n_layers):
                u = _call_block(lm.blocks[index], calls[index], u,
                                lambda value: _expand_over_alphas(value, batch, repeats), cache)
            overflow = ~torch.isfinite(u).flatten(1).all(dim=1) if lm.dtype == torch.float16 else None
            if overflow is not None and bool(overflow.any()):
                rows = overflow.nonzero()[:, 0]
                u = u.clone()
                u[rows] = _into_float16_range(_later_blocks_in_float32(
                    lm, calls, layer, steered[rows], rows % batch, batch, cache_for(len(rows), torch.float32)))
        yield chunk, u


def _later_blocks_in_float32(lm: LoadedModel, calls: dict, layer: int, steered32: torch.Tensor, texts: torch.Tensor,
                             batch: int, cache) -> torch.Tensor:
    """Blocks ``layer+1..L-1`` on some α-batch rows in float32: a float32 copy of one block at a time, called with
    the recorded arguments of the rows' texts cast to float32 (fp16 rows that would overflow)."""
    u = steered32
    for index in range(layer + 1, lm.n_layers):
        block = copy.deepcopy(lm.blocks[index]).float()
        u = _call_block(block, calls[index], u, lambda value: _select_in_float32(value, batch, texts), cache)
        del block
    return u


def _prompt_ids(lm: LoadedModel, prompt) -> torch.Tensor:
    if isinstance(prompt, str):
        ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long)
        if ids.ndim == 1:
            ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"give one non-empty prompt (a string or 1-D token ids), got ids of shape {tuple(ids.shape)}.")
    if lm.context_length is not None and ids.shape[1] > lm.context_length:
        raise ValueError(f"the prompt has {ids.shape[1]} tokens but {lm.name} reads at most {lm.context_length}: "
                         "shorten it.")
    return ids.to(lm.device)


def steered_log_probs(
    lm: LoadedModel,
    prompt,
    vector,
    alphas: Sequence[float] | torch.Tensor,
    layer: int | None = None,
    positions: Positions = "all",
    logit_positions: Sequence[int] = (-1,),
    alphas_per_forward: int | None = None,
) -> torch.Tensor:
    """Next-token log-probabilities ``log σ(y(α))`` of one prompt for many ``α``, from the α-batched engine.

    Equal (up to float rounding) to running the model's own forward once per α inside :func:`steer`, but only
    the α-dependent part is computed on the α-batch (see the module docstring). Log-softmax in fp32.

    Args:
        lm: the model.
        prompt: a string (tokenised with ``lm.tokenizer``'s defaults) or 1-D token ids.
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give ``layer``).
        alphas: the steering strengths, any order.
        layer: block whose output is steered; default ``vector.layer``.
        positions: ``"all"`` or ``"last"`` (steer the last token only).
        logit_positions: token positions whose next-token distributions are returned (negative = from the
            end). With ``positions="last"`` only ``(-1,)``: earlier positions are not affected by steering.
        alphas_per_forward: α values per forward (default all at once); lower it if memory is short.

    Returns:
        fp32 tensor of shape ``(len(alphas), len(logit_positions), vocabulary)`` on ``lm.device``.
    """
    check_positions(positions)
    v, layer = resolve_vector(lm, vector, layer)
    alphas = _check_alphas(alphas, lm.device)
    ids = _prompt_ids(lm, prompt)
    length = ids.shape[1]
    logit_positions = [int(p) for p in logit_positions]
    if not logit_positions or any(not -length <= p < length for p in logit_positions):
        raise ValueError(f"logit_positions {logit_positions} must index the {length} prompt tokens.")
    if positions == "last" and length > 1 and any(p % length != length - 1 for p in logit_positions):
        raise ValueError("with positions='last' only logit_positions=(-1,) is available: steering the last token "
                         "does not change the predictions at earlier positions.")
    selected = [0] if positions == "last" and length > 1 else [p % length for p in logit_positions]
    results = []
    for _, u in steered_residuals(lm, ids, v, layer, alphas, positions, alphas_per_forward):
        with torch.no_grad():
            results.append(lm.logits(u[:, selected]).float().log_softmax(dim=-1))
    return torch.cat(results)


def steered_next_token_log_probs(
    lm: LoadedModel,
    prompt,
    vector,
    alphas: Sequence[float] | torch.Tensor,
    layer: int | None = None,
    positions: Positions = "all",
    alphas_per_forward: int | None = None,
) -> torch.Tensor:
    """``log σ(y(α))`` at the last position, shape ``(len(alphas), vocabulary)``; see :func:`steered_log_probs`."""
    return steered_log_probs(lm, prompt, vector, alphas, layer, positions, (-1,), alphas_per_forward)[:, 0]


def check_token_blocks(lm: LoadedModel, blocks) -> torch.Tensor:
    """``blocks`` as token ids ``(n_blocks, T)`` of ``lm``'s vocabulary, ``T >= 2``, or a ``ValueError``."""
    blocks = torch.as_tensor(blocks)
    if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise ValueError(f"blocks has shape {tuple(blocks.shape)}: give token ids of shape (n_blocks, T) with T >= 2, "
                         "e.g. steerlib.corpora.chunk_tokens(texts, lm.tokenizer, 128).")
    if blocks.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"blocks must hold integer token ids, got dtype {blocks.dtype}.")
    vocabulary = int(lm.unembedding.weight.shape[0])
    if int(blocks.min()) < 0 or int(blocks.max()) >= vocabulary:
        raise ValueError(f"blocks hold token ids outside 0..{vocabulary - 1}: tokenise with {lm.name}'s tokenizer.")
    return blocks.long()


def target_log_probs(lm: LoadedModel, u: torch.Tensor, targets: torch.Tensor, logit_chunk: int) -> torch.Tensor:
    """``log σ_{target}(LN(u) Wᵀ)`` for rows ``u (N, d)`` and ``targets (N,)``, ``logit_chunk`` rows at a time.

    The logits ``(N, V)`` are never materialised at once: the final norm, the unembedding, the log-softmax and
    the gather of the target's log-probability run on ``logit_chunk`` rows at a time.
    """
    if logit_chunk < 1:
        raise ValueError(f"logit_chunk must be >= 1, got {logit_chunk}.")
    out = torch.empty(u.shape[0], dtype=torch.float32, device=u.device)
    with torch.no_grad():
        for start in range(0, u.shape[0], logit_chunk):
            rows = slice(start, start + logit_chunk)
            log_probs = lm.logits(u[rows]).float().log_softmax(dim=-1)
            out[rows] = log_probs.gather(-1, targets[rows, None])[:, 0]
    return out


def steered_target_log_probs(
    lm: LoadedModel,
    ids,
    vector,
    alphas: Sequence[float] | torch.Tensor,
    layer: int | None = None,
    alphas_per_forward: int | None = None,
    logit_chunk: int = 1024,
) -> torch.Tensor:
    """``log σ_{z_{t+1}}(y_t(α))`` at every position ``t < T - 1`` of every text block, for every ``α``.

    Equal (to float rounding) to the model's own forward inside :func:`steer` with ``positions="all"``,
    followed by a log-softmax and a gather of the next token, but blocks ``0..ℓ`` run once and the logits exist
    ``logit_chunk`` rows at a time (:func:`target_log_probs`). The cross-entropy of Def. 3.7 is minus their mean.

    Args:
        lm: the model.
        ids: token ids ``(B, T)`` without padding (e.g. rows of :func:`steerlib.corpora.chunk_tokens`).
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give ``layer``).
        alphas: the strengths.
        layer: steered block; default the vector's layer.
        alphas_per_forward: α values per forward through the later blocks (default all).
        logit_chunk: rows of logits ``(rows, V)`` materialised at once.

    Returns:
        fp32 tensor ``(len(alphas), B, T - 1)`` on ``lm.device``.
    """
    ids = check_token_blocks(lm, ids).to(lm.device)
    v, layer = resolve_vector(lm, vector, layer)
    alphas = _check_alphas(alphas, lm.device)
    batch, length = ids.shape
    rows = []
    for chunk, u in steered_residuals(lm, ids, v, layer, alphas, "all", alphas_per_forward):
        u = u[:, :-1].reshape(-1, u.shape[-1])
        targets = ids[:, 1:].repeat(chunk.numel(), 1).reshape(-1)
        rows.append(target_log_probs(lm, u, targets, logit_chunk).reshape(chunk.numel(), batch, length - 1))
    return torch.cat(rows)


def limit_logits(lm: LoadedModel, v: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """The limit logits ``LN(±v) Wᵀ`` of Prop. 4.1, in float32 on the CPU.

    Steering block ℓ gives logits ``y(α) = LN(h^(ℓ) + α v + R(α)) Wᵀ`` (Sec. 4, App. B.6) where ``R(α)``, the sum
    of the downstream block updates, stays bounded because every block reads its input through a norm. Hence
    ``y(α) -> LN(±v) Wᵀ`` as ``α -> ±∞``: the steered next-token distribution forgets the prompt.

    ``LN`` is the model's final norm (RMSNorm for Llama-family models, LayerNorm for GPT-2) and ``W`` its
    unembedding (with Gemma's final soft-capping where the model has it, see ``LoadedModel.logits``). Both norms
    are invariant to positive rescaling of their input (up to their ``eps``), so the result does not depend on
    ``|v|``.

    Args:
        lm: the loaded model.
        v: the steering vector, shape ``(hidden_size,)`` (a tensor or a :class:`SteeringVector`).
        sign: ``+1`` for ``α -> +∞``, ``-1`` for ``α -> -∞``.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (α -> +∞) or -1 (α -> -∞), got {sign!r}")
    v = v.vector if isinstance(v, SteeringVector) else torch.as_tensor(v)
    if v.shape != (lm.hidden_size,):
        raise ValueError(f"v has shape {tuple(v.shape)}; {lm.name} needs a vector of shape ({lm.hidden_size},): "
                         "pass one layer's steering vector")
    if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
        raise ValueError("v must be finite and non-zero: the limit LN(±v)Wᵀ is undefined for v = 0")
    x = (sign * v).to(device=lm.device, dtype=lm.dtype)
    with torch.no_grad():
        return lm.logits(x).float().cpu()


def limit_target_log_probs(lm: LoadedModel, ids, v: torch.Tensor, sign: int) -> torch.Tensor:
    """``log σ_{z_{t+1}}(LN(±v) Wᵀ)`` at every scored position of ``ids (B, T)``, shape ``(B, T - 1)`` (Prop. 4.1):
    what :func:`steered_target_log_probs` tends to as ``α -> ±∞``."""
    ids = torch.as_tensor(ids).long()
    log_limit = torch.log_softmax(limit_logits(lm, v, sign).double(), dim=-1)
    return log_limit[ids[:, 1:].cpu()]
