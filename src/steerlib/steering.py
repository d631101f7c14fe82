"""Adding ``α v`` to the residual stream of a real transformer (Sec. 4), one α at a time or many at once.

A steering vector ``v`` is added to the output of decoder block ``ℓ`` (the residual stream
``h^(ℓ+1)`` in the paper's Sec. 4 notation ``h^(ℓ) <- h^(ℓ) + α v``), either at every position
(``positions="all"``) or only at the last one (``positions="last"``, App. A). Two ways to do it:

- :func:`steer`, a context manager that registers a forward hook on the block and removes it on exit
  (even on error); the model itself is never modified. Use it for generation and anything that calls the
  model's own ``forward``.
- :func:`steered_log_probs` / :func:`steered_next_token_log_probs`, the α-batched forward used by the
  next-token sweeps (Fig. 6): one prompt, many α in one batch, computing only what depends on α:

  * blocks ``0..ℓ`` run once at batch size 1 (their output does not depend on α) and that hidden state is
    reused for every α;
  * blocks ``ℓ+1..L-1`` run on the α-batch, each called with exactly the arguments the model's own forward
    gave it (position embeddings, masks, caches; recorded by a pre-hook during the batch-1 pass), so rotary
    embeddings, sliding windows and Gemma's local/global layers are handled by the model's code;
  * the final norm and unembedding are applied to the needed positions only (the last, by default);
  * with ``positions="last"``, the prompt minus its last token is run once with a KV cache, and each α
    costs one position through blocks ``ℓ+1..L-1`` (earlier positions cannot see the last one).

Numerics: ``α v`` is computed in fp32 and softmax is taken in fp32. In fp16 a large ``α`` overflows the
residual stream (fp16 stops at 65504). The batched forward then carries each row as ``s · u`` with an fp32
scale ``s >= 1`` chosen so that ``u`` stays far below the fp16 limit; every block reads its input through a
scale-invariant norm (``h_next = h + F(LN(h))``, Sec. 4), so ``u_next = u + (block(u) - u) / s`` is exact up
to the norms' epsilon, and the final norm removes ``s``. Rows that never come near the limit have ``s = 1``
and are computed exactly as the model does. fp32 and bf16 have the range of fp32 and never need a scale.
The hook of :func:`steer` cannot rescale the model's own forward: it raises a ``ValueError`` instead of
returning infinities.

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
from typing import Callable, Iterator, Literal, Sequence

import torch

from steerlib.models import LoadedModel

Positions = Literal["all", "last"]
POSITIONS = ("all", "last")

# fp16 rows are rescaled when their largest entry exceeds finfo.max * _SAFE_FRACTION (4094 for fp16),
# leaving room for the updates of one block before the next check.
_SAFE_FRACTION = 1 / 16


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the blocks we need have run."""


def block_hidden(output) -> torch.Tensor:
    """The hidden state in a block's output (a tensor in transformers 5, the first element of a tuple before)."""
    return output[0] if isinstance(output, tuple) else output


def record_block_outputs(lm: LoadedModel, inputs: dict, layers: Sequence[int],
                         reduce: Callable[[torch.Tensor], torch.Tensor] = lambda hidden: hidden,
                         ) -> dict[int, torch.Tensor]:
    """``reduce(h^(ℓ))`` for every block ``ℓ`` in ``layers`` of one unsteered forward on ``inputs``.

    The forward stops after the last block asked for, so later blocks and the unembedding never run.
    """
    recorded: dict[int, torch.Tensor] = {}
    last = max(layers)

    def record(index):
        def hook(module, args, output):
            recorded[index] = reduce(block_hidden(output))
            if index == last:
                raise _StopForward

        return hook

    handles = [lm.blocks[index].register_forward_hook(record(index)) for index in layers]
    try:
        with torch.no_grad():
            lm.model(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def _with_hidden(output, hidden: torch.Tensor):
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


def check_positions(positions: str) -> str:
    """Return ``positions`` if it is ``"all"`` or ``"last"``, else raise a ``ValueError``."""
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r}: use 'all' (steer every position) or 'last' (the last token only).")
    return positions


