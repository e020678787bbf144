"""The one training configuration: a typed dataclass validated in one place.

The same object is behind the training CLI (``python -m training.train``), the Studio form in the
app and the model card of every run, so a value means the same thing everywhere. Every field has
a ``help`` string; ``validate`` collects *every* problem and raises one ``ConfigError`` naming
them all before anything heavy loads (litgpt's ``validate_args`` style).

Defaults follow seed 000 §4.2 (AdamW lr 1e-5 for the 7B, 100 warmup steps, effective batch 8,
3 epochs, seed 42, LoRA r=32 α=64, λ=0.5, w_max=10). ``lr="auto"`` takes the learning rate a
checkpoint recommends in its ``fairdx_build.json`` (our embedded checkpoints do) and falls back
to the paper's 1e-5, so no code branches on the size of the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from training.data_spec import SYNTH_PREFIX, data_problems, parse_synth
from training.losses import DEFAULT_BANDWIDTH, METHODS

Method = Literal["vanilla", "fr", "gr", "hybrid", "cmac"]
DType = Literal["float32", "bfloat16"]

PAPER_LR = 1e-5
ERR_HEADER = "invalid training configuration ({n} problem{s}):"
ERR_UNKNOWN_KEYS = "config file has unknown keys: {keys}; valid keys: {valid}"


class ConfigError(ValueError):
    """Raised with every problem of a configuration at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        header = ERR_HEADER.format(n=n, s="" if n == 1 else "s")
        super().__init__("\n".join([header] + [f"  - {p}" for p in self.problems]))


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (used by the CLI, the Studio form and the card)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved resolved as ``config.json`` in the run."""

    # what to optimise
    method: Method = _f("vanilla", "Objective: vanilla (CE), fr (CE + λ·soft MaxAccGap, seed 000 Eq. 5), "
                        "gr (inverse-frequency group weights clipped at w_max, Eq. 8), hybrid (gr + λ·soft gap, "
                        "Eq. 9), cmac (CE + λ·MMD of certainty margins between intersectional subgroups, seed 004).")
    lam: float = _f(0.5, "λ, weight of the fairness term (fr, hybrid, cmac). Seed 000 tests 0.1, 0.5, 1.0.",
                    cli="--lambda")
    w_max: float = _f(10.0, "Clip for the inverse-frequency group weights w_s = min(N/N_s, w_max) (gr, hybrid).")
    attribute: str = _f("race", "Sensitive attribute the objective balances; 'a+b' is the intersection of a and b.")
    cmac_attribute: str | None = _f(None, "Attribute whose groups CMAC aligns (default: the same as --attribute; "
                                          "seed 004 uses an intersection such as sex+age_group).")
    bandwidth: float | None = _f(DEFAULT_BANDWIDTH, "RBF bandwidth of the CMAC MMD in logit-margin units (log-odds; "
                                 "CMAC-MMD leaves it unspecified); empty = median heuristic on each batch, "
                                 "floored at 0.5 so it cannot drive the model to a constant answer.")
    fairness_delay_epochs: float = _f(0.0, "Epochs of plain cross-entropy before the fairness term starts (fr, "
                                           "hybrid, cmac): a penalty on the margins of a model still at chance "
                                           "pushes it towards a constant classifier.")
    fairness_ramp_epochs: float = _f(0.0, "After the delay, λ rises linearly from 0 to --lambda over this many "
                                          "epochs.")
    fairness_min_n: int = _f(30, "Groups with fewer training samples are left out of the fairness term (fr, "
                                 "hybrid, cmac); they still count in the cross-entropy. A subgroup of 4 images "
                                 "says nothing about its distribution.")
    # data and model
    data: str = _f("synth:fundus", "Dataset folder (Harvard-FairVLMed or HAM10000 layout) or a synthetic spec "
                   "'synth:fundus' / 'synth:skin[:n=2000,seed=0,strength=1.0]' generated on first use.")
    backbone: str | None = _f(None, "Base model: a hub id (Qwen/Qwen2.5-VL-7B-Instruct, "
                                    "openai/clip-vit-base-patch16) or a local folder; empty = the embedded "
                                    "default for the task.")
    dtype: DType = _f("float32", "Parameter dtype of the base model (bfloat16 on a GPU).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory (large models).")
    min_pixels: int | None = _f(None, "Qwen2.5-VL image pixel budget, lower bound (empty = checkpoint default).")
    max_pixels: int | None = _f(None, "Qwen2.5-VL image pixel budget, upper bound (empty = checkpoint default).")
    # optimisation
    epochs: int = _f(3, "Passes over the training split.")
    lr: float | str = _f("auto", "AdamW learning rate; 'auto' = the checkpoint's recommended lr, else 1e-5 "
                                 "(seed 000).")
    weight_decay: float = _f(0.0, "AdamW weight decay on the LoRA and head parameters.")
    batch_size: int = _f(8, "Samples per micro-batch (per device).")
    grad_accum: int = _f(1, "Micro-batches per optimiser step; effective batch = batch_size × grad_accum × "
                            "devices. Group statistics (fr, hybrid, cmac) use the whole effective batch.")
    warmup_steps: int = _f(100, "Linear learning-rate warm-up, in optimiser steps (then linear decay).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    lora_r: int = _f(32, "LoRA rank r.")
    lora_alpha: float = _f(64.0, "LoRA scaling α (update scaled by α/r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA branch.")
    stratified_batches: bool = _f(False, "Spread every group of the fairness attribute evenly over the epoch, "
                                         "so each optimiser step holds each group in its training share "
                                         "(no re-weighting: the epoch is the same samples in another order).")
    balanced_sampling: bool = _f(False, "Group-balanced batches: sample each group of --attribute equally "
                                        "often, so every batch has the groups the fairness terms compare.")
    max_samples: int | None = _f(None, "Use at most this many training samples (stratified); empty = all.")
    seed: int = _f(42, "Random seed (data order, LoRA init, dropout).")
    num_threads: int | None = _f(None, "CPU threads torch may use (empty = torch's default, all cores). Small models "
                                       "train fastest on 1; jobs sharing a machine should not oversubscribe it.")
    # bookkeeping
    runs_dir: str = _f("runs", "Folder that holds run directories.")
    run_name: str | None = _f(None, "Run directory name; empty = <task>-<method>-<attribute>-<time>.")
    eval_bootstrap: int = _f(200, "Bootstrap resamples for the confidence intervals in eval.json.")
    eval_gap_min_n: int = _f(30, "Test-set groups with fewer samples are reported in eval.json but left out of "
                                 "the gaps (a gap to a group of 2 measures noise).")
    eval_threshold: float | None = _f(None, "Decision threshold for eval.json and Diagnose; empty = chosen on the "
                                            "validation split by Youden's J (TPR − FPR), then applied to test.")
    eval_attributes: list[str] = _f([], "Attributes reported in eval.json besides --attribute (empty = all of "
                                        "the dataset's attributes).")
    log_every: int = _f(1, "Log to metrics.jsonl every N optimiser steps.")
    save_every: int = _f(50, "Save a resumable checkpoint every N optimiser steps (0 = only at the end).")
    trackers: list[str] = _f([], "Extra experiment trackers through accelerate (tensorboard, trackio, wandb).")

    # ------------------------------------------------------------------ helpers
    @property
    def task(self) -> str | None:
        """Task of a synthetic data spec ('fundus' / 'skin'); None for a folder (read from the data)."""
        if self.data.startswith(SYNTH_PREFIX):
            return self.data.split(":")[1]
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ConfigError([ERR_UNKNOWN_KEYS.format(keys=", ".join(unknown), valid=", ".join(sorted(valid)))])
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def static_problems(cfg: TrainConfig) -> list[str]:
    """Every problem that can be seen without touching the disk."""
    p: list[str] = []
    if cfg.method not in METHODS:
        p.append(f"method '{cfg.method}' is unknown; choose one of {', '.join(METHODS)}")
    if not isinstance(cfg.lam, (int, float)) or cfg.lam < 0:
        p.append(f"lambda must be ≥ 0 (got {cfg.lam}); seed 000 uses 0.1, 0.5 or 1.0")
    if not isinstance(cfg.w_max, (int, float)) or cfg.w_max < 1:
        p.append(f"w_max must be ≥ 1 (got {cfg.w_max}); it caps the weight of the rarest group, seed 000 uses 10")
    for name in ("fairness_delay_epochs", "fairness_ramp_epochs"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e6:
            p.append(f"{name} must be a number of epochs ≥ 0 (got {v})")
    if cfg.stratified_batches and cfg.balanced_sampling:
        p.append("stratified_batches and balanced_sampling exclude each other: the first keeps each group's "
                 "share of the data, the second gives every group an equal share; pick one")
    if cfg.bandwidth is not None and cfg.bandwidth <= 0:
        p.append(f"bandwidth must be > 0 or empty for the median heuristic (got {cfg.bandwidth})")
    if cfg.dtype not in get_args(DType):
        p.append(f"dtype '{cfg.dtype}' is unknown; choose float32 or bfloat16")
    positive_ints = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                     "lora_r": cfg.lora_r, "log_every": cfg.log_every}
    for name, v in positive_ints.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            p.append(f"{name} must be a whole number ≥ 1 (got {v})")
    for name, v in {"warmup_steps": cfg.warmup_steps, "save_every": cfg.save_every,
                    "fairness_min_n": cfg.fairness_min_n,
                    "eval_bootstrap": cfg.eval_bootstrap, "eval_gap_min_n": cfg.eval_gap_min_n}.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            p.append(f"{name} must be a whole number ≥ 0 (got {v})")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        p.append(f"seed must be a whole number ≥ 0 (got {cfg.seed})")
    if cfg.num_threads is not None and (not isinstance(cfg.num_threads, int) or cfg.num_threads < 1):
        p.append(f"num_threads must be a whole number ≥ 1 or empty (got {cfg.num_threads})")
    if cfg.eval_threshold is not None and not (isinstance(cfg.eval_threshold, (int, float))
                                               and 0.0 <= cfg.eval_threshold <= 1.0):
        p.append(f"eval_threshold must be a probability in [0, 1] or empty (got {cfg.eval_threshold})")
    if cfg.max_samples is not None and (not isinstance(cfg.max_samples, int) or cfg.max_samples < 10):
        p.append(f"max_samples must be ≥ 10 or empty (got {cfg.max_samples})")
    if isinstance(cfg.lr, str):
        if cfg.lr != "auto":
            p.append(f"lr must be a positive number or 'auto' (got '{cfg.lr}')")
    elif not cfg.lr > 0:
        p.append(f"lr must be > 0 (got {cfg.lr})")
    if cfg.lora_alpha <= 0:
        p.append(f"lora_alpha must be > 0 (got {cfg.lora_alpha})")
    if not 0 <= cfg.lora_dropout < 1:
        p.append(f"lora_dropout must be in [0, 1) (got {cfg.lora_dropout})")
    if cfg.weight_decay < 0:
        p.append(f"weight_decay must be ≥ 0 (got {cfg.weight_decay})")
    if cfg.max_grad_norm < 0:
        p.append(f"max_grad_norm must be ≥ 0 (got {cfg.max_grad_norm})")
    for name in ("min_pixels", "max_pixels"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 28 * 28):
            p.append(f"{name} must be ≥ {28 * 28} pixels or empty (got {v})")
    if cfg.min_pixels and cfg.max_pixels and cfg.min_pixels > cfg.max_pixels:
        p.append(f"min_pixels ({cfg.min_pixels}) is larger than max_pixels ({cfg.max_pixels})")
    if cfg.run_name is not None and (not cfg.run_name or "/" in cfg.run_name or cfg.run_name.startswith(".")):
        p.append(f"run_name '{cfg.run_name}' must be a plain folder name (no '/', not starting with '.')")
    for t in cfg.trackers:
        if t not in ("tensorboard", "trackio", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive"):
            p.append(f"tracker '{t}' is unknown to accelerate")
    if cfg.data.startswith(SYNTH_PREFIX):
        try:
            parse_synth(cfg.data)
        except ValueError as err:
            p.append(str(err))
    return p


def validate(cfg: TrainConfig, *, check_data: bool = True) -> None:
    """Raise one ConfigError listing every problem: static values, then the data and attribute.

    The data check reads only metadata (no images), so it is cheap enough to run before a job is
    queued from the Studio as well as before the trainer loads a model.
    """
    problems = static_problems(cfg)
    if check_data:
        problems += data_problems(cfg)
    if problems:
        raise ConfigError(problems)


# ---------------------------------------------------------------------- CLI
def cli_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("cli", "--" + f.name.replace("_", "-"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, with the field's help and default; the config *is* the CLI."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag, default = cli_flag(f), getattr(defaults, f.name)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{f.metadata['help']} (default: {default!r})"}
        if f.type in ("bool",) or isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kw["nargs"] = "*"
        elif get_origin(f.type) is Literal or f.name in ("method", "dtype"):
            kw["choices"] = list(get_args(Method if f.name == "method" else DType))
        else:
            kw["type"] = _parse_value
        parser.add_argument(flag, **kw)


def _parse_value(text: str) -> Any:
    """Numbers become numbers, 'none'/'' become None; everything else stays a string."""
    if text.lower() in ("", "none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def from_args(ns: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Config from parsed flags: a --config file first, flags given on the command line win."""
    values = (base or TrainConfig()).to_dict()
    for k, v in vars(ns).items():
        if k in values:
            values[k] = v
    return TrainConfig.from_dict(values)
