"""The training loop: one process per device (under ``torchrun`` or alone), DDP, AMP, EMA, logs,
checkpoints and exact resume.

Exactness: the schedule is a function of the step, every clip a function of its global sample number
(``data.py``), and the torch generator is re-seeded from ``(seed, global micro-batch number)`` before
every micro-batch (dropout, drop path), so a run resumed from a checkpoint takes the same steps as one that
never stopped, and N processes x A accumulation steps equal any other split of the same micro-batches. The
checkpoint still records the RNG states, for code that draws outside the step.

Files under ``out``::

    config.json                     the resolved run config
    log.csv, log.jsonl              one row per logged step (jsonl also holds validation results)
    loss.png                        loss curve (and J&F) written at the end
    checkpoints/step_0001000.state.pth   resume state (model, optimiser, EMA, scaler, step, RNG)
    checkpoints/ema_step_0001000.pth     EMA weights in our model format (``trek-track run --checkpoint``)
    ema_final.pth                   EMA weights after the last step
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from trek_tracker.device import select_device
from trek_tracker.errors import CheckpointError, InputError, UserError, load_failure, memory_errors
from trek_tracker.files import atomic_write, hold_folder, os_error_message, os_errors, remove_temporaries, write_text
from trek_tracker.launch import env_int
from trek_tracker.modeling.checkpoints import load_weights, read_checkpoint, save_checkpoint
from trek_tracker.modeling.registry import build_model
from trek_tracker.signals import SIGNALS, HeldSignals
from trek_tracker.train.config import TrainConfig
from trek_tracker.train.data import ClipDataset, StepSampler
from trek_tracker.train.ema import EMA, default_decay
from trek_tracker.train.losses import hard_pixel_fraction
from trek_tracker.train.schedule import apply_lr, build_optimizer
from trek_tracker.train.step import UnrolledStep

LOG_FIELDS = ("step", "loss", "aux_loss", "frame_loss", "lr", "hard_fraction", "aux_weight", "gt_memory",
              "samples_per_s", "elapsed_s")
_STATE_RE = re.compile(r"step_(\d+)\.state\.pth$")


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch_info() -> DistInfo:
    """This process's place in a ``torchrun`` launch, from its environment (one process when ``WORLD_SIZE`` is
    unset or 1, whatever ``RANK`` says): the one reading that both holding ``--out`` and writing go by."""
    world = _launch_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    rank = _launch_int("RANK")
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is not one of the WORLD_SIZE={world} processes; start the training with "
                        "torchrun, which sets both, or unset them for one process")
    return DistInfo(rank, world, _launch_int("LOCAL_RANK", 0))


def _launch_int(name: str, default: int | None = None) -> int:
    return env_int(os.environ, name, default, stops="this process cannot tell its place in the training",
                   remedy="start the training with torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE, "
                          "or unset them for one process")


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the ``torchrun`` process group when its environment is set (NCCL on CUDA, gloo on CPU)."""
    info = launch_info()
    if info.world <= 1:
        return info
    if not dist.is_initialized():
        # Rank 0 validates and writes checkpoints while the others wait in the next all-reduce: allow it time.
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", timeout=timedelta(hours=2))
    return info


# What lowers the memory of a training step (as --set overrides).
TRAIN_MEMORY_HINT = ("a larger train.accumulate (the same global batch in smaller pieces; --set train.accumulate=2), "
                     "mixed precision (--set train.amp=true), or a smaller train.clip_length or augment.crop")


def aux_weight(step: int, total: int, ratio: float) -> float:
    """Reference-frame loss weight: 1 at step 0, linearly to 0 at ``ratio * total`` steps."""
    if ratio <= 0:
        return 0.0
    return max(0.0, 1.0 - step / (ratio * total))


def latest_state(out: str | Path) -> Path | None:
    """The resume state with the highest step in ``out/checkpoints``, if any."""
    folder = Path(out) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.state.pth") if (m := _STATE_RE.search(p.name))]
    return max(found)[1] if found else None