def resolve_vector(lm: LoadedModel, vector, layer: int | None) -> tuple[torch.Tensor, int]:
    """The fp32 direction ``v`` on ``lm``'s device and the block to steer, checked against ``lm``.

    Args:
        lm: the model to steer.
        vector: a :class:`steerlib.vectors.SteeringVector` (its model name and width are checked) or a
            1-D tensor of size ``lm.hidden_size``.
        layer: block whose output is steered; default the vector's own layer (required for a bare tensor).
    """
    from steerlib.vectors import SteeringVector

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
    lm.check_layer(layer)
    return tensor.detach().to(device=lm.device, dtype=torch.float32), layer


def _alpha_column(alpha, device) -> torch.Tensor:
    alphas = torch.as_tensor(alpha, dtype=torch.float32, device=device)
    if alphas.ndim > 1:
        raise ValueError(f"alpha must be a number or a 1-D sequence (one α per batch row), got shape {tuple(alphas.shape)}.")
    return alphas.reshape(-1, 1, 1)


@contextmanager
def steer(
    lm: LoadedModel,
    vector,
    alpha: float | Sequence[float] | torch.Tensor,
    layer: int | None = None,
    positions: Positions = "all",
) -> Iterator[None]:
    """Within the ``with`` block, every forward of ``lm.model`` adds ``α v`` to the output of block ``layer``.

    ``h^(ℓ) <- h^(ℓ) + α v`` (Sec. 4), at every position or at the last position of each sequence only.
    The sum is computed in fp32 and cast back to the model's dtype. A forward hook does it; the hook is
    removed on exit, also when the body raises, and the model's parameters are never touched.

    Sharp edges: ``positions="last"`` steers index ``-1`` of each sequence, so pad batches on the left;
    during ``generate`` with a KV cache each new token is the last position of its step, so both modes
    steer every generated token. In fp16, an ``α v`` that overflows raises a ``ValueError`` (use
    :func:`steered_log_probs`, which rescales, or load the model in bf16/fp32).

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

    def add_steering(module, args, output):
        hidden = block_hidden(output)
        if alphas.shape[0] not in (1, hidden.shape[0]):
            raise ValueError(f"{alphas.shape[0]} values of alpha for a batch of {hidden.shape[0]} sequences: "
                             "give one α, or one per batch row.")
        delta = alphas * v
        if positions == "all":
            steered = (hidden.float() + delta).to(hidden.dtype)
        else:
            steered = hidden.clone()
            steered[:, -1:] = (hidden[:, -1:].float() + delta).to(hidden.dtype)
        if not torch.isfinite(steered).all() and torch.isfinite(hidden).all():
            raise ValueError(f"α v overflows the {hidden.dtype} residual stream (largest |α| = "
                             f"{alphas.abs().max().item():.3g}): use steered_log_probs (it rescales fp16 rows) "
                             "or load the model in bf16 or fp32.")
        return _with_hidden(output, steered)

    handle = lm.blocks[layer].register_forward_hook(add_steering)
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
    """One batch-1 forward of the model's own code; returns block ``layer``'s output and the calls of later blocks.

    Each block after ``layer`` is recorded as the ``(args, kwargs)`` the model passed it, so that it can be
    called again on the α-batch with the same position embeddings, masks and cache. The pass stops after
    the last block (the final norm and the full unembedding are not computed).
    """
    calls: dict[int, tuple[tuple, dict]] = {}
    recorded: dict[str, torch.Tensor] = {}
    handles = []

    def record_output(module, args, output):
        recorded["hidden"] = block_hidden(output).detach()

    def record_call(index):
        def hook(module, args, kwargs):
            calls[index] = (args, kwargs)

        return hook

    def stop(module, args, output):
        raise _StopForward

    try:
        handles.append(lm.blocks[layer].register_forward_hook(record_output))
        for index in range(layer + 1, lm.n_layers):
            handles.append(lm.blocks[index].register_forward_pre_hook(record_call(index), with_kwargs=True))
        handles.append(lm.blocks[lm.n_layers - 1].register_forward_hook(stop))
        kwargs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": cache is not None}
        if cache is not None:
            kwargs[_cache_keyword(lm.model)] = cache
        try:
            with torch.no_grad():
                lm.model(**kwargs)
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()
    return recorded["hidden"], calls


def _call_block(block, call: tuple[tuple, dict], hidden: torch.Tensor, cache=None) -> torch.Tensor:
    args, kwargs = call
    kwargs = dict(kwargs)
    if cache is not None:
        from transformers import Cache

        kwargs = {key: cache if isinstance(value, Cache) else value for key, value in kwargs.items()}
        args = tuple(cache if isinstance(value, Cache) else value for value in args)
    if args:
        args = (hidden,) + tuple(args[1:])
    else:
        kwargs["hidden_states"] = hidden
    return block_hidden(block(*args, **kwargs))


class _ScaledResidual:
    """A batch of residual streams stored as ``s · u``: ``u`` in the model's dtype, ``s >= 1`` fp32 per row."""

    def __init__(self, true_hidden: torch.Tensor, dtype: torch.dtype):
        self.dtype = dtype
        self.limit = torch.finfo(dtype).max * _SAFE_FRACTION
        self.needs_scale = self.limit < 1e30  # fp16 only: fp32 and bf16 share fp32's range
        self.scale = torch.ones(true_hidden.shape[0], 1, 1, dtype=torch.float32, device=true_hidden.device)
        self.u = self._rescaled(true_hidden) if self.needs_scale else true_hidden.to(dtype)

    def _rescaled(self, hidden32: torch.Tensor) -> torch.Tensor:
        peak = hidden32.abs().amax(dim=(1, 2), keepdim=True)
        factor = torch.clamp(peak / self.limit, min=1.0)
        if bool((factor > 1).any()):
            self.scale = self.scale * factor
            hidden32 = hidden32 / factor
        return hidden32.to(self.dtype)

    def step(self, output: torch.Tensor) -> None:
        """Replace ``u`` by the block's output on ``u``, undoing the scale on the block's update."""
        if not self.needs_scale:
            self.u = output
            return
        scaled = self.scale > 1
        if bool(scaled.any()):
            u32 = self.u.float()
            output32 = torch.where(scaled, u32 + (output.float() - u32) / self.scale, output.float())
        else:
            output32 = output.float()
        self.u = self._rescaled(output32)


