"""``sslseq bench train --model wav2vec2``: one pretraining step (forward, backward, AdamW) of
sslseq's wav2vec 2.0 against transformers' ``Wav2Vec2ForPreTraining``, same config, same
weights, same batch and device, measured in the same run.

transformers' model takes its mask and negative indices as inputs (its example computes them
in the data collator, on the CPU, with numpy); they are drawn outside the timed region, so
transformers is timed on less work than sslseq, which masks and samples inside its step.
Time: median of ``--steps`` steps after ``--warmup``. Peak memory: CUDA
``max_memory_allocated`` over one step; on CPU the live-tensor tracker of ``bench kernels``
(every torch storage created by the step, forward and backward, until freed), in a separate
step so that tracking does not slow the timed ones.

``--dtype both`` times sslseq's step alone in fp32 and under bf16 autocast, same weights and
batch, and says whether the CPU has bf16 matrix instructions (``sslseq.hw``): without them
bf16 is emulated and many times slower. ``--agree-steps N`` trains the model N steps from the
same initialisation on the same batch with the same random draws (masks, negatives, Gumbel
noise, dropout) in fp32 and in bf16 and prints both loss curves and their largest relative
difference.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)

CONF = Path(__file__).resolve().parents[2] / "recipes" / "conf"
GOAL = dict(speedup=1.5, memory=1.0)


def _hf_pretraining_model(ours_cfg: dict[str, Any]):
    """A transformers Wav2Vec2ForPreTraining equivalent to the sslseq config, and our model
    with its weights (converted by the same code as ``sslseq convert --from hf``)."""
    import transformers

    from sslseq.convert.export import hf_config_from_encoder
    from sslseq.convert.hf import wav2vec2_from_hf
    from sslseq.models import build_model

    ref = build_model(ours_cfg)
    c = ref.cfg
    final_dim = c.final_dim or ref.encoder.embed_dim
    fields = {
        **{k: v for k, v in hf_config_from_encoder(ref.encoder).items() if k != "model_type"},
        "num_codevectors_per_group": c.latent_vars,
        "num_codevector_groups": c.latent_groups,
        "codevector_dim": c.latent_dim or final_dim,
        "proj_codevector_dim": final_dim,
        "num_negatives": c.num_negatives,
        "contrastive_logits_temperature": c.logit_temp,
        "diversity_loss_weight": c.diversity_weight,
        "feat_quantizer_dropout": c.encoder.dropout_features,
    }
    hf = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**fields))
    ours = wav2vec2_from_hf(hf)
    return hf, ours


def _median_step_seconds(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_mb(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from sslseq.bench.kernels import LiveTensorBytes

    with LiveTensorBytes() as mem:
        step()
    return mem.peak / 2**20


BENCH_CLASSES = 100  # HuBERT: K of the random labels that stand in for k-means targets


def _model_config(size: str, model: str = "wav2vec2") -> dict[str, Any]:
    from sslseq.config import load_yaml

    model_cfg = load_yaml(CONF / f"model_{model}_{size}.yaml")
    # LayerDrop skips random layers: off, so every run executes every layer every step.
    model_cfg.setdefault("encoder", {}).setdefault("encoder", {})["layerdrop"] = 0.0
    if model == "hubert":
        model_cfg["num_classes"] = BENCH_CLASSES  # set from the labels in training
    return model_cfg


def _warn_if_emulated() -> None:
    from sslseq import hw

    if not hw.cpu_bf16().native:
        log.warning("bf16 on this CPU is emulated (%s): expect it many times slower than fp32", hw.cpu_bf16().describe())


def _batch(batch: int, seconds: float, seed: int, dev: torch.device, label_rate: float | None = None) -> dict[str, torch.Tensor]:
    """Noise waveforms; with ``label_rate`` also random frame labels (HuBERT's targets)."""
    S = int(seconds * 16000)
    g = torch.Generator().manual_seed(seed)
    wav = (0.1 * torch.randn(batch, S, generator=g)).to(dev)
    b = {"wav": wav, "wav_lens": torch.full((batch,), S, dtype=torch.long, device=dev)}
    if label_rate:
        from sslseq.data.dataset import expected_frames

        L = expected_frames(S, label_rate)
        b["labels"] = torch.randint(0, BENCH_CLASSES, (batch, L), generator=g).to(dev)
        b["label_lens"] = torch.full((batch,), L, dtype=torch.long, device=dev)
    return b


def _sslseq_step(model, b: dict[str, torch.Tensor], dtype: str, dev: torch.device, lr: float) -> Callable[[], float]:
    """One AdamW step of ``model`` on ``b`` (bf16: under autocast); returns its loss per unit."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> float:
        with autocast:
            out = model(b)
        loss = out.loss / max(out.sample_size, 1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _same_init(size: str, seed: int, dev: torch.device, model: str = "wav2vec2"):
    """A function giving a fresh model with the same initial weights on every call."""
    from sslseq.models import build_model

    model_cfg = _model_config(size, model)
    torch.manual_seed(seed)
    init = build_model(model_cfg).state_dict()

    def make():
        model = build_model(model_cfg)
        model.load_state_dict(init)
        return model.to(dev).train()

    return make


def _label_rate(size: str, model: str) -> float | None:
    return float(_model_config(size, model).get("label_rate", 100.0)) if model == "hubert" else None


def run_dtypes(size: str, batch: int, seconds: float, device: str, steps: int, warmup: int, seed: int,
               model: str = "wav2vec2") -> list[dict]:
    """sslseq's pretraining step in fp32 and under bf16 autocast: same weights, same batch."""
    from sslseq import hw

    dev = torch.device(device)
    if dev.type == "cpu":
        _warn_if_emulated()
    make = _same_init(size, seed, dev, model)
    b = _batch(batch, seconds, seed, dev, _label_rate(size, model))
    native = hw.cpu_bf16().native if dev.type == "cpu" else bool(torch.cuda.is_bf16_supported())
    records = []
    for dtype in ("fp32", "bf16"):
        net = make()
        T = int(net.encoder.output_lengths(b["wav_lens"])[0])
        t = _median_step_seconds(_sslseq_step(net, b, dtype, dev, 1e-5), dev, warmup, steps)
        records.append({"model": model, "impl": "sslseq", "dtype": dtype, "device": str(dev),
                        "shape": f"{size}: {batch} x {seconds:g} s ({T} frames each)", "step_ms": 1e3 * t,
                        "frames_per_s": batch * T / t, "audio_s_per_s": batch * seconds / t, "native_bf16": native})
    for r in records:
        r["speedup_vs_fp32"] = records[0]["step_ms"] / r["step_ms"]
    return records


def loss_agreement(size: str, batch: int, seconds: float, device: str, n_steps: int, seed: int, lr: float = 5e-4,
                   model: str = "wav2vec2") -> dict:
    """Train ``n_steps`` from the same init on the same batch in fp32 and bf16; both loss curves."""
    dev = torch.device(device)
    make = _same_init(size, seed, dev, model)
    b = _batch(batch, seconds, seed, dev, _label_rate(size, model))
    curves = {}
    for dtype in ("fp32", "bf16"):
        step = _sslseq_step(make(), b, dtype, dev, lr)
        torch.manual_seed(seed + 1)  # the same masks, negatives, Gumbel noise and dropout in both runs
        curves[dtype] = [step() for _ in range(n_steps)]
    rel = [abs(h - f) / max(abs(f), 1e-12) for f, h in zip(curves["fp32"], curves["bf16"])]
    return {"steps": n_steps, "lr": lr, "fp32": curves["fp32"], "bf16": curves["bf16"],
            "rel_diff": rel, "max_rel_diff": max(rel) if rel else 0.0}


def run(size: str, batch: int, seconds: float, device: str, dtype: str, steps: int, warmup: int, seed: int) -> list[dict]:
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SslseqError("--device cuda: no CUDA GPU is visible; use --device cpu")
    if dtype == "bf16" and dev.type == "cpu":
        _warn_if_emulated()
    model_cfg = _model_config(size)
    torch.manual_seed(seed)
    hf, ours = _hf_pretraining_model(model_cfg)
    hf, ours = hf.to(dev).train(), ours.to(dev).train()
    b = _batch(batch, seconds, seed, dev)
    wav, wav_lens = b["wav"], b["wav_lens"]
    T = int(ours.encoder.output_lengths(wav_lens)[0])
    c = ours.cfg
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def optimizer(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    opt_ours, opt_hf = optimizer(ours), optimizer(hf)

    def step_ours():
        with autocast:
            out = ours({"wav": wav, "wav_lens": wav_lens})
        (out.loss / max(out.sample_size, 1)).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    hf_inputs: dict[str, torch.Tensor] = {}

    def draw_hf_inputs():  # the collator's work, outside the timed step
        mask = _compute_mask_indices((batch, T), c.encoder.mask_prob, c.encoder.mask_length, min_masks=c.encoder.mask_min_masks)
        neg = _sample_negative_indices((batch, T), c.num_negatives, mask_time_indices=mask)
        hf_inputs["mask"] = torch.from_numpy(mask).to(dev)
        hf_inputs["neg"] = torch.from_numpy(neg).to(dev)

    def step_hf():
        with autocast:
            out = hf(wav, mask_time_indices=hf_inputs["mask"], sampled_negative_indices=hf_inputs["neg"])
        out.loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    def timed_hf():
        draw_hf_inputs()
        t0 = time.perf_counter()
        step_hf()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    for _ in range(warmup):
        timed_hf()
    hf_time = statistics.median(timed_hf() for _ in range(steps))
    ours_time = _median_step_seconds(step_ours, dev, warmup, steps)
    draw_hf_inputs()
    hf_mem, ours_mem = _peak_mb(step_hf, dev), _peak_mb(step_ours, dev)

    shape = f"{size}: {batch} x {seconds:g} s ({T} frames each), {dtype}"
    frames = batch * T
    return [
        {"model": "wav2vec2", "impl": name, "shape": shape, "device": str(dev), "step_ms": 1e3 * t,
         "frames_per_s": frames / t, "peak_mb": mem, "speedup_vs_transformers": hf_time / t,
         "memory_vs_transformers": mem / hf_mem}
        for name, t, mem in (("transformers", hf_time, hf_mem), ("sslseq", ours_time, ours_mem))
    ]


def main(a) -> None:
    if a.model != "wav2vec2" and a.dtype != "both":
        raise SslseqError(f"--model {a.model}: only wav2vec2 has a transformers pretraining reference "
                          "(Wav2Vec2ForPreTraining); time the others with --dtype both (fp32 against bf16)")
    if a.size == "cpu" and a.dtype != "both":
        raise SslseqError("--size cpu (fbank frontend) has no transformers equivalent; use --dtype both")
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SslseqError("--device cuda: no CUDA GPU is visible; use --device cpu")
    if a.agree_steps < 0:
        raise SslseqError(f"--agree-steps {a.agree_steps}: must be >= 0")
    size = a.size or ("base" if device == "cuda" else "tiny")
    if a.threads:
        torch.set_num_threads(a.threads)
    how = f"median of {a.steps} steps after {a.warmup} warm-up; {torch.get_num_threads()} threads"
    if a.dtype == "both":
        records = _print_dtypes(run_dtypes(size, a.batch, a.seconds, device, a.steps, a.warmup, a.seed, a.model), device, how)
    else:
        records = _print_vs_transformers(run(size, a.batch, a.seconds, device, a.dtype, a.steps, a.warmup, a.seed), device, how)
    report: Any = records
    if a.agree_steps:
        report = {"records": records,
                  "agreement": _print_agreement(loss_agreement(size, a.batch, a.seconds, device, a.agree_steps, a.seed,
                                                               model=a.model))}
    if a.out:
        atomic_write_text(Path(a.out), json.dumps(report, indent=2) + "\n")


def _print_vs_transformers(records: list[dict], device: str, how: str) -> list[dict]:
    print(f"wav2vec 2.0 pretraining step, {records[0]['shape']}, on {device} ({how})")
    print(f"{'implementation':<14} {'step ms':>9} {'frames/s':>10} {'peak MB':>9} {'speed-up':>9} {'memory':>7}")
    for r in records:
        print(f"{r['impl']:<14} {r['step_ms']:9.1f} {r['frames_per_s']:10.0f} {r['peak_mb']:9.1f} "
              f"{r['speedup_vs_transformers']:8.2f}x {r['memory_vs_transformers']:6.2f}x")
    ours = records[1]
    met = ours["speedup_vs_transformers"] >= GOAL["speedup"] and ours["memory_vs_transformers"] <= GOAL["memory"]
    print(f"goal (>= {GOAL['speedup']}x faster, no more memory): {'met' if met else 'not met'}")
    return records


def _print_dtypes(records: list[dict], device: str, how: str) -> list[dict]:
    from sslseq import hw

    print(f"sslseq {records[0]['model']} pretraining step, {records[0]['shape']}, on {device} ({how})")
    if device == "cpu":
        print(hw.cpu_bf16().describe())
    else:
        print(f"GPU: bf16 {'supported' if records[0]['native_bf16'] else 'not supported'}")
    print(f"{'dtype':<6} {'step ms':>9} {'frames/s':>10} {'audio s/s':>10} {'vs fp32':>8}")
    for r in records:
        print(f"{r['dtype']:<6} {r['step_ms']:9.1f} {r['frames_per_s']:10.0f} {r['audio_s_per_s']:10.1f} "
              f"{r['speedup_vs_fp32']:7.2f}x")
    bf = records[1]
    ratio = bf["speedup_vs_fp32"]
    why = "" if bf["native_bf16"] else " (no native bf16: emulated)"
    print(f"bf16 autocast step: {ratio:.2f}x the speed of fp32 here{why}")
    return records


def _print_agreement(ag: dict) -> dict:
    print(f"loss agreement: {ag['steps']} steps (AdamW, lr {ag['lr']:g}) from the same init, batch and random draws")
    print(f"{'step':>4} {'fp32 loss':>10} {'bf16 loss':>10} {'rel diff':>9}")
    for i, (f, h, r) in enumerate(zip(ag["fp32"], ag["bf16"], ag["rel_diff"]), 1):
        print(f"{i:>4} {f:10.4f} {h:10.4f} {r:9.2e}")
    print(f"max relative difference: {ag['max_rel_diff']:.2e}")
    return ag
