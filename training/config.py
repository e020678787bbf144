"""The one training configuration: a typed pydantic model validated in one place.

The same object is behind the training CLI (``python -m training.train``), the Studio form in the
app, the λ sweep and the model card of every run, so a value means the same thing everywhere. Every
field is typed, bounded and described; the description is the CLI's ``--help`` and the form's help.
NaN and ±inf are refused for every number (``allow_inf_nan=False``), empty strings where a name is
needed. A bad config raises one :class:`ConfigError` naming *every* problem (litgpt's
``validate_args`` style): the field problems, plus -- through :func:`validate` -- what can be seen of
the data without reading it (the folder exists, a synthetic spec's attributes). Validation does no
other I/O: a synthetic benchmark is generated, and its groups checked, when the job starts
(``training.train``).

A run's own ``config.json`` is a valid ``--config``: the record keys the trainer adds
(:data:`RUN_RECORD_KEYS`: task, family, versions, ...) and the bookkeeping of where the run lived
(``runs_dir``, ``run_name``) are recognised and left out, so ``python -m training.train --config
runs/<id>/config.json`` trains the same recipe again into a new run.

Defaults follow Gu et al., fair LoRA §4.2 (AdamW lr 1e-5 for the 7B, 100 warm-up steps, effective
batch 8, 3 epochs, seed 42, LoRA r=32 α=64, λ=0.5, w_max=10). ``lr="auto"`` takes the learning rate
a checkpoint recommends in its ``fairdx_build.json`` (our embedded checkpoints do) and falls back to
the paper's 1e-5, so no code branches on the size of the model.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict

from training import methods
from training.data_spec import SYNTH_PREFIX, data_problems, parse_synth
from training.methods import DEFAULT_BANDWIDTH

DType = Literal["float32", "bfloat16"]
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive")

PAPER_LR = 1e-5
ERR_HEADER = "invalid training configuration ({n} problem{s}):"
ERR_UNKNOWN_KEYS = "config file has unknown keys: {keys}; valid keys: {valid}"
ERR_NOT_AN_OBJECT = "config file {path} must hold one JSON object of settings"
ERR_EXCLUSIVE = (
    "stratified_batches and balanced_sampling exclude each other: the first keeps each group's "
    "share of the data, the second gives every group an equal share; pick one"
)
ERR_PIXELS = "min_pixels ({low}) is larger than max_pixels ({high})"

RUN_RECORD_KEYS = frozenset({"task", "family", "run_id", "created", "versions", "dataset", "training"})
"""Keys ``training.train`` adds to a run's config.json beside the settings (see ``training.rundir.RunRecord``)."""
BOOKKEEPING_KEYS = ("runs_dir", "run_name", "sweep")
"""Where a run lived and which sweep it was queued with: not part of its recipe, so a run's config.json
used as --config starts a new run of its own."""
ERR_PROCESSES = (
    "processes = {n} starts one training process per GPU, but this machine has {found} CUDA device(s); "
    "set processes to {fix}"
)


class ConfigError(ValueError):
    """Raised with every problem of a configuration at once."""

    def __init__(self, problems: Sequence[str], *, fields: Sequence[str] = ()):
        self.problems = list(problems)
        self.fields = tuple(fields)  # the config fields whose values were refused
        n = len(self.problems)
        header = ERR_HEADER.format(n=n, s="" if n == 1 else "s")
        super().__init__("\n".join([header] + [f"  - {p}" for p in self.problems]))


def _f(default: Any, help: str, *, cli: str | None = None, hint: str | None = None, **bounds: Any) -> Any:
    """A field with its help (CLI, form, card), its bounds, an optional CLI flag and a hint for errors."""
    extra: JsonDict = {k: v for k, v in (("cli", cli), ("hint", hint)) if v is not None}
    if isinstance(default, list):
        return Field(default_factory=list, description=help, json_schema_extra=extra or None, **bounds)
    return Field(default, description=help, json_schema_extra=extra or None, **bounds)


