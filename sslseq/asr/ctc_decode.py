"""CTC decoding: greedy (best path) and prefix beam search (best labeling).

Greedy decoding picks the most probable *path*; prefix beam search approximates the most
probable *labeling*, summing over all paths that collapse to it. They differ when the
probability mass of one labeling is spread over many paths (see the tests).
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Protocol, Sequence

import numpy as np
import torch

NEG_INF = float("-inf")


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def greedy_decode(log_probs: Any, lengths: Any = None, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of a batch: argmax per frame, collapse repeats, drop blanks.

    ``log_probs`` is (B, T, V) (tensor or array); ``lengths`` (B,) valid frames per item
    (None: all T frames). Returns one list of label ids per item.
    """
    lp = _as_tensor(log_probs)
    if lp.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(lp.shape)}")
    B, T, _ = lp.shape
    ids = lp.argmax(dim=-1)  # (B, T)
    if lengths is None:
        lens = torch.full((B,), T, dtype=torch.long, device=ids.device)
    else:
        lens = _as_tensor(lengths).to(device=ids.device, dtype=torch.long)
    valid = torch.arange(T, device=ids.device)[None, :] < lens[:, None]
    # A frame starts a new label when it differs from the previous frame's argmax
    # (the first frame always does); blanks and padding are then dropped.
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep = new & (ids != blank) & valid
    ids, keep = ids.cpu(), keep.cpu()
    return [ids[b][keep[b]].tolist() for b in range(B)]


class PrefixScorer(Protocol):
    """A label-sequence scorer (e.g. an n-gram LM) consulted when a prefix grows.

    States are opaque to the search; ``score`` returns the log probability of ``token``
    after the prefix summarised by ``state``, and the state after it. ``final`` is the
    log probability of ending the sentence in ``state`` (an LM's ``</s>``).
    """

    def init_state(self) -> Any: ...

    def score(self, state: Any, token: int) -> tuple[float, Any]: ...

    def final(self, state: Any) -> float: ...


def _lse(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for Python floats, exact at -inf."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = a if a > b else b
    return m + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search_nbest(
    log_probs: Any,
    beam: int = 8,
    blank: int = 0,
    *,
    scorer: PrefixScorer | None = None,
    lm_weight: float = 0.5,
    insertion_bonus: float = 0.0,
    token_prune: float | None = 10.0,
) -> list[tuple[list[int], float]]:
    """CTC prefix beam search over one utterance's (T, V) log probs.

    Returns up to ``beam`` (labels, score) pairs, best first. Without a scorer the score
    is the log probability of the labeling (summed over its paths, within the beam).
    With one, it is ``acoustic + lm_weight * lm + insertion_bonus * len(labels)``.
    ``token_prune``: per frame, skip tokens whose log prob is more than this below the
    frame's best (None: consider every token). At 10 nats such a unit is 20000 times less
    likely than the frame's best; skipping it speeds the search up on peaky CTC output.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    lp = _as_tensor(log_probs).detach().to("cpu", torch.float64).numpy()
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (T, V) for one utterance, got shape {lp.shape}")
    T, V = lp.shape

    # Prefixes are nodes of a trie, named by ints: hashing a long tuple at every step
    # would make the search quadratic in the output length.
    parent: list[int] = [-1]
    token: list[int] = [-1]
    length: list[int] = [0]
    child: dict[tuple[int, int], int] = {}

    def extend(node: int, c: int) -> int:
        n = child.get((node, c))
        if n is None:
            n = child[(node, c)] = len(parent)
            parent.append(node)
            token.append(c)
            length.append(length[node] + 1)
        return n

    def labels(node: int) -> list[int]:
        out = []
        while node > 0:
            out.append(token[node])
            node = parent[node]
        return out[::-1]

    # node -> [log p(prefix, path ends in blank), log p(prefix, path ends in its last label)]
    beams: dict[int, list[float]] = {0: [0.0, NEG_INF]}
    # node -> (accumulated scorer log prob, scorer state), for every prefix ever created,
    # so that a prefix re-entering the beam is not re-scored.
    lm: dict[int, tuple[float, Any]] = {}
    if scorer is not None:
        lm[0] = (0.0, scorer.init_state())

    def rank(node: int, probs: list[float], final: bool = False) -> float:
        s = _lse(probs[0], probs[1])
        if scorer is not None:
            lm_logp, state = lm[node]
            if final:
                lm_logp += scorer.final(state)
            s += lm_weight * lm_logp + insertion_bonus * length[node]
        return s

    for t in range(T):
        if token_prune is None:
            tokens = range(V)
        else:
            tokens = np.nonzero(lp[t] >= lp[t].max() - token_prune)[0].tolist()
        frame = lp[t].tolist()  # Python floats: much faster than NumPy scalars in this loop
        nxt: dict[int, list[float]] = {}

        def slot(node: int) -> list[float]:
            s = nxt.get(node)
            if s is None:
                s = nxt[node] = [NEG_INF, NEG_INF]
            return s

        for node, (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            last = token[node]
            # Blank: the prefix is unchanged and now ends in blank. Always considered,
            # whatever the pruning, so that every prefix can survive a frame.
            s = slot(node)
            s[0] = _lse(s[0], total + frame[blank])
            for c in tokens:
                if c == blank:
                    continue
                p = frame[c]
                if c == last:
                    # A repeat without a blank in between merges into the same label...
                    s = slot(node)
                    s[1] = _lse(s[1], pnb + p)
                    # ...while after a blank it is a new, doubled label.
                    ext_p = pb + p
                else:
                    ext_p = total + p
                if ext_p == NEG_INF:
                    continue  # unreachable (e.g. a doubled label with no blank yet)
                ext = extend(node, c)
                s = slot(ext)
                s[1] = _lse(s[1], ext_p)
                if scorer is not None and ext not in lm:
                    parent_logp, parent_state = lm[node]
                    logp, state = scorer.score(parent_state, c)
                    lm[ext] = (parent_logp + logp, state)
        if len(nxt) > beam:
            beams = dict(heapq.nlargest(beam, nxt.items(), key=lambda kv: rank(kv[0], kv[1])))
        else:
            beams = nxt

    final = [(labels(n), rank(n, v, final=True)) for n, v in beams.items()]
    return sorted(final, key=lambda x: x[1], reverse=True)


def prefix_beam_search(log_probs: Any, beam: int = 8, blank: int = 0, **kwargs: Any) -> list[int]:
    """Best labeling of one utterance's (T, V) log probs by CTC prefix beam search.

    Keyword arguments (scorer, lm_weight, insertion_bonus, token_prune) go to
    :func:`prefix_beam_search_nbest`.
    """
    return prefix_beam_search_nbest(log_probs, beam=beam, blank=blank, **kwargs)[0][0]


def beam_decode_batch(
    log_probs: Any, lengths: Sequence[int] | Any, beam: int = 8, blank: int = 0, **kwargs: Any
) -> list[list[int]]:
    """Prefix beam search over each item of a (B, T, V) batch, up to its length."""
    lp = _as_tensor(log_probs).detach().cpu()
    lens = _as_tensor(lengths).tolist()
    return [prefix_beam_search(lp[b, : int(n)], beam=beam, blank=blank, **kwargs) for b, n in enumerate(lens)]