def _rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_extra": [int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    pos, has_gauss, gauss = state["numpy_extra"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _micro_seed(seed: int, micro: int) -> int:
    return (seed * 1_000_003 + micro * 9_973 + 17) % (2**63)


RESUME_HINT = "the same command resumes from it"

# Settings a resumed run may change: where things are and how they are computed, logged and saved, not what
# is trained (processes x accumulate is any split of the same micro-batches).
RESUMABLE_CHANGES = ("out", "model.init", "data.*.root", "train.accumulate", "train.amp", "train.amp_dtype",
                     "train.workers", "train.device", "train.threads", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "val.*")


def _changed_settings(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two run configs, except :data:`RESUMABLE_CHANGES`."""
    import fnmatch

    if any(fnmatch.fnmatchcase(prefix, pattern) for pattern in RESUMABLE_CHANGES):
        return []
    if isinstance(saved, dict) and isinstance(current, dict):
        return [c for k in sorted(set(saved) | set(current), key=str)
                for c in _changed_settings(saved.get(k), current.get(k), f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current) and \
            all(isinstance(v, dict) for v in saved + current):
        return [c for i, (a, b) in enumerate(zip(saved, current, strict=True))
                for c in _changed_settings(a, b, f"{prefix}.{i}")]
    if saved == current:
        return []
    before, after = (json.dumps(v) for v in (saved, current))
    return [f"{prefix}: {before[:60]} -> {after[:60]}"]


def _ignore_signals(_worker: int) -> None:
    """Data-loader workers leave interrupts to the main process, which finishes its step and then ends them."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _writing(path: str | Path, kept: str | None = None) -> Iterator[None]:
    """A failed write of a run file (a full disk, a read-only or unwritable folder) becomes one line naming
    the file (``atomic_write`` turns ``torch.save``'s failed writes into the ``OSError`` they were).
    ``kept``: what was kept, said after the advice."""
    hint = "choose another --out" + (f"; {kept}" if kept else "")
    try:
        yield
    except OSError as err:
        raise UserError(os_error_message(err, err.filename or path, "write", hint)) from None


def _peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process of the run died."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and bool(re.search(r"gloo|NCCL|Connection (reset|closed) by peer",
                                                            str(err)))


