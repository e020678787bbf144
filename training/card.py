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
from dataclasses import fields
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from training.backbones import resolve_backbone
from training.config import TrainConfig, cli_flag
from training.data_spec import SYNTH_PREFIX
from training.rundir import ADAPTER, CARD, CONFIG, EVAL
from training.tasks import get_task

LIBRARY = "peft"
PIPELINE_TAG = "image-classification"
BASE_TAGS = ("fairdx", "fairness", "lora", "medical-imaging")
MISSING = "–"

# Bookkeeping fields: where and how often to write things, not how the adapter was trained.
NOT_HYPERPARAMETERS = frozenset({"runs_dir", "run_name", "log_every", "save_every", "trackers"})

PAPER_000 = "Gu et al., *Fairness-Aware Fine-Tuning of Vision-Language Models for Medical Glaucoma Diagnosis*"
PAPER_004 = (
    "*Intersectional Fairness in Vision-Language Models for Medical Image Disease Classification* "
    "(CMAC-MMD, [arXiv:2512.15249](https://arxiv.org/abs/2512.15249))"
)

# Display name and objective of each method: one line, the paper's equation in LaTeX.
METHODS: dict[str, tuple[str, str]] = {
    "vanilla": (
        "Vanilla LoRA",
        r"mean cross-entropy, $\mathcal{L} = -\frac{1}{N}\sum_{i} \log p_\theta(y_i \mid x_i)$ "
        f"({PAPER_000}, Eq. 3).",
    ),
    "fr": (
        "FR-LoRA (fairness-regularised)",
        r"$\mathcal{L} = \mathcal{L}_{CE} + \lambda \left(\max_s \mathrm{Acc}^s_{soft} - \min_s "
        r"\mathrm{Acc}^s_{soft}\right)$ with $\mathrm{Acc}^s_{soft}$ the mean probability of the true class "
        f"in group $s$ ({PAPER_000}, Eqs. 4-6).",
    ),
    "gr": (
        "GR-LoRA (group-reweighted)",
        r"$\mathcal{L} = \sum_s w_s \mathcal{L}^s_{CE}$, $w_s = \min(N / N_s, w_{max})$ "
        f"({PAPER_000}, Eq. 8); FairDx weights each sample by $w_s$ and normalises by the batch's total weight.",
    ),
    "hybrid": (
        "Hybrid-LoRA (reweighted + regularised)",
        r"$\mathcal{L} = \sum_s w_s \mathcal{L}^s_{CE} + \lambda\, \mathrm{MaxAccGap}_{soft}$ "
        f"({PAPER_000}, Eq. 9).",
    ),
    "cmac": (
        "CMAC-MMD",
        r"$\mathcal{L} = \mathcal{L}_{CE} + \lambda \cdot \mathrm{mean}_{s<t}\, \mathrm{MMD}^2_{RBF}(m_s, m_t)$ "
        r"over pairs of intersectional subgroups, $m$ the certainty margin (true-class score minus the best "
        f"other class) ({PAPER_004}).",
    ),
}

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
    if config["method"] not in METHODS:
        raise ValueError(UNKNOWN_METHOD.format(method=config["method"], choices=", ".join(METHODS)))
    report = eval_report.get("report", eval_report)
    split = eval_report.get("split") or report.get("split")
    for key in ("overall", "attributes"):
        if key not in report:
            raise ValueError(MISSING_KEY.format(what="eval report", key=key))

    sections = [
        _summary(config, repo_id),
        *_guard(report),
        _method(config),
        _fairness(report, split),
        _data(config),
        _hyperparameters(config),
        _training(config),
        _intended_use(config),
        _how_to_load(config, repo_id),
    ]
    return f"---\n{_metadata(config).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


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
def _metadata(config: dict[str, Any]) -> ModelCardData:
    tags = [*BASE_TAGS, config["method"], config["task"]]
    if config["data"].startswith(SYNTH_PREFIX):
        tags.append("synthetic-data")
    backbone = config["backbone"]
    return ModelCardData(
        library_name=LIBRARY,
        base_model=backbone if is_hub_id(backbone) else None,
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
    )


def _summary(config: dict[str, Any], repo_id: str | None) -> str:
    task = get_task(config["task"])
    name = repo_id or config.get("run_id", "FairDx run")
    method_name = METHODS[config["method"]][0]
    family = config.get("family", "")
    return (
        f"# {name}\n\n"
        f"A {method_name} adapter trained with FairDx for **{task.name}** images: "
        f"it classifies an image as *{task.classes[0]}* or *{task.classes[1]}*. It is a LoRA adapter "
        f"(r = {config.get('lora_r', MISSING)}, α = {config.get('lora_alpha', MISSING)}) on "
        f"{_backbone_phrase(config['backbone'])}{f', a {family} model' if family else ''}. "
        "Demographic attributes are used only in training and evaluation, never to make a prediction."
    )


def _backbone_phrase(backbone: str) -> str:
    if is_hub_id(backbone):
        return f"[`{backbone}`](https://huggingface.co/{backbone})"
    return f"the local checkpoint `{backbone}`"


def _method(config: dict[str, Any]) -> str:
    name, objective = METHODS[config["method"]]
    lines = [f"## Method: {name}", "", f"Objective: {objective}", ""]
    values = [f"sensitive attribute `{config.get('attribute', MISSING)}`"]
    if config["method"] in ("fr", "hybrid", "cmac"):
        values.append(f"λ = {config.get('lam', MISSING)}")
    if config["method"] in ("gr", "hybrid"):
        values.append(f"w_max = {config.get('w_max', MISSING)}")
    if config["method"] == "cmac":
        values.append(f"subgroups of `{config.get('cmac_attribute') or config.get('attribute', MISSING)}`")
        bandwidth = config.get("bandwidth")
        values.append("RBF bandwidth: median heuristic per batch" if bandwidth is None else f"RBF bandwidth {bandwidth}")
    if config.get("balanced_sampling"):
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
    return (f" Reweighted to the training split's mix of {again['attribute']} (the test split oversamples small "
            f"groups): accuracy {_number(again.get('accuracy'))}, AUC {_number(again.get('auc'))}.")