class TrainConfig(BaseModel):
    """Everything that defines a training run; saved resolved as ``config.json`` in the run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True, str_strip_whitespace=True)

    # what to optimise
    method: str = _f(methods.BASELINE.name, methods.help_text())
    lam: float = _f(
        0.5,
        "λ, weight of the fairness term (" + ", ".join(methods.LAMBDA_METHODS) + "). Gu et al. test 0.1, 0.5, 1.0.",
        cli="--lambda",
        hint="Gu et al. use 0.1, 0.5 or 1.0",
        ge=0,
    )
    w_max: float = _f(
        10.0,
        "Clip for the inverse-frequency group weights w_s = min(N/N_s, w_max) ("
        + ", ".join(methods.WEIGHT_METHODS)
        + ").",
        hint="it caps the weight of the rarest group, Gu et al. use 10",
        ge=1,
    )
    attribute: str = _f(
        "race", "Sensitive attribute the objective balances; 'a+b' is the intersection of a and b.", min_length=1
    )
    cmac_attribute: str | None = _f(
        None,
        "Attribute whose groups CMAC aligns (default: the same as --attribute; "
        "CMAC-MMD uses an intersection such as sex+age_group).",
    )
    bandwidth: float | None = _f(
        DEFAULT_BANDWIDTH,
        "RBF bandwidth of the CMAC MMD in logit-margin units (log-odds; "
        "CMAC-MMD leaves it unspecified); empty = median heuristic on each batch, "
        "floored at 0.5 so it cannot drive the model to a constant answer.",
        gt=0,
    )
    fairness_delay_epochs: float = _f(
        0.0,
        "Epochs of plain cross-entropy before the fairness term starts ("
        + ", ".join(methods.LAMBDA_METHODS)
        + "): a penalty on the margins of a "
        "model still at chance pushes it towards a constant classifier.",
        ge=0,
        lt=1e6,
    )
    fairness_ramp_epochs: float = _f(
        0.0, "After the delay, λ rises linearly from 0 to --lambda over this many epochs.", ge=0, lt=1e6
    )
    fairness_min_n: int = _f(
        30,
        "Groups with fewer training samples are left out of the fairness term; they "
        "still count in the cross-entropy. A subgroup of 4 images says nothing about "
        "its distribution.",
        ge=0,
    )
    # data and model
    data: str = _f(
        "synth:fundus",
        "Dataset folder (Harvard-FairVLMed or HAM10000 layout) or a synthetic spec "
        "'synth:fundus' / 'synth:skin[:n=2000,seed=0,strength=1.0]' generated on first use.",
        min_length=1,
    )
    backbone: str | None = _f(
        None,
        "Base model: a hub id (Qwen/Qwen2.5-VL-7B-Instruct, "
        "openai/clip-vit-base-patch16) or a local folder; empty = the embedded "
        "default for the task.",
    )
    dtype: DType = _f("float32", "Parameter dtype of the base model (bfloat16 on a GPU).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory (large models).")
    min_pixels: int | None = _f(
        None, "Qwen2.5-VL image pixel budget, lower bound (empty = checkpoint default).", ge=28 * 28
    )
    max_pixels: int | None = _f(
        None, "Qwen2.5-VL image pixel budget, upper bound (empty = checkpoint default).", ge=28 * 28
    )
    # optimisation
    epochs: int = _f(3, "Passes over the training split.", ge=1)
    lr: float | Literal["auto"] = _f(
        "auto", "AdamW learning rate; 'auto' = the checkpoint's recommended lr, else 1e-5 (Gu et al.)."
    )
    weight_decay: float = _f(0.0, "AdamW weight decay on the LoRA and head parameters.", ge=0)
    batch_size: int = _f(8, "Samples per micro-batch (per device).", ge=1)
    grad_accum: int = _f(
        1,
        "Micro-batches per optimiser step; effective batch = batch_size × grad_accum × "
        "processes. Group statistics (" + ", ".join(methods.LAMBDA_METHODS) + ") use the whole effective "
        "batch.",
        ge=1,
    )
    warmup_steps: int = _f(100, "Linear learning-rate warm-up, in optimiser steps (then linear decay).", ge=0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).", ge=0)
    lora_r: int = _f(32, "LoRA rank r.", ge=1)
    lora_alpha: float = _f(64.0, "LoRA scaling α (update scaled by α/r).", gt=0)
    lora_dropout: float = _f(0.05, "Dropout on the LoRA branch.", ge=0, lt=1)
    stratified_batches: bool = _f(
        False,
        "Spread every group of the fairness attribute evenly over the epoch, "
        "so each optimiser step holds each group in its training share "
        "(no re-weighting: the epoch is the same samples in another order).",
    )
    balanced_sampling: bool = _f(
        False,
        "Group-balanced batches: sample each group of --attribute equally "
        "often, so every batch has the groups the fairness terms compare.",
    )
    max_samples: int | None = _f(None, "Use at most this many training samples (stratified); empty = all.", ge=10)
    seed: int = _f(42, "Random seed (data order, LoRA init, dropout).", ge=0)
    processes: int = _f(
        1,
        "Processes (one per GPU) the run is started on with accelerate launch; 1 = one plain python process. "
        "The effective batch grows with it (batch_size × grad_accum × processes).",
        ge=1,
    )
    num_threads: int | None = _f(
        None,
        "CPU threads torch may use (empty = torch's default, all cores). Small "
        "models train fastest on 1; jobs sharing a machine should not "
        "oversubscribe it.",
        ge=1,
    )
    # bookkeeping
    runs_dir: str = _f("runs", "Folder that holds run directories.", min_length=1)
    run_name: str | None = _f(None, "Run directory name; empty = <task>-<method>-<attribute>-<time>.")
    sweep: str | None = _f(
        None,
        "Name of the sweep the run belongs to (the Studio's grid sweep sets it on each of its runs); "
        "Compare groups a sweep's runs and draws their accuracy-vs-gap frontier. Empty = no sweep.",
    )
    eval_bootstrap: int = _f(200, "Bootstrap resamples for the confidence intervals in eval.json.", ge=0)
    eval_gap_min_n: int = _f(
        30,
        "Test-set groups with fewer samples are reported in eval.json but left out of "
        "the gaps (a gap to a group of 2 measures noise).",
        ge=0,
    )
    eval_threshold: float | None = _f(
        None,
        "Decision threshold for eval.json and Diagnose; empty = chosen on the "
        "validation split by Youden's J (TPR − FPR), then applied to test.",
        ge=0,
        le=1,
    )
    eval_attributes: list[str] = _f(
        [], "Attributes reported in eval.json besides --attribute (empty = all of the dataset's attributes)."
    )
    log_every: int = _f(1, "Log to metrics.jsonl every N optimiser steps.", ge=1)
    save_every: int = _f(50, "Save a resumable checkpoint every N optimiser steps (0 = only at the end).", ge=0)
    trackers: list[str] = _f([], "Extra experiment trackers through accelerate (" + ", ".join(TRACKERS) + ").")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise ConfigError(describe(err), fields=[str(e["loc"][0]) for e in err.errors() if e["loc"]]) from None

    # ------------------------------------------------------------------ field rules
    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        methods.get(value)  # ValueError naming the registry's methods
        return value

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"lr must be a positive number or 'auto' (got {value!r})") from None
        if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
            raise ValueError(f"lr must be a positive finite number or 'auto' (got {value!r})")
        return number

    @field_validator("cmac_attribute", "backbone", "run_name", "sweep", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value or value.startswith(".")):
            raise ValueError(f"run_name '{value}' must be a plain folder name (no '/', not starting with '.')")
        return value

    @field_validator("data")
    @classmethod
    def _synth_spec(cls, value: str) -> str:
        if value.startswith(SYNTH_PREFIX):
            parse_synth(value)  # ValueError with the spec's problem
        return value

    @field_validator("eval_attributes")
    @classmethod
    def _attribute_names(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("eval_attributes must not hold an empty name")
        return [name.strip() for name in value]

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in TRACKERS]
        if unknown:
            raise ValueError(f"tracker '{unknown[0]}' is unknown to accelerate; choose from {', '.join(TRACKERS)}")
        return value

    @model_validator(mode="after")
    def _together(self) -> TrainConfig:
        if self.stratified_batches and self.balanced_sampling:
            raise ValueError(ERR_EXCLUSIVE)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(ERR_PIXELS.format(low=self.min_pixels, high=self.max_pixels))
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def task(self) -> str | None:
        """Task of a synthetic data spec ('fundus' / 'skin'); None for a folder (read from the data)."""
        return parse_synth(self.data).task if self.data.startswith(SYNTH_PREFIX) else None

    @property
    def objective(self) -> methods.Method:
        """The registry entry of this config's method."""
        return methods.get(self.method)

    @property
    def fairness_attribute(self) -> str:
        """The attribute whose groups the fairness term compares (CMAC's own one when it has it)."""
        return (self.cmac_attribute or self.attribute) if self.objective.uses_cmac_attribute else self.attribute

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with `changes` (pydantic's model_copy would skip validation)."""
        return TrainConfig(**{**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From settings, or from a run's config.json (its record and bookkeeping keys are left out)."""
        return cls(**settings_of(values))

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        values = json.loads(Path(path).read_text())
        if not isinstance(values, dict):
            raise ConfigError([ERR_NOT_AN_OBJECT.format(path=path)])
        return cls.from_dict(values)


FIELDS: dict[str, FieldInfo] = TrainConfig.model_fields


def help_of(name: str) -> str:
    """The description of config field `name` (CLI help, Studio form help, model card)."""
    return FIELDS[name].description or ""


def _extra(name: str) -> dict[str, Any]:
    extra = FIELDS[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def cli_flag(name: str) -> str:
    """The command-line flag of config field `name` (``lam`` is ``--lambda``)."""
    return str(_extra(name).get("cli") or "--" + name.replace("_", "-"))


def display_name(name: str) -> str:
    """How error messages name field `name`: the field itself, or its own flag's word (``lam`` is lambda)."""
    flag = _extra(name).get("cli")
    return str(flag).lstrip("-") if flag else name


# ---------------------------------------------------------------------- errors in words
_WHOLE = ("int_parsing", "int_from_float", "int_type")
_NUMBER = ("float_parsing", "float_type")


def describe(err: ValidationError) -> list[str]:
    """One sentence per problem of a pydantic ValidationError, named as the CLI names the field."""
    problems = []
    for e in err.errors(include_url=False):
        name = display_name(str(e["loc"][0])) if e["loc"] and e["loc"][0] in FIELDS else None
        got = e.get("input")
        ctx = e.get("ctx") or {}
        kind = e["type"]
        if kind == "extra_forbidden":
            problems.append(ERR_UNKNOWN_KEYS.format(keys=e["loc"][0], valid=", ".join(FIELDS)))
            continue
        if kind == "value_error":
            problems.append(str(ctx.get("error", e["msg"])))
            continue
        if kind in _WHOLE:
            text = f"{name} must be a whole number"
            bound = _bound_words(str(e["loc"][0]))
            text += f" {bound}" if bound else ""
        elif kind == "finite_number":
            text = f"{name} must be a finite number"
        elif kind in _NUMBER:
            text = f"{name} must be a number"
        elif kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
            kind_words = {"greater_than_equal": "≥", "greater_than": ">", "less_than": "<", "less_than_equal": "≤"}
            whole = FIELDS[str(e["loc"][0])].annotation in (int, int | None)
            limit = next(iter(ctx.values()))
            limit = f"{limit:g}" if isinstance(limit, (int, float)) else limit
            text = f"{name} must be {'a whole number ' if whole else ''}{kind_words[kind]} {limit}"
        elif kind == "string_too_short":
            text = f"{name} must not be empty"
        elif kind == "literal_error":
            text = f"{name} must be one of {ctx.get('expected', '')}"
        elif kind == "bool_parsing" or kind == "bool_type":
            text = f"{name} must be true or false"
        else:
            text = f"{name or '.'.join(map(str, e['loc']))}: {e['msg']}"
        hint = _extra(str(e["loc"][0])).get("hint") if name else None
        problems.append(f"{text} (got {_shown(got)})" + (f"; {hint}" if hint else ""))
    return problems


def _shown(value: Any) -> str:
    """A value as the user typed it: number-like text bare (-1, nan), other text quoted."""
    if isinstance(value, str):
        try:
            float(value)
            return value
        except ValueError:
            return repr(value)
    return repr(value)


def _bound_words(name: str) -> str:
    for item in FIELDS[name].metadata:
        for attribute, sign in (("ge", "≥"), ("gt", ">")):
            value = getattr(item, attribute, None)
            if value is not None:
                return f"{sign} {value:g}"
    return ""


def cuda_devices() -> int:
    """How many CUDA devices this machine offers (0 on a CPU-only machine or torch's CPU build).

    The one place that asks: ``validate`` checks ``processes`` against it and the Studio form shows its
    Processes field only where it is 2 or more (tests patch it). torch is imported here, not at module
    level, so reading a config stays light; ``device_count`` does not initialise CUDA.
    """
    import torch

    return torch.cuda.device_count()


def validate(cfg: TrainConfig, *, check_data: bool = True) -> None:
    """Raise one ConfigError naming what the data and this machine do not offer (the values were checked
    when `cfg` was built).

    Only looks whether the data folder exists and, for a synthetic spec, which attributes it has:
    no file is read and nothing is generated, so the Studio can run this before it queues a job.
    The groups of a folder's attributes are checked when the job starts (``training.train``). A run on
    several processes needs one CUDA device per process: asked before a job is queued, not after it
    has waited its turn and failed in accelerate's launcher.
    """
    problems = []
    if cfg.processes > 1:
        found = cuda_devices()
        if found < cfg.processes:
            fix = "1" if found < 2 else f"at most {found}"
            problems.append(ERR_PROCESSES.format(n=cfg.processes, found=found, fix=fix))
    if check_data:
        problems += data_problems(cfg.data, [cfg.attribute, cfg.cmac_attribute, *cfg.eval_attributes])
    if problems:
        raise ConfigError(problems)


def parse(values: dict[str, Any], *, check_data: bool = True) -> TrainConfig:
    """A config from raw values (CLI text, form values, JSON) with EVERY problem named at once.

    Field problems and data problems come in one ConfigError: the data check runs when the data
    field itself is valid, on the attributes that are.
    """
    values = settings_of(values)
    try:
        cfg = TrainConfig(**values)
    except ConfigError as err:
        problems, bad = err.problems, set(err.fields)
        if check_data and "data" not in bad and isinstance(values.get("data", ""), str):
            data = values.get("data") or FIELDS["data"].default
            named = [values.get(k) for k in ("attribute", "cmac_attribute") if k not in bad]
            named += [] if "eval_attributes" in bad else list(values.get("eval_attributes") or [])
            problems += data_problems(data, [a.strip() for a in named if isinstance(a, str)])
        raise ConfigError(problems) from None
    validate(cfg, check_data=check_data)
    return cfg


def settings_of(values: dict[str, Any]) -> dict[str, Any]:
    """The settings in `values`: a run's config.json loses its record and bookkeeping keys."""
    if RUN_RECORD_KEYS & set(values):
        return {k: v for k, v in values.items() if k not in RUN_RECORD_KEYS and k not in BOOKKEEPING_KEYS}
    return dict(values)


# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, with the field's help and default; the config *is* the CLI."""
    for name, info in FIELDS.items():
        default = info.get_default(call_default_factory=True)
        kw: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": f"{info.description} (default: {default!r})",
        }
        if info.annotation is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kw["nargs"] = "*"
        elif name == "method":
            kw["choices"] = list(methods.NAMES)
        elif name == "dtype":
            kw["choices"] = list(DTYPES)
        else:
            kw["type"] = _none_or_text if _optional(info) else str
            kw["metavar"] = name.upper()
        parser.add_argument(cli_flag(name), **kw)


def _optional(info: FieldInfo) -> bool:
    return info.default is None


def _none_or_text(text: str) -> str | None:
    """'', 'none' and 'null' mean "empty" for a field that may be empty; the rest is left to the model."""
    return None if text.strip().lower() in ("", "none", "null") else text


def from_args(ns: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainConfig:
    """Config from parsed flags over a --config file's values (flags given on the command line win).

    Values stay text until the model parses them, so ``--run-name 2024`` is a name and ``--lambda nan``
    is refused with the rest.
    """
    values = settings_of(base or {})
    values.update({k: v for k, v in vars(ns).items() if k in FIELDS})
    return parse(values)


TRAIN_MODULE = "training.train"


def launch_arguments(processes: int) -> list[str]:
    """``accelerate launch``'s flags for `processes` processes on one machine (one per GPU), every choice
    spelled out: accelerate then neither guesses from a config file nor warns about what it filled in.
    The Studio adds a free ``--main_process_port``, so two jobs never collide on the default port."""
    return [
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def command_line(cfg: TrainConfig, *, program: str | None = None) -> str:
    """The exact command that trains `cfg`: one flag per setting that differs from the defaults (where the
    run lives is left to the reader's machine). ``from_args`` of its flags gives `cfg` back.

    The program is ``python -m training.train``, or ``accelerate launch ... -m training.train`` for a
    config of several processes (``--processes`` alone would only be refused by the trainer).
    """
    if program is None:
        program = f"python -m {TRAIN_MODULE}"
        if cfg.processes > 1:
            program = shlex.join(["accelerate", "launch", *launch_arguments(cfg.processes), "-m", TRAIN_MODULE])
    defaults = TrainConfig().to_dict()
    parts = [program]
    for name, value in cfg.to_dict().items():
        if name in BOOKKEEPING_KEYS or value == defaults.get(name):
            continue
        flag = cli_flag(name)
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            parts += [flag, *(shlex.quote(str(v)) for v in value)]
        elif value is None:
            parts += [flag, "none"]
        else:
            parts += [flag, shlex.quote(f"{value:g}" if isinstance(value, float) else str(value))]
    return " ".join(parts)
