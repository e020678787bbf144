"""Qwen2.5-VL as a binary classifier: image + clinical question -> last-token hidden state -> linear head.

Gu et al., fair LoRA §4 ("Last Token Pooling"): under causal attention the final token has attended to the
whole image and question, so its last-layer hidden state feeds a ``Linear(hidden, 2)`` head.

The prompt is built without ``Qwen2_5_VLProcessor`` (it needs torchvision, which does not work with
our CPU torch): the tokenizer's chat template gives one ``<|image_pad|>`` per image, which is expanded
to ``grid_t*grid_h*grid_w // merge_size**2`` copies, exactly as the official processor does, and
``mm_token_type_ids`` marks those tokens so the model builds its 3-D (M-RoPE) positions.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor, nn

from training.backbones.base import Classifier, load_image_processor, load_parts
from training.tasks import Task, get_task

IMAGE_PAD = "<|image_pad|>"


def pool_last_token(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Hidden state [B, H] at each row's last attended position, for left or right padding alike.

    The index is the position of the last 1 in the mask (argmax of position * mask), so neither
    ``hidden[:, -1]`` (wrong with right padding) nor ``mask.sum() - 1`` (wrong with left padding).
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


class QwenVLClassifier(Classifier):
    family = "qwen2_5_vl"
    # Only the language model's attention projections (Gu et al., fair LoRA §4: q, k, v, o; vision tower frozen).
    # The vision tower's attention is a fused `attn.qkv` / `attn.proj`, so it could not match anyway;
    # `check_lora` asserts it.
    lora_target_modules = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj)"

    def __init__(
        self,
        model,
        *,
        base_model_id: str,
        task: Task,
        tokenizer,
        image_processor,
        seed: int = 0,
        image_budget: tuple[int | None, int | None] = (None, None),
    ):
        super().__init__(model, base_model_id=base_model_id, task=task)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self._image_budget: tuple[int | None, int | None] = (image_budget[0], image_budget[1])  # image_processor's
        self._image_processors = {self._image_budget: image_processor}  # one per budget asked for, loaded once
        self.image_token_id = model.config.image_token_id
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(
                f"tokenizer of {base_model_id!r} maps {IMAGE_PAD} to {tokenizer.convert_tokens_to_ids(IMAGE_PAD)}, "
                f"but the model expects image_token_id {self.image_token_id}; the checkpoint is inconsistent"
            )
        self.set_task(task)
        hidden = model.config.get_text_config().hidden_size
        self.head = nn.Linear(hidden, len(task.classes))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.02, generator=generator)  # HF classification-head init
            self.head.bias.zero_()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        task: Task,
        dtype: torch.dtype = torch.float32,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ) -> QwenVLClassifier:
        budget = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v is not None}
        tokenizer, image_processor, model = load_parts(
            name_or_path, dtype=dtype, gradient_checkpointing=gradient_checkpointing, **budget
        )
        return cls(
            model,
            base_model_id=str(name_or_path),
            task=task,
            tokenizer=tokenizer,
            image_processor=image_processor,
            seed=seed,
            image_budget=(min_pixels, max_pixels),
        )

    def set_task(self, task: str | Task) -> None:
        """Ask `task`'s question from now on (the head keeps its weights: load the task's adapter)."""
        task = get_task(task)
        prompt = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task.question}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        if prompt.count(IMAGE_PAD) != 1:
            raise ValueError(f"the chat template of {self.base_model_id!r} must put exactly one {IMAGE_PAD} per image")
        self.task, self.prompt = task, prompt

    # ------------------------------------------------------------------ inputs
    def image_tokens(self, image_grid_thw: Tensor) -> list[int]:
        """Number of `<|image_pad|>` tokens each image occupies after the vision merger."""
        return (image_grid_thw.prod(dim=-1) // self.image_processor.merge_size**2).tolist()

    def preprocess(self, images: list[Image.Image], *, padding_side: str | None = None) -> dict[str, Tensor]:
        """Chat prompt with the task question and one image per sample, collated and padded.

        padding_side: "left" or "right" (default: the tokenizer's); logits do not depend on it.
        """
        vision = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        texts = [self.prompt.replace(IMAGE_PAD, IMAGE_PAD * n) for n in self.image_tokens(vision["image_grid_thw"])]
        text = self.tokenizer(texts, padding=True, padding_side=padding_side, return_tensors="pt")
        return {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "mm_token_type_ids": (text["input_ids"] == self.image_token_id).to(torch.int32),
            "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"],
        }

    def input_description(self) -> str:
        size = self.image_processor.size
        return f"pixels {size['shortest_edge']}..{size['longest_edge']}"

    def image_layout(self, values: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Undo the image processor's patchify for the first image: its rows of ``pixel_values`` run over
        (rows of 2x2 merge windows, their columns, the window's row, its column), each row holding (channel,
        temporal copy, patch row, patch column) -- transformers' Qwen2VLImageProcessor.patchify read
        backwards. Returns [temporal copies, C, H, W] (a still image is repeated over the copies)."""
        t, h, w = (int(v) for v in batch["image_grid_thw"][0])
        if t != 1:
            raise ValueError(f"image_layout reads still images (temporal grid 1), got a grid of {t}")
        p, m = self.image_processor.patch_size, self.image_processor.merge_size
        copies = self.image_processor.temporal_patch_size
        rows = values[: h * w].reshape(h // m, w // m, m, m, -1, copies, p, p)
        # (blocks_h, blocks_w, m_h, m_w, C, T, p_h, p_w) -> (T, C, blocks_h, m_h, p_h, blocks_w, m_w, p_w)
        return rows.permute(5, 4, 0, 2, 6, 1, 3, 7).reshape(copies, -1, h * p, w * p)

    @property
    def image_budget(self) -> tuple[int | None, int | None]:
        return self._image_budget

    def set_image_budget(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Resize images into [min_pixels, max_pixels] from now on; the processor of each budget is loaded
        from the checkpoint once, exactly as `from_pretrained` builds it (OSError / ValueError if it cannot be)."""
        budget = (min_pixels, max_pixels)
        if budget not in self._image_processors:
            kwargs = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v is not None}
            self._image_processors[budget] = load_image_processor(str(self.hf_model.config.name_or_path), **kwargs)
        self.image_processor, self._image_budget = self._image_processors[budget], budget

    # ------------------------------------------------------------------ outputs
    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch, use_cache=False)
        # The model caches M-RoPE offsets for generation; a classifier never continues a sequence,
        # so drop them rather than let a later call see another batch's offsets.
        # torch annotates Module.__setattr__ as taking only Tensor | Module; a plain attribute takes any value.
        self.hf_model.rope_deltas = None  # type: ignore[assignment]
        return pool_last_token(out.last_hidden_state, batch["attention_mask"])

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        pooled = self.embed(batch)
        return self.head(pooled.to(self.head.weight.dtype)).float()

    # ------------------------------------------------------------------ LoRA / head
    def check_lora(self, wrapped: list[str]) -> None:
        layers = self.hf_model.config.get_text_config().num_hidden_layers
        vision = [n for n in wrapped if not n.startswith("language_model.")]
        if vision or len(wrapped) != 4 * layers:
            raise AssertionError(
                f"LoRA must wrap exactly the language model's q/k/v/o projections ({4 * layers} modules); "
                f"it wrapped {len(wrapped)}, of which outside the language model: {vision[:5]}"
            )

    def head_state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.head.state_dict().items()}

    def load_head_state_dict(self, state: dict[str, Tensor]) -> None:
        self.head.load_state_dict(state)
