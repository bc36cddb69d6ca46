"""Length-bucketed dynamic batching: batches hold at most ``max_batch_seconds`` of padded audio.

Sorting by length keeps padding small; shuffling inside duration buckets and shuffling the
batch order make every epoch different, yet a given (seed, epoch) always gives the same
batches, so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from sslseq.utils import SslseqError


def padding_ratio(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Fraction of padded audio (B x longest) that is padding, over all ``batches``."""
    d = np.asarray(durations, dtype=np.float64)
    real = padded = 0.0
    for b in batches:
        if len(b):
            lens = d[np.asarray(b)]
            real += float(lens.sum())
            padded += float(lens.max()) * len(b)
    return 0.0 if padded == 0 else 1.0 - real / padded


def greedy_batches(order: Sequence[int], durations: np.ndarray, max_batch_seconds: float) -> list[list[int]]:
    """Cut ``order`` into consecutive batches with len(batch) x longest <= max_batch_seconds.

    An item longer than the limit on its own still gets a batch (of one).
    """
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0.0
    for i in order:
        d = float(durations[i])
        new_longest = max(longest, d)
        if cur and (len(cur) + 1) * new_longest > max_batch_seconds:
            batches.append(cur)
            cur, new_longest = [], d
        cur.append(int(i))
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


def utterance_batches(
    utts: Sequence[str], durations: Mapping[str, float], batch_seconds: float, *, longest_first: bool = False
) -> list[list[str]]:
    """Utterance ids sorted by duration (shortest first, or longest first) and cut by
    :func:`greedy_batches`; the batching of decoding and feature dumping, where no shuffling is
    wanted. An utterance without a duration counts as 0 s."""
    if not batch_seconds > 0:
        raise SslseqError(f"--batch-seconds must be positive, got {batch_seconds}")
    sign = -1.0 if longest_first else 1.0
    order = sorted(utts, key=lambda u: (sign * durations.get(u, 0.0), u))
    durs = np.array([durations.get(u, 0.0) for u in order], dtype=np.float64)
    return [[order[i] for i in b] for b in greedy_batches(range(len(order)), durs, batch_seconds)]


class LengthBucketBatchSampler:
    """Batches of utterance indices by total padded seconds, deterministic for (seed, epoch).

    Items are sorted by duration (random tie-break) and cut into buckets of about
    ``bucket_batches`` batches' worth of audio (0: no buckets, batches of random utterances); with ``shuffle`` the items of each bucket are
    shuffled before batching (new batch compositions each epoch at little padding cost) and
    the batch order is shuffled. ``num_shards``/``shard_id`` give each distributed rank
    every ``num_shards``-th batch (the tail that does not divide evenly is dropped, so all
    ranks take the same number of steps). Resume state: (epoch, batch index).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        bucket_batches: int = 4,
        num_shards: int = 1,
        shard_id: int = 0,
    ):
        self.durations = np.asarray(durations, dtype=np.float64)
        if len(self.durations) == 0:
            raise SslseqError("no utterances to batch (the data set is empty after filtering)")
        if not max_batch_seconds > 0:
            raise SslseqError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if not 0 <= shard_id < num_shards:
            raise SslseqError(f"shard_id {shard_id} is outside 0..{num_shards - 1}")
        self.max_batch_seconds = float(max_batch_seconds)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = int(epoch)
        if bucket_batches < 0:
            raise SslseqError(f"bucket_batches must be >= 0 (0: no length buckets), got {bucket_batches}")
        self.bucket_batches = int(bucket_batches)
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.batch_index = 0  # next batch __iter__ yields in self.epoch
        self._cache: tuple[int, list[list[int]]] | None = None

    def all_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every rank's batches of ``epoch``, in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        d = self.durations
        rng = np.random.default_rng([self.seed, epoch])
        order = np.lexsort((rng.permutation(len(d)), d))  # by duration, random ties
        if not self.shuffle:
            return greedy_batches(order, d, self.max_batch_seconds)
        if self.bucket_batches == 0:  # no buckets: utterances of any length share a batch
            return greedy_batches(rng.permutation(len(d)), d, self.max_batch_seconds)
        batches: list[list[int]] = []
        bucket_seconds = self.bucket_batches * self.max_batch_seconds
        start, total = 0, 0.0
        for pos, i in enumerate(order):
            total += d[i]
            if total >= bucket_seconds or pos == len(order) - 1:
                bucket = order[start : pos + 1].copy()
                rng.shuffle(bucket)
                batches += greedy_batches(bucket, d, self.max_batch_seconds)
                start, total = pos + 1, 0.0
        perm = rng.permutation(len(batches))
        return [batches[j] for j in perm]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (cached for the last epoch asked)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is None or self._cache[0] != epoch:
            b = self.all_batches(epoch)
            if self.num_shards > 1:
                b = b[: len(b) - len(b) % self.num_shards][self.shard_id :: self.num_shards]
                if not b:
                    raise SslseqError(
                        f"fewer batches than the {self.num_shards} processes; lower data.max_batch_seconds or use more data"
                    )
            self._cache = (epoch, b)
        return self._cache[1]

    def padding_ratio(self, epoch: int | None = None) -> float:
        return padding_ratio(self.batches(epoch), self.durations)

    def set_epoch(self, epoch: int, batch_index: int = 0) -> None:
        self.epoch, self.batch_index = int(epoch), int(batch_index)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(state["epoch"], state["batch_index"])

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        while self.batch_index < len(batches):
            b = batches[self.batch_index]
            self.batch_index += 1
            yield b
