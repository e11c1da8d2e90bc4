"""`train(cfg)`: build, prepare, loop (generator step, discriminator step), log, sample, checkpoint.

Runs under one process (`accelerate launch train/main.py`, plain `python`) or several
(`torchrun --nproc_per_node N`, `accelerate launch --multi_gpu`). Re-running the same command with
the same output folder resumes from its newest complete checkpoint, at the same step and with the
same data order.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors import SafetensorError
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import kernels
from dynast.data import build_dataset, correspondence_accuracy, semantic_to_rgb
from dynast.data.config import REAL_KINDS
from dynast.discriminator import MultiscaleDiscriminator, check_image_size
from dynast.generator import Generator
from dynast.io import save_pretrained
from dynast.manifest import write_manifest
from dynast.run_layout import (
    FINAL_DIR,
    GENERATOR_DIR,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    SAMPLES_DIR,
    sample_name,
)
from dynast.vgg import VGG19Features, resolve_vgg_weights

from . import checkpoints as ckpt
from .config import RESUMABLE_CHANGES, RunConfig
from .data_order import DataPosition, micro_batches
from .disk import device_of, disk_full
from .errors import TrainingError, clean_message
from .init_from import initialise_from
from .losses import (
    per_sample_l1,
)
from .metrics_log import MetricsLog, read_metrics
from .precision import PrecisionChoice, choose_precision, cpu_bf16
from .run_folder import (
    check_output_paths,
    check_run_folder,
    lock_run_folder,
    recover_final,
    write_final,
)
from .samples import sample_grid, save_png
from .steps import (
    LossSums,
    StepParts,
    discriminator_step,
    generator_step,
    global_weights,
)
from .sync_batch_norm import count_batch_norms, synchronise_batch_norm
from .threads import follow_free_cores

EVAL_KEYS = ("eval/correspondence_accuracy", "eval/l1", "eval/warp_l1")


@dataclass(kw_only=True)
class TrainResult:
    """What a finished `train` reports: the run folder, the last step, the evaluation at step 0
    and at the end (`eval/correspondence_accuracy`, `eval/l1`), and wall times."""

    run_dir: Path
    step: int
    start_metrics: dict[str, float] = field(default_factory=dict)
    end_metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    train_s: float = 0.0


# ----------------------------------------------------------------------------- run folder


def _prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder and prove it is writable, or fail naming it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(
            f"--output-dir {run_dir}: cannot write there ({e.strerror or e})"
        ) from None


def _check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to continue, or to start again over the `final/` of, a run whose saved config
    differs in anything but run length/logging."""
    path = run_dir / RUN_CONFIG_FILE
    if not path.is_file():
        raise TrainingError(
            f"{run_dir}: holds checkpoints or {FINAL_DIR}/ but no {RUN_CONFIG_FILE}; cannot tell "
            "what run it is (use another --output-dir)"
        )
    try:
        saved = RunConfig.from_dict(json.loads(path.read_text()), where=str(path))
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: not a readable run config ({e})") from None
    changed = [name for name in cfg.changes_from(saved) if name not in RESUMABLE_CHANGES]
    if changed:
        details = ", ".join(
            f"{name}: {_lookup(saved, name)!r} -> {_lookup(cfg, name)!r}" for name in changed
        )
        raise TrainingError(
            f"{run_dir} holds a run of preset {saved.model.name!r} whose config differs from "
            f"this one ({details}); resume with the same settings or use another --output-dir"
        )


# What a failed write raises: OSError (disk full, permissions), safetensors' own error, and
# RuntimeError from torch.save's zip writer.
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


def _kept(run_dir: Path) -> str:
    """What of the run a failed write leaves in place, for its error message."""
    latest = ckpt.latest_checkpoint(run_dir)
    kept = [f"{latest[1].name} (step {latest[0]})" if latest else "no checkpoint yet"]
    if (run_dir / FINAL_DIR).is_dir():
        kept.append(f"{FINAL_DIR}/")
    return " and ".join(kept)


