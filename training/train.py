"""``python -m training.train``: fine-tune a fair LoRA adapter and write a complete run directory.

One loop you can read top to bottom (torchtune / litgpt style): set up → train → evaluate → publish.

    setup     validate the config (every problem at once), load the data, the backbone, add LoRA
    train     for each optimiser step: forward every micro-batch of the effective batch, compute the
              objective ONCE on their concatenated logits (so FR's per-group soft accuracy and CMAC's
              subgroup MMD see the whole effective batch, and all ranks' samples under accelerate),
              one backward, clip, step, log to metrics.jsonl
    evaluate  predictions for the val and test splits → predictions.csv, eval.json (training.metrics)
    publish   config.json, model card; the staging folder is renamed into runs/<run_id>/

SIGTERM (the Studio's Cancel) stops at the next step boundary, saves a checkpoint in the staging folder
and exits with code 3; ``--resume`` continues from it and reaches the same weights as an uninterrupted
run (same data order; optimiser, scheduler and every process's RNG states restored: python, numpy,
torch CPU and CUDA, so LoRA dropout repeats too).

Under ``accelerate launch`` each process trains its share of every effective batch; only the main
one writes the run folder (metrics.jsonl, checkpoint swap, publish), and a SIGTERM to any process
stops them all at the same step. While a run trains, its name is locked (``rundir.lock_run``): a
second trainer given the same --run-name stops with exit code 2 instead of removing the folder.

Computing the loss on the concatenated micro-batches keeps every micro-batch's graph until the one
backward: memory grows with ``grad_accum``. That is the price of exact group statistics; on several GPUs
prefer more devices over more accumulation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, parse_flag_from_env
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from training import data_spec, metrics, ood, rundir
from training.backbones import (
    BUILD_INFO,
    Classifier,
    add_lora,
    backbone_fingerprint,
    certainty_margin,
    default_backbone,
    load_classifier,
    resolve_backbone,
    save_adapter,
)
from training.config import (
    ERR_NOT_AN_OBJECT,
    PAPER_LR,
    ConfigError,
    TrainConfig,
    add_arguments,
    from_args,
    validate,
)
from training.data import Dataset, DatasetError, Sample, group_key
from training.distributed import gather_with_grad
from training.losses import compute_loss, group_weights
from training.metrics import evaluate_run
from training.synth import deficit_schedule

EXIT_OK, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 2, 3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EVAL_BATCH = 32
CHECKPOINT_FORMAT = 2  # 2: accelerate's save_state (optimizer.bin, scheduler.bin, random_states_<rank>.pkl)
CHECKPOINT_STATE = "state.pt"  # written last: its presence marks a complete checkpoint (rundir.checkpoint_in)
CHECKPOINT_WEIGHTS = "trainable.safetensors"

STAGING_WITHOUT_CHECKPOINT = "found an unfinished run folder {path} with no checkpoint; it was removed"
STAGING_HAS_CHECKPOINT = (
    "run '{name}' was interrupted and has a checkpoint in {path}; rerun with --resume to continue it, "
    "or delete that folder to start over"
)
NOTHING_TO_RESUME = "--resume: run '{name}' has no checkpoint in {path}; start it without --resume"
CHECKPOINT_MISMATCH = "--resume: the checkpoint was made with a different config ({fields}); use the same flags"
PROCESSES_MISMATCH = (
    "--resume: the checkpoint was made on {saved} process(es), this run has {now}; resume on "
    "{saved} (the effective batch, and so every step, depends on it)"
)
CHECKPOINT_FORMAT_OLD = (
    "--resume: {path} was written by an older FairDx and cannot be resumed exactly; delete the "
    "run's staging folder and start it again"
)
PROCESSES_NOT_LAUNCHED = (
    "processes = {n}, but this run was started as {world} process(es); start it with "
    "`accelerate launch --num_processes {n} -m training.train ...`, as the Studio does, or set --processes {world}"
)
RNG_NOT_RESTORED = "--resume: the random number generators were not restored from {path} ({detail})"
GROUP_LOST = "max_samples={n} leaves group '{group}' of '{attribute}' with no training samples; raise max_samples"


class Interrupted(Exception):
    """Raised at a step boundary after SIGTERM/SIGINT, once the checkpoint is on disk."""


# ----------------------------------------------------------------------------------------- setup
def resolve(cfg: TrainConfig, task: str) -> TrainConfig:
    """Fill what the config left to defaults: backbone, 'auto' lr, run name."""
    backbone = cfg.backbone or default_backbone(task)
    lr = cfg.lr if cfg.lr != "auto" else recommended_lr(backbone)
    run_name = cfg.run_name or f"{task}-{cfg.method}-{cfg.attribute.replace('+', 'x')}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg.replace(backbone=backbone, lr=float(lr), run_name=run_name)


def on_processes(cfg: TrainConfig, world: int) -> TrainConfig:
    """The config with the number of processes it really runs on.

    A config that left ``processes`` at 1 and was started by ``accelerate launch --num_processes N``
    records N, so the run's config.json, its card and a run of it again know the effective batch
    (batch_size × grad_accum × processes). One that asked for N processes and got another number is
    refused: its effective batch, and so every step, would not be the one asked for.
    """
    if cfg.processes not in (1, world):
        raise ConfigError([PROCESSES_NOT_LAUNCHED.format(n=cfg.processes, world=world)])
    return cfg if cfg.processes == world else cfg.replace(processes=world)


def launch_command(world: int) -> str:
    """What started this run, for its command.txt: the exact command the Studio ran (it passes it in
    ``rundir.COMMAND_ENV``), else this process's own command line, or, on several processes, the
    command line of the launcher that started them (``accelerate launch ...``, what a person typed)."""
    given = os.environ.get(rundir.COMMAND_ENV, "").strip()
    if given:
        return given
    argv = list(sys.orig_argv)
    if world > 1:
        with contextlib.suppress(psutil.Error):
            launcher = psutil.Process().parent()
            argv = launcher.cmdline() if launcher is not None else argv
    return shlex.join(argv)


# What `resolve` fills in, as the types a resolved config guarantees; ValueError on one it has not seen.
def resolved_run_name(cfg: TrainConfig) -> str:
    """The run name of a resolved config (or of one that set it)."""
    if cfg.run_name is None:
        raise ValueError("the config has no run_name yet; pass it through training.train.resolve() first")
    return cfg.run_name


def resolved_backbone(cfg: TrainConfig) -> str:
    """The backbone of a resolved config (or of one that set it)."""
    if cfg.backbone is None:
        raise ValueError("the config has no backbone yet; pass it through training.train.resolve() first")
    return cfg.backbone


def resolved_lr(cfg: TrainConfig) -> float:
    """The learning rate of a resolved config (or of one that set a number)."""
    if isinstance(cfg.lr, str):
        raise ValueError(f"the config's lr is {cfg.lr!r}; pass it through training.train.resolve() first")
    return cfg.lr


def recommended_lr(backbone: str) -> float:
    """The lr a checkpoint recommends in its fairdx_build.json (our embedded ones do), else Gu et al.'s 1e-5."""
    info = Path(resolve_backbone(backbone)) / BUILD_INFO
    if info.is_file():
        return float(json.loads(info.read_text()).get("recommended_lr", PAPER_LR))
    return PAPER_LR


