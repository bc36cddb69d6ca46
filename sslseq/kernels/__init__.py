"""Fused kernels: the Gumbel vector quantizer and the contrastive (InfoNCE) loss.

Each op has one interface and three implementations (``impl=``):
  ``reference``  plain torch, fairseq's literal semantics (ground truth of the tests);
  ``chunked``    plain torch, bounded memory (never builds the big intermediates): CPU default;
  ``triton``     fused Triton forward and backward: CUDA default (on CPU only under TRITON_INTERPRET=1).
``impl=None`` takes ``$SSLSEQ_KERNEL_IMPL`` if set, else the device default. Backward scatters
are deterministic when ``deterministic=True``, ``$SSLSEQ_DETERMINISTIC=1`` or
``torch.use_deterministic_algorithms(True)``; otherwise the Triton implementation uses atomics.
Triton is imported only when the triton implementation runs, so this package imports without it.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from sslseq.utils import SslseqError

__all__ = ["gumbel_quantize", "contrastive_loss", "resolve_impl", "IMPLS", "ENV_IMPL", "triton_available"]

IMPLS = ("reference", "chunked", "triton")
ENV_IMPL = "SSLSEQ_KERNEL_IMPL"
_ENV_OLD = "SSLSEQ_KERNEL_PATH"  # its name until the argument became impl=; now an error
ENV_DETERMINISTIC = "SSLSEQ_DETERMINISTIC"


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        importlib.import_module("triton")
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
        return f"{type(e).__name__}: {e}"
    return None


def triton_available() -> bool:
    return _triton_import_error() is None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str | None, device: torch.device) -> str:
    """The implementation to run on ``device``: ``impl``, else $SSLSEQ_KERNEL_IMPL, else triton on
    CUDA (when importable) and chunked elsewhere."""
    if _ENV_OLD in os.environ:
        raise SslseqError(f"${_ENV_OLD} is now ${ENV_IMPL} (the kernel implementation: {', '.join(IMPLS)}); "
                          f"set {ENV_IMPL}={os.environ[_ENV_OLD]} instead and unset {_ENV_OLD}")
    chosen = impl or os.environ.get(ENV_IMPL) or None
    if chosen in (None, "auto"):
        return "triton" if device.type == "cuda" and triton_available() else "chunked"
    if chosen not in IMPLS:
        raise SslseqError(f"kernel implementation {chosen!r} is not one of {', '.join(IMPLS)} (set by impl= or ${ENV_IMPL})")
    if chosen == "triton":
        if not triton_available():
            raise SslseqError(f"kernel implementation 'triton' needs triton ({_triton_import_error()}); pip install triton")
        if device.type != "cuda" and not _interpreting():
            raise SslseqError(f"kernel implementation 'triton' on {device.type} tensors needs TRITON_INTERPRET=1 (set before importing triton)")
    return chosen


def _deterministic(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return os.environ.get(ENV_DETERMINISTIC, "0") == "1" or torch.are_deterministic_algorithms_enabled()


def _split_groups(logits: torch.Tensor, codebook: torch.Tensor, groups: int | None):
    """Flatten (N, G, V) logits / (G, V, d) codebooks to (N, G·V) / (G·V, d) and find G."""
    G = groups
    if logits.dim() == 3:
        G = G or logits.size(1)
        logits = logits.reshape(logits.size(0), -1)
    if codebook.dim() == 3:
        G = G or codebook.size(0)
        codebook = codebook.reshape(-1, codebook.size(-1))
    G = G or 1
    if logits.dim() != 2 or codebook.dim() != 2 or logits.size(1) != codebook.size(0) or logits.size(1) % G:
        raise ValueError(
            f"gumbel_quantize: logits {tuple(logits.shape)} must be (N, G·V) and codebook {tuple(codebook.shape)} (G·V, d) with G={G}"
        )
    return logits, codebook, G


# Under torch.compile both ops run as they are, outside the graph (a graph break): they are fused
# already, the triton implementation launches its own kernels from a custom autograd Function, and the
# chunked one is a Python loop over row chunks that tracing would unroll.
@torch.compiler.disable
def gumbel_quantize(logits, codebook, tau, hard=True, seed=0, impl=None, *, groups=None, deterministic=None):
    """Straight-through Gumbel-softmax quantization with codevector gather.

    ``logits`` (N, G·V) (or (N, G, V)), ``codebook`` (G·V, d) (or (G, V, d)); ``groups`` G when
    neither shape shows it (default 1). Noise: Gumbel from ``sslseq.kernels.rng`` at
    (``seed``, element offset in ``logits``), identical in every implementation. Returns ``quantized``
    (N, G·d), ``code_ids`` (N, G) int64 and ``soft_probs_mean`` (G, V): softmax(logits)
    averaged over the N rows (for the diversity loss; gradients flow through all three but ids).
    """
    logits, codebook, G = _split_groups(logits, codebook, groups)
    p = resolve_impl(impl, logits.device)
    from sslseq.kernels import gumbel

    if p == "reference":
        return gumbel.gumbel_quantize_reference(logits, codebook, float(tau), bool(hard), int(seed), G)
    fns = _Impl(gumbel.chunked_forward, gumbel.chunked_backward) if p == "chunked" else importlib.import_module("sslseq.kernels.gumbel_triton")
    return gumbel.GumbelQuantizeFn.apply(logits, codebook, float(tau), bool(hard), int(seed), G, fns, _deterministic(deterministic))


class _Impl:
    """forward/backward pair handed to an autograd Function."""

    def __init__(self, forward, backward):
        self.forward, self.backward = forward, backward


@torch.compiler.disable  # as gumbel_quantize
def contrastive_loss(context, targets, neg_idx, target_codes, temperature=0.1, impl=None, *, deterministic=None):
    """Summed InfoNCE loss over cosine logits and the number of frames whose positive wins.

    ``context``, ``targets`` (N, D); ``neg_idx`` (N, K) int64 rows of ``targets`` (-1: none, logit
    -inf); ``target_codes`` (N, G) int64 or None: a negative with the positive's codes (or, when
    None, the positive's exact vector) gets -inf. Returns ``(loss_sum, n_correct)``: the summed
    cross-entropy with the positive at index 0 (float32; float64 for float64 inputs) and an int64
    count of rows whose argmax is 0 and whose logits are not all tied.
    """
    p = resolve_impl(impl, context.device)
    from sslseq.kernels import contrastive as C

    if p == "reference":
        return C.contrastive_loss_reference(context, targets, neg_idx, target_codes, temperature)
    if p == "chunked":
        return C.contrastive_loss_chunked(context, targets, neg_idx, target_codes, temperature, C.CHUNK_ELEMS)
    import torch.nn.functional as F

    fns = importlib.import_module("sslseq.kernels.contrastive_triton")
    # Normalise outside the kernel (autograd carries the gradient through); fp32 inside.
    dt = C.compute_dtype(context, targets)
    c = F.normalize(context.to(dt), dim=-1, eps=1e-8).float()
    t = F.normalize(targets.to(dt), dim=-1, eps=1e-8).float()
    raw = targets.detach() if target_codes is None else None
    loss, correct = C.InfoNCEFn.apply(c, t, neg_idx, target_codes, raw, float(temperature), fns, _deterministic(deterministic))
    return loss.to(dt), correct