@contextlib.contextmanager
def writing(run_dir: Path, what: Path, errors: tuple[type[BaseException], ...] = (OSError,)):
    """Turn a failed write of `what` into one TrainingError naming the file (or the full device)
    and what was kept: the last good checkpoint and the old final/ stay in place."""
    try:
        yield
    except errors as e:
        where = getattr(e, "filename", None) or what
        detail = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [repr(e)])[0]
        if disk_full(Path(where), e):
            cause = f"no space left on {device_of(Path(where))} while writing {where} ({detail})"
            fix = "free some space"
        else:
            cause, fix = f"{where}: write failed ({detail})", "fix that"
        raise TrainingError(
            f"{cause}; kept unchanged: {_kept(run_dir)}. {fix.capitalize()} and run the same "
            "command again to resume (what was half-written is removed then)"
        ) from None


def _lookup(cfg: RunConfig, dotted: str) -> object:
    value: object = cfg.to_dict()
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# ----------------------------------------------------------------------------- helpers


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def find_vgg(cfg: RunConfig) -> tuple[Path | None, str]:
    """The VGG19 weights file the run loads (None: the VGG terms are off) and the line that says
    so. Checked before anything is written: the paper's datasets train with the VGG terms, so
    there a missing file is a TrainingError saying where it goes and how to turn them off; other
    data go on without them."""
    weights = cfg.train.loss
    if weights.vgg == 0 and weights.vgg_mse == 0:
        return None, "VGG losses: off (train.loss.vgg and train.loss.vgg_mse are 0, or --no-vgg)"
    try:
        path = resolve_vgg_weights(cfg.train.vgg_weights)
    except FileNotFoundError as e:
        if cfg.train.vgg_weights is not None:
            raise TrainingError(f"--vgg-weights: {e}") from None
        if cfg.data.kind in REAL_KINDS:
            raise TrainingError(
                f"VGG19 weights needed: kind {cfg.data.kind!r} trains with the paper's VGG19 "
                f"losses (train.loss.vgg {weights.vgg:g}, train.loss.vgg_mse "
                f"{weights.vgg_mse:g}), but {e}; --no-vgg trains without them (not the paper's "
                "recipe)"
            ) from None
        return None, f"VGG losses: off, no VGG19 weights ({e})"
    return path, f"VGG losses: on, weights {path}"


