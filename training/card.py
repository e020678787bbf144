"""The model card of a run: the README.md in every run directory and on the Hub.

One card says what the adapter is (base model, method and its objective with the paper's
equation, every hyper-parameter with the help text of ``TrainConfig``), what it was trained on
(data spec, samples per split, training group counts), how fair it is on the evaluation split
(overall accuracy/AUC, per attribute MaxAccGap, ΔTPR, equalized odds and ES-AUC with bootstrap
intervals, per-group accuracy with n), what it must not be used for, and how to load it.

The metadata block is a ``huggingface_hub.ModelCardData`` (library_name peft, pipeline_tag
image-classification, tags), so the Hub indexes the adapter like any PEFT model. ``base_model``
is written only when the backbone is a Hub id: the Hub rejects a commit whose metadata names a
local folder as a model (``"base_model" ... is not valid``), so a local checkpoint is named in the
text instead.

Inputs are the run's own files: ``config.json`` (a resolved ``TrainConfig`` plus task, family,
dataset and training summaries, see ``training.rundir``) and ``eval.json`` (``{"split", "report":
training.metrics.evaluate(...)}``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from training import methods
from training.backbones import resolve_backbone
from training.config import FIELDS, TrainConfig, cli_flag, help_of
from training.data_spec import SYNTH_PREFIX
from training.rundir import ADAPTER, CARD, CONFIG, EVAL, RunRecord, run_from_config
from training.tasks import get_task

LIBRARY = "peft"
PIPELINE_TAG = "image-classification"
BASE_TAGS = ("fairdx", "fairness", "lora", "medical-imaging")
MISSING = "–"

# Bookkeeping fields: where and how often to write things, not how the adapter was trained.
NOT_HYPERPARAMETERS = frozenset({"runs_dir", "run_name", "sweep", "log_every", "save_every", "trackers"})

GAP_COLUMNS = (
    ("max_acc_gap", "MaxAccGap ↓"),
    ("delta_tpr", "ΔTPR ↓"),
    ("equalized_odds", "EO ↓"),
    ("es_auc", "ES-AUC ↑"),
)

UNKNOWN_METHOD = "config.json names method '{method}', which FairDx does not know; choose one of {choices}"
MISSING_KEY = "{what} has no '{key}'; it was not written by FairDx (training.train)"


def render_card(config: dict[str, Any], eval_report: dict[str, Any], *, repo_id: str | None = None) -> str:
    """The model card (README.md text with a metadata block) of one run.

    config: the run's config.json. eval_report: the run's eval.json, or a bare
    ``training.metrics.evaluate`` report. repo_id: the Hub repository the card will live in (the
    loading snippet then downloads from it); None for a card beside a local run.
    """
    for key in ("method", "backbone", "task", "data"):
        if key not in config:
            raise ValueError(MISSING_KEY.format(what="config", key=key))
    if config["method"] not in methods.REGISTRY:
        raise ValueError(UNKNOWN_METHOD.format(method=config["method"], choices=", ".join(methods.NAMES)))
    report = eval_report.get("report", eval_report)
    split = eval_report.get("split") or report.get("split")
    for key in ("overall", "attributes"):
        if key not in report:
            raise ValueError(MISSING_KEY.format(what="eval report", key=key))
    run = run_from_config(Path(str(config.get("run_id") or ".")), config)
    cfg, record = run.settings, run.record

    sections = [
        _summary(cfg, record, repo_id),
        *_guard(report),
        _method(cfg),
        _fairness(report, split),
        _data(cfg, record),
        _hyperparameters(cfg, config),
        _training(cfg, record),
        _intended_use(cfg),
        _how_to_load(cfg, record, repo_id),
    ]
    return f"---\n{_metadata(cfg, record).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def write_card(run_dir: str | Path) -> Path:
    """Render the card of ``run_dir`` from its config.json and eval.json into its README.md."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / CONFIG).read_text())
    eval_report = json.loads((run_dir / EVAL).read_text())
    path = run_dir / CARD
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_card(config, eval_report))
    os.replace(tmp, path)
    return path


