"""Compile every Triton kernel of ``sslseq.kernels`` ahead of time for a GPU that is not here
(default: H100, sm_90), with the launch options the real launches use, and report shared
memory, registers and spills from the cubin. It needs no GPU (triton ships ptxas and
cuobjdump); the Triton interpreter, which the CPU tests use, accepts code that the GPU compiler
would reject or that would not fit a block, and this catches that.

    python -m sslseq.kernels.compile_check [--arch 90]   # exit 1 when a kernel does not fit

Run it in a process without ``TRITON_INTERPRET=1`` (kernels defined under the interpreter are
interpreter objects): it refuses otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

# Shared memory one block may use: 227 KB on sm_90 (H100) and sm_80 (A100: 163 KB).
MAX_SHARED = {90: 232448, 80: 166912, 89: 101376, 86: 101376}
MAX_REGS = 255


def _variants(V: int = 320, K: int = 100, G: int = 2):
    """(name, kernel, signature, constexprs, options) at wav2vec 2.0's shapes, fp32 and bf16."""
    from sslseq.kernels import contrastive_triton as ct
    from sslseq.kernels import gumbel_triton as gt
    from sslseq.kernels import segment_triton as st

    gopts, gopts_bwd = gt.launch_options(V), gt.launch_options(V, backward=True)
    gblocks = {k: gopts[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_D")}
    gwarps = {k: gopts[k] for k in ("num_warps", "num_stages")}
    gwarps_bwd = {k: gopts_bwd[k] for k in ("num_warps", "num_stages")}
    for dt in ("fp32", "bf16"):
        p = f"*{dt}"
        for hard in (True, False):
            yield (f"gumbel_fwd {dt} hard={hard}", gt._gumbel_fwd_kernel,
                   dict(logits=p, book=p, q=p, idx="*i64", psum="*fp32", N="i32", V="i32", GV="i32", D="i32", tau="fp32",
                        k1="i32", k2="i32"), dict(HARD=hard, **gblocks), gwarps)
            yield (f"gumbel_bwd {dt} hard={hard}", gt._gumbel_bwd_kernel,
                   dict(logits=p, book=p, gq=p, gmean="*fp32", glogits=p, ysoft="*fp32", N="i32", V="i32", GV="i32", D="i32",
                        tau="fp32", inv_n="fp32", k1="i32", k2="i32"),
                   dict(HAS_GQ=True, HAS_GMEAN=True, STORE_Y=not hard, **gblocks), gwarps_bwd)
    copts = ct.launch_options(K)
    cblocks = {k: copts[k] for k in ("BLOCK_K", "BLOCK_D")}
    cwarps = dict(num_warps=copts["num_warps"])
    for codes in (True, False):
        yield (f"infonce_fwd codes={codes}", ct._infonce_fwd_kernel,
               dict(c="*fp32", t="*fp32", t_raw="*fp32", neg="*i64", codes="*i64", loss="*fp32", correct="*i32",
                    pos_out="*fp32", neg_out="*fp32", lse_out="*fp32", K="i32", D="i32", inv_temp="fp32"),
               dict(USE_CODES=codes, G=G, **cblocks), cwarps)
    for atomic in (True, False):
        yield (f"infonce_bwd atomic={atomic}", ct._infonce_bwd_kernel,
               dict(c="*fp32", t="*fp32", neg="*i64", pos_in="*fp32", neg_in="*fp32", lse_in="*fp32", gloss="*fp32",
                    gc="*fp32", gt="*fp32", wneg="*fp32", K="i32", D="i32", inv_temp="fp32"),
               dict(ATOMIC=atomic, **cblocks), cwarps)
    sblocks = dict(BLOCK_R=st.BLOCK_R, BLOCK_D=st.BLOCK_D)
    for dt in ("fp32", "bf16"):
        yield (f"segment_sum {dt}", st._segment_sum_kernel,
               dict(src=f"*{dt}", rows="*i64", scale="*fp32", offsets="*i64", out="*fp32", D="i32"),
               dict(HAS_SCALE=dt == "fp32", ACCUMULATE=True, **sblocks), dict(num_warps=st.NUM_WARPS))
        yield (f"scatter_atomic {dt}", st._scatter_atomic_kernel,
               dict(src=f"*{dt}", rows="*i64", dst="*i64", scale="*fp32", out="*fp32", n_items="i32", D="i32"),
               dict(HAS_SCALE=dt == "fp32", **sblocks), dict(num_warps=st.NUM_WARPS))


def _resource_usage(cubin: bytes) -> dict[str, int]:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}


def compile_all(arch: int = 90) -> list[dict]:
    """One record per kernel variant: name, shared bytes, registers, local (spill) bytes, fits."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_check needs a process without TRITON_INTERPRET=1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    records = []
    for name, kernel, sig, consts, opts in _variants():
        signature = {**sig, **dict.fromkeys(consts, "constexpr")}
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts), target=target, options=opts)
        use = _resource_usage(compiled.asm["cubin"])
        shared = int(compiled.metadata.shared)
        fits = shared <= MAX_SHARED.get(arch, MAX_SHARED[80]) and use["REG"] <= MAX_REGS
        records.append(dict(name=name, shared=shared, regs=use["REG"], spill=use.get("LOCAL", 0) + use.get("STACK", 0), fits=fits))
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100)")
    a = ap.parse_args(argv)
    records = compile_all(a.arch)
    print(f"{'kernel':<28} {'shared B':>9} {'regs':>5} {'spill B':>8}  fits sm_{a.arch}")
    for r in records:
        print(f"{r['name']:<28} {r['shared']:>9} {r['regs']:>5} {r['spill']:>8}  {'yes' if r['fits'] else 'NO'}")
    return 0 if all(r["fits"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