def load_vgg(path: Path | None) -> nn.Module | None:
    """The frozen VGG19 features of the weights file `find_vgg` chose (None: the VGG terms are
    off); a file that does not load is one TrainingError naming it."""
    if path is None:
        return None
    try:
        vgg = VGG19Features.from_file(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise TrainingError(f"--vgg-weights {path}: cannot load VGG19 weights ({e})") from None
    return vgg.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    generator: nn.Module,
    batches: list[dict],
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Means over the fixed evaluation pairs: correspondence accuracy of the finest top-1 match,
    and L1 to the ground truth (pairs with one) of the output and of the finest warped exemplar;
    plus the tensors of the first batch for a sample grid."""
    was_training = generator.training
    generator.eval()
    accuracy, l1, warp_l1, with_target = [], [], [], []
    first: dict[str, Tensor] = {}
    try:
        for batch in batches:
            with autocast():
                out = generator(
                    batch["semantic"],
                    batch["exemplar"],
                    batch["exemplar_semantic"],
                    with_warps=True,
                )
            best = out.topks[-1][..., 0]
            accuracy.append(
                correspondence_accuracy(
                    best, batch["label"], batch["exemplar_label"], tuple(out.block_sizes[-1])
                )
            )
            l1.append(per_sample_l1(out.image, batch["target"]))
            warp = F.interpolate(out.warps[-1].float(), size=out.image.shape[-2:], mode="nearest")
            warp_l1.append(per_sample_l1(warp, batch["target"]))
            with_target.append(batch["has_target"].float())
            if not first:
                first = {
                    "semantic_rgb": semantic_to_rgb(batch["semantic"]),
                    "exemplar": batch["exemplar"],
                    "warp": out.warps[-1],
                    "output": out.image,
                    "target": batch["target"],
                }
    finally:
        generator.train(was_training)
    weights = torch.cat(with_target)
    # NaN marks pairs without class maps (pose / edge encodings): they are left out.
    metrics = {"eval/correspondence_accuracy": float(torch.nanmean(torch.cat(accuracy)))}
    for key, values in (("eval/l1", l1), ("eval/warp_l1", warp_l1)):
        total = (torch.cat(values) * weights).sum()
        metrics[key] = float(total / weights.sum()) if weights.sum() > 0 else math.nan
    return metrics, first


# ----------------------------------------------------------------------------- setup


@dataclass(kw_only=True)
class _Session:
    """What every stage of a run uses: its config and folder, Accelerate, and the precision."""

    cfg: RunConfig
    run_dir: Path
    accelerator: Accelerator
    fp16: bool

    @classmethod
    def start(cls, cfg: RunConfig) -> _Session:
        # fp16 gets one loss scaler per optimizer (`_build_models`) instead of Accelerate's single
        # shared one, so Accelerate itself runs without mixed precision and we autocast to fp16
        # ourselves.
        fp16 = cfg.train.mixed_precision == "fp16"
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision="no" if fp16 else cfg.train.mixed_precision,
        )
        return cls(cfg=cfg, run_dir=Path(cfg.train.output_dir), accelerator=accelerator, fp16=fp16)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def progress(self, step: int, position: DataPosition, elapsed_s: float) -> ckpt.Progress:
        """Where the run stands after `step`, with the current processes' layout."""
        return ckpt.Progress(
            step=step,
            epoch=position.epoch,
            batch_in_epoch=position.batch,
            world_size=self.world,
            batch_size=self.cfg.train.batch_size,
            elapsed_s=elapsed_s,
        )

    def say(self, message: str) -> None:
        if self.main:
            tqdm.write(message)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.fp16:
            return torch.autocast(self.accelerator.device.type, dtype=torch.float16)
        return self.accelerator.autocast()


def _load_data(cfg: RunConfig) -> tuple[Dataset, list[dict]]:
    """The training set and the fixed evaluation pairs. Loaded first: a missing or broken dataset
    is one error before Accelerate, the model or any file is set up."""
    try:
        train_set = build_dataset(cfg.data, "train")
        eval_set = build_dataset(cfg.data, "test")
        eval_samples = [eval_set[i] for i in range(min(cfg.train.eval_pairs, len(eval_set)))]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise TrainingError(f"data: {clean_message(e)}") from None
    return train_set, eval_samples


def _open_run_folder(s: _Session) -> tuple[IO[str] | None, ckpt.Verified | None]:
    """The run folder made ready: writable, locked by this run (the main process holds the
    returned lock), every output path checked, leftovers of an interrupted save removed, the
    checkpoint to resume from verified (None: a new run), the config written."""
    run_dir, tc = s.run_dir, s.cfg.train
    lock = None
    if s.main:
        check_run_folder(run_dir)
        _prepare_run_dir(run_dir)
        lock = lock_run_folder(run_dir)
        check_output_paths(run_dir)
        for leftover in ckpt.remove_partial(run_dir):
            s.say(f"removed incomplete checkpoint {leftover}")
        for line in recover_final(run_dir):
            s.say(line)
    s.accelerator.wait_for_everyone()
    resume = None
    finished = (run_dir / FINAL_DIR).is_dir()
    if ckpt.complete_checkpoints(run_dir) or finished:
        # final/ without checkpoints (deleted to save space) is a finished run as well: another
        # config must not train from step 0 over it and replace its weights and metrics.
        _check_resumable(s.cfg, run_dir)
    if s.main:
        resume = ckpt.select_resume(run_dir, s.say)
    s.accelerator.wait_for_everyone()
    if not s.main:
        # The main process has renamed the damaged ones: this finds the same checkpoint.
        resume = ckpt.select_resume(run_dir, s.say)
    if resume is None and finished:
        s.say(
            f"{run_dir / FINAL_DIR} is there but no checkpoint: training the same config again "
            "from step 0; final/ is replaced when this run finishes"
        )
    if resume is not None:
        # With max_epochs the length is known only from the dataset; max_steps is unused then.
        if not tc.max_epochs and tc.max_steps < resume.step:
            raise TrainingError(
                f"--max-steps {tc.max_steps} is below the step of the newest checkpoint "
                f"({resume.folder} at step {resume.step}): the run is past it already; pass "
                f"--max-steps {resume.step} or more to continue it (nothing was changed)"
            )
        for warning in resume.warnings:
            s.say(warning)
    if s.main:
        ckpt.write_json_atomic(run_dir / RUN_CONFIG_FILE, s.cfg.to_dict())
    return lock, resume


def _build_models(
    s: _Session, resume: ckpt.Verified | None, vgg_path: Path | None
) -> tuple[StepParts, nn.Module, dict[str, torch.amp.GradScaler]]:
    """Models, optimisers (two-time-scale Adam), VGG and loss scalers, prepared by Accelerate:
    the parts of a step, the unwrapped (eager) generator that is saved, and the scalers by name."""
    cfg, tc, accelerator, device = s.cfg, s.cfg.train, s.accelerator, s.accelerator.device
    set_seed(tc.seed)
    generator = Generator(cfg.model)
    generator.checkpoint_activations = tc.checkpoint_activations
    discriminator = MultiscaleDiscriminator(cfg.model)
    if tc.init_from is not None and resume is None:
        # A new run starting from given weights (a resumed run takes its checkpoint's instead).
        source = initialise_from(tc.init_from, generator, discriminator)
        s.say(f"initialised from {source['generator']} (discriminator: {source['discriminator']})")
        if source["differences"]:
            s.say(f"  its model config differs from this run's in: {source['differences']}")
    if s.world > 1 and tc.sync_batch_norm and count_batch_norms(generator):
        generator = synchronise_batch_norm(generator, device)
        s.say(f"batch norm synchronised across {s.world} processes")
    vgg = load_vgg(vgg_path)
    betas = (tc.adam_beta1, tc.adam_beta2)
    opt_g = torch.optim.Adam(
        generator.parameters(), lr=tc.lr * tc.g_lr_ratio, betas=betas, eps=tc.g_adam_eps
    )
    opt_d = torch.optim.Adam(
        discriminator.parameters(), lr=tc.lr * tc.d_lr_ratio, betas=betas, eps=tc.d_adam_eps
    )
    generator, discriminator, opt_g, opt_d = accelerator.prepare(
        generator, discriminator, opt_g, opt_d
    )
    g_inner = accelerator.unwrap_model(generator)
    if tc.compile:  # the training steps run the compiled graph; g_inner (eager) is what is saved
        generator = torch.compile(generator)
    d_inner = accelerator.unwrap_model(discriminator)
    if vgg is not None:
        vgg = vgg.to(device)
    # The loss scalers are saved as JSON by us (checkpoints.save_scalers), not registered with
    # Accelerate, whose load_state unpickles registered objects with weights_only=False.
    scaler_g = torch.amp.GradScaler(device.type, enabled=s.fp16)
    scaler_d = torch.amp.GradScaler(device.type, enabled=s.fp16)
    parts = StepParts(
        accelerator=accelerator,
        generator=generator,
        discriminator=discriminator,
        d_inner=d_inner,
        opt_g=opt_g,
        opt_d=opt_d,
        scaler_g=scaler_g,
        scaler_d=scaler_d,
        vgg=vgg,
        weights=tc.loss,
        autocast=s.autocast,
        blocks_per_scale=cfg.model.blocks_per_scale,
    )
    return parts, g_inner, {"generator": scaler_g, "discriminator": scaler_d}


def _restore(
    s: _Session,
    resume: ckpt.Verified | None,
    parts: StepParts,
    g_inner: nn.Module,
    scalers: dict[str, torch.amp.GradScaler],
) -> ckpt.Progress:
    """Load the checkpoint `resume` into the models, optimisers, loss scalers and random states;
    returns where the run stands (step 0 at the start of the data for a new run)."""
    if resume is None:
        return s.progress(0, DataPosition(), 0.0)
    folder, progress = resume.folder, resume.progress
    if progress.world_size != s.world:
        raise TrainingError(
            f"{folder} was written by {progress.world_size} process(es), this run has "
            f"{s.world}: resume with the same number of processes (the data order and random "
            "states are per process)"
        )
    # Not accelerator.load_state: it unpickles stray custom_checkpoint_*.pkl files.
    warnings = ckpt.load_training_state(
        folder / ckpt.STATE_DIR,
        [g_inner, parts.d_inner],  # save_state writes the unwrapped (not DDP) parameter names
        [parts.opt_g, parts.opt_d],
        s.accelerator.process_index,
    )
    if not resume.warnings:  # else the manifest check has named the file already
        for warning in warnings:
            s.say(warning)
    if s.fp16:
        ckpt.load_scalers(folder, scalers)
    s.say(f"resuming from {folder} at step {progress.step}")
    return progress


# ----------------------------------------------------------------------------- outputs


def _evaluate_and_sample(
    s: _Session, g_inner: nn.Module, eval_batches: list[dict], log: MetricsLog, step: int
) -> dict[str, float]:
    """The main process evaluates the generator on the fixed pairs, saves their sample grid and
    logs the metrics (other processes get {}); every process waits for it."""
    metrics: dict[str, float] = {}
    if s.main:
        metrics, tensors = evaluate(g_inner, eval_batches, s.autocast)
        rows = slice(0, s.cfg.train.sample_rows)
        grid = sample_grid(*(t[rows] for t in tensors.values()))
        with writing(s.run_dir, s.run_dir / SAMPLES_DIR):
            save_png(grid, s.run_dir / SAMPLES_DIR / sample_name(step))
            log.log(step, metrics)
    s.accelerator.wait_for_everyone()
    return metrics


def _save_checkpoint(
    s: _Session,
    g_inner: nn.Module,
    scalers: dict[str, torch.amp.GradScaler],
    progress: ckpt.Progress,
) -> None:
    """Write the checkpoint of `progress.step` (Accelerate's state from every process, then the
    generator, scalers, progress and manifest from the main one) into a staging folder, publish
    it and rotate the old ones. Every process must call."""
    accelerator = s.accelerator
    staging = ckpt.staging_dir(s.run_dir, progress.step)
    with writing(s.run_dir, staging, WRITE_ERRORS):
        if s.main:
            if staging.exists():
                shutil.rmtree(staging)
            staging.parent.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging / ckpt.STATE_DIR), safe_serialization=True)
        accelerator.wait_for_everyone()
        if s.main:
            save_pretrained(g_inner, staging / GENERATOR_DIR)
            if s.fp16:
                ckpt.save_scalers(staging, scalers)
            ckpt.write_progress(staging, progress)
            write_manifest(staging)  # last: it vouches for every file above
            ckpt.publish(staging)
            ckpt.rotate(s.run_dir, s.cfg.train.checkpoint_limit)
    accelerator.wait_for_everyone()


