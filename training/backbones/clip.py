"""CLIP as a binary classifier: logits = logit_scale.exp() * cosine(image embedding, class-prompt embedding).

CMAC-MMD (CMAC-MMD) fine-tunes CLIP and scores each image against one text description per class;
its per-sample alignment score is the margin between the correct and the best competing class, which
`certainty_margin` computes from these logits. LoRA goes on both towers, so the prompts are tokenised
once but embedded again in every forward pass.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor

from training.backbones.base import Classifier, load_parts
from training.tasks import Task, get_task


class ClipClassifier(Classifier):
    family = "clip"
    # Attention and MLP of both towers plus the two projections into the joint space: CMAC-MMD fine-tunes
    # CLIP as a whole, and attention alone (LoRA's usual targets) left the tiny CLIP unable to learn skin.
    lora_target_modules: ClassVar[list[str]] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
        "visual_projection",
        "text_projection",
    ]
    LORA_PER_LAYER = 6

    def __init__(self, model, *, base_model_id: str, task: Task, tokenizer, image_processor, image_size: int):
        super().__init__(model, base_model_id=base_model_id, task=task)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_size = image_size
        self.set_task(task)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        task: Task,
        dtype: torch.dtype = torch.float32,
        image_size: int | None = None,
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ) -> ClipClassifier:
        del seed  # CLIP adds no parameters of its own: nothing to initialise
        resize = {}
        if image_size is not None:
            resize = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
        tokenizer, image_processor, model = load_parts(
            name_or_path, dtype=dtype, gradient_checkpointing=gradient_checkpointing, **resize
        )
        return cls(
            model,
            base_model_id=str(name_or_path),
            task=task,
            tokenizer=tokenizer,
            image_processor=image_processor,
            image_size=image_processor.crop_size["height"],
        )

    def set_task(self, task: str | Task) -> None:
        """Score images against `task`'s class prompts from now on (tokenised once, embedded per call)."""
        task = get_task(task)
        prompts = self.tokenizer(list(task.class_prompts), padding=True, return_tensors="pt")
        device = self.prompt_input_ids.device if hasattr(self, "prompt_input_ids") else None
        self.register_buffer("prompt_input_ids", prompts["input_ids"].to(device), persistent=False)
        self.register_buffer("prompt_attention_mask", prompts["attention_mask"].to(device), persistent=False)
        self.task = task

    def preprocess(self, images: list[Image.Image]) -> dict[str, Tensor]:
        """Resized, centre-cropped, normalised pixels [B, 3, S, S]; the prompts are already tokenised."""
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return {"pixel_values": pixels["pixel_values"]}

    def input_description(self) -> str:
        return f"image {self.image_size}x{self.image_size}"

    def image_layout(self, values: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """CLIP reads an image tensor [B, 3, S, S] as it is: the first image, one copy of each pixel."""
        del batch
        return values[:1]

    def _outputs(self, batch: dict[str, Tensor]):
        return self.model(
            input_ids=self.prompt_input_ids,
            attention_mask=self.prompt_attention_mask,
            pixel_values=batch["pixel_values"].to(self.device),
            interpolate_pos_encoding=self.image_size != self.hf_model.config.vision_config.image_size,
        )

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return self._outputs(batch).image_embeds

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        out = self._outputs(batch)
        logit_scale = self.hf_model.logit_scale
        if not isinstance(logit_scale, Tensor):
            raise TypeError(f"{type(self.hf_model).__name__} has no logit_scale parameter; is it a CLIPModel?")
        scale = logit_scale.float().exp()
        # image_embeds / text_embeds are L2-normalised by CLIPModel: the product is the cosine.
        return scale * out.image_embeds.float() @ out.text_embeds.float().T

    def check_lora(self, wrapped: list[str]) -> None:
        config = self.hf_model.config
        expected = {
            "text_model.": self.LORA_PER_LAYER * config.text_config.num_hidden_layers,
            "vision_model.": self.LORA_PER_LAYER * config.vision_config.num_hidden_layers,
            "visual_projection": 1,
            "text_projection": 1,
        }
        found = {tower: sum(n.startswith(tower) for n in wrapped) for tower in expected}
        if found != expected or sum(found.values()) != len(wrapped):
            raise AssertionError(
                f"LoRA must wrap q/k/v/out and fc1/fc2 of both towers and the two projections {expected}; it "
                f"wrapped {found} (+{len(wrapped) - sum(found.values())} elsewhere)"
            )