def is_hub_id(backbone: str) -> bool:
    """True for a Hub model id (``Qwen/Qwen2.5-VL-7B-Instruct``), False for a local folder."""
    if Path(resolve_backbone(backbone)).is_dir():
        return False
    try:
        validate_repo_id(backbone)
    except HFValidationError:
        return False
    return True


# ---------------------------------------------------------------------------------------- sections
def _metadata(cfg: TrainConfig, record: RunRecord) -> ModelCardData:
    tags = [*BASE_TAGS, cfg.method, record.task]
    if cfg.data.startswith(SYNTH_PREFIX):
        tags.append("synthetic-data")
    backbone = cfg.backbone or ""
    return ModelCardData(
        library_name=LIBRARY,
        base_model=backbone if is_hub_id(backbone) else None,
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
    )


def _summary(cfg: TrainConfig, record: RunRecord, repo_id: str | None) -> str:
    task = get_task(record.task)
    name = repo_id or record.run_id or "FairDx run"
    method_name = cfg.objective.card_title
    family = record.family
    return (
        f"# {name}\n\n"
        f"A {method_name} adapter trained with FairDx for **{task.name}** images: "
        f"it classifies an image as *{task.classes[0]}* or *{task.classes[1]}*. It is a LoRA adapter "
        f"(r = {cfg.lora_r}, α = {cfg.lora_alpha}) on "
        f"{_backbone_phrase(cfg.backbone or '')}{f', a {family} model' if family else ''}. "
        "Demographic attributes are used only in training and evaluation, never to make a prediction."
    )


def _backbone_phrase(backbone: str) -> str:
    if is_hub_id(backbone):
        return f"[`{backbone}`](https://huggingface.co/{backbone})"
    return f"the local checkpoint `{backbone}`"


def _method(cfg: TrainConfig) -> str:
    method = cfg.objective
    lines = [f"## Method: {method.card_title}", "", f"Objective: {method.objective}", ""]
    values = [f"sensitive attribute `{cfg.attribute}`"]
    if method.uses_lambda:
        values.append(f"λ = {cfg.lam}")
    if method.uses_w_max:
        values.append(f"w_max = {cfg.w_max}")
    if method.uses_cmac_attribute:
        values.append(f"subgroups of `{cfg.fairness_attribute}`")
        bandwidth = cfg.bandwidth
        values.append(
            "RBF bandwidth: median heuristic per batch" if bandwidth is None else f"RBF bandwidth {bandwidth}"
        )
    if cfg.balanced_sampling:
        values.append("group-balanced batches")
    lines.append("Settings: " + ", ".join(values) + ".")
    return "\n".join(lines)


def _guard(report: dict[str, Any]) -> list[str]:
    """A warning block right under the summary when the degenerate-model guard flagged the run."""
    verdict = report.get("guard") or {}
    if not verdict.get("degenerate"):
        return []
    from training.guard import warning_text

    return [f"> **Warning: degenerate model.** {warning_text(verdict['reasons'])}"]


def _reweighted(overall: dict[str, Any]) -> str:
    again = overall.get("reweighted")
    if not again:
        return ""
    return (
        f" Reweighted to the training split's mix of {again['attribute']} (the test split oversamples small "
        f"groups): accuracy {_number(again.get('accuracy'))}, AUC {_number(again.get('auc'))}."
    )


