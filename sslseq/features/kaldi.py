"""Kaldi-compatible filterbank and MFCC features in batched torch (CPU or GPU).

Same arithmetic as Kaldi's ``compute-fbank-feats`` / ``compute-mfcc-feats`` / ``add-deltas``
(and kaldi-native-fbank) with their defaults, except ``dither`` defaults to 0 so features
are deterministic. Only ``snip_edges=True`` framing is implemented:
``num_frames = 1 + (num_samples - 400) // 160`` at 16 kHz.

Input scale: Kaldi reads int16 samples and works on that scale. Float waveforms (our audio,
in [-1, 1]) are multiplied by ``opts.input_scale`` (32768) internally, so the features equal
Kaldi's for the corresponding int16 samples. Integer tensors (int16) are used unscaled.

Vectorised: the frames of all utterances are one strided view of the padded batch; the valid
ones (never padding) go in blocks of 2048 frames (cache-sized on CPU; one block on GPU)
through DC removal, pre-emphasis, window, one rfft and one matmul with the mel matrix.
``method="matmul"`` instead folds pre-emphasis, window and DFT into one (400, 2K) matrix
(slower on CPU, an alternative on GPUs). Padding frames come out as zeros and never touch
valid frames. On CUDA, TF32 matmuls are switched off inside these functions: TF32's 1e-3
relative error would be visible in the log energies.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

FLT_EPSILON = 1.1920928955078125e-07  # Kaldi's log floor (std::numeric_limits<float>::epsilon())
SAMPLE_RATE = 16000
frame_rate = 100.0  # frames per second with the default 10 ms shift


@dataclass(frozen=True)
class FbankOptions:
    """Kaldi ``compute-fbank-feats`` options (defaults as Kaldi, except dither=0)."""

    num_mel_bins: int = 80
    sample_rate: int = SAMPLE_RATE
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    preemph_coeff: float = 0.97
    remove_dc_offset: bool = True
    window_type: str = "povey"  # povey | hamming | hanning | rectangular | blackman
    blackman_coeff: float = 0.42
    round_to_power_of_two: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist (Kaldi convention)
    use_energy: bool = False  # if True, log energy is prepended as column 0
    raw_energy: bool = True  # energy before pre-emphasis and window
    energy_floor: float = 0.0
    input_scale: float = 32768.0  # float waveforms are multiplied by this (int16 scale)


@dataclass(frozen=True)
class MfccOptions(FbankOptions):
    """Kaldi ``compute-mfcc-feats`` options: 23 mel bins, 13 ceps, lifter 22, C0 = log energy."""

    num_mel_bins: int = 23
    num_ceps: int = 13
    cepstral_lifter: float = 22.0
    use_energy: bool = True  # replaces C0 with the log energy, as Kaldi does by default


def _frame_geometry(opts: FbankOptions) -> tuple[int, int, int]:
    length = int(opts.sample_rate * 0.001 * opts.frame_length_ms)
    shift = int(opts.sample_rate * 0.001 * opts.frame_shift_ms)
    n_fft = 1 << (length - 1).bit_length() if opts.round_to_power_of_two else length
    return length, shift, n_fft


def num_frames(num_samples, opts: FbankOptions | None = None):
    """Frames Kaldi produces (snip_edges=True) for ``num_samples``; int or Tensor in, same out."""
    length, shift, _ = _frame_geometry(opts or FbankOptions())
    if isinstance(num_samples, Tensor):
        return torch.where(num_samples >= length, 1 + torch.div(num_samples - length, shift, rounding_mode="floor"), 0)
    return 0 if num_samples < length else 1 + (int(num_samples) - length) // shift


# ---------------------------------------------------------------- constant matrices (float64, cached)


def _window(opts: FbankOptions, length: int) -> Tensor:
    n = torch.arange(length, dtype=torch.float64)
    a = 2 * math.pi / (length - 1)
    kind = opts.window_type
    if kind == "povey":
        return (0.5 - 0.5 * torch.cos(a * n)).pow(0.85)
    if kind == "hanning":
        return 0.5 - 0.5 * torch.cos(a * n)
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(a * n)
    if kind == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    if kind == "blackman":
        return opts.blackman_coeff - 0.5 * torch.cos(a * n) + (0.5 - opts.blackman_coeff) * torch.cos(2 * a * n)
    raise ValueError(f"unknown window_type '{kind}' (povey, hanning, hamming, rectangular, blackman)")


def _mel_scale(freq: Tensor | float):
    return 1127.0 * (torch.log1p(freq / 700.0) if isinstance(freq, Tensor) else math.log1p(freq / 700.0))


def mel_banks(opts: FbankOptions) -> Tensor:
    """Kaldi's triangular mel filters, (n_fft // 2 + 1, num_mel_bins) float64; the Nyquist row is 0."""
    _, _, n_fft = _frame_geometry(opts)
    nyquist = 0.5 * opts.sample_rate
    high = opts.high_freq if opts.high_freq > 0 else nyquist + opts.high_freq
    if not (0 <= opts.low_freq < high <= nyquist):
        raise ValueError(f"mel bins need 0 <= low_freq < high_freq <= Nyquist, got {opts.low_freq}, {high}")
    mel_low, mel_high = _mel_scale(opts.low_freq), _mel_scale(high)
    delta = (mel_high - mel_low) / (opts.num_mel_bins + 1)
    # Kaldi evaluates the filters on n_fft/2 bins (0 .. Nyquist exclusive).
    mel = _mel_scale(torch.arange(n_fft // 2, dtype=torch.float64) * (opts.sample_rate / n_fft))[:, None]
    left = mel_low + delta * torch.arange(opts.num_mel_bins, dtype=torch.float64)[None, :]
    center, right = left + delta, left + 2 * delta
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.where(mel <= center, up, down)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros(()))
    return torch.cat([weights, torch.zeros(1, opts.num_mel_bins, dtype=torch.float64)])


def _dct_lifter(opts: MfccOptions) -> Tensor:
    """(num_mel_bins, num_ceps): Kaldi's orthonormal DCT-II rows, times the cepstral lifter."""
    n = opts.num_mel_bins
    if opts.num_ceps > n:
        raise ValueError(f"num_ceps {opts.num_ceps} > num_mel_bins {n}")
    k = torch.arange(opts.num_ceps, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    dct = torch.cos(math.pi / n * (j + 0.5) * k) * math.sqrt(2.0 / n)
    dct[0] *= math.sqrt(0.5)
    if opts.cepstral_lifter:
        q = opts.cepstral_lifter
        dct *= (1.0 + 0.5 * q * torch.sin(math.pi * k / q))
    return dct.T.contiguous()


@functools.lru_cache(maxsize=32)
def _constants(opts: FbankOptions, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    length, _, n_fft = _frame_geometry(opts)
    window = _window(opts, length)
    mel = mel_banks(opts)
    used = mel.abs().sum(1).nonzero().flatten()
    lo, hi = int(used.min()), int(used.max()) + 1  # FFT bins the mel filters touch
    # Pre-emphasis as a matrix: y[i] = x[i] - c x[i-1], y[0] = x[0] - c x[0] (Kaldi).
    pre = torch.eye(length, dtype=torch.float64)
    idx = torch.arange(1, length)
    pre[idx, idx - 1] = -opts.preemph_coeff
    pre[0, 0] -= opts.preemph_coeff
    analysis = pre.T * window[None, :]  # frames @ analysis = windowed, pre-emphasised frames
    k = torch.arange(lo, hi, dtype=torch.float64)
    n = torch.arange(length, dtype=torch.float64)[:, None]
    angle = (2 * math.pi / n_fft) * torch.remainder(n * k[None, :], n_fft)  # exact phase
    dft = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1)
    out = {
        "analysis": analysis,
        "window": window,
        "dft": analysis @ dft,  # (length, 2 * (hi - lo))
        "mel": mel[lo:hi],
        "mel_pairs": mel.repeat_interleave(2, dim=0),
        "lohi": torch.tensor([lo, hi]),
    }
    if isinstance(opts, MfccOptions):
        out["dct"] = _dct_lifter(opts)
    return {key: v.to(device=device, dtype=dtype) if v.is_floating_point() else v for key, v in out.items()}


# ---------------------------------------------------------------- the pipeline


def _prepare(waves: Tensor, lengths: Tensor, opts: FbankOptions) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """Frames of all utterances as one overlapping (rows, L) view, plus which rows are valid.

    Each utterance is padded to ``per * shift`` samples, so frame t of utterance b is row
    ``b * per + t`` of one strided view of a flat buffer; rows straddling two utterances exist
    in the view but are never selected.
    Returns rows, valid row indices, frame_lengths (B,), T, per.
    """
    if waves.dim() != 2:
        raise ValueError(f"waves must be (batch, samples), got shape {tuple(waves.shape)}")
    length, shift, _ = _frame_geometry(opts)
    dtype = waves.dtype if waves.dtype in (torch.float32, torch.float64) else torch.float32
    b, s = waves.shape
    lengths = torch.as_tensor(lengths).to(device=waves.device, dtype=torch.int64).clamp(max=s)
    frame_lengths = num_frames(lengths, opts)
    t = num_frames(s, opts)
    per = -(-s // shift)
    flat = torch.zeros(b * per * shift + length, dtype=dtype, device=waves.device)
    scale = opts.input_scale if waves.is_floating_point() else 1.0
    flat[: b * per * shift].view(b, per * shift)[:, :s] = waves.to(dtype) * scale
    rows = flat.as_strided((b * per, length), (shift, 1))
    valid = (torch.arange(per, device=waves.device)[None, :] < frame_lengths[:, None]).flatten().nonzero().flatten()
    return rows, valid, frame_lengths, t, per


def _block(
    f: Tensor, opts: FbankOptions, c: dict[str, Tensor], method: str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor | None]:
    """Frames (N, L) at int16 scale -> log mel energies (N, num_mel_bins), log frame energy (N,) or None."""
    dtype = f.dtype
    if opts.dither:
        f = f + opts.dither * torch.randn(f.shape, generator=generator, device=f.device, dtype=dtype)
    if opts.remove_dc_offset:
        f = f - f.mean(dim=1, keepdim=True)
    energy = None
    if opts.use_energy and opts.raw_energy:
        energy = torch.linalg.vector_norm(f, dim=1).square()  # fused; square().sum() is 6x slower
    if method == "fft":
        # Pre-emphasis and window elementwise (far cheaper than the (L, L) analysis matmul), written
        # straight into the zero-padded FFT buffer; only the padding columns need zeroing.
        _, _, n_fft = _frame_geometry(opts)
        length = f.shape[1]
        buf = torch.empty(f.shape[0], n_fft, dtype=dtype, device=f.device)
        buf[:, length:].zero_()
        w = buf[:, :length]
        torch.sub(f[:, 1:], f[:, :-1], alpha=opts.preemph_coeff, out=w[:, 1:])
        torch.mul(f[:, 0], 1.0 - opts.preemph_coeff, out=w[:, 0])
        w.mul_(c["window"])
        if opts.use_energy and not opts.raw_energy:
            energy = w.square().sum(1)
        # |X|^2 from the interleaved (re, im) view: one contiguous square, and the mel matrix
        # repeated per component does the re^2 + im^2 sum inside the matmul.
        spec = torch.view_as_real(torch.fft.rfft(buf)).reshape(f.shape[0], -1)
        mel = spec.square_() @ c["mel_pairs"]
    elif method == "matmul":
        spec = f @ c["dft"]  # pre-emphasis, window and DFT in one matmul
        half = spec.shape[1] // 2
        mel = (spec[:, :half].square() + spec[:, half:].square()) @ c["mel"]
        if opts.use_energy and not opts.raw_energy:
            energy = (f @ c["analysis"]).square().sum(1)
    else:
        raise ValueError(f"unknown method '{method}' (fft or matmul)")
    log_mel = mel.clamp_min_(FLT_EPSILON).log_()
    if energy is not None:
        energy = energy.clamp_min(FLT_EPSILON).log_()
        if opts.energy_floor > 0:
            energy = energy.clamp_min(math.log(opts.energy_floor))
    return log_mel, energy


# Frames per block on CPU: a block's temporaries (~10 KB a frame) stay in cache and below
# glibc's mmap threshold, whose page-fault churn made one-shot 100-s batches ~3x slower.
CPU_BLOCK_FRAMES = 2048
GPU_BLOCK_FRAMES = 1 << 17


@contextlib.contextmanager
def _full_precision(device: torch.device):
    """float32 matmuls: no autocast region of the caller (CPU or CUDA bf16/fp16 would run the
    mel / DCT matmuls in half precision, and on CPU even mix dtypes and fail), and no TF32 on
    CUDA (a trainer may have enabled it globally)."""
    with torch.autocast(device_type=device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev


def _log_mel_and_energy(
    waves: Tensor, lengths: Tensor, opts: FbankOptions, method: str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Log mel (B, T, num_mel_bins), log energy (B, T) or None (zero on padding frames), frame_lengths."""
    rows, valid, frame_lengths, t, per = _prepare(waves, lengths, opts)
    b, dev, dtype = waves.shape[0], rows.device, rows.dtype
    c = _constants(opts, dev, dtype)
    log_mel = torch.zeros(b * per, opts.num_mel_bins, dtype=dtype, device=dev)
    energy = torch.zeros(b * per, dtype=dtype, device=dev) if opts.use_energy else None
    block = CPU_BLOCK_FRAMES if dev.type == "cpu" else GPU_BLOCK_FRAMES
    for idx in valid.split(block) if len(valid) else ():  # valid frames only: padding costs nothing
        lm, en = _block(rows.index_select(0, idx), opts, c, method, generator)
        log_mel.index_copy_(0, idx, lm)
        if energy is not None:
            energy.index_copy_(0, idx, en)
    log_mel = log_mel.view(b, per, -1)[:, :t]
    energy = energy.view(b, per)[:, :t] if energy is not None else None
    return log_mel, energy, frame_lengths


def _mask(feats: Tensor, frame_lengths: Tensor) -> Tensor:
    valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
    return feats * valid[..., None].to(feats.dtype)


def fbank(
    waves: Tensor,
    lengths: Tensor,
    opts: FbankOptions = FbankOptions(),
    *,
    method: str = "fft",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Log mel filterbank, Kaldi ``compute-fbank-feats``.

    waves (B, S) float in [-1, 1] (scaled by ``opts.input_scale``) or int16; lengths (B,) valid
    samples. Returns feats (B, T, num_mel_bins [+1 with use_energy]) in the input float dtype
    (float32 for int input), zero beyond each utterance, and frame_lengths (B,) int64.
    """
    with _full_precision(waves.device):
        log_mel, energy, frame_lengths = _log_mel_and_energy(waves, lengths, opts, method, generator)
    feats = log_mel if energy is None else torch.cat([energy[..., None], log_mel], dim=-1)
    return _mask(feats, frame_lengths), frame_lengths


def mfcc(
    waves: Tensor,
    lengths: Tensor,
    opts: MfccOptions = MfccOptions(),
    deltas: bool = True,
    *,
    method: str = "fft",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """MFCC, Kaldi ``compute-mfcc-feats``; with ``deltas`` also ``add-deltas`` (order 2, window 2).

    The 39-dim HuBERT-iteration-1 layout is [mfcc(13), delta(13), delta-delta(13)].
    Same input/output conventions as :func:`fbank`.
    """
    with _full_precision(waves.device):
        log_mel, energy, frame_lengths = _log_mel_and_energy(waves, lengths, opts, method, generator)
        c = _constants(opts, log_mel.device, log_mel.dtype)
        feats = log_mel @ c["dct"]
    if energy is not None:
        feats = torch.cat([energy[..., None], feats[..., 1:]], dim=-1)
    feats = _mask(feats, frame_lengths)
    if deltas:
        feats = add_deltas(feats, frame_lengths)
    return feats, frame_lengths


@functools.lru_cache(maxsize=8)
def _delta_scales(order: int, window: int) -> Tensor:
    """(2 * order * window + 1, order + 1) taps; column i is Kaldi's order-i regression window."""
    scales = [torch.ones(1, dtype=torch.float64)]
    w1 = torch.arange(-window, window + 1, dtype=torch.float64)
    w1 = w1 / w1.square().sum()
    for _ in range(order):
        prev = scales[-1]
        # full convolution of prev with w1 (w1 is antisymmetric, so flip signs accordingly)
        cur = torch.zeros(len(prev) + 2 * window, dtype=torch.float64)
        for j, wj in enumerate(w1.tolist()):
            cur[j : j + len(prev)] += wj * prev
        scales.append(cur)
    width = 2 * order * window + 1
    out = torch.zeros(width, order + 1, dtype=torch.float64)
    for i, s in enumerate(scales):
        pad = (width - len(s)) // 2
        out[pad : pad + len(s), i] = s
    return out


def _as_batch(feats: Tensor, frame_lengths: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    """(T, D) or (B, T, D) features -> (B, T, D), int64 lengths on its device (all T if None), was-2-D."""
    squeeze = feats.dim() == 2
    if squeeze:
        feats = feats[None]
    if frame_lengths is None:
        frame_lengths = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.int64)
    return feats, frame_lengths.to(device=feats.device, dtype=torch.int64), squeeze


def add_deltas(feats: Tensor, frame_lengths: Tensor | None = None, order: int = 2, window: int = 2) -> Tensor:
    """Kaldi ``add-deltas``: (B, T, D) -> (B, T, D * (order + 1)) as [x, delta, delta-delta, ...].

    Frames outside [0, frame_lengths[b]) are replaced by the nearest valid frame (Kaldi's edge
    replication), so padding never leaks into valid frames. A (T, D) input gives (T, D * (order+1)).
    """
    feats, frame_lengths, squeeze = _as_batch(feats, frame_lengths)
    b, t, d = feats.shape
    if t == 0:
        out = feats.new_zeros(b, 0, d * (order + 1))
        return out[0] if squeeze else out
    half = order * window
    src = torch.arange(-half, t + half, device=feats.device)[None, :]
    src = torch.minimum(src.clamp_min(0), (frame_lengths[:, None] - 1).clamp_min(0))
    ext = feats.gather(1, src[..., None].expand(b, t + 2 * half, d))  # (B, T + 2h, D)
    windows = ext.unfold(1, 2 * half + 1, 1)  # (B, T, D, 2h + 1)
    with _full_precision(feats.device):
        out = windows @ _delta_scales(order, window).to(device=feats.device, dtype=feats.dtype)  # (B, T, D, order+1)
    out = out.transpose(2, 3).reshape(b, t, d * (order + 1))
    out = _mask(out, frame_lengths)
    return out[0] if squeeze else out


def feature_dim(feat_type: str, deltas: bool = True) -> int:
    """Output dim of the default options: mfcc 39 (13 without deltas), fbank 80."""
    if feat_type == "mfcc":
        return MfccOptions().num_ceps * (3 if deltas else 1)
    if feat_type == "fbank":
        return FbankOptions().num_mel_bins
    raise ValueError(f"unknown feature type '{feat_type}'")


__all__ = [
    "FLT_EPSILON",
    "FbankOptions",
    "MfccOptions",
    "add_deltas",
    "fbank",
    "feature_dim",
    "frame_rate",
    "mel_banks",
    "mfcc",
    "num_frames",
]
