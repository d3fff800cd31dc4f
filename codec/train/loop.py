"""The training loop shared by every stage: accelerate, resumable checkpoints, a CSV log, a loss plot, model packs.

One run directory per stage run (RUN_DIR):

* `checkpoint.pt`: the model (its pack state), the optimizer, the step, the wall time spent so far, every RNG
  state and the model config the run started from. A run that finds one continues from it (the step count goes
  on; `steps` is the total to reach), so a stage trains over many sessions, e.g. with a time budget each.
* `log.csv`: every `log_every` steps: step, seconds (training wall time, all sessions), s_per_it, lr, loss and
  the stage's columns, each averaged over the steps since the previous line. Lines past the checkpoint's step
  (written before an interruption) are dropped on resume.
* `loss.png`: one panel per column against the step (matplotlib, redrawn at each checkpoint).
* `pack/`: a model pack (`codec.diffvc.pack.write_pack`: config.json, fp16 safetensors, README) at the end and
  every `pack_every` steps; the next stage starts from it (`--pack-from RUN_DIR`). The pack's config carries the
  training history in `extra["training"]`, one record per stage run.

Accelerate (`Accelerator().prepare` of the stage module, the optimizer and the data loader) runs the same loop
on a CPU, one GPU or several (docs/DESIGN.md section 7); the stage module's `forward` computes the loss, so a
DDP wrapper sees every forward.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from codec.diffvc.config import DiffVCConfig
from codec.diffvc.entropy import FactorizedPrior
from codec.diffvc.latent_codec import HyperpriorCodec
from codec.diffvc.model import DiffVCModel
from codec.diffvc.pack import PackInfo, write_pack
from codec.errors import CodecError
from codec.train.stages import StageOptions, TrainingStage, make_stage

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"
PLOT_FILE = "loss.png"
PACK_DIR = "pack"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class LoopSettings:
    """How a stage run trains. steps: the total step count to reach (across resumes); batch: sequences per step
    and process; lr: Adam's learning rate; time_budget_min: stop cleanly (checkpoint + pack) after this many
    minutes of this session (None: no limit); log_every / checkpoint_every / pack_every: in steps (pack_every 0:
    only at the end); max_grad_norm: gradient clipping (L2 norm over the trained parameters); workers: data
    loader processes; mixed_precision: accelerate's "no" | "fp16" | "bf16"; source: where the data came from
    (provenance in the pack); warmup: the lr rises linearly over the run's first `warmup` steps (counted from step
    0, so a resumed run past them trains at `lr`): Adam's first updates move every weight by about lr whatever the
    gradient's noise, which a stage whose output starts at zero shows as noise in the picture); ema: the decay of
    an exponential moving average of the trained weights that the packs get (0: off; `WeightAverage`)."""

    out: Path
    steps: int
    batch: int
    lr: float
    seed: int = 0
    time_budget_min: float | None = None
    log_every: int = 10
    checkpoint_every: int = 100
    pack_every: int = 500
    max_grad_norm: float = 1.0
    workers: int = 0
    mixed_precision: str = "no"
    source: str = ""
    warmup: int = 0
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or not self.lr > 0:
            raise CodecError(f"need steps >= 0, batch >= 1 and lr > 0: {self}")
        if min(self.log_every, self.checkpoint_every) < 1 or self.pack_every < 0 or self.warmup < 0:
            raise CodecError("log_every and checkpoint_every must be >= 1, pack_every and warmup >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise CodecError(f"ema must be in [0, 1), got {self.ema}")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise CodecError(f"time budget must be positive, got {self.time_budget_min} min")


class WeightAverage:
    """An exponential moving average of the trained parameters (Polyak averaging; what diffusion models are
    sampled with, Ho et al. 2020, Rombach et al. 2022): the packs get the average, which keeps the direction most
    batches agree on and smooths out what single batches pushed the weights to. The decay ramps up as
    min(decay, (1 + step) / (10 + step)) (TensorFlow's ExponentialMovingAverage with num_updates), so the average
    does not hold on to the initial weights."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list[torch.nn.Parameter], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, p in zip(self.shadow, params, strict=True):
            average.lerp_(p.detach(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, params: list[torch.nn.Parameter]) -> Iterator[None]:
        """The averaged weights in the parameters for the duration of the block, the trained ones after it."""
        kept = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, average in zip(params, self.shadow, strict=True):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, trained in zip(params, kept, strict=True):
                    p.copy_(trained)

    def state_dict(self) -> list[Tensor]:
        return [t.cpu() for t in self.shadow]

    def load_state_dict(self, state: list[Tensor]) -> None:
        if len(state) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(state, self.shadow)):
            raise CodecError("the checkpoint's weight average does not fit the trained parameters")
        self.shadow = [t.to(s.device, s.dtype) for t, s in zip(state, self.shadow)]


def warmup_lr(settings: LoopSettings, step: int) -> float:
    """The base learning rate of step `step` (1-based): linear warmup over `settings.warmup` steps, then `lr`."""
    return settings.lr * min(1.0, step / settings.warmup) if settings.warmup else settings.lr


@dataclass(frozen=True)
class LoopResult:
    """What a run did: the step reached, training wall seconds (all sessions), why it stopped ("steps" | "time" |
    "signal"), the pack written and the last logged values."""

    step: int
    seconds: float
    stopped_by: str
    pack: PackInfo | None
    last_log: dict[str, float]


class ResumableSampler(Sampler[int]):
    """Dataset indices from an endless sequence of seeded permutations of range(length): `count` of them from
    position `start`. Resuming at step s starts at s * batch * processes, so the data continues where it stopped
    without loading the skipped items."""

    def __init__(self, length: int, seed: int, start: int, count: int) -> None:
        if length < 1:
            raise CodecError("the training dataset is empty")
        self.length, self.seed, self.start, self.count = length, seed, start, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        position, end = self.start, self.start + self.count
        while position < end:
            epoch, offset = divmod(position, self.length)
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            take = min(self.length - offset, end - position)
            yield from order[offset : offset + take].tolist()
            position += take


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Stack the tensor entries every item has ("frames" [T, 3, H, W], "flow" [T - 1, 2, H, W] where all have it)
    into [N, ...]; other entries (names, sources) are dropped."""
    keys = [k for k, v in items[0].items() if isinstance(v, Tensor | np.ndarray) and all(k in it for it in items)]
    if "frames" not in keys:
        raise CodecError("training items need a 'frames' tensor [T, 3, H, W]")
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in keys}


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


def run_stage(
    stage_name: str,
    build_model: Callable[[], DiffVCModel],
    dataset: Dataset,
    settings: LoopSettings,
    options: StageOptions | None = None,
    record: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    collate_fn: Callable[[list], dict] | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
) -> LoopResult:
    """Train one stage into `settings.out`, resuming from its checkpoint when there is one.

    build_model: makes the starting model (from the previous stage's pack or a preset) when no checkpoint exists.
    dataset: items {"frames": [T, 3, H, W], "flow": ...} (see `collate_clips`). record: provenance for the
    pack's training history (e.g. {"from": "<pack> <sha>"}). collate_fn (default `collate_clips`) and
    worker_init_fn go to the DataLoader (the data pipeline has its own, see codec/train/data.py). Returns when
    `settings.steps` is reached or the time budget is spent, after writing the checkpoint, the plot and the pack.
    """
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    settings.out.mkdir(parents=True, exist_ok=True)
    accelerator = _make_accelerator(settings.mixed_precision)

    # 1. The model: from the checkpoint (resume) or fresh; the stage over it and its optimizer.
    start = _starting_point(stage_name, build_model, settings, record, say)
    stage = make_stage(stage_name, start.model, options, settings.seed, accelerator.process_index)
    params = stage.trainable_parameters()
    optimizer = torch.optim.Adam(stage.parameter_groups(settings.lr), lr=settings.lr)

    # 2. Data that continues where the checkpoint stopped; the optimizer, RNGs and log as the checkpoint left them.
    loader = _resumed_loader(dataset, settings, start.step, accelerator.num_processes, collate_fn, worker_init_fn)
    stage, optimizer, loader = accelerator.prepare(stage, optimizer, loader)
    session = _Session(stage_name, settings, accelerator, stage, optimizer, params, start, say)
    if start.checkpoint is not None:
        session.resume(start.checkpoint)
    session.announce()

    # 3. Train until the last step, the time budget or SIGTERM; checkpoints and packs on their schedule.
    session.train(loader)

    # 4. Finish: checkpoint, plot and pack (also when nothing was left to train and no pack exists yet).
    return session.finish()


def _make_accelerator(mixed_precision: str):
    """accelerate's `Accelerator` with this run's mixed precision ("no" | "fp16" | "bf16")."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # DDP: some parameters may get no gradient in a step (find_unused); buffers are not broadcast, because the
    # entropy coders' tables are rebuilt (resized) on the main process when it writes a pack, and no buffer here
    # changes in training (no batch norm).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    # accelerate keeps one mixed-precision setting per process: a second run in the same process (a test, a
    # notebook) with another setting gets a fresh one; the processes' own state (PartialState) is kept
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, kwargs_handlers=[ddp])
    except ValueError as e:  # e.g. bf16 on a GPU without it
        raise CodecError(f"--mixed-precision {mixed_precision}: {e}") from None
    if mixed_precision == "fp16" and accelerator.device.type == "cpu":  # accelerate would run float32
        raise CodecError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 (autocast) or no")
    return accelerator


@dataclass
class _Start:
    """Where a session starts: the model, the step reached and the training seconds spent before (0 when fresh),
    the provenance record, and the checkpoint it resumes (None: a fresh run)."""

    model: DiffVCModel
    step: int
    seconds: float
    record: dict[str, Any]
    checkpoint: dict[str, Any] | None


def _starting_point(
    stage_name: str,
    build_model: Callable[[], DiffVCModel],
    settings: LoopSettings,
    record: dict[str, Any] | None,
    say: Callable[[str], None],
) -> _Start:
    """The model from `settings.out`'s checkpoint (which must be of this stage), or `build_model()` seeded."""
    path = settings.out / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        torch.manual_seed(settings.seed)
        return _Start(build_model(), 0, 0.0, dict(record or {}), None)
    if checkpoint["stage"] != stage_name:
        raise CodecError(
            f"{settings.out} holds a checkpoint of stage {checkpoint['stage']!r}, not {stage_name!r}: use another --out"
        )
    resumed = dict(checkpoint.get("record", record) or {})
    asked, trained = ((r or {}).get("quantization", "noise") for r in (record, resumed))
    if asked != trained:
        raise CodecError(f"{settings.out} trains with --quantization {trained}: resume it with that, not {asked}")
    model = model_from_checkpoint(checkpoint)
    step, seconds = int(checkpoint["step"]), float(checkpoint["seconds"])
    say(f"resuming {stage_name} from {path} at step {step}")
    return _Start(model, step, seconds, resumed, checkpoint)


def _resumed_loader(
    dataset: Dataset,
    settings: LoopSettings,
    step: int,
    processes: int,
    collate_fn: Callable[[list], dict] | None,
    worker_init_fn: Callable[[int], None] | None,
) -> DataLoader:
    """The batches of steps step + 1 .. settings.steps over all processes (`ResumableSampler`)."""
    remaining = max(0, settings.steps - step)
    per_step = settings.batch * processes
    sampler = ResumableSampler(len(dataset), settings.seed, step * per_step, remaining * per_step)
    return DataLoader(
        dataset,
        batch_size=settings.batch,
        sampler=sampler,
        collate_fn=collate_fn or collate_clips,
        num_workers=settings.workers,
        worker_init_fn=worker_init_fn if settings.workers else None,
        drop_last=True,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(settings.seed),
    )  # not the global RNG: resumable


class _Session:
    """One session of a stage run, over the prepared (accelerate) stage and optimizer: the steps it trains, the log
    window (sums of the logged values since the last line), and the checkpoints and packs it writes."""

    def __init__(
        self,
        name: str,
        settings: LoopSettings,
        accelerator,
        stage: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        start: _Start,
        say: Callable[[str], None],
    ) -> None:
        self.name, self.settings, self.out, self.say = name, settings, settings.out, say
        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.stage, self.optimizer, self.params = stage, optimizer, params
        self.unwrapped: TrainingStage = accelerator.unwrap_model(stage)
        self.config, self.record = start.model.config, start.record
        self.step, self.seconds_before = start.step, start.seconds
        self.average = WeightAverage(params, settings.ema) if settings.ema else None
        self.columns = ("loss", *self.unwrapped.log_columns)
        self.last_log: dict[str, float] = {}
        self.pack_info: PackInfo | None = None
        self.stopped_by = "steps"
        self.sums: dict[str, Tensor] = {}
        self.window_steps = 0
        self.window_start = self.session_start = time.perf_counter()

    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Adam's moments (at this session's lr), every RNG, the log up to the checkpoint's step and the weight
        average, as the checkpoint left them."""
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except ValueError as e:  # a checkpoint from before the parameter groups: keep the weights, new moments
            self.say(f"optimizer state not resumed ({e}); Adam starts afresh from the checkpoint's weights")
        for group in self.optimizer.param_groups:  # this session's lr, e.g. a lower one to finish a long run
            group["lr"] = self.settings.lr * group.get("lr_scale", 1.0)
        set_rng_state(checkpoint["rng"])
        trim_log(self.out / LOG_FILE, self.step)
        last_logged = read_log(self.out / LOG_FILE)[-1:]
        self.last_log = dict(last_logged[0]) if last_logged else {}
        if self.average is not None and "ema" in checkpoint:
            self.average.load_state_dict(checkpoint["ema"])

    def announce(self) -> None:
        if self.main:
            trained = sum(p.numel() for p in self.params)
            self.say(
                f"stage {self.name}: {trained / 1e6:.2f} M trained parameters on {self.accelerator.device} "
                f"({self.accelerator.num_processes} process(es)), step {self.step} -> {self.settings.steps}, "
                f"batch {self.settings.batch}"
            )

    def train(self, loader: DataLoader) -> None:
        """A step per batch, a log line every `log_every` steps, until the last step, the time budget or SIGTERM
        (`stopped_by`); a checkpoint every `checkpoint_every` steps, with a pack every `pack_every`. Ctrl-C saves
        the checkpoint and re-raises."""
        settings = self.settings
        self.window_start = self.session_start = time.perf_counter()  # the clocks start with the first step
        self.stage.train()
        stop = _StopRequest()
        try:
            for batch in loader:
                self._train_step(batch)
                if self.step % settings.log_every == 0 or self.step == settings.steps:
                    self._log_window()
                stopped_by = self._stop_reason(stop)
                if stopped_by is not None:
                    self.stopped_by = stopped_by
                    break
                pack_due = settings.pack_every > 0 and self.step % settings.pack_every == 0
                if pack_due or self.step % settings.checkpoint_every == 0:
                    self.save(with_pack=pack_due)
        except KeyboardInterrupt:  # Ctrl-C: keep what was trained (the log's later lines are dropped on resume)
            self.say(f"interrupted: saving the checkpoint at step {self.step}")
            self.save(with_pack=False)
            raise
        finally:
            stop.restore()

    def finish(self) -> LoopResult:
        """Log what is left of the window, write the checkpoint, the plot and the pack; what the run did."""
        if self.window_steps:
            self.last_log = self._write_log_line()
        self.save(with_pack=True)
        if self.main:
            reason = {"time": "time budget", "signal": "SIGTERM", "steps": "steps"}[self.stopped_by]
            self.say(f"stage {self.name}: stopped at step {self.step} ({reason}); pack {self.out / PACK_DIR}")
        return LoopResult(self.step, self.seconds_now(), self.stopped_by, self.pack_info, self.last_log)

    def seconds_now(self) -> float:
        """Training wall seconds, all sessions."""
        return self.seconds_before + time.perf_counter() - self.session_start

    def save(self, with_pack: bool) -> None:
        """The checkpoint and the plot, and with_pack: the pack, of the weight average where there is one (main
        process; every process waits for it)."""
        self.accelerator.wait_for_everyone()
        if self.main:
            save_checkpoint(
                self.out / CHECKPOINT_FILE,
                self.name,
                self.unwrapped.model,
                self.optimizer,
                self.step,
                self.seconds_now(),
                self.record,
                config=self.config,
                extra={"ema": self.average.state_dict()} if self.average is not None else None,
            )
            plot_log(self.out / LOG_FILE, self.out / PLOT_FILE)
            if with_pack:
                with self.average.applied(self.params) if self.average is not None else contextlib.nullcontext():
                    self.pack_info = write_training_pack(
                        self.unwrapped.model,
                        self.out / PACK_DIR,
                        self.name,
                        self.step,
                        self.seconds_now(),
                        self.settings,
                        self.record,
                        self.last_log,
                    )
        self.accelerator.wait_for_everyone()

    def _train_step(self, batch: dict[str, Tensor]) -> None:
        """One optimizer step (warmup lr, autocast, clipping, the weight average); its values into the window."""
        settings, optimizer = self.settings, self.optimizer
        current = self.step + 1
        if settings.warmup:
            for group in optimizer.param_groups:
                group["lr"] = warmup_lr(settings, current) * group.get("lr_scale", 1.0)
        with self.accelerator.autocast():
            values = self.stage(batch, current)
        self.accelerator.backward(values["loss"])
        if settings.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, settings.max_grad_norm)
        optimizer.step()
        if self.average is not None:
            self.average.update(self.params, current)
        optimizer.zero_grad(set_to_none=True)
        self.step = current
        for name in self.columns:
            self.sums[name] = self.sums.get(name, 0) + values[name].detach().float()
        self.window_steps += 1

    def _log_window(self) -> None:
        """The window's log line and progress line; non-finite values stop the run before they are checkpointed."""
        self.last_log = self._write_log_line()
        if self.main:
            self.say(_progress_line(self.name, self.step, self.settings.steps, self.last_log))
        if not all(math.isfinite(v) for v in self.last_log.values()):  # keep the last good checkpoint
            raise CodecError(
                f"stage {self.name}: non-finite values at step {self.step} ({self.last_log}); "
                f"{self.out / CHECKPOINT_FILE} is the last good state: resume with a lower --lr"
            )
        self.sums, self.window_steps, self.window_start = {}, 0, time.perf_counter()

    def _write_log_line(self) -> dict[str, float]:
        """The window's means (over all processes) as a log.csv line, written by the main process; the line."""
        seconds, window_s = self.seconds_now(), time.perf_counter() - self.window_start
        means = {name: self.sums[name] / self.window_steps for name in self.columns}
        if self.accelerator.num_processes > 1:
            means = {k: self.accelerator.reduce(v.reshape(1), reduction="mean")[0] for k, v in means.items()}
        row = {
            "step": self.step,
            "seconds": round(seconds, 2),
            "s_per_it": round(window_s / max(self.window_steps, 1), 4),
            "lr": self.optimizer.param_groups[0]["lr"],
            **{k: float(v) for k, v in means.items()},
        }
        if self.main:
            append_log(self.out / LOG_FILE, row)
        return {k: float(v) for k, v in row.items()}

    def _stop_reason(self, stop: _StopRequest) -> str | None:
        """Why to stop after this step: "steps" (the last), "time" (the budget, on any process) or "signal"
        (SIGTERM, on any process); None to go on. Every process asks at every step, so all stop at the same one."""
        budget_min = self.settings.time_budget_min
        out_of_time = budget_min is not None and time.perf_counter() - self.session_start >= budget_min * 60
        anywhere = _any_process(self.accelerator, out_of_time or stop.requested)
        if self.step == self.settings.steps:
            return "steps"
        return ("time" if out_of_time else "signal") if anywhere else None


