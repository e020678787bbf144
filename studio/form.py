"""The Studio form: which TrainConfig fields a visitor sets, as what kind of widget, and back to a config.

The form is built from ``training.config.TrainConfig`` itself: each field's help text is the widget's
info line and its default is the widget's default, so the CLI, the form and the model card never
disagree. Values come back through `config_from_form`, which applies the deployment's rules
(allow-listed datasets and backbones by *name*, caps on epochs / samples / LoRA rank) and then the
CLI's own parsing (``training.config.parse``: the same typed model, bounds and data check), and raises
ONE ``ConfigError`` naming every problem, so nothing is queued from a form with a mistake in it. Which
fields a method uses (λ, w_max) comes from the method registry (``training.methods``).

No Gradio here; app.py turns each `FieldSpec` into a component.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from studio.jobs import ERR_GRID_W_MAX_METHOD, ERR_SWEEP_METHOD
from studio.settings import Settings
from training import config as training_config
from training import methods
from training.config import ConfigError, TrainConfig, help_of, parse
from training.data import ATTRIBUTE_JOINER, DatasetError
from training.data_spec import SYNTH_ATTRIBUTES, SYNTH_PREFIX, data_dir, load, parse_synth
from training.demos import DEMOS, RECIPE

# The fields a visitor sets, in the order the form shows them; every other field keeps its default.
CONFIRM_LAMBDA = "confirm_large_lambda"  # a form-only field: it is no setting of the run
LAMBDA_TESTED_MAX = 10.0  # the papers test λ up to 1 (Gu et al., Table 2) and 0.1-10 (CMAC-MMD)
FORM_FIELDS = (
    "method",
    "lam",
    CONFIRM_LAMBDA,
    "w_max",
    "attribute",
    "data",
    "backbone",
    "epochs",
    "lr",
    "lora_r",
    "balanced_sampling",
    "seed",
    "max_samples",
    "processes",
)
LABELS = {
    "method": "Method",
    "lam": "λ (fairness weight)",
    CONFIRM_LAMBDA: "λ beyond 10: I mean it",
    "w_max": "w_max (group weight clip)",
    "attribute": "Sensitive attribute",
    "data": "Dataset",
    "backbone": "Base model",
    "epochs": "Epochs",
    "lr": "Learning rate",
    "lora_r": "LoRA rank r",
    "balanced_sampling": "Group-balanced batches",
    "seed": "Seed",
    "max_samples": "Max training samples",
    "processes": "Processes (GPUs)",
}
LAMBDA_SPLIT = re.compile(r"[,;\s]+")

# Problems the form adds to the CLI's (asserted word for word by the tests).
ERR_REQUIRED = "{label} is required"
ERR_LARGE_LAMBDA = (
    "λ = {lam:g} is beyond the range the papers test (0 to {limit:g}): the fairness term then outweighs the "
    "diagnosis (a λ = 10⁹ job trained a worse-than-chance model). Tick '{confirm}' to launch it anyway"
)
CONFIRM_HELP = (
    "λ above 10 is outside what Gu et al. and CMAC-MMD test and tends to give a constant, useless classifier; "
    "tick this to launch such a job on purpose."
)
ERR_NOT_A_NUMBER = "{label} must be a number (got {value!r})"
ERR_DATASET = "dataset '{value}' is not offered here; choose one of: {choices}"
ERR_BACKBONE = "base model '{value}' is not offered here; choose one of: {choices}"
ERR_CAP = "{label} is capped at {cap} on this server (got {value})"
ERR_WHOLE = "{label} must be a whole number (got {value})"
ERR_LAMBDAS_EMPTY = "enter the λ values of the sweep, e.g. 0.1, 0.5, 1.0"
ERR_LAMBDA_VALUE = "λ value {value!r} is not a number ≥ 0"
ERR_LAMBDAS_TOO_MANY = "a sweep runs at most {cap} λ values on this server (got {n})"
ERR_SWEEP_USER_LIMIT = (
    "a sweep of {n} λ values needs {n} job slots, but this server allows {cap} active "
    "job(s) per user; launch the values one at a time"
)


@dataclass(frozen=True)
class FieldSpec:
    """One widget of the form.

    kind: 'radio' | 'dropdown' | 'number' | 'integer' | 'checkbox' | 'text'.
    choices: (label, value) pairs for radio and dropdown; minimum / maximum bound numbers (None: open).
    optional: an empty value is allowed (it means the config's None, e.g. "all samples").
    custom: a dropdown that also takes a typed value (the attribute: any intersection a+b+...).
    used_by: the methods that read this field (None: every method); the form enables it for those only.
    visible: whether the form shows it (hidden, it keeps its default: Processes on a machine without 2 GPUs).
    """

    name: str
    label: str
    kind: str
    default: Any
    help: str
    choices: tuple[tuple[str, Any], ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    custom: bool = False
    used_by: tuple[str, ...] | None = None
    visible: bool = True

    def enabled_for(self, method: str | None) -> bool:
        """Whether the widget is live when `method` is chosen (λ only for the λ methods, ...)."""
        return self.used_by is None or method in self.used_by


def studio_base() -> TrainConfig:
    """What a Studio job uses for every field the form does not show: the demo recipe (effective batch 32,
    stratified batches, a cross-entropy epoch before the fairness term), without which CMAC collapsed."""
    return TrainConfig(**{k: v for k, v in RECIPE.items() if k not in FORM_FIELDS and k != "num_threads"})


def form_fields(settings: Settings) -> list[FieldSpec]:
    """The form's widgets for this deployment, defaults and help from TrainConfig's metadata.

    Processes (one per GPU, started with accelerate launch) is offered only where there are two CUDA
    devices or more; elsewhere it stays hidden at 1, a plain python process.
    """
    defaults = studio_base()
    dataset = next(iter(settings.datasets))
    gpus = training_config.cuda_devices()
    specs: dict[str, dict[str, Any]] = {  # FieldSpec keyword arguments per field
        "method": dict(kind="radio", choices=tuple((m.title, m.name) for m in methods.REGISTRY.values())),
        "lam": dict(kind="number", minimum=0.0, used_by=_users("lam")),
        CONFIRM_LAMBDA: dict(kind="checkbox", default=False, used_by=_users("lam")),
        "w_max": dict(kind="number", minimum=1.0, used_by=_users("w_max")),
        "attribute": dict(
            kind="dropdown",
            custom=True,
            default=default_attribute(settings, dataset),
            choices=_pairs(attribute_choices(settings, dataset)),
        ),
        "data": dict(kind="dropdown", default=dataset, choices=_pairs(settings.datasets)),
        "backbone": dict(kind="dropdown", default=next(iter(settings.backbones)), choices=_pairs(settings.backbones)),
        "epochs": dict(
            kind="integer",
            minimum=1,
            maximum=settings.max_epochs,
            default=_capped(defaults.epochs, settings.max_epochs),
        ),
        "lr": dict(kind="text"),
        "lora_r": dict(
            kind="integer",
            minimum=1,
            maximum=settings.max_lora_r,
            default=_capped(defaults.lora_r, settings.max_lora_r),
        ),
        "balanced_sampling": dict(kind="checkbox"),
        "seed": dict(kind="integer", minimum=0),
        "max_samples": dict(
            kind="integer",
            minimum=10,
            maximum=settings.max_samples,
            default=settings.max_samples,
            optional=settings.max_samples is None,
        ),
        "processes": dict(kind="integer", minimum=1, maximum=max(gpus, 1), visible=gpus >= 2),
    }
    result = []
    for name in FORM_FIELDS:
        spec = {"default": getattr(defaults, name, None), **specs[name]}
        text = CONFIRM_HELP if name == CONFIRM_LAMBDA else help_of(name)
        result.append(FieldSpec(name=name, label=LABELS[name], help=text, **spec))
    return result


def _users(field: str) -> tuple[str, ...]:
    """The methods whose objective reads config field `field` (from the registry)."""
    return tuple(m.name for m in methods.REGISTRY.values() if field in m.hyperparameters)


def _pairs(names) -> tuple[tuple[str, str], ...]:
    return tuple((name, name) for name in names)


def _capped(value: int, cap: int | None) -> int:
    return value if cap is None else min(value, cap)


# ---------------------------------------------------------------------- attributes of a dataset
def dataset_attributes(settings: Settings, dataset: str) -> tuple[str, ...]:
    """The sensitive attributes of an offered dataset (empty when it cannot be read or is not offered).

    A synthetic benchmark's attributes are known without generating it; a folder is read (metadata
    only, once).
    """
    spec = settings.datasets.get(dataset)
    if spec is None:
        return ()
    if spec.startswith(SYNTH_PREFIX):
        try:
            parsed = parse_synth(spec)
        except ValueError:
            return ()
        folder = data_dir() / parsed.folder_name
        return _folder_attributes(str(folder)) if folder.is_dir() else SYNTH_ATTRIBUTES[parsed.task]
    return _folder_attributes(spec)


@lru_cache(maxsize=32)
def _folder_attributes(folder: str) -> tuple[str, ...]:
    try:
        return tuple(load(folder, progress=False).attributes)
    except (DatasetError, ValueError, OSError):
        return ()


def attribute_choices(settings: Settings, dataset: str) -> list[str]:
    """Each attribute, then each pair of them as an intersection ('sex+age_group', as in CMAC-MMD)."""
    singles = list(dataset_attributes(settings, dataset))
    pairs = [f"{a}{ATTRIBUTE_JOINER}{b}" for i, a in enumerate(singles) for b in singles[i + 1 :]]
    return singles + pairs


def default_attribute(settings: Settings, dataset: str) -> str:
    """The attribute the task's demo runs balance (race for fundus, sex+age_group for skin)."""
    choices = attribute_choices(settings, dataset)
    spec = settings.datasets.get(dataset, "")
    task = spec.split(":")[1] if spec.startswith(SYNTH_PREFIX) else None
    demo = DEMOS[task].attribute if task in DEMOS else None
    if demo in choices or (demo and not choices):
        return demo
    return choices[0] if choices else TrainConfig().attribute