def _fairness(report: dict[str, Any], split: str | None) -> str:
    overall = report["overall"]
    ci = overall.get("ci") or {}
    lines = [
        f"## Fairness on the {split or 'evaluation'} split",
        "",
        f"Overall: n = {overall.get('n', MISSING)}, "
        f"accuracy {_with_interval(overall.get('accuracy'), ci.get('accuracy'))}, "
        f"AUC {_with_interval(overall.get('auc'), ci.get('auc'))}, ECE {_number(overall.get('ece'))} "
        f"(threshold {_number(report.get('threshold', 0.5))}"
        + (", chosen on the validation split by Youden's J" if report.get("threshold_rule") == "youden_on_val" else "")
        + ")."
        + _reweighted(overall),
        "",
        _interval_note(report),
        "",
        "| attribute | " + " | ".join(label for _, label in GAP_COLUMNS) + " |",
        "|---|" + "---|" * len(GAP_COLUMNS),
    ]
    for spec, attribute in report["attributes"].items():
        intervals = attribute.get("ci") or {}
        cells = [_with_interval(attribute.get(gap), intervals.get(gap)) for gap, _ in GAP_COLUMNS]
        lines.append(f"| {_cell(spec)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "MaxAccGap = max − min of group accuracy; ΔTPR = max − min of group true-positive rate (missed "
            "diagnoses); EO = equalized-odds difference, max(ΔTPR, ΔFPR); ES-AUC = AUC / (1 + Σ_s |AUC − AUC_s|)."
        ),
    ]
    gap_min_n = report.get("gap_min_n", report.get("min_n"))
    left_out = False
    for spec, attribute in report["attributes"].items():
        lines += ["", f"### Per group: {spec}", "", "| group | n | accuracy | AUC | TPR |", "|---|---|---|---|---|"]
        for group, figures in attribute["groups"].items():
            excluded = not figures.get("in_gaps", not figures.get("small"))
            left_out |= excluded
            mark = " (left out of gaps)" if excluded else ""
            lines.append(
                f"| {_cell(group)}{mark} | {figures['n']} | {_number(figures.get('accuracy'))} | "
                f"{_number(figures.get('auc'))} | {_number(figures.get('tpr'))} |"
            )
    if gap_min_n and left_out:
        lines += [
            "",
            (
                f"(left out of gaps) marks a group with fewer than {gap_min_n} test samples (the small-group rule, "
                "eval_gap_min_n): its figures are shown, but a gap between it and a large group would measure noise."
            ),
        ]
    return "\n".join(lines)


def _interval_note(report: dict[str, Any]) -> str:
    bootstrap = report.get("bootstrap") or 0
    if not bootstrap:
        return "No bootstrap intervals were computed for this run (eval_bootstrap = 0)."
    level = round(100 * report.get("ci_level", 0.95))
    return f"Brackets: {level}% percentile intervals from {bootstrap} bootstrap resamples of the evaluation split."


def _data(cfg: TrainConfig, record: RunRecord) -> str:
    dataset = record.dataset
    spec = dataset.get("spec") or cfg.data
    lines = ["## Data", "", f"Data spec: `{spec}`."]
    if spec.startswith(SYNTH_PREFIX):
        lines.append(
            "This is FairDx's synthetic benchmark: generated images in the layout of the real dataset, "
            "with a built-in, documented bias between demographic groups. It contains no patient data."
        )
    counts = dataset.get("n") or {}
    if counts:
        lines += ["", "| split | n |", "|---|---|"]
        lines += [f"| {split} | {n} |" for split, n in counts.items()]
    for attribute, groups in record.group_counts.items():
        lines += ["", f"Training samples per group of `{attribute}`:", "", "| group | n (train) |", "|---|---|"]
        lines += [f"| {_cell(group)} | {n} |" for group, n in groups.items()]
    return "\n".join(lines)


def _hyperparameters(cfg: TrainConfig, written: dict[str, Any]) -> str:
    """Every setting the run's config.json holds (one written by an older FairDx may lack newer ones)."""
    lines = ["## Hyper-parameters", "", "| flag | value | meaning |", "|---|---|---|"]
    for name in FIELDS:
        if name in NOT_HYPERPARAMETERS or name not in written:
            continue
        lines.append(f"| `{cli_flag(name)}` | {_cell(_value(getattr(cfg, name)))} | {_cell(help_of(name))} |")
    return "\n".join(lines)