def _fairness(report: dict[str, Any], split: str | None) -> str:
    overall = report["overall"]
    ci = overall.get("ci") or {}
    lines = [
        f"## Fairness on the {split or 'evaluation'} split",
        "",
        f"Overall: n = {overall.get('n', MISSING)}, accuracy {_with_interval(overall.get('accuracy'), ci.get('accuracy'))}, "
        f"AUC {_with_interval(overall.get('auc'), ci.get('auc'))}, ECE {_number(overall.get('ece'))} "
        f"(threshold {_number(report.get('threshold', 0.5))}"
        + (", chosen on the validation split by Youden's J" if report.get("threshold_rule") == "youden_on_val" else "")
        + ")." + _reweighted(overall),
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
        "MaxAccGap = max − min of group accuracy; ΔTPR = max − min of group true-positive rate (missed "
        "diagnoses); EO = equalized-odds difference, max(ΔTPR, ΔFPR); ES-AUC = AUC / (1 + Σ_s |AUC − AUC_s|).",
    ]
    min_n = report.get("min_n")
    for spec, attribute in report["attributes"].items():
        lines += ["", f"### Per group: {spec}", "", "| group | n | accuracy | AUC | TPR |", "|---|---|---|---|---|"]
        for group, figures in attribute["groups"].items():
            small = " (small)" if figures.get("small") else ""
            lines.append(
                f"| {_cell(group)}{small} | {figures['n']} | {_number(figures.get('accuracy'))} | "
                f"{_number(figures.get('auc'))} | {_number(figures.get('tpr'))} |"
            )
    if min_n:
        lines += ["", f"(small) marks a group with fewer than {min_n} samples: read its figures with care."]
    return "\n".join(lines)


def _interval_note(report: dict[str, Any]) -> str:
    bootstrap = report.get("bootstrap") or 0
    if not bootstrap:
        return "No bootstrap intervals were computed for this run (eval_bootstrap = 0)."
    level = round(100 * report.get("ci_level", 0.95))
    return f"Brackets: {level}% percentile intervals from {bootstrap} bootstrap resamples of the evaluation split."


def _data(config: dict[str, Any]) -> str:
    dataset = config.get("dataset") or {}
    spec = dataset.get("spec") or config["data"]
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
    for attribute, groups in (dataset.get("group_counts") or {}).items():
        lines += ["", f"Training samples per group of `{attribute}`:", "", "| group | n (train) |", "|---|---|"]
        lines += [f"| {_cell(group)} | {n} |" for group, n in groups.items()]
    return "\n".join(lines)


def _hyperparameters(config: dict[str, Any]) -> str:
    lines = ["## Hyper-parameters", "", "| flag | value | meaning |", "|---|---|---|"]
    for f in fields(TrainConfig):
        if f.name in NOT_HYPERPARAMETERS or f.name not in config:
            continue
        lines.append(f"| `{cli_flag(f)}` | {_cell(_value(config[f.name]))} | {_cell(f.metadata['help'])} |")
    return "\n".join(lines)


def _training(config: dict[str, Any]) -> str:
    training = config.get("training") or {}
    versions = config.get("versions") or {}
    lines = ["## Training run", ""]
    if training:
        lines.append(
            f"{training.get('steps', MISSING)} optimiser steps (effective batch {training.get('effective_batch', MISSING)}) "
            f"in {_number(training.get('seconds'), 1)} s ({_number(training.get('samples_per_s'), 1)} samples/s); "
            f"final loss {_number(training.get('final_loss'), 4)}."
        )
    if config.get("created"):
        lines.append(f"Created {config['created']}.")
    if versions:
        lines.append("Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + ".")
    return "\n".join(lines)


def _intended_use(config: dict[str, Any]) -> str:
    lines = [
        "## Intended use and limitations",
        "",
        "- A research demo of fairness-aware fine-tuning. It is **not a medical device** and must not be "
        "used to diagnose, treat or triage anyone.",
        "- The fairness figures above hold for this evaluation split, one training seed and the stated "
        "threshold; small groups have wide intervals, and a small gap on one attribute says nothing about "
        "attributes or intersections that were not measured.",
    ]
    if config["data"].startswith(SYNTH_PREFIX):
        lines.append(
            "- Trained and evaluated on **synthetic data**: its accuracy and its gaps describe the synthetic "
            "benchmark only, not any real patient population."
        )
    if not is_hub_id(config["backbone"]):
        lines.append(
            f"- The base model is the local checkpoint `{config['backbone']}`; the adapter loads onto that "
            "exact checkpoint only."
        )
    return "\n".join(lines)


def _how_to_load(config: dict[str, Any], repo_id: str | None) -> str:
    backbone, task = config["backbone"], config["task"]
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
        download = f'adapter_dir = "runs/{config.get("run_id", "RUN_ID")}/{ADAPTER}"\n'
    fairdx = "".join([
        "```python\n",
        imports,
        "from training.backbones import load_adapter, load_classifier\n\n",
        download,
        f'clf = load_classifier("{backbone}", task="{task}")\n',
        "load_adapter(clf, adapter_dir)\n",
        "logits = clf(clf.preprocess([image]))  # [1, 2]: scores of the two classes\n",
        "```",
    ])
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