# ---------------------------------------------------------------------- form values -> config
def config_from_form(values: Mapping[str, Any], settings: Settings) -> TrainConfig:
    """A TrainConfig from the form's values, or ConfigError listing every problem (form, caps, CLI)."""
    config, problems = _config_and_problems(values, settings)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def sweep_from_form(
    values: Mapping[str, Any], lambdas_text: str, settings: Settings
) -> tuple[TrainConfig, list[float]]:
    """The config and λ values of a λ sweep (one job per λ), or one ConfigError naming every problem."""
    if not (lambdas_text or "").strip():
        raise ConfigError([*_config_and_problems(values, settings)[1], ERR_LAMBDAS_EMPTY])
    config, axes = grid_from_form(values, lambdas_text, "", "", settings)
    return config, axes["lam"]


ERR_GRID_NOTHING = "enter the values to sweep: λ values, w_max values or seeds (e.g. 0.1, 0.5, 1.0)"
ERR_GRID_VALUE = "{name} value {value!r} is not {rule}"
ERR_GRID_TOO_MANY = "a sweep runs at most {cap} jobs on this server; this grid has {n} ({shape})"
GRID_RULES = {"w_max": ("a number ≥ 1", 1.0, False), "seed": ("a whole number ≥ 0", 0.0, True)}


