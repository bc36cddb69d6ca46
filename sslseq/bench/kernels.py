"""``sslseq bench kernels``: forward+backward time and peak memory of the Gumbel quantizer and
contrastive-loss ops (``sslseq.kernels``) per implementation, with ratios against the ``reference`` one
measured in the same run on the same inputs.

Shapes: wav2vec 2.0 Base (quantizer N=2150 frames, G=2 x V=320 codes, d=128 per group;
contrastive N=2150, K=100, D=256) and Large (codevectors and final_dim 768: d=384, D=768).
Time: best of ``--repeats`` runs after a warm-up. Peak memory: bytes of torch tensors alive at
once beyond the inputs; on CUDA ``torch.cuda.max_memory_allocated``, on CPU a dispatch-mode
tracker that records every storage an op creates (forward and backward) and notices its release
(it sees tensors, not scratch buffers private to a single kernel). On CPU the triton implementation runs
only under the interpreter, which says nothing about speed: it is left out (tests cover it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sslseq import kernels

SHAPES = {
    "gumbel_quantize": {
        "base": dict(N=2150, G=2, V=320, d=128),
        "large": dict(N=2150, G=2, V=320, d=384),
        "tiny": dict(N=20, G=2, V=8, d=4),  # a smoke test of the benchmark itself (`sslseq bench gpu --dry-run`)
    },
    "contrastive_loss": {
        "base": dict(N=2150, K=100, D=256),
        "large": dict(N=2150, K=100, D=768),
        "tiny": dict(N=20, K=3, D=8),
    },
}
# Targets of the issue: CPU is measured here, GPU figures need a CUDA run of this command.
CPU_GOAL = dict(memory=0.25, time=1.2)
GPU_GOALS = {"gumbel_quantize": dict(speedup=3.0, memory=0.2), "contrastive_loss": dict(speedup=2.0, memory=0.25)}


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live torch storages created while active (views counted once)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()  # storages freed since the last op (refcounts drop between ops)
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key = st._cdata
                if key not in self.live and st.nbytes() > 0:
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
                    self.current += st.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def _quantizer_case(device, N, G, V, d):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, G * V, generator=g).to(device)
    book = torch.rand(G * V, d, generator=g).to(device)
    wq = torch.randn(N, G * d, generator=g).to(device)
    wm = torch.randn(G, V, generator=g).to(device)

    def run(impl: str):
        lg, bk = logits.detach().requires_grad_(True), book.detach().requires_grad_(True)
        q, _, mean = kernels.gumbel_quantize(lg, bk, 2.0, True, 1, impl, groups=G)
        loss = (q * wq).sum() + (mean * wm).sum()
        loss.backward()
        return loss.detach()

    return run


def _contrastive_case(device, N, K, D):
    from sslseq.objectives.contrastive import sample_negatives

    g = torch.Generator().manual_seed(0)
    B = 5  # utterances of 430 masked frames each (of 662): negatives from the same utterance
    mask = torch.zeros(B, 662, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(662, generator=g)[: N // B]] = True
    neg = sample_negatives(K, mask, generator=g).to(device)
    n = neg.size(0)
    context = torch.randn(n, D, generator=g).to(device)
    targets = torch.randn(n, D, generator=g).to(device)
    codes = torch.randint(0, 320, (n, 2), generator=g).to(device)

    def run(impl: str):
        c, t = context.detach().requires_grad_(True), targets.detach().requires_grad_(True)
        loss, _ = kernels.contrastive_loss(c, t, neg, codes, 0.1, impl)
        loss.backward()
        return loss.detach()

    return run


CASES = {"gumbel_quantize": _quantizer_case, "contrastive_loss": _contrastive_case}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[str], torch.Tensor], impls: list[str], device: torch.device, repeats: int):
    """{impl: (best time in ms, peak MB beyond the inputs, loss value)} of forward+backward.
    The timed repeats go round the implementations in turn, so a busy machine slows them alike."""
    values = {p: float(run(p)) for p in impls}  # warm-up: compilation, allocator, caches
    best = dict.fromkeys(impls, float("inf"))
    for _ in range(repeats):
        for p in impls:
            _sync(device)
            t0 = time.perf_counter()
            run(p)
            _sync(device)
            best[p] = min(best[p], time.perf_counter() - t0)
    out = {}
    for p in impls:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            run(p)
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            with LiveTensorBytes() as tracker:
                run(p)
            peak = tracker.peak
        out[p] = (best[p] * 1e3, peak / 2**20, values[p])
    return out


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(args) -> None:
    device = torch.device(getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    repeats = int(getattr(args, "repeats", 3))
    which = list(getattr(args, "shapes", None) or ["base", "large"])
    ops = list(getattr(args, "ops", None) or list(SHAPES))
    impls = ["reference", "chunked", "triton"]
    if device.type != "cuda" and kernels.triton_available() and kernels._interpreting():
        print("triton implementation in the Triton interpreter (TRITON_INTERPRET=1): its times mean nothing")
    elif device.type != "cuda":
        print("triton implementation left out: on CPU it runs only in the Triton interpreter (TRITON_INTERPRET=1), whose speed "
              "means nothing; tests/test_kernels.py checks its results")
        impls.remove("triton")
    elif not kernels.triton_available():
        print(f"triton implementation left out: triton is not importable ({kernels._triton_import_error()})")
        impls.remove("triton")
    print(f"device {device}; torch {torch.__version__}; threads {torch.get_num_threads()}; time = forward+backward, "
          f"best of {repeats}; peak = tensor memory beyond the inputs\n")
    header = f"{'op':<17} {'shape':<26} {'impl':<10} {'time ms':>9} {'speedup':>8} {'peak MB':>9} {'memory':>7} {'|Δloss|':>9}"
    print(header)
    print("-" * len(header))
    records, verdicts = [], []
    for op in ops:
        for name in which:
            dims = SHAPES[op][name]
            shape = " ".join(f"{k}={v}" for k, v in dims.items())
            run = CASES[op](device, **dims)
            results = measure(run, impls, device, repeats)
            ref_time, ref_peak, ref_value = results["reference"]
            for impl in impls:
                t, peak, value = results[impl]
                rec = dict(op=op, impl=impl, size=name, shape=shape, device=device.type, time_ms=round(t, 3),
                           peak_mb=round(peak, 2), speedup_vs_reference=round(ref_time / t, 3),
                           memory_vs_reference=round(peak / ref_peak, 4) if ref_peak else None)
                records.append(rec)
                print(f"{op:<17} {name + ': ' + shape:<26} {impl:<10} {t:>9.1f} {ref_time / t:>7.2f}x {peak:>9.1f} "
                      f"{_ratio(rec['memory_vs_reference']):>7} {abs(value - ref_value):>9.2e}")
                if device.type == "cpu" and impl == "chunked" and name != "tiny":
                    ok = peak <= CPU_GOAL["memory"] * ref_peak and t <= CPU_GOAL["time"] * ref_time
                    verdicts.append(f"{op} {name}: chunked memory {peak / ref_peak:.3f}x, time {t / ref_time:.2f}x of "
                                    f"reference -> CPU goal {'met' if ok else 'NOT met'}")
                if device.type == "cuda" and impl == "triton" and name != "tiny":
                    goal = GPU_GOALS[op]
                    ok = ref_time / t >= goal["speedup"] and peak <= goal["memory"] * ref_peak
                    verdicts.append(f"{op} {name}: triton {ref_time / t:.2f}x faster, memory {peak / ref_peak:.3f}x -> "
                                    f"GPU goal (>= {goal['speedup']}x faster, <= {goal['memory']}x memory) "
                                    f"{'met' if ok else 'NOT met'}")
            del run
        print()
    if device.type == "cpu":
        print(f"CPU goal: chunked at most {CPU_GOAL['memory']}x the reference's peak memory at no more than "
              f"{CPU_GOAL['time']}x its time")
    for v in verdicts:
        print("  " + v)
    out = getattr(args, "out", None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(records, indent=1) + "\n")
        print(f"\nwrote {out}")