def _logged_eval(run_dir: Path, *, at_start: bool) -> dict[str, float]:
    """The metrics of the run's evaluation at step 0 (`at_start`) or of its last one, as its
    metrics log holds them ({} when it holds none)."""
    records = [r for r in read_metrics(run_dir) if EVAL_KEYS[0] in r]
    if at_start:
        records = [r for r in records if r.get("step") == 0]
    if not records:
        return {}
    record = records[0] if at_start else records[-1]
    return {k: record[k] for k in EVAL_KEYS if k in record}


# ----------------------------------------------------------------------------- training


def train(cfg: RunConfig, precision: PrecisionChoice | None = None) -> TrainResult:
    """Train (or resume) the run `cfg` describes; returns its start and end evaluation.

    `precision`: how the command line chose `cfg.train.mixed_precision` (train/main.py); None
    means the caller set it, and the run says so."""
    started = time.perf_counter()
    tc = cfg.train
    if precision is None:
        precision = choose_precision(
            tc.mixed_precision,
            preset=None,
            launcher=None,
            cuda=torch.cuda.is_available(),
            cpu=cpu_bf16(),
        )
    if precision.precision != tc.mixed_precision:
        raise ValueError(
            f"precision {precision.precision!r} was chosen for a config that says "
            f"{tc.mixed_precision!r}"
        )
    try:
        check_image_size(cfg.model)
    except ValueError as e:
        raise TrainingError(f"model: {e}") from None
    train_set, eval_samples = _load_data(cfg)
    vgg_path, vgg_line = find_vgg(cfg)
    s = _Session.start(cfg)
    s.say(precision.line)
    s.say(vgg_line)
    accelerator, device, run_dir = s.accelerator, s.accelerator.device, s.run_dir
    lock, resume = _open_run_folder(s)
    parts, g_inner, scalers = _build_models(s, resume, vgg_path)
    progress = _restore(s, resume, parts, g_inner, scalers)

    # Where the run stands, advanced by the loop below and recorded by every checkpoint: optimizer
    # steps taken, the next micro-batch to read, training time before this invocation.
    step = progress.step
    position = DataPosition(epoch=progress.epoch, batch=progress.batch_in_epoch)
    elapsed_before = progress.elapsed_s
    batches = micro_batches(
        train_set,
        position,
        batch_size=tc.batch_size,
        rank=accelerator.process_index,
        world_size=s.world,
        seed=tc.seed,
        num_workers=tc.num_workers,
    )
    collate = torch.utils.data.default_collate
    eval_batches = [
        _to_device(collate(eval_samples[i : i + tc.eval_batch_size]), device)
        for i in range(0, len(eval_samples), tc.eval_batch_size)
    ]
    # Run length in optimizer steps (epochs are known only now that the dataset is).
    steps_per_epoch = max(1, len(train_set) // (tc.batch_size * s.world) // tc.grad_accum_steps)
    max_steps, _ = tc.schedule(steps_per_epoch)
    if tc.max_epochs:
        s.say(f"{tc.max_epochs} epochs of {steps_per_epoch} steps: {max_steps} steps")
    with writing(run_dir, run_dir / METRICS_FILE):
        log = MetricsLog(
            run_dir, keep_through=step if resume is not None else -1, enabled=s.main, say=s.say
        )

    # Evaluation before training (a resumed run reads its own from the log). final/ (the weights
    # of the last finished run) stays until the new one replaces it.
    start_metrics: dict[str, float] = {}
    end_metrics: dict[str, float] = {}
    if step == 0:
        start_metrics = end_metrics = _evaluate_and_sample(s, g_inner, eval_batches, log, 0)
    elif s.main:
        start_metrics = _logged_eval(run_dir, at_start=True)

    sums = LossSums()
    session_start = time.perf_counter()
    last_saved = step if resume is not None else -1
    with tqdm(
        total=max_steps, initial=step, desc="train", disable=not s.main, dynamic_ncols=True
    ) as bar:
        while step < max_steps:
            # Read the step's micro-batches; `position` is now the next one to read.
            micro = []
            for _ in range(tc.grad_accum_steps):
                batch, position = next(batches)
                micro.append(_to_device(batch, device))
            # Learning rates of this step: constant, then the linear decay.
            factor = tc.lr_factor(step, steps_per_epoch)
            for group in parts.opt_g.param_groups:
                group["lr"] = tc.lr * tc.g_lr_ratio * factor
            for group in parts.opt_d.param_groups:
                group["lr"] = tc.lr * tc.d_lr_ratio * factor
            # Generator update, then discriminator update on the images it generated.
            sample_weights = global_weights(accelerator, micro)
            g_total, fakes = generator_step(parts, micro, sample_weights, sums)
            d_total = discriminator_step(parts, micro, fakes, sample_weights, sums)
            step += 1
            changed = follow_free_cores()
            if changed is not None:
                s.say(f"CPU threads: {changed[0]} ({changed[1]:.1f} cores free for this run)")
            # Index range checks the kernels deferred on the GPU (none for the builders' own
            # candidate lists): read once per step, one synchronisation at most.
            kernels.check_index_errors()
            elapsed = elapsed_before + time.perf_counter() - session_start
            # Under fp16 an overflow is expected now and then: its loss scaler skips that step.
            if not s.fp16 and not (math.isfinite(g_total) and math.isfinite(d_total)):
                raise TrainingError(
                    f"step {step}: the loss is not finite (generator {g_total}, discriminator "
                    f"{d_total}); lower train.lr or the loss weights"
                )
            # Report, sample, checkpoint.
            bar.update(1)
            bar.set_postfix(g=f"{g_total:.3g}", d=f"{d_total:.3g}")
            if step % tc.log_every == 0 or step == max_steps:
                scalars = sums.reduce(accelerator)
                scalars["lr/generator"] = parts.opt_g.param_groups[0]["lr"]
                scalars["time/train_s"] = elapsed
                if s.main:
                    with writing(run_dir, run_dir / METRICS_FILE):
                        log.log(step, scalars)
            if step % tc.sample_every == 0 or step == max_steps:
                end_metrics = _evaluate_and_sample(s, g_inner, eval_batches, log, step)
            if step % tc.checkpoint_every == 0 or step == max_steps:
                _save_checkpoint(s, g_inner, scalers, s.progress(step, position, elapsed))
                last_saved = step

    if not end_metrics and s.main:
        # Nothing trained in this invocation (the run had already reached max_steps).
        end_metrics = _logged_eval(run_dir, at_start=False)
    if last_saved != step:
        elapsed = elapsed_before + time.perf_counter() - session_start
        _save_checkpoint(s, g_inner, scalers, s.progress(step, position, elapsed))
    if s.main:
        with writing(run_dir, run_dir / FINAL_DIR, WRITE_ERRORS):
            write_final(run_dir, lambda folder: save_pretrained(g_inner, folder))
    accelerator.wait_for_everyone()
    log.close()
    result = TrainResult(
        run_dir=run_dir,
        step=step,
        start_metrics=start_metrics,
        end_metrics=end_metrics,
        wall_s=time.perf_counter() - started,
        train_s=elapsed_before + time.perf_counter() - session_start,
    )
    if s.main:
        s.say(summary(result))
    accelerator.end_training()
    if lock is not None:
        lock.close()
    return result


def summary(result: TrainResult) -> str:
    """The closing lines of a run: evaluation at the start and the end, and wall time."""

    def fmt(metrics: dict[str, float], key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.4f}"

    s, e = result.start_metrics, result.end_metrics
    labels = (
        "correspondence accuracy (finest top-1)",
        "L1 of the output to ground truth",
        "L1 of the warped exemplar to ground truth",
    )
    lines = [f"run {result.run_dir} finished at step {result.step}"]
    for label, key in zip(labels, EVAL_KEYS, strict=True):
        lines.append(f"  {label:<42} start {fmt(s, key)} -> end {fmt(e, key)}")
    lines.append(
        f"  wall time {result.wall_s:.1f} s (this invocation); training time "
        f"{result.train_s:.1f} s (whole run)"
    )
    return "\n".join(lines)
