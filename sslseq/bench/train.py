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
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sslseq.utils import SslseqError, atomic_write_text

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


def run(size: str, batch: int, seconds: float, device: str, dtype: str, steps: int, warmup: int, seed: int) -> list[dict]:
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    from sslseq.config import load_yaml

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SslseqError("--device cuda: no CUDA GPU is visible; use --device cpu")
    if dtype == "bf16" and dev.type != "cuda":
        raise SslseqError("--dtype bf16 is measured on CUDA only; use --dtype fp32 on the CPU")
    cfg_path = CONF / f"model_wav2vec2_{size}.yaml"
    model_cfg = load_yaml(cfg_path)
    # LayerDrop skips random layers: off, so both models run every layer every step.
    model_cfg.setdefault("encoder", {}).setdefault("encoder", {})["layerdrop"] = 0.0
    torch.manual_seed(seed)
    hf, ours = _hf_pretraining_model(model_cfg)
    hf, ours = hf.to(dev).train(), ours.to(dev).train()
    S = int(seconds * 16000)
    g = torch.Generator().manual_seed(seed)
    wav = (0.1 * torch.randn(batch, S, generator=g)).to(dev)
    wav_lens = torch.full((batch,), S, dtype=torch.long, device=dev)
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
    if a.model != "wav2vec2":
        raise SslseqError(f"--model {a.model}: only wav2vec2 has a transformers pretraining reference (Wav2Vec2ForPreTraining)")
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    size = a.size or ("base" if device == "cuda" else "tiny")
    if a.threads:
        torch.set_num_threads(a.threads)
    records = run(size, a.batch, a.seconds, device, a.dtype, a.steps, a.warmup, a.seed)
    print(f"wav2vec 2.0 pretraining step, {records[0]['shape']}, on {device}"
          f" (median of {a.steps} steps after {a.warmup} warm-up; {torch.get_num_threads()} threads)")
    print(f"{'implementation':<14} {'step ms':>9} {'frames/s':>10} {'peak MB':>9} {'speed-up':>9} {'memory':>7}")
    for r in records:
        print(f"{r['impl']:<14} {r['step_ms']:9.1f} {r['frames_per_s']:10.0f} {r['peak_mb']:9.1f} "
              f"{r['speedup_vs_transformers']:8.2f}x {r['memory_vs_transformers']:6.2f}x")
    ours = records[1]
    met = ours["speedup_vs_transformers"] >= GOAL["speedup"] and ours["memory_vs_transformers"] <= GOAL["memory"]
    print(f"goal (>= {GOAL['speedup']}x faster, no more memory): {'met' if met else 'not met'}")
    if a.out:
        atomic_write_text(Path(a.out), json.dumps(records, indent=2) + "\n")