def training_samples(dataset: Dataset, cfg: TrainConfig) -> list[Sample]:
    """The training split, or a stratified subset of max_samples (by group of --attribute and label).

    Samples are ordered by their fractional rank within their stratum after a seeded shuffle, so the
    first k are spread over the strata in proportion to their size, and each stratum's first sample
    comes before any stratum's second.
    """
    train = dataset.split("train")
    if cfg.max_samples is None or cfg.max_samples >= len(train):
        return train
    rng = np.random.default_rng(cfg.seed)
    strata = [(group_key(s, cfg.attribute), s.label) for s in train]
    sizes = pd.Series(strata).value_counts()
    seen: dict[tuple[str, int], int] = {}
    keys = []
    for i in rng.permutation(len(train)):
        rank = seen.get(strata[i], 0)
        seen[strata[i]] = rank + 1
        keys.append((rank / sizes[strata[i]], i))
    chosen = sorted(i for _, i in sorted(keys)[: cfg.max_samples])
    subset = [train[i] for i in chosen]
    missing = set(dataset.group_counts(cfg.attribute, "train")) - {group_key(s, cfg.attribute) for s in subset}
    if missing:
        raise ConfigError([GROUP_LOST.format(n=cfg.max_samples, group=min(missing), attribute=cfg.attribute)])
    return subset


def group_ids(samples: Sequence[Sample], attribute: str) -> tuple[Tensor, list[str]]:
    """Integer group id per sample (ids index the sorted group names)."""
    keys = [group_key(s, attribute) for s in samples]
    names = sorted(set(keys))
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[k] for k in keys], dtype=torch.long), names