class _StopRequest:
    """SIGTERM (e.g. `kill PID` of a background run, whose SIGINT is ignored) asks the loop to stop after the
    current step, as the time budget does: checkpoint, plot and pack. Installed from the main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is true on any process (all of them stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def _progress_line(stage: str, step: int, total: int, row: dict[str, float]) -> str:
    values = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("step", "seconds", "s_per_it", "lr"))
    eta = (total - step) * row["s_per_it"] / 60
    return (
        f"{stage} {step}/{total}  {row['seconds'] / 60:.1f} min  {row['s_per_it']:.2f} s/it  ETA {eta:.0f} min  "
        f"{values}"
    )


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Every RNG the training touches, in types `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    stage: str,
    model: DiffVCModel,
    optimizer,
    step: int,
    seconds: float,
    record: dict[str, Any],
    config: DiffVCConfig,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically (a temporary file renamed over the old one); `extra`: more entries (the
    weight average)."""
    payload = {
        **(extra or {}),
        "version": CHECKPOINT_VERSION,
        "stage": stage,
        "step": step,
        "seconds": seconds,
        "config": json.dumps(config.to_dict()),
        "record": json.dumps(record),
        "model": {k: v.detach().cpu() for k, v in model.trainable_state().items()},
        "optimizer": optimizer.state_dict(),
        "rng": get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path` (config and record decoded), or None when there is none."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CodecError(f"checkpoint {path} cannot be read ({e}); delete it to start the stage afresh") from None
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CodecError(f"checkpoint {path} has version {payload.get('version')}, expected {CHECKPOINT_VERSION}")
    payload["config"] = json.loads(payload["config"])
    payload["record"] = json.loads(payload["record"])
    return payload


def checkpoint_config(path: Path) -> DiffVCConfig | None:
    """The model config of the checkpoint at `path` (None when there is none)."""
    checkpoint = load_checkpoint(path)
    return None if checkpoint is None else DiffVCConfig.from_dict(checkpoint["config"])


def model_from_checkpoint(checkpoint: dict[str, Any]) -> DiffVCModel:
    model = DiffVCModel(DiffVCConfig.from_dict(checkpoint["config"]))
    missing, unexpected = model.load_state_dict(checkpoint["model"], strict=False)
    missing = [k for k in missing if not k.startswith("latent_space.vae.")]
    if missing or unexpected:
        raise CodecError(f"checkpoint does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


# --------------------------------------------------------------------------------------------------------------
# Packs
# --------------------------------------------------------------------------------------------------------------


def trains_entropy_models(model: DiffVCModel) -> bool:
    """Whether any parameter of an entropy-coded part (hyperprior codecs, factorized priors) is being trained."""
    return any(
        p.requires_grad
        for m in model.modules()
        if isinstance(m, (HyperpriorCodec, FactorizedPrior))
        for p in m.parameters()
    )


def write_training_pack(
    model: DiffVCModel,
    folder: Path,
    stage: str,
    step: int,
    seconds: float,
    settings: LoopSettings,
    record: dict[str, Any],
    last_log: dict[str, float],
) -> PackInfo:
    """Write the model as a pack, with the entropy coders' tables updated when this stage trained what they code
    (a frozen codec keeps the tables it came with, bit for bit: updating them again from half-precision weights
    would change its streams); its config's `extra["training"]` gets this run's record appended to the history."""
    if trains_entropy_models(model) or not model.has_coding_tables():
        model.update_entropy_models()
    entry = {
        "stage": stage,
        "steps": step,
        "minutes": round(seconds / 60, 1),
        "batch": settings.batch,
        "lr": settings.lr,
        "ema": settings.ema,
        "warmup": settings.warmup,
        "seed": settings.seed,
        "data": settings.source,
        **record,
        "last_log": {k: round(v, 5) for k, v in last_log.items()},
    }
    history = [*model.config.extra.get("training", []), entry]
    config = replace(model.config, extra={**model.config.extra, "training": history})
    return write_pack(folder, config.to_dict(), model.trainable_state(), _readme(config, history, settings))


def _readme(config: DiffVCConfig, history: list[dict[str, Any]], settings: LoopSettings) -> str:
    lines = [
        f"# DiffVC model pack ({config.preset} preset), trained with `python -m codec train`",
        "",
        "Provenance: trained in this repository, stage by stage (docs/DESIGN.md section 3), from the starting point",
        "the first row's `from` names (a random init, or for the full preset SD-2.1-base's VAE and U-Net). Weights",
        "are stored in fp16. Rates and metrics below are training-time *estimates* on training crops, not",
        "evaluations: evaluate with `python -m codec eval` before quoting results.",
        "",
        "| stage | steps | minutes | batch | lr | data | last logged values |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in history:
        logged = ", ".join(
            f"{k} {v:.4g}" for k, v in h.get("last_log", {}).items() if k not in ("step", "seconds", "lr")
        )
        lines.append(
            f"| {h.get('stage')} | {h.get('steps')} | {h.get('minutes')} | {h.get('batch')} | "
            f"{h.get('lr')} | {h.get('data') or '-'} | {logged} |"
        )
    lines += ["", "Starting points:", *(f"* {h.get('stage')}: {h.get('from', '-')}" for h in history)]
    lines += ["", f"Settings of the last stage: `{json.dumps(_jsonable(asdict(settings)))}`", ""]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


# --------------------------------------------------------------------------------------------------------------
# Log and plot
# --------------------------------------------------------------------------------------------------------------


def append_log(path: Path, row: dict[str, float]) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_log(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if float(r["step"]) <= step]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or [])
        writer.writeheader()
        writer.writerows(rows)


def plot_log(log_path: Path, png_path: Path) -> None:
    """One panel per logged column (loss first) against the step."""
    rows = read_log(log_path)
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [k for k in rows[0] if k not in ("step", "seconds", "lr", "s_per_it", "qp")] + ["s_per_it"]
    cols = min(3, len(columns))
    nrows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes.flat, columns):
        ax.plot(steps, [r[name] for r in rows], lw=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if (
            name == "loss"
            and all(r[name] > 0 for r in rows)
            and max(r[name] for r in rows) > 10 * min(r[name] for r in rows)
        ):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.suptitle(f"{png_path.parent.name}: {int(steps[-1])} steps, {rows[-1]['seconds'] / 60:.1f} min", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
