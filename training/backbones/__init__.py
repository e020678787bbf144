"""Backbones: one classifier interface over Qwen2.5-VL and CLIP (see docs/architecture.md, "Backbones").

    clf = load_classifier("assets/backbones/tiny-qwen2.5-vl", task="fundus")
    clf = add_lora(clf)                      # r=32, alpha=64, dropout 0.05
    logits = clf(clf.preprocess(images))     # [B, 2]
    margin = certainty_margin(logits, labels)
    save_adapter(clf, run_dir / "adapter")

The family is read from the checkpoint's config.json (`model_type`), so the tiny checkpoints in
assets/ and `Qwen/Qwen2.5-VL-7B-Instruct` / `openai/clip-vit-base-patch16` go through the same code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig

from training.backbones.base import (
    Classifier,
    ParameterCount,
    certainty_margin,
    lora_module_names,
    trainable_parameters,
)
from training.backbones.clip import ClipClassifier
from training.backbones.fingerprint import BUILD_INFO, backbone_fingerprint
from training.backbones.lora import add_lora, load_adapter, save_adapter, set_adapter
from training.backbones.qwen2_5_vl import QwenVLClassifier, pool_last_token
from training.tasks import Task, get_task

if TYPE_CHECKING:  # a type only: backbones sit below the run directory's code
    from training.rundir import RunInfo

FAMILIES: dict[str, type[Classifier]] = {"qwen2_5_vl": QwenVLClassifier, "clip": ClipClassifier}

REPO_ROOT = Path(__file__).resolve().parents[2]
# The embedded default of each demo task (a torch-free constant, so studio.settings can read it cheaply).
from training.embedded import EMBEDDED_BACKBONES  # noqa: E402


def default_backbone(task: str) -> str:
    """The embedded checkpoint a task uses when no --backbone is given."""
    return EMBEDDED_BACKBONES[get_task(task).name]


def resolve_backbone(name_or_path: str) -> str:
    """A hub id stays as it is; a relative folder is found from the working directory or the repository."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if not path.is_absolute() and (REPO_ROOT / path).is_dir():
        return str(REPO_ROOT / path)
    return name_or_path


__all__ = [
    "BUILD_INFO",
    "EMBEDDED_BACKBONES",
    "FAMILIES",
    "Classifier",
    "ClipClassifier",
    "ParameterCount",
    "QwenVLClassifier",
    "add_lora",
    "backbone_fingerprint",
    "certainty_margin",
    "default_backbone",
    "detect_family",
    "load_adapter",
    "load_classifier",
    "lora_module_names",
    "pool_last_token",
    "resolve_backbone",
    "save_adapter",
    "set_adapter",
    "trainable_parameters",
]


def detect_family(name_or_path: str) -> str:
    """The backbone family of a checkpoint, from its config.json `model_type`."""
    model_type = AutoConfig.from_pretrained(name_or_path).model_type
    if model_type not in FAMILIES:
        raise ValueError(f"{name_or_path!r} is a {model_type!r} model; FairDx supports: {', '.join(FAMILIES)}")
    return model_type


def load_classifier(
    name_or_path: str | os.PathLike[str],
    *,
    task: str | Task,
    dtype: torch.dtype = torch.float32,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    image_size: int | None = None,
    gradient_checkpointing: bool = False,
    seed: int = 0,
) -> Classifier:
    """Load a pretrained checkpoint (hub id or local folder) as a binary classifier for `task`.

    min_pixels / max_pixels: Qwen2.5-VL image budget (default: the checkpoint's preprocessor_config).
    image_size: CLIP input resolution (default: the checkpoint's; others interpolate position embeddings).
    gradient_checkpointing: recompute activations in backward (non-reentrant, so it works with PEFT).
    seed: seeds the initialisation of the Qwen head, independent of the global RNG.
    """
    task = get_task(task)
    recorded_id = str(name_or_path)  # what runs record: a hub id or a repo-relative folder, portable
    resolved = resolve_backbone(recorded_id)
    family = detect_family(resolved)
    clf: Classifier
    if family == "clip":
        if min_pixels is not None or max_pixels is not None:
            raise ValueError("min_pixels/max_pixels set the Qwen2.5-VL image budget; for CLIP use image_size")
        clf = ClipClassifier.from_pretrained(
            resolved,
            image_size=image_size,
            task=task,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            seed=seed,
        )
    else:
        if image_size is not None:
            raise ValueError("image_size sets the CLIP input resolution; for Qwen2.5-VL use min_pixels/max_pixels")
        clf = QwenVLClassifier.from_pretrained(
            resolved,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            task=task,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            seed=seed,
        )
    clf.base_model_id = recorded_id
    return clf


def load_run_classifier(run: RunInfo) -> Classifier:
    """A finished run's base model with its adapter (and head) loaded, in eval mode, as it was trained
    (dtype and image budget from its settings)."""
    cfg = run.settings
    clf = load_classifier(
        run.backbone,
        task=run.task,
        dtype=getattr(torch, cfg.dtype),
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )
    load_adapter(clf, run.path / "adapter", adapter_name="default")
    return clf.eval()