def epoch_order(n: int, epoch: int, cfg: TrainConfig, groups: Tensor) -> Tensor:
    """Sample indices for one epoch, a pure function of (seed, epoch) so a resumed run sees the same order.

    stratified_batches: a seeded permutation, re-ordered so that every group of ``groups`` is spread
    evenly over the epoch (position k goes to the group furthest behind its share k·N_s/N), so any
    window of one effective batch holds each group within one sample of its share. CMAC-MMD needs
    "enough samples of every subgroup in each mini-batch"; this gives it without changing what the
    model sees over an epoch. balanced_sampling draws n samples with replacement, each group equally
    likely (weights 1/N_s).
    """
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    if cfg.stratified_batches:
        perm = torch.randperm(n, generator=generator)
        counts = torch.bincount(groups).double()
        queues = [perm[groups[perm] == g].tolist() for g in range(len(counts))]
        slots = deficit_schedule(n, (counts / n).tolist())
        taken = [0] * len(counts)
        order = []
        for g in slots:
            order.append(queues[g][taken[g]])
            taken[g] += 1
        return torch.tensor(order, dtype=torch.long)
    if not cfg.balanced_sampling:
        return torch.randperm(n, generator=generator)
    counts = torch.bincount(groups).double()
    return torch.multinomial(1.0 / counts[groups], n, replacement=True, generator=generator)


