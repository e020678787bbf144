"""LoRA on a classifier's Hugging Face model, saved in plain PEFT format.

PEFT wraps ``clf.model`` (the `Qwen2_5_VLModel` / `CLIPModel` itself), never a custom module, so a
saved adapter is usable without FairDx::

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base), "RUN/adapter")
    head = safetensors.torch.load_file("RUN/adapter/head.safetensors")     # Qwen only
    h = model(**batch, use_cache=False).last_hidden_state
    logits = pool_last_token(h, batch["attention_mask"]) @ head["weight"].T + head["bias"]

Anything trainable outside PEFT (the Qwen head) goes to ``head.safetensors`` beside the adapter.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.backbones.base import Classifier, lora_module_names

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"


def add_lora(
    clf: Classifier, *, r: int = 32, alpha: float = 64, dropout: float = 0.05, seed: int | None = None
) -> Classifier:
    """Wrap the classifier's Hugging Face model with LoRA (Gu et al., fair LoRA §4: r=32, alpha=64, dropout 0.05).

    PEFT freezes every base parameter; what stays trainable is the LoRA matrices plus the family's
    own head (Qwen). Raises if the adapter landed anywhere but the family's target modules.
    seed: initialise LoRA A from this seed instead of the global RNG (which model loading consumes).
    """
    if isinstance(clf.model, PeftModel):
        raise ValueError("this classifier already has a LoRA adapter; load a fresh classifier to add a new one")
    config = LoraConfig(
        r=r,
        # PEFT annotates lora_alpha as int, but only ever uses it as the scale alpha / r: any number works.
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=clf.lora_target_modules,
        bias="none",
    )
    with _quiet_peft(), torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        clf.model = get_peft_model(clf.model, config)
    # PEFT records `name_or_path`; set it explicitly so runs always name the base they need.
    clf.model.peft_config["default"].base_model_name_or_path = clf.base_model_id
    clf.check_lora(lora_module_names(clf))
    return clf


def save_adapter(clf: Classifier, out_dir: Path) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (+ head.safetensors) into `out_dir`."""
    if not isinstance(clf.model, PeftModel):
        raise ValueError("the classifier has no LoRA adapter to save; call add_lora() or load_adapter() first")
    out_dir = Path(out_dir)
    clf.model.save_pretrained(str(out_dir), safe_serialization=True)
    head = clf.head_state_dict()
    if head:
        metadata = {
            "format": "pt",
            "family": clf.family,
            "task": clf.task.name,
            "classes": json.dumps(list(clf.task.classes)),
            "pooling": "last attended token of the language model's last_hidden_state",
        }
        save_file({k: v.cpu().contiguous() for k, v in head.items()}, str(out_dir / HEAD_WEIGHTS), metadata=metadata)
    return out_dir


def load_adapter(
    clf: Classifier, adapter_dir: Path, *, adapter_name: str = "default", is_trainable: bool = False
) -> Classifier:
    """Load a saved adapter (safetensors only) onto `clf` and make it the active one.

    Loading a second adapter under another name keeps the first in memory; `set_adapter` switches
    between them (LoRA weights and head) in milliseconds.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{adapter_dir} has no {ADAPTER_WEIGHTS}; FairDx loads adapters from safetensors only "
            "(convert a .bin adapter with safetensors.torch.save_file)"
        )
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if recorded and recorded != clf.base_model_id:
        log.warning("adapter %s was trained on %r; loading it onto %r", adapter_dir, recorded, clf.base_model_id)
    head = _read_head(clf, adapter_dir)
    with _quiet_peft():
        if isinstance(clf.model, PeftModel):
            clf.model.load_adapter(adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable)
        else:
            clf.model = PeftModel.from_pretrained(
                clf.model, adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable
            )
    clf.check_lora(lora_module_names(clf))
    clf.adapter_heads[adapter_name] = head
    return set_adapter(clf, adapter_name)


def set_adapter(clf: Classifier, adapter_name: str) -> Classifier:
    """Activate an adapter loaded earlier with `load_adapter` (its LoRA weights and its head)."""
    if adapter_name not in clf.adapter_heads:
        raise KeyError(f"no adapter named {adapter_name!r} is loaded; loaded: {sorted(clf.adapter_heads) or 'none'}")
    clf.model.set_adapter(adapter_name)
    clf.load_head_state_dict(clf.adapter_heads[adapter_name])
    return clf


def _read_head(clf: Classifier, adapter_dir: Path) -> dict:
    path = adapter_dir / HEAD_WEIGHTS
    expects_head = bool(clf.head_state_dict())
    if expects_head and not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no {HEAD_WEIGHTS}, which a {clf.family} adapter needs")
    if not expects_head:
        return {}
    with safe_open(str(path), framework="pt") as f:
        task = (f.metadata() or {}).get("task")
    if task is not None and task != clf.task.name:
        raise ValueError(f"adapter {adapter_dir} was trained for task {task!r}; load the classifier with task={task!r}")
    return load_file(str(path), device=str(clf.device))


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 calls transformers' deprecated `is_gradient_checkpointing`; nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