class Trainer:
    """Runs :class:`TrainConfig`; :meth:`run` trains until ``until`` (default: the config's last step)."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = True, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.resume = resume
        self.progress = progress
        t = cfg.train
        self.dist = setup_distributed("cuda" if t.device == "cuda" or (t.device == "auto"
                                                                       and torch.cuda.is_available()) else "cpu")
        self.device = select_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        per = t.batch_size // (self.dist.world * t.accumulate)
        if per * self.dist.world * t.accumulate != t.batch_size:
            raise InputError(f"train.batch_size {t.batch_size} is not divisible by processes "
                             f"({self.dist.world}) x accumulate ({t.accumulate})")
        self.per_process_batch = per
        self.amp = bool(t.amp and self.device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if t.amp_dtype == "bfloat16" else torch.float16

        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model.name, **cfg.model.overrides)
        if cfg.augment.max_objects > self.model.config.max_objects:  # the loss could not score the extra ids
            raise InputError(f"augment.max_objects {cfg.augment.max_objects} is more objects per clip than "
                             f"{cfg.model.name} identifies ({self.model.config.max_objects}); lower it to at most "
                             f"{self.model.config.max_objects}")
        self.init_report = self._initialise(cfg.model.init) if cfg.model.init else None
        self.dataset = ClipDataset(cfg.data, length=t.clip_length, augment=cfg.augment, merge_p=t.merge_p,
                                   seed=t.seed, id_classes=self.model.config.max_objects + 1 if t.id_shuffle else None)
        if cfg.model.calibrate_bn is True or (cfg.model.calibrate_bn == "auto" and not cfg.model.init):
            self.init_report = {**(self.init_report or {"kind": "init", "partial": False, "source": None}),
                                "calibrated_frozen_bn": self._calibrate()}
        self.model.to(self.device).train()
        self.long_term_gap = t.long_term_gap or self.model.config.train_long_term_gap
        self.ema = EMA(self.model, t.ema_decay if t.ema_decay is not None else default_decay(t.steps))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        # bfloat16 has float32's range: no loss scaling (the scaler then passes everything through).
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype is torch.float16)
        self.step = 0
        self.history: list[dict] = []
        state = latest_state(self.out)
        if resume and state is not None:
            self.load_state(state)
        elif state is not None:  # a new run here would prune, log and resume among the earlier run's files
            raise InputError(f"{self.out} already holds a training run (saved up to {state.name}): resume it "
                             "(without --no-resume), or train into another --out folder")
        self.saved_step = self.step
        self.step_module: torch.nn.Module = UnrolledStep(self.model)
        if self.dist.world > 1:
            self.step_module = torch.nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=t.seq_training_start_ratio < 1.0)

    def _agree(self, totals: torch.Tensor, stop: bool) -> tuple[bool, bool]:
        """Whether every process's losses are finite, and whether any process was asked to stop (a signal
        held during the step): all processes stop together, after the same step (their gradients were
        averaged, so one process's NaN reaches every model; one process leaving first would leave the others
        waiting in the next step)."""
        flags = torch.stack([torch.isfinite(totals).all().to(torch.float32),
                             torch.tensor(-1.0 if stop else 0.0, device=totals.device)])
        if self.dist.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        finite, stop_flag = flags.tolist()
        return bool(finite), stop_flag < 0

    def _calibrate(self) -> dict:
        """Frozen-BN statistics from the first training clips, for an encoder that starts untrained
        (train/calibrate.py). The same clips on every process, so every rank calibrates alike; a resumed
        run then loads the calibrated buffers with the rest of the model."""
        from trek_tracker.train.calibrate import calibrate_frozen_bn

        clips = max(8, self.cfg.train.batch_size)
        images = torch.cat([self.dataset[g]["images"] for g in range(clips)])
        return {"layers": calibrate_frozen_bn(self.model, images), "clips": clips}

    def _initialise(self, path: str) -> dict:
        """Load the starting weights; a model started from its parent family's file (an MSDeAOT from DeAOT)
        is a partial initialisation (docs/msdeaot.md#initialisation), whose loaded / unused / new modules go
        to the run log."""
        report = load_weights(self.model, read_checkpoint(path), source=path, model_name=self.cfg.model.name)
        if report is not None:
            return {"kind": "init", "partial": True, **report.to_dict()}
        return {"kind": "init", "partial": False, "source": path}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"format": "trek-track-train/1", "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state(), "config": self.cfg.to_dict()}

    def load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:
            raise CheckpointError(f"cannot read training state {path}: {load_failure(err)}") from None
        if not isinstance(state, dict) or state.get("format") != "trek-track-train/1":
            raise CheckpointError(f"{path} is not a trek-track training state")
        if state["config"]["model"]["name"] != self.cfg.model.name:
            raise CheckpointError(f"{path} trains model {state['config']['model']['name']!r}, the config says "
                                  f"{self.cfg.model.name!r}: use another --out folder or fix the config")
        changed = _changed_settings(*(json.loads(json.dumps(c, default=str))
                                      for c in (state["config"], self.cfg.to_dict())))
        if changed:
            raise CheckpointError(f"{path} was trained with other settings ({'; '.join(changed[:5])}"
                                  f"{'; ...' if len(changed) > 5 else ''}): resuming would mix two runs. Use "
                                  "another --out folder, or the run's own settings (its config.json)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state["rng"].items()})
        self.step = int(state["step"])

    def save(self) -> None:
        """Resume state and EMA weights for the current step (rank 0), pruning old ones."""
        folder = self.out / "checkpoints"
        state = folder / f"step_{self.step:07d}.state.pth"
        with _writing(state, self._kept()), atomic_write(state, "wb") as f:
            torch.save(self.state_dict(), f)
        self.saved_step = self.step
        ema = folder / f"ema_step_{self.step:07d}.pth"
        with _writing(ema, self._kept()):
            save_checkpoint(ema, self.ema.module, extra={"step": self.step, "trained_with": "trek-track train"})
        keep = max(1, self.cfg.train.keep_checkpoints)
        states = sorted(folder.glob("step_*.state.pth"))
        for old in states[:-keep]:
            old.unlink(missing_ok=True)
            (folder / old.name.replace("step_", "ema_step_").replace(".state.pth", ".pth")).unlink(missing_ok=True)

    # ------------------------------------------------------------------ logging
    def _prepare_logs(self) -> None:
        with _writing(self.out, self._kept()):
            self._start_logs()

    def _start_logs(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=2))
        rows, records = [], []
        csv_path, jsonl_path = self.out / "log.csv", self.out / "log.jsonl"
        if csv_path.is_file():  # keep what was logged up to the resumed step
            with csv_path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        if jsonl_path.is_file():
            records = [json.loads(line) for line in jsonl_path.read_text().splitlines() if line.strip()]
            records = [r for r in records if int(r["step"]) <= self.step]
        with atomic_write(csv_path) as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)
        write_text(jsonl_path, "".join(json.dumps(r) + "\n" for r in records))
        self.history = records

    def _log(self, record: dict) -> None:
        self.history.append(record)
        with _writing(self.out / "log.jsonl", self._kept()), (self.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if record.get("kind") == "train":
            with _writing(self.out / "log.csv", self._kept()), (self.out / "log.csv").open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore").writerow(record)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict | None:
        v = self.cfg.val
        if not v.root:
            return None
        from trek_tracker.train.datasets.base import read_list
        from trek_tracker.train.validate import evaluate_model

        sequences = v.sequences or (read_list(Path(v.sequences_file)) if v.sequences_file else None)
        res = evaluate_model(self.ema.module, v.root, sequences=sequences, max_long_edge=v.max_long_edge,
                             max_frames=v.max_frames, box_metrics=v.box_metrics,
                             progress=self.progress and f"validate step {self.step}")
        record = {"kind": "val", "step": self.step, "J&F": res["J&F"], "J": res["J_mean"], "F": res["F_mean"]}
        if v.box_metrics:
            record.update(box_success=res["box_success"], box_precision=res["box_precision"])
        self._log(record)
        return record

    # ------------------------------------------------------------------ loop
    def _loader(self, until: int) -> DataLoader:
        t = self.cfg.train
        sampler = StepSampler(self.per_process_batch, rank=self.dist.rank, world=self.dist.world,
                              start_micro=self.step * t.accumulate, num_micro=(until - self.step) * t.accumulate)
        return DataLoader(self.dataset, batch_size=self.per_process_batch, sampler=sampler, num_workers=t.workers,
                          pin_memory=self.device.type == "cuda", drop_last=False,
                          persistent_workers=False, worker_init_fn=_ignore_signals if t.workers else None)

    def _mean(self, value: torch.Tensor) -> float:
        if self.dist.world > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.dist.world
        return float(value)

    def run(self, until: int | None = None) -> list[dict]:
        """Train to step ``until`` (default: ``train.steps``); returns the logged records. Running out of
        memory is one line that names the step and what needs less (:class:`~trek_tracker.errors.OutOfMemory`)."""
        with memory_errors(lambda: f"at training step {self.step + 1}", TRAIN_MEMORY_HINT,
                           kept="the last saved state is kept: the same command resumes from it"), \
                HeldSignals(repeats_act=(signal.SIGINT,) if self.dist.world == 1 and "TORCHELASTIC_RUN_ID"
                            not in os.environ else ()) as boundary:
            try:
                return self._run(until, boundary)
            except KeyboardInterrupt as err:  # Ctrl-C, or a signal the CLI made an interrupt
                self._keep_state(boundary)
                err.hint = self._kept() or "no training step was saved yet"
                raise
            except Exception as err:
                if boundary.held is not None and not isinstance(err, UserError):  # stopping, and another
                    # process left first: the interrupt it is
                    try:
                        boundary.handle()
                    except KeyboardInterrupt as stop:
                        stop.hint = self._kept() or "no training step was saved yet"
                        raise stop from None
                if self.dist.world > 1 and _peer_failure(err):
                    first = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(err).split()))[:120]
                    kept = self._kept() or "no training step was saved yet"
                    raise UserError(f"another process of this training run stopped (at step {self.step + 1}: "
                                    f"{first}); see its own message; {kept}") from None
                raise

    def _kept(self) -> str | None:
        return f"the state at step {self.saved_step} is kept: {RESUME_HINT}" if self.saved_step else None

    def _keep_state(self, boundary: HeldSignals) -> None:
        """After an interrupt: save the state of the last finished step unless saved already, or torn."""
        if not self.dist.main or boundary.torn or self.step <= self.saved_step:
            return
        try:
            self.save()
        except BaseException as err:  # noqa: BLE001 - the interrupt in flight is the one to report
            import logging

            logging.getLogger(__name__).warning("could not save the state of step %d (%s); the one of step %d is "
                                                "kept", self.step, err, self.saved_step)

    def _train_step(self, batches: Iterator, gt_until: int, start_time: float, start_step: int, until: int,
                    bar, boundary: HeldSignals) -> bool:
        """One optimiser step with its log row and scheduled checkpoint; returns whether every process is to
        stop after it (a signal held during it)."""
        t = self.cfg.train
        main = self.dist.main
        step = self.step
        gt_memory = step < gt_until
        lr = apply_lr(self.optimizer, step, t.steps, self.cfg.optim, freeze_id_bank=not gt_memory)
        frac = hard_pixel_fraction(step, t.steps, final=t.hard_pixels_final, ratio=t.hard_mining_ratio)
        aux_w = aux_weight(step, t.steps, t.aux_loss_ratio)
        totals = torch.zeros(3, device=self.device)
        for micro in range(t.accumulate):
            # One seed per global micro-batch: N processes x A accumulation steps draw the same
            # dropout masks as any other split of the same micro-batches.
            torch.manual_seed(_micro_seed(t.seed, (step * t.accumulate + micro) * self.dist.world
                                          + self.dist.rank))
            batch = next(batches)
            sync = micro == t.accumulate - 1 or self.dist.world == 1
            ctx = contextlib.nullcontext() if sync else self.step_module.no_sync()
            with ctx, torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.step_module(batch["images"].to(self.device, non_blocking=True),
                                       batch["labels"].to(self.device, non_blocking=True),
                                       batch["num_objects"].to(self.device), hard_fraction=frac,
                                       aux_weight=aux_w, gt_memory=gt_memory,
                                       long_term_gap=self.long_term_gap,
                                       id_perm=batch["id_perm"].to(self.device) if "id_perm" in batch else None)
                self.scaler.scale(out.loss / t.accumulate).backward()
            totals += torch.stack([out.loss.detach(), out.aux_loss, out.frame_losses.mean()]) / t.accumulate
        finite, stop = self._agree(totals, boundary.held is not None)
        if not self.scaler.is_enabled() and not finite:  # (fp16's scaler skips such steps)
            raise UserError(f"training diverged at step {step}: the loss is not finite ({totals.tolist()}); the "
                            "weights were not updated. Lower optim.lr (or raise optim.warmup_ratio) and run again: "
                            "it resumes from the last saved state")
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1

        log_now = self.step % max(1, t.log_every) == 0 or self.step == until
        if log_now:
            loss, aux, frame = (self._mean(v) for v in totals)
        if main:
            if log_now:
                elapsed = time.perf_counter() - start_time
                rate = (self.step - start_step) * t.batch_size / max(elapsed, 1e-9)
                self._log({"kind": "train", "step": self.step, "loss": loss, "aux_loss": aux,
                           "frame_loss": frame, "lr": lr, "hard_fraction": frac, "aux_weight": aux_w,
                           "gt_memory": int(gt_memory), "samples_per_s": rate, "elapsed_s": elapsed})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
            if bar is not None:
                bar.update(1)
        if main and (self.step % max(1, t.checkpoint_every) == 0 or self.step == until):
            self.save()
        # One process alone: a signal held after the agreement above stops it now; several stop together
        # after the next step, whose agreement carries it.
        return stop or (self.dist.world == 1 and boundary.held is not None)

    def _run(self, until: int | None, boundary: HeldSignals) -> list[dict]:
        t = self.cfg.train
        until = t.steps if until is None else min(until, t.steps)
        main = self.dist.main
        if main:
            self._prepare_logs()
            if self.step == 0:
                if self.init_report is not None:
                    self._log({**self.init_report, "step": 0})
                self.validate()
        if self.step >= until:  # resumed after its last step: finish what a stop may have left undone
            if main and self.step == until and self.step > 0 and not any(
                    r.get("kind") == "val" and r.get("step") == self.step for r in self.history):
                self.validate()
            return self._finish()
        bar = None
        if main and self.progress:
            from tqdm import tqdm
            bar = tqdm(total=until, initial=self.step, desc="train", dynamic_ncols=True)
        batches = iter(self._loader(until))
        start_time, start_step = time.perf_counter(), self.step
        gt_until = int(t.seq_training_start_ratio * t.steps)
        while self.step < until:
            with boundary.unit():
                stop = self._train_step(batches, gt_until, start_time, start_step, until, bar, boundary)
                if stop:  # a signal during the step: keep its state, then stop as the signal asks
                    if main and self.saved_step < self.step:
                        self.save()
                    if self.dist.world > 1:
                        dist.barrier()  # no process leaves while the state is written
                    self.saved_step = self.step
            if stop:
                if bar is not None:
                    bar.close()
                boundary.handle(boundary.held or signal.SIGINT)  # held here, or by another process
            if main and (self.step == until or (self.cfg.val.every and self.step % self.cfg.val.every == 0)):
                self.validate()  # also at the end of every run, interrupted by --until or not
            if self.dist.world > 1 and (self.step % max(1, t.checkpoint_every) == 0 or self.step == until):
                with boundary.unit():
                    dist.barrier()
                self.saved_step = self.step  # rank 0 got here: it saved this step
        if bar is not None:
            bar.close()
        if boundary.held is not None:  # held in the last step: stop as asked (its state is saved)
            boundary.handle()
        return self._finish()

    def _finish(self) -> list[dict]:
        """The final EMA weights (after the last step) and the loss plot."""
        if self.dist.main:
            if self.step == self.cfg.train.steps:
                with _writing(self.out / "ema_final.pth", self._kept()):
                    save_checkpoint(self.out / "ema_final.pth", self.ema.module,
                                    extra={"step": self.step, "trained_with": "trek-track train"})
            with _writing(self.out / "loss.png", self._kept()):
                plot_log(self.history, self.out / "loss.png")
        if self.dist.world > 1:
            dist.barrier()
        return self.history


def plot_log(records: list[dict], path: Path) -> None:
    """Loss against step (and validation J&F on a second axis), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="loss")
        ax.plot([r["step"] for r in train], [r["frame_loss"] for r in train], label="frame loss", alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["J&F"] for r in val], "o-", color="tab:green", label="val J&F")
        ax2.set_ylabel("J&F")
        ax2.legend(loc="upper right")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def train(cfg: TrainConfig, *, resume: bool = True, until: int | None = None, progress: bool = True
          ) -> list[dict]:
    """Run (or resume) a training run; leaves the process group if it created one. The first process (the
    only one that writes) holds ``cfg.out`` throughout, so that a second training into it, the same command
    given twice or one per task of an ``srun`` step without one ``torchrun`` over them, is refused in one line
    instead of pruning, logging and resuming among this one's files."""
    held = None
    if launch_info().main:
        with os_errors(cfg.out, hint="choose another --out"):
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
        held = hold_folder(cfg.out)
    try:
        if held is not None:  # the only writer here: what a training killed while it wrote left half-written
            with os_errors(action="remove", hint="choose another --out"):  # names the file it could not remove
                remove_temporaries(cfg.out, Path(cfg.out) / "checkpoints")
        trainer = Trainer(cfg, resume=resume, progress=progress)
        try:
            return trainer.run(until)
        finally:
            if trainer.dist.world > 1 and dist.is_initialized():
                dist.destroy_process_group()
    finally:
        if held is not None:
            os.close(held)