def _training(cfg: TrainConfig, record: RunRecord) -> str:
    """Steps, effective batch and on how many processes, time, final loss; the sweep the run was part of."""
    training, versions = record.training, record.versions
    lines = ["## Training run", ""]
    if training:
        effective = training.get("effective_batch")
        processes = training.get("processes")  # older runs: what their effective batch says
        if processes is None and isinstance(effective, int) and effective % (cfg.batch_size * cfg.grad_accum) == 0:
            processes = effective // (cfg.batch_size * cfg.grad_accum)
        processes = processes or cfg.processes
        lines.append(
            f"{training.get('steps', MISSING)} optimiser steps "
            f"(effective batch {effective or MISSING} = {cfg.batch_size} per micro-batch × "
            f"{cfg.grad_accum} accumulated × {processes} process{'es' if processes != 1 else ''}) "
            f"in {_number(training.get('seconds'), 1)} s ({_number(training.get('samples_per_s'), 1)} samples/s); "
            f"final loss {_number(training.get('final_loss'), 4)}."
        )
    if cfg.sweep:
        lines.append(f"Part of the sweep `{cfg.sweep}`: Compare draws its runs' accuracy-vs-gap frontier together.")
    if record.created:
        lines.append(f"Created {record.created}.")
    if versions:
        lines.append("Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + ".")
    return "\n".join(lines)


def _intended_use(cfg: TrainConfig) -> str:
    lines = [
        "## Intended use and limitations",
        "",
        (
            "- A research demo of fairness-aware fine-tuning. It is **not a medical device** and must not be "
            "used to diagnose, treat or triage anyone."
        ),
        (
            "- The fairness figures above hold for this evaluation split, one training seed and the stated "
            "threshold; small groups have wide intervals, and a small gap on one attribute says nothing about "
            "attributes or intersections that were not measured."
        ),
    ]
    if cfg.data.startswith(SYNTH_PREFIX):
        lines.append(
            "- Trained and evaluated on **synthetic data**: its accuracy and its gaps describe the synthetic "
            "benchmark only, not any real patient population."
        )
    if not is_hub_id(cfg.backbone or ""):
        lines.append(
            f"- The base model is the local checkpoint `{cfg.backbone}`; the adapter loads onto that "
            "exact checkpoint only."
        )
    return "\n".join(lines)


def _how_to_load(cfg: TrainConfig, record: RunRecord, repo_id: str | None) -> str:
    backbone, task = cfg.backbone, record.task
    if repo_id:
        fetch = (
            "With FairDx, `python -m inference.hub pull "
            f"{repo_id}` puts this run into `runs/` where the app lists it. In Python:"
        )
        imports = "from huggingface_hub import snapshot_download\n"
        download = f'adapter_dir = snapshot_download("{repo_id}", allow_patterns=["{ADAPTER}/*"]) + "/{ADAPTER}"\n'
    else:
        fetch = "In Python, from the FairDx repository:"
        imports = ""
        download = f'adapter_dir = "runs/{record.run_id or "RUN_ID"}/{ADAPTER}"\n'
    fairdx = "".join(
        [
            "```python\n",
            imports,
            "from training.backbones import load_adapter, load_classifier\n\n",
            download,
            f'clf = load_classifier("{backbone}", task="{task}")\n',
            "load_adapter(clf, adapter_dir)\n",
            "logits = clf(clf.preprocess([image]))  # [1, 2]: scores of the two classes\n",
            "```",
        ]
    )
    plain = (
        "Without FairDx the adapter is plain PEFT on the Hugging Face model:\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModel\n\n"
        f'model = PeftModel.from_pretrained(AutoModel.from_pretrained("{backbone}"), adapter_dir)\n'
        "```\n\n"
        "For a Qwen2.5-VL backbone the classification head is `adapter/head.safetensors` (`weight`, `bias`), "
        "applied to the language model's last hidden state at the last attended token; for CLIP the class "
        "scores are the scaled cosine similarities between the image and the two class prompts."
    )
    return "\n".join(["## How to load", "", fetch, "", fairdx, "", plain])


# ---------------------------------------------------------------------------------------- formatting
def _number(value: Any, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _with_interval(value: Any, interval: list[float] | None) -> str:
    if value is None:
        return MISSING
    if not interval:
        return _number(value)
    return f"{_number(value)} [{_number(interval[0])}, {_number(interval[1])}]"


def _value(value: Any) -> str:
    if value is None:
        return "(empty)"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