def parse_values(text: str, name: str) -> tuple[list[float] | list[int], list[str]]:
    """'5, 10' for w_max or '0 1 2' for seeds -> (values, problems)."""
    rule, minimum, whole = GRID_RULES[name]
    values: list = []
    problems = []
    for token in (t for t in LAMBDA_SPLIT.split(text) if t):
        try:
            value = float(token)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (whole and not value.is_integer()):
            problems.append(ERR_GRID_VALUE.format(name=name, value=token, rule=rule))
        else:
            values.append(int(value) if whole else value)
    return values, problems


def grid_from_form(
    values: Mapping[str, Any], lambdas_text: str, w_max_text: str, seeds_text: str, settings: Settings
) -> tuple[TrainConfig, dict[str, list]]:
    """The config and the axes of a grid sweep (λ × w_max × seed; an empty text is an axis not swept),
    or one ConfigError naming every problem. The grid's size counts against the sweep cap."""
    axes: dict[str, list] = {}
    problems: list[str] = []
    if (lambdas_text or "").strip():
        axes["lam"], found = parse_lambdas(lambdas_text, settings.max_sweep)
        problems += found
    for name, text in (("w_max", w_max_text), ("seed", seeds_text)):
        if (text or "").strip():
            axes[name], found = parse_values(text, name)
            problems += found
    config, config_problems = _config_and_problems(values, settings, axes.get("lam"))
    problems = config_problems + problems
    if not axes:
        problems.append(ERR_GRID_NOTHING)
    method = values.get("method")
    if "lam" in axes and method not in methods.LAMBDA_METHODS:
        problems.append(ERR_SWEEP_METHOD.format(method=method))
    if "w_max" in axes and method not in methods.WEIGHT_METHODS:
        problems.append(ERR_GRID_W_MAX_METHOD.format(method=method))
    n = math.prod(len(v) for v in axes.values()) if axes else 0
    shape = " × ".join(f"{len(v)} {'λ' if k == 'lam' else k}" for k, v in axes.items())
    if n > settings.max_sweep:
        problems.append(ERR_GRID_TOO_MANY.format(cap=settings.max_sweep, n=n, shape=shape))
    cap = settings.max_jobs_per_user
    if cap is not None and n > cap:
        problems.append(ERR_SWEEP_USER_LIMIT.format(n=n, cap=cap))
    if problems or config is None:
        raise ConfigError(problems)
    return config, axes


def parse_lambdas(text: str | None, cap: int) -> tuple[list[float], list[str]]:
    """'0.1, 0.5 1.0' -> ([0.1, 0.5, 1.0], problems). Duplicates are left for the job store to name."""
    tokens = [t for t in LAMBDA_SPLIT.split(text or "") if t]
    if not tokens:
        return [], [ERR_LAMBDAS_EMPTY]
    lambdas, problems = [], []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            problems.append(ERR_LAMBDA_VALUE.format(value=token))
        else:
            lambdas.append(value)
    if len(tokens) > cap:
        problems.append(ERR_LAMBDAS_TOO_MANY.format(cap=cap, n=len(tokens)))
    return lambdas, problems