def _prompt_ids(lm: LoadedModel, prompt) -> torch.Tensor:
    if isinstance(prompt, str):
        ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long)
        if ids.ndim == 1:
            ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"give one non-empty prompt (a string or 1-D token ids), got ids of shape {tuple(ids.shape)}.")
    return ids.to(lm.device)


def steered_log_probs(
    lm: LoadedModel,
    prompt,
    vector,
    alphas: Sequence[float] | torch.Tensor,
    layer: int | None = None,
    positions: Positions = "all",
    logit_positions: Sequence[int] = (-1,),
    batch_size: int | None = None,
) -> torch.Tensor:
    """Next-token log-probabilities ``log σ(y(α))`` of one prompt for many ``α``, in an α-batched forward.

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
        batch_size: α values per forward (default all at once); lower it if memory is short.

    Returns:
        fp32 tensor of shape ``(len(alphas), len(logit_positions), vocabulary)`` on ``lm.device``.
    """
    check_positions(positions)
    v, layer = resolve_vector(lm, vector, layer)
    alphas = torch.as_tensor(alphas, dtype=torch.float32, device=lm.device).reshape(-1)
    if alphas.numel() == 0:
        raise ValueError("alphas is empty: give at least one steering strength.")
    if not torch.isfinite(alphas).all():
        raise ValueError("alphas must be finite numbers.")
    ids = _prompt_ids(lm, prompt)
    length = ids.shape[1]
    logit_positions = [int(p) for p in logit_positions]
    if not logit_positions or any(not -length <= p < length for p in logit_positions):
        raise ValueError(f"logit_positions {logit_positions} must index the {length} prompt tokens.")
    last_only = positions == "last" and length > 1
    if last_only and any(p % length != length - 1 for p in logit_positions):
        raise ValueError("with positions='last' only logit_positions=(-1,) is available: steering the last token "
                         "does not change the predictions at earlier positions.")
    position_ids = torch.arange(length, device=lm.device)[None]
    batch_size = batch_size or alphas.numel()
    with torch.no_grad():
        if last_only:
            prefix_cache = _new_cache(lm)
            lm.model(input_ids=ids[:, :-1], position_ids=position_ids[:, :-1], use_cache=True,
                     **{_cache_keyword(lm.model): prefix_cache})
            saved_cache = copy.deepcopy(prefix_cache)
            hidden, calls = _run_recording(lm, layer, ids[:, -1:], position_ids[:, -1:], prefix_cache)
            selected = [0]
        else:
            saved_cache = None
            hidden, calls = _run_recording(lm, layer, ids, position_ids)
            selected = [p % length for p in logit_positions]
        results = []
        for start in range(0, alphas.numel(), batch_size):
            chunk = alphas[start:start + batch_size]
            cache = None
            if saved_cache is not None:
                cache = copy.deepcopy(saved_cache)
                _repeat_cache(cache, chunk.numel(), from_layer=layer + 1)
            residual = _ScaledResidual(hidden.float() + chunk.reshape(-1, 1, 1) * v, lm.dtype)
            for index in range(layer + 1, lm.n_layers):
                residual.step(_call_block(lm.blocks[index], calls[index], residual.u, cache))
            logits = lm.logits(residual.u[:, selected])
            results.append(logits.float().log_softmax(dim=-1))
    return torch.cat(results)