def fairness_weight(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """λ at optimiser step `step` (0-based): 0 for ``fairness_delay_epochs`` of plain CE, then a linear
    ramp to ``lam`` over ``fairness_ramp_epochs``. A margin or gap penalty on a model still at chance has
    nothing to align and can only push it towards a constant answer (our first CMAC demo collapsed so)."""
    delay = round(cfg.fairness_delay_epochs * steps_per_epoch)
    ramp = round(cfg.fairness_ramp_epochs * steps_per_epoch)
    into = step - delay + 1
    if into <= 0:
        return 0.0
    return cfg.lam * min(1.0, into / ramp) if ramp else cfg.lam


def fairness_attribute(cfg: TrainConfig) -> str:
    """The attribute whose groups the method's fairness term compares (CMAC may name its own)."""
    return cfg.fairness_attribute


def lr_lambda(warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total` (Gu et al., fair LoRA §4.2)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _from_main_process(processes: PartialState, value: Any) -> Any:
    """The main process's ``value`` on every process (a broadcast, so also a barrier)."""
    if processes.num_processes == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def _claim_run(name: str, runs_dir: Path, final: Path, staging: Path, resume: bool, command: str) -> rundir.RunLock:
    """Main process: lock the run name, then check its staging folder and leave it ready to write, with
    the command that started this run added to its command.txt.

    The lock comes first, so these checks and the removal of an unfinished folder never race another
    trainer (a Studio job, a second CLI) writing into the same run; that one holds the lock, and this
    run stops with RUN_LOCKED instead. The caller releases the lock when the run ends.
    """
    if resume and not runs_dir.is_dir():
        raise ConfigError([NOTHING_TO_RESUME.format(name=name, path=staging)])
    try:
        lock = rundir.lock_run(runs_dir, name)
    except OSError as err:
        raise ConfigError([f"cannot lock run '{name}' in {runs_dir}: {err}"]) from None
    if lock is None:
        raise ConfigError([rundir.run_locked_message(runs_dir, name)])
    try:
        checkpoint, found = staging / rundir.CHECKPOINT, rundir.checkpoint_in(staging)
        if final.exists():
            raise ConfigError([rundir.RUN_EXISTS.format(name=name, runs_dir=runs_dir)])
        if resume and found is None:
            raise ConfigError([NOTHING_TO_RESUME.format(name=name, path=staging)])
        if resume and found is not None and found != checkpoint:  # killed between save_checkpoint's renames
            found.rename(checkpoint)
        if not resume and staging.exists():
            if found is not None:
                raise ConfigError([STAGING_HAS_CHECKPOINT.format(name=name, path=staging)])
            print(STAGING_WITHOUT_CHECKPOINT.format(path=staging), file=sys.stderr)
            _rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
        rundir.record_command(staging, command)
    except OSError as err:
        lock.release()
        raise ConfigError([f"cannot prepare the run folder {staging}: {err}"]) from None
    except BaseException:
        lock.release()
        raise
    return lock


# ------------------------------------------------------------------------------------ checkpoint
def save_checkpoint(accelerator: Accelerator, path: Path, step: int, cfg: TrainConfig) -> None:
    """All a resume needs, from every process; call it on every process at a step boundary.

    ``accelerator.save_state`` writes the optimiser and scheduler state, the trainable weights (LoRA and
    head: ``_checkpoint_weights``; the frozen backbone is the base checkpoint's) and *each process's*
    RNG states (python ``random``, numpy's global generator, torch CPU and, when there is one, every
    CUDA device: ``random_states_<rank>.pkl``). The main process then writes ``state.pt`` (step, config,
    number of processes), which marks the checkpoint complete (``rundir.checkpoint_in``).
    Written beside ``path`` and renamed into place, so a kill at any moment leaves a complete checkpoint.
    """
    tmp = path.with_name(rundir.CHECKPOINT_TMP)
    if accelerator.is_main_process:
        _rmtree(tmp)  # left by a kill during an earlier save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank's RNG file is on disk
    if accelerator.is_main_process:
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "config": cfg.to_dict(),
                "num_processes": accelerator.num_processes,
            },
            tmp / CHECKPOINT_STATE,
        )
        if path.exists():
            old = path.with_name(rundir.CHECKPOINT_OLD)
            _rmtree(old)  # left by a kill during the last swap's cleanup; `path` is the newer one
            path.rename(old)
            tmp.rename(path)
            _rmtree(old)
        else:
            tmp.rename(path)
    accelerator.wait_for_everyone()


def checkpoint_step(path: Path, cfg: TrainConfig, num_processes: int) -> int:
    """The step a checkpoint was saved at, once it is known to continue this very run."""
    state = torch.load(path / CHECKPOINT_STATE, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError([CHECKPOINT_FORMAT_OLD.format(path=path)])
    # the number of processes is checked below, with its own message (and older checkpoints lack the field)
    differs = [
        k for k, v in cfg.to_dict().items() if state["config"].get(k) != v and k not in ("trackers", "processes")
    ]
    if differs:
        raise ConfigError([CHECKPOINT_MISMATCH.format(fields=", ".join(differs))])
    if state["num_processes"] != num_processes:
        raise ConfigError([PROCESSES_MISMATCH.format(saved=state["num_processes"], now=num_processes)])
    return int(state["step"])


def load_checkpoint(accelerator: Accelerator, path: Path) -> None:
    """Restore weights, optimiser, scheduler and every RNG of this process from a checkpoint.

    Call it right before the first step: whatever draws random numbers during setup (model loading,
    trackers) then cannot move the RNGs away from where the interrupted run left them. accelerate only
    logs a failure to restore the RNGs; ``_check_rng_restored`` makes it an error.
    """
    accelerator.load_state(str(path))
    _check_rng_restored(path, accelerator.process_index)


def _checkpoint_weights(accelerator: Accelerator, clf: Classifier) -> None:
    """Make save_state/load_state keep only the trainable parameters (a few MB instead of the backbone)."""

    def save(models, weights, output_dir) -> None:
        if accelerator.is_main_process:
            trainable = {n: p.detach().cpu().contiguous() for n, p in clf.named_parameters() if p.requires_grad}
            save_file(trainable, str(Path(output_dir) / CHECKPOINT_WEIGHTS))
        weights.clear()  # accelerate would write the whole model's state dict

    def load(models, input_dir) -> None:
        weights = load_file(str(Path(input_dir) / CHECKPOINT_WEIGHTS))
        params = dict(clf.named_parameters())
        missing = sorted(n for n, p in params.items() if p.requires_grad and n not in weights)
        if missing:
            raise ConfigError([CHECKPOINT_FORMAT_OLD.format(path=input_dir)])
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        models.clear()  # loaded: accelerate must not look for a full state dict

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def rng_states() -> dict[str, Any]:
    """Every RNG a training step may draw from (what accelerate saves per process)."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global one)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _check_rng_restored(path: Path, rank: int) -> None:
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils import load as accelerate_load

    file = path / f"{RNG_STATE_NAME}_{rank}.pkl"
    try:
        saved = accelerate_load(file)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise ConfigError([RNG_NOT_RESTORED.format(path=file, detail=err)]) from None
    now = rng_states()
    numpy_now, numpy_saved = now["numpy"], saved["numpy_random_seed"]
    same = {
        "python": now["python"] == saved["random_state"],
        "numpy": numpy_now[0] == numpy_saved[0]
        and np.array_equal(numpy_now[1], numpy_saved[1])
        and tuple(numpy_now[2:]) == tuple(numpy_saved[2:]),
        "torch": torch.equal(now["torch"], saved["torch_manual_seed"]),
    }
    if "cuda" in now:
        cuda_saved = saved.get("torch_cuda_manual_seed") or []
        same["cuda"] = len(cuda_saved) == len(now["cuda"]) and all(
            torch.equal(a, b) for a, b in zip(now["cuda"], cuda_saved, strict=True)
        )
    wrong = [name for name, ok in same.items() if not ok]
    if wrong:
        raise ConfigError([RNG_NOT_RESTORED.format(path=file, detail=f"{', '.join(wrong)} not restored")])


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------------------------- evaluate
@torch.inference_mode()
def predict(clf: Classifier, samples: Sequence[Sample], attributes: Sequence[str], progress: bool) -> pd.DataFrame:
    """One row per sample: id, split, label, prob of class 1, certainty margin, every attribute, and the
    sample's cluster (``cluster``, e.g. its lesion) when the dataset has clusters."""
    clf.eval()
    rows = []
    for chunk in tqdm(list(batches(samples, EVAL_BATCH)), desc="evaluate", unit="batch", disable=not progress):
        logits = clf(clf.preprocess([s.load_image() for s in chunk]))
        labels = torch.tensor([s.label for s in chunk])
        probs = logits.softmax(-1)[:, 1]
        margins = certainty_margin(logits, labels)
        for s, p, m in zip(chunk, probs.tolist(), margins.tolist(), strict=True):
            rows.append(
                {
                    "id": s.id,
                    "split": s.split,
                    "label": s.label,
                    "prob": p,
                    "margin": m,
                    **{a: s.attributes[a] for a in attributes},
                    **({metrics.CLUSTER: s.cluster} if s.cluster is not None else {}),
                }
            )
    return pd.DataFrame(rows)


def validation_figures(clf: Classifier, samples: Sequence[Sample], attribute: str, gap_min_n: int) -> dict[str, Any]:
    """Validation loss (cross-entropy), accuracy and MaxAccGap on `attribute` (Gu et al. Eq. 1, over the
    groups with at least `gap_min_n` validation samples) at the argmax: the curve the Studio draws beside
    the training loss, so over-fitting or a gap that stops closing shows while the job runs. No RNG is
    drawn (eval mode: no dropout), so training goes on exactly as without it."""
    clf.eval()
    losses, correct = [], []
    with torch.inference_mode():
        for chunk in batches(list(samples), EVAL_BATCH):
            logits = clf(clf.preprocess([s.load_image() for s in chunk])).float()
            labels = torch.tensor([s.label for s in chunk])
            losses += torch.nn.functional.cross_entropy(logits, labels, reduction="none").tolist()
            correct += (logits.argmax(dim=1) == labels).tolist()
    keys = [group_key(s, attribute) for s in samples]
    by_group: dict[str, list[bool]] = {}
    for key, right in zip(keys, correct, strict=True):
        by_group.setdefault(key, []).append(right)
    accuracies = [sum(v) / len(v) for v in by_group.values() if len(v) >= gap_min_n]
    return {
        "val_loss": float(np.mean(losses)),
        "val_accuracy": float(np.mean(correct)),
        "val_gap": float(max(accuracies) - min(accuracies)) if len(accuracies) >= 2 else None,
        "val_gap_attribute": attribute,
    }


def eval_attributes(cfg: TrainConfig, dataset: Dataset) -> list[str]:
    """What eval.json reports: the training attribute(s), every single attribute of the dataset and every
    pair of them as an intersection ('race+ethnicity'), the same choices Compare offers, so a gap read
    in Compare can be checked against the run's own eval.json."""
    singles = list(cfg.eval_attributes or dataset.attributes)
    pairs = [f"{a}+{b}" for i, a in enumerate(singles) for b in singles[i + 1 :] if "+" not in a + b]
    chosen = [cfg.attribute, cfg.cmac_attribute, *singles, *pairs]
    return list(dict.fromkeys(a for a in chosen if a))


# ----------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Run one training job end to end and return the published run directory (on a process other than
    the main one: where the main one publishes it).

    SIGTERM/SIGINT are caught from the start, so a cancel while the model loads still ends with a
    checkpoint and exit code 3; the previous handlers are restored however the run ends, and the
    run's lock (``rundir.lock_run``) is released.

    Under ``accelerate launch`` every process runs this; only the main one touches the run folder
    (lock, staging checks, metrics.jsonl, checkpoint swap, publish) and the others follow it.
    """
    stop = _StopFlag()
    with contextlib.ExitStack() as held:
        try:
            return _train(cfg, resume=resume, progress=progress, stop=stop, held=held)
        finally:
            stop.restore()


def _train(cfg: TrainConfig, *, resume: bool, progress: bool, stop: _StopFlag, held: contextlib.ExitStack) -> Path:
    validate(cfg)
    if cfg.num_threads:
        # Busy-waiting OpenMP threads on a shared machine cost more than they give small models
        # (measured: 10.5 s on 1 thread vs 174 s on 2 under load for the same 50 steps).
        torch.set_num_threads(cfg.num_threads)
    dataset = data_spec.load(cfg.data, progress=progress)
    problems = data_spec.dataset_problems(dataset, [cfg.attribute, cfg.cmac_attribute, *cfg.eval_attributes])
    if problems:
        raise ConfigError(problems)
    cfg = resolve(cfg, dataset.task)
    processes = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() makes it
    cfg = on_processes(cfg, processes.num_processes)
    cfg = _from_main_process(processes, cfg)  # one run name (it may hold the time) on every process
    run_name = resolved_run_name(cfg)
    runs_dir = Path(cfg.runs_dir)
    final, staging = runs_dir / run_name, rundir.staging_dir(runs_dir, run_name)
    checkpoint = staging / rundir.CHECKPOINT
    problems = []
    if processes.is_main_process:
        try:
            command = launch_command(processes.num_processes)
            held.callback(_claim_run(run_name, runs_dir, final, staging, resume, command).release)
        except ConfigError as err:
            problems = err.problems
    problems = _from_main_process(processes, problems)  # the others wait here until the folder is ready
    if problems:
        raise ConfigError(problems)

    # step_scheduler_with_optimizer=False: accelerate would step the scheduler once per process each step;
    # broadcast_buffers=False: the models' buffers are constants (rotary frequencies, position ids), and
    # DDP's broadcast of them before every forward is one more collective the ranks must keep in step
    accelerator = Accelerator(
        log_with=cfg.trackers or None,
        project_dir=str(staging / "trackers"),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    # the legacy global NumPy RNG on purpose: it is what libraries that draw from np.random use
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)  # noqa: NPY002

    # data: the fairness groups come from the training split (Eq. 8 counts N_s)
    samples = training_samples(dataset, cfg)
    groups, group_names = group_ids(samples, cfg.attribute)
    subgroups, _ = group_ids(samples, cfg.cmac_attribute or cfg.attribute)
    counts = torch.bincount(groups, minlength=len(group_names))
    weights = group_weights(counts, cfg.w_max)
    fair_groups, fair_names = group_ids(samples, fairness_attribute(cfg))
    fair_counts = torch.bincount(fair_groups, minlength=len(fair_names))
    in_fairness = fair_counts[fair_groups] >= cfg.fairness_min_n  # tiny groups stay out of the penalty
    labels = torch.tensor([s.label for s in samples])

    # model: frozen backbone + LoRA (+ the Qwen head)
    clf = load_classifier(
        resolved_backbone(cfg),
        task=dataset.task,
        dtype=DTYPES[cfg.dtype],
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
    )
    add_lora(clf, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, seed=cfg.seed)
    clf.to(accelerator.device)
    params = [p for p in clf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=resolved_lr(cfg), weight_decay=cfg.weight_decay)
    effective = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = math.ceil(len(samples) / effective)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total_steps))
    model, optimizer, scheduler = accelerator.prepare(clf, optimizer, scheduler)
    _checkpoint_weights(accelerator, clf)
    start_step = checkpoint_step(checkpoint, cfg, world) if resume else 0

    main_process = accelerator.is_main_process
    log = _open_log(staging / rundir.METRICS, start_step, total_steps) if main_process else None
    if cfg.trackers:
        accelerator.init_trackers(run_name, config={k: str(v) for k, v in cfg.to_dict().items()})
    if main_process:
        print(
            f"{clf.describe()}\n{len(samples)} training samples, groups of {cfg.attribute}: "
            f"{dict(zip(group_names, counts.tolist(), strict=True))}; "
            f"{total_steps} steps of {effective} on {world} process(es)",
            file=sys.stderr,
        )

    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=f"train {cfg.method}",
        unit="step",
        disable=not (progress and main_process),
    )
    val_samples = list(dataset.split("val"))
    started, step_times, loss, done, active, stopped = time.perf_counter(), [], float("nan"), start_step, 0, False
    order: Tensor | None = None  # the sample order of epoch order_epoch
    order_epoch = -1
    model.train()
    if resume:
        load_checkpoint(accelerator, checkpoint)  # last: no setup step may draw from the restored RNGs
    for step in range(start_step, total_steps):
        if _stop_everywhere(accelerator, stop):
            stopped = True
            break
        t0 = time.perf_counter()
        epoch, position = divmod(step, steps_per_epoch)
        if order is None or epoch != order_epoch:
            order, order_epoch = epoch_order(len(samples), epoch, cfg, fair_groups), epoch
        window = order[position * effective : (position + 1) * effective]
        index = window[rank::world]
        # The last step of an epoch may give the ranks unequal shares (or none): a short share is
        # padded with samples whose logits are dropped, so every rank runs the same forwards and takes
        # part in DDP's backward (a rank with fewer forwards would hang the others' collectives).
        padded = torch.cat([index, window[: math.ceil(len(window) / world) - len(index)]])
        logits = torch.cat(
            [
                model(clf.preprocess([samples[i].load_image() for i in micro]))
                for micro in batches(padded.tolist(), cfg.batch_size)
            ]
        )[: len(index)]
        # every rank computes the loss of the whole effective batch (differentiable all-gather)
        lam = fairness_weight(cfg, step, steps_per_epoch)
        parts = compute_loss(
            cfg.method,
            gather_with_grad(logits),
            gather_with_grad(labels[index].to(logits.device)),
            gather_with_grad(groups[index].to(logits.device)),
            lam=lam,
            group_weight=weights.to(logits.device),
            bandwidth=cfg.bandwidth,
            subgroups=gather_with_grad(subgroups[index].to(logits.device)),
            fairness_mask=gather_with_grad(in_fairness[index].long().to(logits.device)).bool(),
        )
        accelerator.backward(parts.total)
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step_times.append(time.perf_counter() - t0)
        loss = parts.total.item()
        active += bool(lam > 0 and parts.fairness.item() != 0)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            record = {
                "step": step + 1,
                "total_steps": total_steps,
                "epoch": round((step + 1) / steps_per_epoch, 4),
                "loss": loss,
                "ce": parts.ce.item(),
                "fairness": parts.fairness.item(),
                "lam": lam,
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": len(window) / step_times[-1],
                "elapsed_s": round(time.perf_counter() - started, 3),
            }
            _write_line(log, record)
            accelerator.log({k: v for k, v in record.items() if k != "total_steps"}, step=step + 1)
        done = step + 1
        if main_process and val_samples and ((step + 1) % steps_per_epoch == 0 or step + 1 == total_steps):
            # the validation curve, drawn live in the Studio: loss and the gap on the training attribute
            figures = validation_figures(clf, val_samples, cfg.attribute, cfg.eval_gap_min_n)
            model.train()
            _write_line(
                log, {"event": "val", "step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4), **figures}
            )
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", fair=f"{parts.fairness.item():.4f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            save_checkpoint(accelerator, checkpoint, step + 1, cfg)
    bar.close()
    if stopped:
        save_checkpoint(accelerator, checkpoint, done, cfg)
        _write_line(log, {"event": "interrupted", "step": done, "time": time.time()})
        _close(log)
        raise Interrupted(f"stopped at step {done}/{total_steps}; checkpoint saved in {checkpoint}")
    seconds = time.perf_counter() - started
    _write_line(log, {"event": "end", "seconds": round(seconds, 3), "time": time.time()})
    _close(log)
    accelerator.wait_for_everyone()  # every process has trained; the others need not wait for publish
    accelerator.end_training()

    if main_process:
        publish(
            cfg,
            dataset,
            accelerator.unwrap_model(model),
            staging,
            final,
            counts,
            group_names,
            {
                "steps": total_steps - start_step,
                "total_steps": total_steps,
                "seconds": round(seconds, 3),
                "seconds_per_step": round(float(np.median(step_times)), 5) if step_times else None,
                "samples_per_s": round(effective / float(np.median(step_times)), 2) if step_times else None,
                "effective_batch": effective,
                "processes": world,
                "train_samples": len(samples),
                "final_loss": loss,
                "resumed_from_step": start_step or None,
                # share of steps whose batch let the fairness term act (FR needs 2 groups, CMAC 2 subgroups of >= 2)
                "fairness_active_fraction": round(active / max(1, total_steps - start_step), 4),
            },
            progress,
        )
    return final


def publish(
    cfg: TrainConfig,
    dataset: Dataset,
    clf: Classifier,
    staging: Path,
    final: Path,
    counts: Tensor,
    group_names: list[str],
    summary: dict,
    progress: bool,
) -> None:
    """Evaluate, write every run file into the staging folder, then rename it into place."""
    from training.card import write_card

    attributes = list(dataset.attributes)
    save_adapter(clf, staging / rundir.ADAPTER)
    predictions = predict(clf, dataset.split("val") + dataset.split("test"), attributes, progress)
    predictions.to_csv(staging / rundir.PREDICTIONS, index=False, float_format="%.8g", lineterminator="\n")
    try:  # "does this image look like the training data?" for Diagnose (training.ood); optional
        ood.fit(clf, dataset.split("train"), dataset.split("val"), seed=cfg.seed).save(staging / ood.FILE)
    except ValueError as error:
        print(f"no out-of-distribution model: {error}", file=sys.stderr)
    reported = eval_attributes(cfg, dataset)
    report = evaluate_run(
        predictions,
        reported,
        bootstrap=cfg.eval_bootstrap,
        seed=cfg.seed,
        gap_min_n=cfg.eval_gap_min_n,
        threshold=cfg.eval_threshold,
        population=(cfg.attribute, dataset.group_counts(cfg.attribute, "train")),
    )
    rundir.write_json_atomic(
        staging / rundir.EVAL, {"run_id": cfg.run_name, "split": "test", "attributes": reported, "report": report}
    )
    import peft
    import transformers

    fingerprint = backbone_fingerprint(resolve_backbone(resolved_backbone(cfg)))  # which weights the name meant
    config = {
        **cfg.to_dict(),
        "task": dataset.task,
        "family": clf.family,
        "run_id": cfg.run_name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "fairdx": FAIRDX_VERSION,
            **({"backbone": fingerprint} if fingerprint else {}),
        },
        "dataset": {
            "spec": cfg.data,
            "root": str(dataset.root),
            "attributes": attributes,
            "n": {split: len(dataset.split(split)) for split in ("train", "val", "test")},
            "group_counts": {a: dataset.group_counts(a, "train") for a in reported},
            "trained_groups": dict(zip(group_names, counts.tolist(), strict=True)),
        },
        "training": summary,
    }
    rundir.write_json_atomic(staging / rundir.CONFIG, config)
    write_card(staging)
    rundir.finalize(staging, final)


FAIRDX_VERSION = "0.1.0"


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checks it between steps, so a step is never half-applied."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _open_log(path: Path, start_step: int, total_steps: int):
    """metrics.jsonl: on resume keep only what the checkpoint covers, then append."""
    kept = []
    if start_step and path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= start_step and record.get("event") != "interrupted":
                kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
    log = path.open("a")
    _write_line(
        log,
        {
            "event": "resume" if start_step else "start",
            "step": start_step,
            "total_steps": total_steps,
            "time": time.time(),
        },
    )
    return log


def _write_line(log, record: dict) -> None:
    """Append one record to metrics.jsonl (``log`` is None on every process but the main one)."""
    if log is None:
        return
    log.write(json.dumps(record) + "\n")
    log.flush()


def _close(log) -> None:
    if log is not None:
        log.close()


def _stop_everywhere(accelerator: Accelerator, stop: _StopFlag) -> bool:
    """Whether any process was asked to stop; all then stop at the same step boundary (else one would
    wait forever in the next step's all-gather while the others save their checkpoint)."""
    if accelerator.num_processes == 1:
        return stop.requested
    if stop.requested:
        accelerator.set_trigger()
    return accelerator.check_trigger()


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="JSON config file (e.g. from --save-config); flags override it")
    parser.add_argument("--save-config", type=Path, help="write the validated config to this file and exit")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    parser.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (logs still go to metrics.jsonl)"
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        base = _read_config_file(args.config) if args.config else None
        cfg = from_args(args, base)
        if args.save_config:
            validate(cfg)
            args.save_config.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            print(f"wrote {args.save_config}")
            return EXIT_OK
        run = train(cfg, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except Interrupted as err:
        print(f"interrupted: {err}; resume with the same flags plus --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if PartialState().is_main_process:  # the others return as soon as they have trained
        print(f"run complete: {run}")
    return EXIT_OK


def _read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a --config file (a --save-config file or a run's own config.json)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError([f"cannot read config file {path}: {err}"]) from None
    if not isinstance(values, dict):
        raise ConfigError([ERR_NOT_AN_OBJECT.format(path=path)])
    return values


if __name__ == "__main__":
    sys.exit(main())
