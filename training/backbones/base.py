"""What every backbone family gives the rest of FairDx: class logits and a certainty margin.

The margin (true-class score minus the best other class, CMAC-MMD) is `training.losses.certainty_margin`
applied to these logits; it is re-exported here so backbone users need one import.

A `Classifier` owns a plain Hugging Face model in ``self.model`` (later the `peft.PeftModel` that
wraps it) plus whatever small task-specific part sits outside it (the Qwen head). Objectives only see
``forward(batch) -> logits [B, 2]`` and `certainty_margin`, so every objective works with every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from PIL import Image
from torch import Tensor, nn
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

from training.losses import certainty_margin  # noqa: F401  (re-exported for backbone users)
from training.tasks import Task


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({self.percent:.2f}%)"


def trainable_parameters(module: nn.Module) -> ParameterCount:
    """How many parameters of `module` (a `Classifier` or any module) receive gradient updates."""
    params = list(module.parameters())
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


class Classifier(nn.Module):
    """A binary image classifier built on a pretrained Hugging Face model.

    Subclasses set `family` and `lora_target_modules`, and implement `preprocess`, `forward`,
    `embed` and `check_lora`. ``self.model`` is always the Hugging Face model object itself or the
    `PeftModel` wrapping it, never a custom wrapper, so an adapter saved from it loads onto
    ``AutoModel.from_pretrained(base_model_id)``.
    """

    family: ClassVar[str]
    lora_target_modules: ClassVar[str | list[str]]
    image_processor: Any  # the checkpoint's Hugging Face image processor (set by each family)

    def __init__(self, model: PreTrainedModel, *, base_model_id: str, task: Task) -> None:
        super().__init__()
        self.model: PreTrainedModel | PeftModel = model  # the PeftModel wrapping it once LoRA is added
        self.base_model_id = base_model_id
        self.task = task
        self.adapter_heads: dict[str, dict[str, Tensor]] = {}  # filled by lora.load_adapter

    # ------------------------------------------------------------------ interface
    def set_task(self, task: str | Task) -> None:
        """Switch the question / class prompts to another task (one base model can serve several)."""
        raise NotImplementedError

    def preprocess(self, images: list[Image.Image]) -> dict[str, Tensor]:
        """Collate `images` into one CPU batch. Takes images only: demographics are never an input."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Class logits [B, 2] in float32 (whatever the model dtype)."""
        raise NotImplementedError

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The image-conditioned feature vector [B, D] the class scores are computed from."""
        raise NotImplementedError

    def check_lora(self, wrapped: list[str]) -> None:
        """Raise if the LoRA-wrapped module names are not exactly where this family wants them."""
        raise NotImplementedError

    def head_state_dict(self) -> dict[str, Tensor]:
        """Trainable tensors that live outside PEFT (saved to head.safetensors); none by default."""
        return {}

    def load_head_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"a {self.family} classifier has no head, but head tensors {sorted(state)} were given")

    def input_description(self) -> str:
        return ""

    def image_layout(self, values: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """`values` shaped like ``batch["pixel_values"]`` (the pixels, a gradient, an attribution) laid out as
        the first image the model read: [K, C, H, W], K copies of each pixel (Qwen's temporal patches; 1
        for a plain image tensor). Sum over K for an attribution, average for the pixels. Saliency
        (inference.saliency) maps attributions back onto the image with it."""
        raise NotImplementedError

    def pixels_for_display(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [C, H, W] back in [0, 1] (the processor's mean and std undone)."""
        mean = torch.tensor(self.image_processor.image_mean, dtype=pixels.dtype, device=pixels.device)
        std = torch.tensor(self.image_processor.image_std, dtype=pixels.dtype, device=pixels.device)
        return (pixels * std[:, None, None] + mean[:, None, None]).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ image budget
    @property
    def image_budget(self) -> tuple[int | None, int | None]:
        """(min_pixels, max_pixels) that `preprocess` resizes images into; None: the checkpoint's own value.

        A family without a pixel budget (CLIP: one fixed input size) always reports (None, None).
        """
        return (None, None)

    def set_image_budget(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Preprocess images under this pixel budget from now on (None: the checkpoint's value); the weights
        are shared, only the image processor changes. ValueError if the family has no pixel budget."""
        if (min_pixels, max_pixels) != (None, None):
            raise ValueError(f"a {self.family} model has no pixel budget")

    # ------------------------------------------------------------------ shared helpers
    @property
    def hf_model(self) -> PreTrainedModel:
        """The Hugging Face model, unwrapped from PEFT if LoRA was added."""
        if not isinstance(self.model, PeftModel):
            return self.model
        base = self.model.get_base_model()  # typed nn.Module by PEFT: the model it wraps
        if not isinstance(base, PreTrainedModel):
            raise TypeError(f"the PEFT model wraps a {type(base).__name__}, not a Hugging Face PreTrainedModel")
        return base

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    def describe(self) -> str:
        """One line for logs: family, base, task, dtype, LoRA, trainable share, image budget."""
        lora = "no LoRA"
        if isinstance(self.model, PeftModel):
            cfg = self.model.peft_config[self.model.active_adapter]
            if not isinstance(cfg, LoraConfig):
                raise TypeError(f"adapter {self.model.active_adapter!r} is a {type(cfg).__name__}, not a LoraConfig")
            n = len(lora_module_names(self))
            lora = f"LoRA r={cfg.r} alpha={cfg.lora_alpha} dropout={cfg.lora_dropout} on {n} modules"
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"{self.family} classifier of {self.base_model_id!r} for task {self.task.name!r} ({dtype}, "
            f"{self.input_description()}): {lora}; {trainable_parameters(self)}"
        )


def load_parts(name_or_path: str, *, dtype: torch.dtype, gradient_checkpointing: bool, **image_processor_kwargs):
    """Tokenizer, image processor and headless model of a checkpoint, each through its Auto class.

    No `AutoProcessor`: Qwen2.5-VL's needs torchvision (FEASIBILITY §2). backend="pil" gives identical
    pixels on every host (torchvision resizes slightly differently).
    """
    image_processor = load_image_processor(name_or_path, **image_processor_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModel.from_pretrained(name_or_path, dtype=dtype)
    if gradient_checkpointing:
        # Non-reentrant: works when the inputs of checkpointed blocks do not require grad (frozen base + LoRA).
        model.activation_checkpointing_enable({"use_reentrant": False})
    return tokenizer, image_processor, model


def load_image_processor(name_or_path: str, **kwargs):
    """A checkpoint's image processor (PIL backend, see `load_parts`), e.g. with min_pixels / max_pixels."""
    return AutoImageProcessor.from_pretrained(name_or_path, backend="pil", **kwargs)


def lora_module_names(clf: Classifier) -> list[str]:
    """Names (relative to the Hugging Face model) of the modules that carry LoRA weights."""
    return [name for name, module in clf.hf_model.named_modules() if isinstance(module, LoraLayer)]