def _repeat_cache(cache, repeats: int, from_layer: int) -> None:
    """Repeat the batch-1 KV cache ``repeats`` times along the batch, for the layers the α-batch runs."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        cache.batch_repeat_interleave(repeats)
        return
    for index in range(from_layer, len(layers)):
        layers[index].batch_repeat_interleave(repeats)


def steered_next_token_log_probs(
    lm: LoadedModel,
    prompt,
    vector,
    alphas: Sequence[float] | torch.Tensor,
    layer: int | None = None,
    positions: Positions = "all",
    batch_size: int | None = None,
) -> torch.Tensor:
    """``log σ(y(α))`` at the last position, shape ``(len(alphas), vocabulary)``; see :func:`steered_log_probs`."""
    return steered_log_probs(lm, prompt, vector, alphas, layer, positions, (-1,), batch_size)[:, 0]


def mean_residual_norm(lm: LoadedModel, texts: Sequence[str] | str, layer: int,
                       first_position: str = "exclude") -> float:
    """Mean of ``‖h‖`` over the tokens of ``texts`` at the output of block ``layer``: the scale of relative α.

    With ``α_rel``, the absolute strength is ``α = α_rel · mean‖h‖ / ‖v‖``, so ``α_rel = 1`` moves the residual
    stream by its own typical size. ``first_position`` follows :func:`steerlib.vectors.token_mean_activations`
    (the first position of Llama-family models carries a massive activation that would dominate the mean).
    """
    from steerlib.vectors import token_norms

    lm.check_layer(layer)
    texts = [texts] if isinstance(texts, str) else list(texts)
    return float(token_norms(lm, texts, layer, first_position=first_position).mean())
