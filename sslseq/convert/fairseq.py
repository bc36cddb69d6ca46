"""fairseq and fairseq2 wav2vec 2.0 / HuBERT checkpoints → sslseq models.

Layouts (a leading ``module.`` is ignored):

* fairseq pretrained (``Wav2Vec2Model`` / ``HubertModel``): ``feature_extractor.conv_layers.N.0``
  (conv), ``.N.2`` (GroupNorm, layer 0) or ``.N.2.1`` (LayerNorm), ``layer_norm``,
  ``post_extract_proj``, ``mask_emb``, ``encoder.pos_conv.0`` (weight norm as ``weight_g``/
  ``weight_v`` or ``parametrizations.weight.original0/1``), ``encoder.layer_norm``,
  ``encoder.layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm}``;
  HuBERT adds ``label_embs_concat`` + ``final_proj`` (→ our ``hubert`` model), wav2vec 2.0 adds
  ``quantizer.{vars,weight_proj}`` / ``project_q`` / ``final_proj`` (→ our ``wav2vec2`` model;
  other head variants, e.g. ``target_glu``, are dropped → ``encoder`` model).
* fairseq fine-tuned (``Wav2VecCtc`` / ``HubertCtc``): the above under ``w2v_encoder.w2v_model.``
  and the CTC head ``w2v_encoder.proj`` (→ our ``ctc`` model; blank is id 0, fairseq's ``<s>``).
* fairseq2 wav2vec2: ``encoder_frontend.{feature_extractor.layers.N.{conv,layer_norm,group_norm},
  post_extract_layer_norm, model_dim_proj, pos_encoder.conv, layer_norm}``, ``masker.temporal_mask_embed``,
  ``encoder.layers.N.{self_attn.{q,k,v,output}_proj, self_attn_layer_norm, ffn.inner_proj,
  ffn.output_proj, ffn_layer_norm}``, ``encoder.layer_norm`` (pre-LN); pretraining heads
  ``quantizer.{entries,entry_proj}``, ``final_target_proj``, ``final_proj`` → ``wav2vec2`` model.

The architecture comes from the checkpoint's ``cfg`` (plain dicts) or ``args`` (argparse
Namespace) when present. Otherwise it is inferred from the tensors: layer count, model/FFN
dims, conv channels and kernels, positional conv width and groups, conv bias, extractor mode
(GroupNorm vs LayerNorm keys) are exact; conv strides follow the kernel (10→5, 3→2, 2→2, as in
every released model); attention heads default to 16 for dims ≥ 1024 else 12; fairseq pre-LN
vs post-LN is taken to follow the extractor mode (LayerNorm frontend ⇒ pre-LN, as in the Large
models; fairseq2 stores it in the key names); HuBERT's label rate defaults to 50 Hz. The
guessed fields are listed in ``converted_from.inferred`` and can be overridden.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
from pathlib import Path
from typing import Any

import torch

from sslseq.convert import POS_G, POS_V, assemble_model, load_torch_file, units_from_tokens, wav2vec2_head
from sslseq.nn.encoder import SpeechEncoderConfig
from sslseq.nn.transformer import TransformerEncoderConfig
from sslseq.utils import SslseqError, get_logger

__all__ = ["convert_fairseq_checkpoint", "detect_layout", "fairseq_to_encoder_keys", "fairseq2_to_encoder_keys",
           "LAYOUT_PREFIXES"]

log = get_logger(__name__)

FT_PREFIX = "w2v_encoder.w2v_model."
CTC_HEAD_PREFIX = "w2v_encoder.proj."

# What each supported layout's keys look like (for the unknown-layout error).
LAYOUT_PREFIXES: dict[str, str] = {
    "fairseq pretrained (--from fairseq)": "feature_extractor.conv_layers.N.0.*, layer_norm.*, "
    "encoder.pos_conv.0.*, encoder.layers.N.self_attn.q_proj.*, [label_embs_concat, final_proj.*, quantizer.*]",
    "fairseq fine-tuned (--from fairseq)": f"{FT_PREFIX}<pretrained keys>, {CTC_HEAD_PREFIX}*",
    "fairseq2 wav2vec2 (--from fairseq2)": "encoder_frontend.feature_extractor.layers.N.conv.*, "
    "encoder_frontend.pos_encoder.conv.*, encoder.layers.N.self_attn.q_proj.*, encoder.layers.N.ffn.inner_proj.*",
    "transformers (--from hf, a save_pretrained dir)": "[hubert.|wav2vec2.]feature_extractor.conv_layers.N.conv.*, "
    "encoder.pos_conv_embed.conv.*, encoder.layers.N.attention.q_proj.*",
}

# fairseq name → ours (first match wins).
_FAIRSEQ_MAP: list[tuple[str, str]] = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.conv_layers.\1.norm.\2"),
    (r"^feature_extractor\.conv_layers\.0\.2\.(weight|bias)$", r"feature_extractor.conv_layers.0.norm.\1"),
    (r"^layer_norm\.(weight|bias)$", r"layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"post_extract_proj.\1"),
    (r"^mask_emb$", "mask_emb"),
    (r"^encoder\.pos_conv\.0\.(?:weight_g|parametrizations\.weight\.original0)$", POS_G),
    (r"^encoder\.pos_conv\.0\.(?:weight_v|parametrizations\.weight\.original1)$", POS_V),
    (r"^encoder\.pos_conv\.0\.(weight|bias)$", r"encoder.pos_conv.conv.\1"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (
        r"^encoder\.layers\.(\d+)\.(self_attn\.[qkv]_proj|self_attn\.out_proj|self_attn_layer_norm|fc1|fc2|final_layer_norm)\.(weight|bias)$",
        r"encoder.layers.\1.\2.\3",
    ),
]
_FAIRSEQ_HEADS = ("label_embs_concat", "final_proj.", "quantizer.", "project_q.", "target_glu.", "project_inp.")

# fairseq2 name → ours.
_FAIRSEQ2_MAP: list[tuple[str, str]] = [
    (r"^encoder_frontend\.feature_extractor\.layers\.(\d+)\.conv\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^encoder_frontend\.feature_extractor\.layers\.(\d+)\.(?:layer_norm|group_norm)\.(weight|bias)$", r"feature_extractor.conv_layers.\1.norm.\2"),
    (r"^encoder_frontend\.post_extract_layer_norm\.(weight|bias)$", r"layer_norm.\1"),
    (r"^encoder_frontend\.model_dim_proj\.(weight|bias)$", r"post_extract_proj.\1"),
    (r"^masker\.temporal_mask_embed$", "mask_emb"),
    (r"^encoder_frontend\.pos_encoder\.conv\.(?:weight_g|parametrizations\.weight\.original0)$", POS_G),
    (r"^encoder_frontend\.pos_encoder\.conv\.(?:weight_v|parametrizations\.weight\.original1)$", POS_V),
    (r"^encoder_frontend\.pos_encoder\.conv\.(weight|bias)$", r"encoder.pos_conv.conv.\1"),
    (r"^encoder_frontend\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),  # post-LN: after the pos conv
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),  # pre-LN: after the last layer
    (r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", r"encoder.layers.\1.self_attn.\2_proj.\3"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.output_proj\.(weight|bias)$", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.ffn\.inner_proj\.(weight|bias)$", r"encoder.layers.\1.fc1.\2"),
    (r"^encoder\.layers\.(\d+)\.ffn\.output_proj\.(weight|bias)$", r"encoder.layers.\1.fc2.\2"),
    (r"^encoder\.layers\.(\d+)\.ffn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
]
_FAIRSEQ2_HEADS = ("quantizer.", "final_proj.", "final_target_proj.")

_STRIDE_OF_KERNEL = {10: 5, 3: 2, 2: 2}  # every released wav2vec 2.0 / HuBERT frontend
_INT_FIELDS = {"freeze_encoder_steps", "mask_length", "mask_channel_length"}


# ------------------------------------------------------------------ reading


def split_checkpoint(obj: Any, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, the rest) of a checkpoint: ``{'model': sd, 'cfg'|'args': ...}`` or a bare state dict."""
    def is_state(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if is_state(obj):
        return dict(obj), {}
    if isinstance(obj, dict) and is_state(obj.get("model")):
        return dict(obj["model"]), {k: v for k, v in obj.items() if k != "model"}
    what = f"a dict with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise SslseqError(f"{where}: expected a state dict or a checkpoint {{'model': state dict, ...}}, found {what}")


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """'fairseq', 'fairseq2' or 'hf' (after stripping ``module.`` / the fine-tuning prefix)."""
    keys = set(state)
    if any(re.match(r"^feature_extractor\.conv_layers\.\d+\.0\.weight$", k) for k in keys):
        return "fairseq"
    if any(re.match(r"^encoder_frontend\.feature_extractor\.layers\.\d+\.conv\.weight$", k) for k in keys):
        return "fairseq2"
    if any(re.match(r"^((hubert|wav2vec2)\.)?feature_extractor\.conv_layers\.\d+\.conv\.weight$", k) for k in keys):
        return "hf"
    expected = "\n".join(f"  {name}: {keys_}" for name, keys_ in LAYOUT_PREFIXES.items())
    sample = ", ".join(sorted(keys)[:6])
    raise SslseqError(f"unknown checkpoint layout (first keys: {sample}); supported layouts and their keys:\n{expected}")


def _rename(state: dict[str, torch.Tensor], table: list[tuple[str, str]], heads: tuple[str, ...], where: str):
    """(our-key encoder state, head tensors by source key, names of raw keys that matched)."""
    enc, head, unknown = {}, {}, []
    for key, value in state.items():
        for pattern, repl in table:
            new, n = re.subn(pattern, repl, key)
            if n:
                if new in enc:
                    raise SslseqError(f"{where}: two parameters map to '{new}' (one is '{key}')")
                enc[new] = value
                break
        else:
            if key.startswith(heads):
                head[key] = value
            else:
                unknown.append(key)
    if unknown:
        more = f" ... ({len(unknown)} in all)" if len(unknown) > 8 else ""
        raise SslseqError(
            f"{where}: parameters with no sslseq counterpart: {', '.join(unknown[:8])}{more} "
            f"(unsupported variants: conformer layers, stacked positional convs, adapters)"
        )
    return enc, head


def fairseq_to_encoder_keys(state: dict[str, torch.Tensor], where: str = "checkpoint"):
    """fairseq ``Wav2Vec2Model``/``HubertModel`` state → (SpeechEncoder state, head tensors)."""
    return _rename(state, _FAIRSEQ_MAP, _FAIRSEQ_HEADS, where)


def fairseq2_to_encoder_keys(state: dict[str, torch.Tensor], where: str = "checkpoint"):
    """fairseq2 wav2vec2 state → (SpeechEncoder state, head tensors)."""
    return _rename(state, _FAIRSEQ2_MAP, _FAIRSEQ2_HEADS, where)


# ------------------------------------------------------------------ configs


def _plain(x: Any) -> Any:
    """argparse Namespaces → dicts, recursively."""
    if isinstance(x, argparse.Namespace):
        x = vars(x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def read_fairseq_cfg(meta: dict[str, Any]) -> tuple[dict | None, dict | None, dict | None]:
    """(architecture config, its root for ``${...}`` interpolations, fine-tuning config or None)."""
    cfg, args = _plain(meta.get("cfg")), _plain(meta.get("args"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model, root = cfg["model"], cfg
    elif isinstance(args, dict):
        model, root = args, {"model": args, "task": args}  # old flat args
    else:
        return None, None, None
    if "w2v_path" in model or "w2v_args" in model:  # a fine-tuning config
        w2v = model.get("w2v_args")
        if isinstance(w2v, dict):
            if isinstance(w2v.get("model"), dict):
                return w2v["model"], w2v, model
            return w2v, {"model": w2v, "task": w2v}, model
        return None, None, model
    return model, root, None


def _get(cfg: dict | None, key: str, root: dict | None = None) -> Any:
    """``cfg[key]`` with ``${a.b}`` interpolations resolved against ``root`` (None if absent)."""
    if not cfg or key not in cfg:
        return None
    value = cfg[key]
    m = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    if m:
        node: Any = root or {}
        for part in m.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node
    return value


def parse_conv_layers(spec: Any) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string ("[(512, 10, 5)] + [(512, 3, 2)] * 4 ...") without ``eval``."""
    if isinstance(spec, (list, tuple)):
        return [tuple(int(v) for v in layer) for layer in spec]

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(ast.dump(node))

    try:
        layers = ev(ast.parse(str(spec), mode="eval"))
        return [tuple(int(v) for v in layer) for layer in layers]
    except (SyntaxError, ValueError, TypeError) as e:
        raise SslseqError(f"cannot parse conv_feature_layers {spec!r}: {e}") from None


def _check_supported(arch: dict, root: dict | None, where: str) -> None:
    bad = []
    if (_get(arch, "activation_fn", root) or "gelu") != "gelu":
        bad.append(f"activation_fn={arch['activation_fn']!r}")
    if (_get(arch, "layer_type", root) or "transformer") != "transformer":
        bad.append(f"layer_type={arch['layer_type']!r}")
    if int(_get(arch, "pos_conv_depth", root) or 1) != 1:
        bad.append(f"pos_conv_depth={arch['pos_conv_depth']}")
    if _get(arch, "quantize_input", root):
        bad.append("quantize_input=True")
    if bad:
        raise SslseqError(f"{where}: unsupported model settings {', '.join(bad)}")


def encoder_config(
    enc: dict[str, torch.Tensor],
    arch: dict | None,
    root: dict | None,
    *,
    extractor_mode: str,
    layer_norm_first: bool | None,
    num_heads: int | None,
    where: str,
) -> tuple[SpeechEncoderConfig, list[str]]:
    """SpeechEncoderConfig from the cfg where given, else from tensor shapes; and the guessed fields."""
    inferred: list[str] = []

    def pick(key: str, from_shapes: Any, guess: bool = False) -> Any:
        v = _get(arch, key, root)
        if v is not None:
            return v
        if guess:
            inferred.append(key)
        return from_shapes

    conv_idx = sorted(int(m.group(1)) for k in enc if (m := re.match(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k)))
    layer_idx = {int(m.group(1)) for k in enc if (m := re.match(r"^encoder\.layers\.(\d+)\.", k))}
    need = ["encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.fc1.weight", POS_V]
    missing = [k for k in need if k not in enc] + ([] if conv_idx else ["feature_extractor.conv_layers.0.conv.weight"])
    if missing:
        raise SslseqError(f"{where}: cannot read the architecture: no {', '.join(missing)} (in sslseq names)")

    spec = _get(arch, "conv_feature_layers", root)
    if spec is not None:
        conv_layers = parse_conv_layers(spec)
    else:
        conv_layers = []
        for i in conv_idx:
            out_dim, _, kernel = enc[f"feature_extractor.conv_layers.{i}.conv.weight"].shape
            if kernel not in _STRIDE_OF_KERNEL:
                raise SslseqError(
                    f"{where}: conv layer {i} has kernel {kernel}, whose stride cannot be inferred; "
                    "convert a checkpoint that carries its cfg (conv_feature_layers)"
                )
            conv_layers.append((int(out_dim), int(kernel), _STRIDE_OF_KERNEL[kernel]))
        inferred.append("conv strides")

    D = int(enc["encoder.layers.0.self_attn.q_proj.weight"].shape[0])
    pos_v = enc[POS_V]
    mode_cfg = _get(arch, "extractor_mode", root)
    mode = {"default": "group_norm", "layer_norm": "layer_norm"}.get(mode_cfg, extractor_mode) if mode_cfg else extractor_mode

    if layer_norm_first is None:
        layer_norm_first = _get(arch, "layer_norm_first", root)
        if layer_norm_first is None:
            layer_norm_first = mode == "layer_norm"
            inferred.append("layer_norm_first")
    heads = num_heads or _get(arch, "encoder_attention_heads", root)
    if heads is None:
        heads = 16 if D >= 1024 else 12
        inferred.append("encoder_attention_heads")
        if D % heads:
            raise SslseqError(f"{where}: model dim {D} is not divisible by the default {heads} heads; pass --num-heads")

    def f(key: str, default: float) -> float:
        v = _get(arch, key, root)
        return float(default if v is None else v)

    tr = TransformerEncoderConfig(
        embed_dim=int(pick("encoder_embed_dim", D)),
        ffn_dim=int(pick("encoder_ffn_embed_dim", int(enc["encoder.layers.0.fc1.weight"].shape[0]))),
        num_layers=int(pick("encoder_layers", len(layer_idx))),
        num_heads=int(heads),
        dropout=f("dropout", 0.1),
        attention_dropout=f("attention_dropout", 0.1),
        activation_dropout=f("activation_dropout", 0.0),
        layerdrop=f("encoder_layerdrop", 0.05),
        layer_norm_first=bool(layer_norm_first),
        conv_pos=int(pick("conv_pos", int(pos_v.shape[2]))),
        conv_pos_groups=int(pick("conv_pos_groups", D // int(pos_v.shape[1]))),
    )
    conv_bias = _get(arch, "conv_bias", root)
    cfg = SpeechEncoderConfig(
        conv_layers=conv_layers,
        extractor_mode=mode,
        conv_bias=bool("feature_extractor.conv_layers.0.conv.bias" in enc if conv_bias is None else conv_bias),
        feature_grad_mult=f("feature_grad_mult", 0.1),
        encoder=tr,
        dropout_input=f("dropout_input", 0.1),
        dropout_features=f("dropout_features", 0.1),
        mask_prob=f("mask_prob", 0.65),
        mask_length=int(f("mask_length", 10)),
        mask_channel_prob=f("mask_channel_prob", 0.0),
        mask_channel_length=int(f("mask_channel_length", 10)),
    )
    return cfg, inferred


def read_fairseq_dict(path: str | os.PathLike) -> list[str]:
    """Symbols of a fairseq dictionary file (``SYMBOL COUNT`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: dictionary file not found")
    symbols = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip().rsplit(" ", 1)
        if len(parts) != 2:
            raise SslseqError(f"{path}:{no}: expected 'SYMBOL COUNT', got {line!r}")
        symbols.append(parts[0])
    return symbols


# ------------------------------------------------------------------ entry point


def convert_fairseq_checkpoint(
    src: str | os.PathLike,
    flavor: str = "fairseq",
    fairseq_dict: str | os.PathLike | None = None,
    num_heads: int | None = None,
    layer_norm_first: bool | None = None,
) -> tuple[torch.nn.Module, list[str] | None, dict[str, Any]]:
    """A fairseq / fairseq2 checkpoint file → (sslseq model, units or None, provenance)."""
    where = str(src)
    state, meta = split_checkpoint(load_torch_file(src), where)
    if all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}

    ctc_head = {k[len(CTC_HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(CTC_HEAD_PREFIX)}
    fine_tuned = any(k.startswith(FT_PREFIX) for k in state)
    if fine_tuned:
        rest = [k for k in state if not k.startswith((FT_PREFIX, CTC_HEAD_PREFIX))]
        if rest:
            raise SslseqError(f"{where}: unexpected parameters beside {FT_PREFIX}*: {', '.join(rest[:8])}")
        state = {k[len(FT_PREFIX):]: v for k, v in state.items() if k.startswith(FT_PREFIX)}

    layout = detect_layout(state)
    if layout != flavor:
        hint = "--from hf expects a save_pretrained directory" if layout == "hf" else f"use --from {layout}"
        raise SslseqError(f"{where}: this is a {layout} checkpoint, not {flavor}; {hint}")

    if flavor == "fairseq":
        enc, heads = fairseq_to_encoder_keys(state, where)
        mode = "layer_norm" if any(re.match(r"^feature_extractor\.conv_layers\.\d+\.2\.1\.", k) for k in state) else "group_norm"
        arch, root, ft = read_fairseq_cfg(meta)
        if arch is not None:
            _check_supported(arch, root, where)
    else:
        enc, heads = fairseq2_to_encoder_keys(state, where)
        mode = "layer_norm" if any(".feature_extractor.layers." in k and ".layer_norm." in k for k in state) else "group_norm"
        arch = root = ft = None
        if layer_norm_first is None:  # fairseq2 names the final LayerNorm by where it sits
            layer_norm_first = "encoder.layer_norm.weight" in state

    enc_cfg, inferred = encoder_config(
        enc, arch, root, extractor_mode=mode, layer_norm_first=layer_norm_first, num_heads=num_heads, where=where
    )
    if num_heads is not None and "encoder_attention_heads" in inferred:
        inferred.remove("encoder_attention_heads")

    head, units, model_name, dropped = None, None, "encoder", []
    if ctc_head:
        if set(ctc_head) != {"weight", "bias"}:
            raise SslseqError(f"{where}: the CTC head needs {CTC_HEAD_PREFIX}weight and bias; found {sorted(ctc_head)}")
        V = int(ctc_head["weight"].shape[0])
        if fairseq_dict is not None:
            # fairseq's target Dictionary: <s> (the CTC blank), <pad>, </s>, <unk>, then the file's symbols.
            tokens: list[str | None] = ["<s>", "<pad>", "</s>", "<unk>", *read_fairseq_dict(fairseq_dict)]
            if len(tokens) != V:
                raise SslseqError(
                    f"{fairseq_dict}: 4 special symbols + {len(tokens) - 4} entries = {len(tokens)}, but the CTC "
                    f"head ({CTC_HEAD_PREFIX}weight) has {V} outputs; is it the dictionary the model was fine-tuned with?"
                )
        else:
            tokens = [None] * V
        units, perm = units_from_tokens(tokens, blank=0)
        ctc_cfg: dict[str, Any] = {}
        for key, ours in (("final_dropout", "final_dropout"), ("feature_grad_mult", "feature_grad_mult"),
                          ("freeze_finetune_updates", "freeze_encoder_steps"), ("mask_prob", "mask_prob"),
                          ("mask_length", "mask_length"), ("mask_channel_prob", "mask_channel_prob"),
                          ("mask_channel_length", "mask_channel_length"), ("dropout", "dropout"),
                          ("attention_dropout", "attention_dropout"), ("activation_dropout", "activation_dropout"),
                          ("layerdrop", "layerdrop"), ("dropout_input", "dropout_input")):
            v = _get(ft, key)
            if v is not None:
                ctc_cfg[ours] = int(v) if ours in _INT_FIELDS else float(v)
        head = {"kind": "ctc", "weight": ctc_head["weight"][perm], "bias": ctc_head["bias"][perm], "cfg": ctc_cfg}
        model_name = "ctc"
        dropped = sorted(heads)  # e.g. HuBERT's label_embs_concat, kept by fairseq fine-tuning
    elif "label_embs_concat" in heads and "final_proj.weight" in heads:
        embs, proj_w = heads["label_embs_concat"], heads["final_proj.weight"]
        if proj_w.shape[0] != embs.shape[1]:
            log.warning("%s: HuBERT with several label sets (untied final_proj) is not supported; "
                        "keeping the encoder only", where)
            dropped = sorted(heads)
        else:
            label_rate = _get(arch, "label_rate", root)
            if label_rate is None:
                label_rate = 50.0
                inferred.append("label_rate")
            hcfg = {"label_rate": float(label_rate), "logit_temp": float(_get(arch, "logit_temp", root) or 0.1)}
            head = {"kind": "hubert", "label_embs_concat": embs, "final_proj.weight": proj_w,
                    "final_proj.bias": heads["final_proj.bias"], "cfg": hcfg}
            model_name = "hubert"
            dropped = sorted(k for k in heads if k not in ("label_embs_concat", "final_proj.weight", "final_proj.bias"))
    elif heads:
        head = wav2vec2_head(_as_fairseq_w2v2_heads(heads, flavor), _w2v2_cfg(arch, root), enc_cfg)
        if head is not None:
            model_name = "wav2vec2"
        else:
            dropped = sorted(heads)

    if inferred:
        log.info("%s: inferred from the weights / defaults: %s", where, ", ".join(inferred))
    if dropped:
        log.info("%s: not converted (no sslseq counterpart): %s", where, ", ".join(sorted({k.split('.')[0] for k in dropped})))
    model = assemble_model(enc_cfg, enc, head, where=where)
    source: dict[str, Any] = {"format": flavor, "path": where, "model": model_name,
                              "config": "checkpoint cfg" if arch is not None else "inferred from weights"}
    if inferred:
        source["inferred"] = inferred
    if dropped:
        source["dropped"] = sorted({k.split(".")[0] for k in dropped})
    return model, units, source


def _as_fairseq_w2v2_heads(heads: dict[str, torch.Tensor], flavor: str) -> dict[str, torch.Tensor]:
    """fairseq2's wav2vec2 head names → fairseq's (= our ``wav2vec2`` model's)."""
    if flavor == "fairseq":
        return heads
    out = {}
    for k, v in heads.items():
        if k == "quantizer.num_updates":  # a step counter buffer, not a weight
            continue
        k = re.sub(r"^quantizer\.entries$", "quantizer.vars", k)
        k = re.sub(r"^quantizer\.entry_proj\.", "quantizer.weight_proj.", k)
        k = re.sub(r"^final_target_proj\.", "project_q.", k)
        out[k] = v
    return out


def _w2v2_cfg(arch: dict | None, root: dict | None) -> dict[str, Any]:
    """Our Wav2Vec2Config fields readable from a fairseq wav2vec2 cfg."""
    out: dict[str, Any] = {}
    for key, cast in (("logit_temp", float), ("num_negatives", int), ("cross_sample_negatives", int)):
        v = _get(arch, key, root)
        if v is not None:
            out[key] = cast(v)
    temp = _get(arch, "latent_temp", root)
    if isinstance(temp, str):
        try:
            temp = ast.literal_eval(temp)  # "(2, 0.5, 0.999995)": literals only
        except (ValueError, SyntaxError):
            temp = None
    if isinstance(temp, (list, tuple)) and len(temp) == 3:
        out["latent_temp"] = [float(t) for t in temp]
    return out
