"""The trainer of recipe stages 4 (pretraining) and 6 (CTC fine-tuning).

One optimizer step = ``optim.update_freq`` micro-batches; the objective is the summed loss
over them divided by their total ``sample_size`` (fairseq convention: gradients of the
summed losses are rescaled after accumulation, so the result does not depend on how a
step's data is split). The loop runs under ``accelerate`` (CPU, one GPU or torchrun) with
no distributed code of its own besides giving each rank every N-th batch.

Resume: a run killed at any moment and rerun continues from the newest complete
checkpoint and, on CPU, ends with the same weights as an uninterrupted run: the data
order depends only on (seed, epoch), the crops on (seed, epoch, item), the learning rate
on the step, and the RNG states are saved with the optimizer state.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from sslseq.config import dict_diff, to_dict
from sslseq.data.batching import LengthBucketBatchSampler
from sslseq.data.dataset import SpeechDataset, collate
from sslseq.train import checkpoint as ckpt
from sslseq.train.config import (
    PATH_KEYS,
    TrainConfig,
    effective_update_freq,
    load_train_config,
    resolve_path,
    resolve_paths,
    semantic_dict,
    train_fingerprint,
)
from sslseq.train.health import HealthMonitor
from sslseq.train.tasks import make_task
from sslseq.models.base import log_floats
from sslseq.models.exp_dir import CONFIG, WEIGHTS, check_exp_dir, write_exp_dir
from sslseq.models.train_log import LOG, JsonLog
from sslseq.train.schedule import lr_at, warmup_steps
from sslseq.utils import SslseqError, atomic_write_text, get_logger, progress

log = get_logger(__name__)

SUMMARY = "train_summary.yaml"
VALID_SEED_OFFSET = 9973  # validation draws (e.g. HuBERT masks) from its own fixed seed


def _spelled_as(cfg: TrainConfig, stored: dict) -> TrainConfig:
    """``cfg`` with each path that names the same file or dir as in ``stored`` (a config dict,
    e.g. an experiment's config.yaml) spelled as there: ``./x``, ``x`` and ``/abs/x`` are one run."""
    out = copy.deepcopy(cfg)
    for key in PATH_KEYS:
        old, obj = stored, out
        for part in key[:-1]:
            old, obj = old.get(part) if isinstance(old, dict) else None, getattr(obj, part)
        old = old.get(key[-1]) if isinstance(old, dict) else None
        if isinstance(old, str) and resolve_path(old) == resolve_path(getattr(obj, key[-1])):
            setattr(obj, key[-1], old)
    return out


def is_finished(cfg: TrainConfig) -> bool:
    """True when ``out_dir`` holds a final model trained with this same config."""
    out = Path(cfg.out_dir)
    summary = out / SUMMARY
    if not (summary.is_file() and (out / WEIGHTS).is_file() and (out / CONFIG).is_file()):
        return False
    try:
        done = yaml.safe_load(summary.read_text()) or {}
    except yaml.YAMLError:
        return False
    if not isinstance(done, dict):
        return False
    try:
        check_exp_dir(out)
    except SslseqError as e:
        log.warning("%s; training again from the last checkpoint", e)
        return False
    if done.get("config_digest") == train_fingerprint(cfg):
        return True
    try:  # the same config with its paths spelled otherwise (./x vs /abs/x)
        stored = yaml.safe_load((out / CONFIG).read_text())
    except yaml.YAMLError:
        return False
    return isinstance(stored, dict) and done.get("config_digest") == train_fingerprint(_spelled_as(cfg, stored))


def train_from_config(path: Path, overrides: list[str]) -> Path:
    """``sslseq train CONFIG key=value ...``: train, resuming if checkpoints exist; returns out_dir."""
    cfg = load_train_config(path, overrides)
    return Trainer(cfg).fit()


def resolve_precision(precision: str, cpu: bool) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 (with accelerate's loss scaler) on older
    GPUs; on the CPU bf16 where it has bf16 matrix instructions (AMX-BF16, AVX512-BF16,
    aarch64 BF16: ``sslseq.hw``), else fp32, since emulated bf16 is many times slower. The
    models keep CTC, the quantizer's softmax, the contrastive logits and the fbank in fp32
    themselves, under either autocast."""
    if not cpu:
        if precision != "auto":
            return precision
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from sslseq import hw

    if precision not in ("auto", "bf16"):
        return precision
    support = hw.cpu_bf16()
    if precision == "auto":
        chosen = "bf16" if support.native else "fp32"
        log.info("precision=auto: %s -> %s", support.describe(), chosen)
        return chosen
    if not support.native:
        log.warning("precision=bf16 on a CPU without bf16 matrix instructions will be slow (bf16 matmuls "
                    "are emulated, many times slower than fp32); %s. Use precision=auto or fp32 here", support.describe())
    return precision


def _resolve_device(device: str) -> bool:
    """True to run on CPU (the one resolver, ``sslseq.hw``; its error spelled as the config key)."""
    from sslseq import hw

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SslseqError(f"device={device} but no CUDA GPU is visible; use device=cpu or device=auto")
    return hw.resolve_device(device).type == "cpu"


class Trainer:
    """Pretraining or CTC fine-tuning from a ``TrainConfig``: the loop shared by both; what
    differs (data and labels, model, validation, best checkpoint) is its task (``tasks.py``).

    ``model`` may be given (tests); otherwise the task builds it from the config
    (``sslseq.models``). ``fit(stop_at_step=N)`` stops after step N as if killed there.
    """

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module | None = None):
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.digest = train_fingerprint(cfg)
        self._given_model = model
        self.task = make_task(cfg, model)  # what pretraining and CTC do differently
        self.tokenizer = None
        self.model_cfg: dict[str, Any] = dict(cfg.model)

    # ------------------------------------------------------------ setup
    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.cfg
        cpu = _resolve_device(cfg.device)
        if cfg.precision == "fp16" and cpu:
            raise SslseqError("precision=fp16 needs a CUDA GPU; use precision=bf16 or fp32 on CPU")
        unused = self.task.find_unused_parameters if cfg.find_unused_parameters is None else cfg.find_unused_parameters
        processes = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun / accelerate launch set it
        self.update_freq = effective_update_freq(cfg.optim, processes)
        if cfg.optim.sized_for_processes:
            log.info("optim.sized_for_processes=%d on %d process(es): update_freq %d -> %d", cfg.optim.sized_for_processes,
                     processes, cfg.optim.update_freq, self.update_freq)
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(cfg.precision, cpu)],
            gradient_accumulation_steps=self.update_freq,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
        )
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.train_set, self.valid_set = self.task.datasets()
        self.tokenizer = self.task.tokenizer
        acc = self.accelerator
        self.train_sampler = LengthBucketBatchSampler(
            self.train_set.durations,
            d.max_batch_seconds,
            shuffle=True,
            seed=cfg.seed,
            bucket_batches=d.bucket_batches,
            num_shards=acc.num_processes,
            shard_id=acc.process_index,
        )
        log.info(
            "train: %d utterances, %.2f h, %d batches/epoch/process, padding %.1f%%",
            len(self.train_set),
            sum(self.train_set.durations) / 3600,
            len(self.train_sampler.batches(0)),
            100 * self.train_sampler.padding_ratio(0),
        )

    def _build_model(self) -> torch.nn.Module:
        if self._given_model is not None:
            return self._given_model
        model, self.model_cfg = self.task.build_model()
        return model

    def _setup_optimizer(self) -> None:
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Weight decay on all parameters, as fairseq's adam does for HuBERT / wav2vec 2.0.
        opt = torch.optim.AdamW(params, lr=lr_at(0, o), betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(self.model, opt)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        if self.cfg.compile:
            # Utterance lengths vary per batch: dynamic shapes avoid a recompile for each new one.
            self.model = torch.compile(self.model, dynamic=True, backend=self.cfg.compile_backend)

    # ------------------------------------------------------------ state
    def _state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        scaler = getattr(self.accelerator, "scaler", None)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step},  # the schedule is a function of the step
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng,  # one state per process, in process order
            "config_digest": self.digest,
            "config": yaml.safe_dump(semantic_dict(self.cfg), sort_keys=False),
            "stats": dict(self.stats),
            "acc": dict(self.acc),
        }

    def _resume(self) -> None:
        if self.is_main:
            ckpt.remove_partial(self.ckpt_dir)
        self.accelerator.wait_for_everyone()
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if latest is None:
            return
        state = ckpt.load_trainer_state(latest)
        # Another spelling of the same paths (./x vs /abs/x) is the same run: compared resolved.
        old = yaml.safe_load(state.get("config", "")) or {}
        same = state.get("config_digest") == self.digest
        diff = [] if same else [key for key, _, _ in dict_diff(resolve_paths(old), resolve_paths(semantic_dict(self.cfg)))]
        if diff:
            raise SslseqError(
                f"{self.out_dir} holds checkpoints of a run with another config (differs in: {', '.join(diff) or '?'}); "
                f"train into another out_dir, or delete {self.ckpt_dir} to start over"
            )
        ckpt.load_checkpoint_weights(self.unwrapped, latest)
        self.optimizer.load_state_dict(state["optimizer"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_index = int(state["step"]), int(state["epoch"]), int(state["batch_index"])
        self.stats.update(state["stats"])
        self.acc.update(state["acc"])
        self._restore_rng(state["rng"])
        log.info("resumed from %s (step %d, epoch %d, batch %d)", latest, self.step, self.epoch, self.batch_index)

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        """Each process takes back its own RNG state (a checkpoint holds one per process)."""
        acc = self.accelerator
        if not isinstance(states, list):  # not written by this trainer (_save_checkpoint writes a list)
            raise SslseqError(f"{self.ckpt_dir}: a checkpoint's RNG states are not a per-process list; "
                              f"delete {self.ckpt_dir} to start over")
        if len(states) == acc.num_processes:
            ckpt.set_rng_state(states[acc.process_index])
            return
        # Another world size: exact continuation is impossible; distinct streams per process.
        log.warning("checkpoint written by %d process(es), resumed by %d: random streams are reseeded",
                    len(states), acc.num_processes)
        ckpt.set_rng_state(states[0])
        self._seed_per_process(self.cfg.seed + self.step)

    def _seed_per_process(self, seed: int) -> None:
        """Distinct random streams (masks, negatives, dropout) for each data-parallel process."""
        from accelerate.utils import set_seed

        if self.accelerator.num_processes > 1:
            set_seed(seed, device_specific=True)

    def _save_checkpoint(self) -> None:
        from accelerate.utils import gather_object

        self.stats["wall_time_s"] = self._wall_time()
        rng = gather_object([ckpt.get_rng_state()]) if self.accelerator.num_processes > 1 else [ckpt.get_rng_state()]
        if self.is_main:
            path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self.unwrapped, self._state(rng), self.cfg.keep_last)
            log.info("saved checkpoint %s", path)
        self.accelerator.wait_for_everyone()

    def _wall_time(self) -> float:
        return self._wall_base + time.time() - self._t_start

    # ------------------------------------------------------------ data
    def _loader(self, dataset: SpeechDataset, batches: list[list[int]], epoch: int) -> torch.utils.data.DataLoader:
        keyed = [[(i, epoch) for i in b] for b in batches]
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=keyed,
            collate_fn=collate,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            # A private generator: creating a loader must not draw from the global RNG, or a
            # resumed run (which creates one mid-epoch) would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )

    def _train_batches(self) -> Iterator[dict[str, Any]]:
        """Micro-batches from the saved position on, across epochs; each carries its end position."""
        epoch, start = self.epoch, self.batch_index
        while True:
            batches = self.train_sampler.batches(epoch)
            if start < len(batches):
                for j, batch in enumerate(self._loader(self.train_set, batches[start:], epoch)):
                    batch["_pos"] = (epoch, start + j + 1)
                    yield batch
            epoch, start = epoch + 1, 0

    def _to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    # ------------------------------------------------------------ steps
    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over ``update_freq`` micro-batches; returns this step's stats."""
        acc, o = self.accelerator, self.cfg.optim
        if len(micro_batches) != self.update_freq:
            raise ValueError(f"train_step needs update_freq={self.update_freq} micro-batches, got {len(micro_batches)}")
        self.model.train()
        self.unwrapped.set_num_updates(self.step)
        lr = lr_at(self.step, o)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        sample_size = 0
        logs: dict[str, Any] = {}  # float64 tensors (or floats) until the step's one conversion
        audio = frames_padded = 0
        for i, mb in enumerate(micro_batches):
            # Gradients are all-reduced only on the last micro-batch (no_sync: DDP-aware).
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                out = self.model(self._to_device(mb))
                acc.backward(out.loss)
            loss_sum += out.loss.detach().double()
            ss = int(out.sample_size)
            sample_size += ss
            for k, v in out.logs.items():
                v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
                logs[k] = logs.get(k, 0.0) + v * max(ss, 1)
            audio += int(mb["wav_lens"].sum())
            frames_padded += mb["wav"].numel()
        logs = log_floats(logs)  # the models' logs reach the host once per step, not per value
        # Sums over all processes: the step's loss, units and audio (model logs stay this
        # process's: their keys may differ between processes, e.g. a batch with nothing masked).
        totals = acc.reduce(
            torch.stack([loss_sum, torch.tensor(float(sample_size), dtype=torch.float64, device=self.device),
                         torch.tensor(float(audio), dtype=torch.float64, device=self.device),
                         torch.tensor(float(frames_padded), dtype=torch.float64, device=self.device)]),
            "sum",
        )
        loss_sum, total_ss, audio, frames_padded = totals[0], float(totals[1]), float(totals[2]), float(totals[3])
        # accelerator.backward divided each loss by gradient_accumulation_steps and DDP
        # averaged over processes: rescale to sum(loss) / total sample_size of the step.
        if total_ss > 0:
            scale = acc.gradient_accumulation_steps * acc.num_processes / total_ss
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        max_norm = o.clip_norm if o.clip_norm > 0 else math.inf
        grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), max_norm))
        # The norm is of the all-reduced gradients: every process skips the same updates.
        finite = math.isfinite(grad_norm)
        if finite or acc.scaler is not None:
            self.optimizer.step()  # with fp16 the scaler skips steps with inf/nan itself (and lowers its scale)
        # With fp16 an overflow is how the loss scaler finds its scale (the first steps of a run
        # may all overflow): it counts as skipped once the scale is below 1, where the gradients
        # overflow even unscaled.
        skipped = not finite and (acc.scaler is None or acc.scaler.get_scale() < 1.0)
        if skipped:
            self.stats["skipped_updates"] = self.stats.get("skipped_updates", 0) + 1
            self.stats["skipped_in_row"] = self.stats.get("skipped_in_row", 0) + 1
            log.warning("step %d: gradient norm is %s; update skipped (%d in a row, %d in all)", self.step + 1,
                        grad_norm, self.stats["skipped_in_row"], self.stats["skipped_updates"])
        else:
            self.stats["skipped_in_row"] = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        n = max(sample_size, 1)
        return {
            "loss": float(loss_sum) / max(total_ss, 1.0),
            "loss_sum": float(loss_sum),
            "sample_size": total_ss,
            "lr": lr,
            "grad_norm": grad_norm,
            "audio_samples": float(audio),
            "padded_samples": float(frames_padded),
            "skipped": float(skipped),
            **{k: v / n for k, v in logs.items()},
        }

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The task's validation metrics (``tasks.py``) over the valid set, with a fixed seed."""
        acc = self.accelerator
        sampler = LengthBucketBatchSampler(
            self.valid_set.durations,
            self.cfg.data.max_batch_seconds,
            shuffle=False,
            seed=self.cfg.seed,
            num_shards=acc.num_processes,
            shard_id=acc.process_index,
        )
        batches = sampler.batches(0)
        if self.cfg.max_valid_batches:
            batches = batches[: self.cfg.max_valid_batches]
        np_state, py_state = np.random.get_state(), random.getstate()
        devices = [self.device] if self.device.type == "cuda" else []
        model = self.unwrapped
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                vseed = self.cfg.seed + VALID_SEED_OFFSET
                torch.manual_seed(vseed)
                np.random.seed(vseed)
                random.seed(vseed)
                pairs = ((self._to_device(b), b) for b in self._loader(self.valid_set, batches, 0))
                return self.task.validate(model, pairs, acc)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            model.train(was_training)

    # ------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.jsonl.write(record)
        for k, v in record.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k if k.startswith("valid_") else f"train/{k}", v, record["step"])

    def _flush_interval(self, bar) -> None:
        a = self.acc
        if not a.get("steps"):
            return
        elapsed = max(a["time"], 1e-9)
        frame_rate = float(getattr(self.unwrapped, "frame_rate", 50.0))
        audio_s = a["audio_samples"] / self.cfg.data.sample_rate
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "lr": a["lr"],
            "loss": a["loss_sum"] / max(a["sample_size"], 1.0),
            "grad_norm": a["grad_norm"] / a["steps"],
            "sample_size": a["sample_size"] / a["steps"],
            **{k[4:]: v / a["steps"] for k, v in a.items() if k.startswith("log_")},
            "frames_per_s": audio_s * frame_rate / elapsed,
            "audio_s_per_s": audio_s / elapsed,
            "padding_ratio": 1.0 - a["audio_samples"] / max(a["padded_samples"], 1.0),
            "skipped_updates": int(a.get("skipped", 0)),  # in this interval
        }
        self.stats["last_train_loss"] = record["loss"]
        self.stats["frames_per_s"] = record["frames_per_s"]
        self._log(record)
        if self.is_main:
            self.health.check(self.step, record)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{record['loss']:.3f}", fps=f"{record['frames_per_s']:.0f}", refresh=False)
        self.acc = {}

    def _accumulate(self, s: dict[str, float], seconds: float) -> None:
        a = self.acc
        summed = ("loss_sum", "sample_size", "grad_norm", "audio_samples", "padded_samples", "skipped")
        for k in summed:
            a[k] = a.get(k, 0.0) + s.get(k, 0.0)
        for k, v in s.items():
            if k not in ("loss", "lr", *summed):
                a[f"log_{k}"] = a.get(f"log_{k}", 0.0) + v
        a["lr"] = s["lr"]
        a["steps"] = a.get("steps", 0) + 1
        a["time"] = a.get("time", 0.0) + seconds
        self.stats["audio_seconds"] = self.stats.get("audio_seconds", 0.0) + s["audio_samples"] / self.cfg.data.sample_rate

    def _run_validation(self) -> None:
        if self.valid_set is None:
            return
        t0 = time.time()
        result = self.validate()
        best = self.stats.get("best_valid_loss")
        if math.isfinite(result["valid_loss"]) and (best is None or result["valid_loss"] < best):
            self.stats["best_valid_loss"] = result["valid_loss"]
        self._keep_if_best(result)
        self.stats["last_valid"] = result
        self._log({"step": self.step, "epoch": self.epoch, **result})
        if self.is_main:
            self.health.check_valid(self.step, result)
        log.info(
            "step %d: %s (%.1f s)", self.step, ", ".join(f"{k} {v:.4f}" for k, v in result.items()), time.time() - t0
        )

    def _keep_if_best(self, result: dict[str, float]) -> None:
        """Keep the model of the best validation so far in ``checkpoints/best/`` (by dev WER for
        CTC, dev loss otherwise: the task's rule; lower is better), besides the newest ``keep_last`` checkpoints."""
        metric = self.task.best_metric(result)
        if not math.isfinite(result[metric]):
            log.warning("step %d: %s is %s; not a best model", self.step, metric, result[metric])
            return
        best = self.stats.get("best")
        if best is not None and best["metric"] == metric and result[metric] >= best["value"]:
            return
        self.stats["best"] = {"metric": metric, "value": float(result[metric]), "step": self.step}
        if self.is_main:
            ckpt.save_best(self.ckpt_dir, self.unwrapped, self.stats["best"])

    # ------------------------------------------------------------ main loop
    def fit(self, stop_at_step: int | None = None) -> Path:
        """Train to ``optim.max_steps`` (resuming if possible) and write the final model."""
        cfg = self.cfg
        if is_finished(cfg):
            log.info("%s: already trained with this config; nothing to do", self.out_dir)
            return self.out_dir
        done = False
        try:
            self.setup()
            out = self._loop(stop_at_step)
            done = True
            return out
        finally:
            self._end_processes(done)

    def _end_processes(self, done: bool) -> None:
        """Leave the process group of a multi-process run cleanly: a barrier once every process
        is done (none tears its connections down while a peer still talks to it, which makes gloo
        abort), then ``destroy_process_group``. After a failure the peers may never arrive: the
        group is destroyed at once."""
        acc = getattr(self, "accelerator", None)
        if acc is None or acc.num_processes <= 1 or not torch.distributed.is_initialized():
            return
        try:
            if done:
                torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()

    def setup(self) -> None:
        """Accelerator, data, model and optimizer; restores the newest checkpoint if any."""
        from accelerate.utils import set_seed

        cfg = self.cfg
        self._setup_accelerator()
        set_seed(cfg.seed)
        self._build_data()
        set_seed(cfg.seed)  # the model's init does not depend on how the data were read
        self.model = self._build_model()
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %s, %.2fM parameters", self.model_cfg.get("name", type(self.model).__name__), n_params / 1e6)
        self._setup_optimizer()
        self._seed_per_process(cfg.seed)  # after the model's init, which must be the same everywhere
        self.step = self.epoch = self.batch_index = 0
        self.stats: dict[str, Any] = {"best_valid_loss": None, "wall_time_s": 0.0, "audio_seconds": 0.0}
        self.acc: dict[str, float] = {}
        freeze = int(getattr(getattr(self.unwrapped, "cfg", None), "freeze_encoder_steps", 0) or 0)
        self.health = HealthMonitor(warmup_steps=warmup_steps(cfg.optim), freeze_steps=freeze)
        self._resume()
        self._wall_base, self._t_start = float(self.stats.get("wall_time_s", 0.0)), time.time()

    def _loop(self, stop_at_step: int | None) -> Path:
        cfg = self.cfg
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.jsonl = JsonLog(self.out_dir / LOG, self.step)
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step or None)
        o = cfg.optim
        last = min(o.max_steps, stop_at_step) if stop_at_step is not None else o.max_steps
        batches = self._train_batches()
        bar = progress(range(self.step, last), desc=f"{cfg.task} {self.out_dir.name}", total=last - self.step, unit="step")
        try:
            for _ in bar:
                t0 = time.time()
                micro = [next(batches) for _ in range(self.update_freq)]
                self.epoch, self.batch_index = micro[-1]["_pos"]
                s = self.train_step(micro)
                self._accumulate(s, time.time() - t0)
                final = self.step == o.max_steps
                diverged = self._diverged()
                if self.step % cfg.log_interval == 0 or final or diverged:
                    self._flush_interval(bar)
                if diverged:
                    raise SslseqError(diverged)
                if (cfg.valid_interval and self.step % cfg.valid_interval == 0) or final:
                    self._run_validation()
                if self.step % cfg.save_interval == 0 or final:
                    self._save_checkpoint()
        finally:
            if hasattr(bar, "close"):
                bar.close()
            if self.is_main:
                self.jsonl.close()
                self.tb.close()
        if self.step < o.max_steps:
            return self.out_dir  # stopped early (stop_at_step)
        # Checked on every process (the weights and the reduced validation agree), so all stop alike.
        problem = self._final_model_problem()
        if problem:
            raise SslseqError(
                f"{self.out_dir}: the model after {self.step} steps is not usable: {problem}; it is not written as "
                f"finished. Lower optim.lr (now {o.lr:g}) or raise optim.warmup_steps, and train again"
            )
        if self.is_main:
            self._write_final()
        self.accelerator.wait_for_everyone()
        return self.out_dir

    def _diverged(self) -> str | None:
        """Why training must stop, when too many updates were skipped for non-finite gradients
        (``optim.max_skipped_in_row``, ``optim.max_skipped_frac``); None while it may go on."""
        o = self.cfg.optim
        in_row, total = self.stats.get("skipped_in_row", 0), self.stats.get("skipped_updates", 0)
        max_total = max(o.max_skipped_in_row, o.max_skipped_frac * o.max_steps)
        if o.max_skipped_in_row and in_row >= o.max_skipped_in_row:
            what = f"the last {in_row} updates were skipped (optim.max_skipped_in_row={o.max_skipped_in_row})"
        elif o.max_skipped_frac < 1.0 and total > max_total:
            what = (f"{total} of {self.step} updates were skipped, more than {max_total:g} "
                    f"(optim.max_skipped_frac={o.max_skipped_frac} of optim.max_steps={o.max_steps})")
        else:
            return None
        return (
            f"{self.out_dir}: training diverged at step {self.step}: {what}: the gradients are NaN or inf. "
            f"Lower optim.lr (now {o.lr:g}), raise optim.warmup_steps (now {o.warmup_steps}) or use clipping "
            f"(optim.clip_norm, now {o.clip_norm:g}), then train into a new out_dir (or delete {self.ckpt_dir}); "
            "no final model was written"
        )

    def _final_model_problem(self) -> str | None:
        """Why the final model must not be marked finished: non-finite weights or validation loss."""
        bad = [n for n, t in self.unwrapped.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            return f"{len(bad)} weight tensors hold NaN or inf (e.g. {bad[0]})"
        valid = (self.stats.get("last_valid") or {}).get("valid_loss")
        if valid is not None and not math.isfinite(valid):
            return f"the final validation loss is {valid}"
        return None

    def _write_final(self) -> None:
        """model.safetensors, units.txt (CTC), config.yaml, then train_summary.yaml (the done marker)."""
        out = self.out_dir
        units = self.tokenizer.units if self.tokenizer is not None else None
        write_exp_dir(out, self.unwrapped, to_dict(self.cfg), units=units, model_fallback=self.model_cfg,
                      bpe_model=getattr(self.tokenizer, "model_path", None))
        wall = self._wall_time()
        summary = {
            "task": self.cfg.task,
            "steps": self.step,
            "epochs": self.epoch,
            "final_train_loss": self.stats.get("last_train_loss"),
            "best_valid_loss": self.stats.get("best_valid_loss"),
            "best": self.stats.get("best"),
            "final_valid": self.stats.get("last_valid"),
            "wall_time_s": round(wall, 2),
            "audio_hours_processed": round(self.stats.get("audio_seconds", 0.0) / 3600, 4),
            "frames_per_s": self.stats.get("frames_per_s"),
            "processes": self.accelerator.num_processes,
            "skipped_updates": int(self.stats.get("skipped_updates", 0)),  # non-finite gradients
            "config_digest": self.digest,
        }
        atomic_write_text(out / SUMMARY, yaml.safe_dump(summary, sort_keys=False))
        log.info("finished %d steps in %.0f s: %s", self.step, wall, out)