def _config_and_problems(
    values: Mapping[str, Any], settings: Settings, lambdas: Sequence[float] | None = None
) -> tuple[TrainConfig | None, list[str]]:
    """The config and every problem of the form; `lambdas`: a sweep's λ values (else the form's λ)."""
    specs = {spec.name: spec for spec in form_fields(settings)}
    problems: list[str] = []
    chosen: dict[str, Any] = {}
    for name in FORM_FIELDS:
        chosen[name] = _convert(specs[name], values.get(name), problems)

    data_ok = chosen["data"] in settings.datasets
    if not data_ok:
        problems.append(ERR_DATASET.format(value=chosen["data"], choices=", ".join(settings.datasets)))
    if chosen["backbone"] in settings.backbones:
        chosen["backbone"] = settings.backbones[chosen["backbone"]]
    else:
        problems.append(ERR_BACKBONE.format(value=chosen["backbone"], choices=", ".join(settings.backbones)))
        chosen["backbone"] = None
    problems += _cap_problems(chosen, settings)
    confirmed = bool(chosen.pop(CONFIRM_LAMBDA))
    if lambdas is None:
        lambdas = [chosen["lam"]] if isinstance(chosen["lam"], float) else []
    problems += _large_lambda_problems(chosen, lambdas, confirmed)

    values = {
        **studio_base().to_dict(),
        **{k: v for k, v in chosen.items() if k != "data"},
        "data": settings.datasets[chosen["data"]] if data_ok else TrainConfig().data,
        "runs_dir": str(settings.runs_dir),
    }
    if values["balanced_sampling"]:  # the visitor's choice of batches replaces the recipe's stratified ones
        values["stratified_batches"] = False
    config = None
    try:
        # exactly what the CLI runs: the typed model, then the data (never one that is not offered)
        config = parse(values, check_data=data_ok)
    except ConfigError as err:
        problems += [settings.redact(p) for p in err.problems if p not in problems]
    return config, problems


def _large_lambda_problems(chosen: Mapping[str, Any], lambdas: Sequence[float], confirmed: bool) -> list[str]:
    """λ beyond the papers' range needs the visitor's explicit confirmation (only for methods that use λ)."""
    if confirmed or chosen.get("method") not in _users("lam"):
        return []
    too_large = [lam for lam in lambdas if lam > LAMBDA_TESTED_MAX]
    return (
        [ERR_LARGE_LAMBDA.format(lam=max(too_large), limit=LAMBDA_TESTED_MAX, confirm=LABELS[CONFIRM_LAMBDA])]
        if too_large
        else []
    )


def _convert(spec: FieldSpec, raw: Any, problems: list[str]) -> Any:
    """One widget's value as the config field wants it; what cannot be converted is named in `problems`
    and passed on unchanged, so the CLI's validation names the rest."""
    if isinstance(raw, str) and spec.kind in ("number", "integer"):
        raw = raw.strip() or None
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        if spec.optional:
            return None
        if spec.kind == "checkbox":
            return False
        if not spec.visible:  # a field the visitor cannot see keeps its default
            return spec.default
        problems.append(ERR_REQUIRED.format(label=spec.label))
        return spec.default
    if spec.kind in ("number", "integer"):
        if isinstance(raw, bool):
            problems.append(ERR_NOT_A_NUMBER.format(label=spec.label, value=raw))
            return spec.default
        if isinstance(raw, str):
            try:
                raw = float(raw)
            except ValueError:
                problems.append(ERR_NOT_A_NUMBER.format(label=spec.label, value=raw))
                return spec.default
        if spec.kind == "number":
            return float(raw)
        if not float(raw).is_integer():
            problems.append(ERR_WHOLE.format(label=spec.label, value=raw))
            return spec.default
        return int(raw)
    if spec.kind == "text":  # the learning rate: 'auto' or a number
        text = str(raw).strip()
        try:
            return float(text)
        except ValueError:
            return text
    if spec.kind == "checkbox":
        return bool(raw)
    return str(raw).strip()


def _cap_problems(chosen: dict[str, Any], settings: Settings) -> list[str]:
    problems = []
    for name, cap in (
        ("epochs", settings.max_epochs),
        ("lora_r", settings.max_lora_r),
        ("max_samples", settings.max_samples),
    ):
        value = chosen[name]
        if cap is not None and isinstance(value, (int, float)) and value > cap:
            problems.append(ERR_CAP.format(label=LABELS[name], cap=cap, value=value))
    return problems
