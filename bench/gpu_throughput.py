"""How fast does LoRA training run at full size on a GPU: samples/s, peak memory, FLOPs and MFU.

``python -m bench.gpu_throughput [--steps 10] [--warmup 3] [--peak-tflops X]
[--json bench/results/gpu_throughput.json]``

Needs CUDA (exits with a message otherwise). No hub access is assumed: both models are built with
random weights from configs written here from the published hyper-parameters, in bf16, and driven
through FairDx's own classifier code (``QwenVLClassifier`` / ``ClipClassifier`` + ``add_lora``, the
demo recipe's r=32, α=64, dropout 0.05), with ``training.losses.compute_loss`` as in the trainer:

- Qwen2.5-VL-7B-Instruct architecture (8.29 B parameters): 448×448 images (1,024 patches, 256 image
  tokens), effective batch 8 (micro-batches of 8, or smaller on OOM with accumulation), gradient
  checkpointing off and on;
- CLIP ViT-B/16 (openai/clip-vit-base-patch16, 150 M): 224×224 images, batch 32.

The tokenizer and image processor are the embedded tiny checkpoints' (same processing code; the token
ids in the config follow that tokenizer, which changes no shape). Images are noise, preprocessed once
before timing. A step is forward of every micro-batch, the loss on their concatenation, backward,
clipping, AdamW, timed with CUDA synchronisation; median of ``--steps`` after ``--warmup``.

FLOPs (analytic, per optimiser step; ``training_flops``): for a linear layer with P weights applied to
T tokens the forward costs 2·P·T; self-attention adds 4·T·C·d per layer (QKᵀ and AV, C = the keys a
query sees: T for full attention, counted in full even when causal, as PaLM's MFU does; the window for
Qwen's windowed vision blocks). With the base frozen the backward needs only input gradients where a
trainable parameter lies below: 1× the forward of each linear layer (no weight gradients) and 2× the
attention core (dQ, dK, dV), plus the LoRA matrices' own forward, input and weight gradients
(3 × 2·P_lora·T). So: Qwen's vision tower, which holds no LoRA, costs its forward only; its language
model ≈ 2× forward; CLIP's two towers (LoRA in both) ≈ 2× forward each; the text tower runs once per
step on the class prompts. MFU = model FLOPs / step time / the device's peak dense bf16 FLOP/s
(H100 SXM and H200: 989 TFLOP/s). Gradient checkpointing's recomputed forward is hardware work, not
model work: it is reported as HFU beside MFU, never inside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, environment, environment_line, markdown_table, write_result
from training.methods import BASELINE

VANILLA = BASELINE.name  # the reference method

NO_CUDA = (
    "bench.gpu_throughput needs a CUDA GPU and this machine has none (torch.cuda.is_available() is "
    "False); run it on a GPU machine: python -m bench.gpu_throughput"
)
PEAK_BF16_TFLOPS = {  # dense bf16 tensor-core peak, by a substring of torch.cuda.get_device_name()
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}
QWEN_IMAGE_SIZE, QWEN_BATCH = 448, 8
CLIP_IMAGE_SIZE, CLIP_BATCH = 224, 32
LORA = {"r": 32, "alpha": 64, "dropout": 0.05}  # Gu et al., fair LoRA §4, the demo recipe

# Qwen/Qwen2.5-VL-7B-Instruct config.json (the published hyper-parameters; transformers' defaults are
# the 72B text model and a 3584-wide vision tower, so every value is given).
QWEN_7B_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
QWEN_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "out_hidden_size": 3584,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
QWEN_7B_TOKENS = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}
# openai/clip-vit-base-patch16: transformers' CLIP defaults except the 16-pixel patch.
CLIP_B16_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
CLIP_B16_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "quick_gelu",
}
CLIP_B16 = {"projection_dim": 512, "logit_scale_init_value": 2.6592}


# --------------------------------------------------------------------------------------- configs
def qwen2_5_vl_7b_config(
    token_ids: dict[str, int] | None = None, *, text: dict | None = None, vision: dict | None = None
):
    """Qwen2.5-VL-7B-Instruct's config; ``token_ids`` overrides the special-token ids (top level and text),
    ``text`` / ``vision`` override hyper-parameters (the tests shrink the model to run it on a CPU)."""
    from transformers import Qwen2_5_VLConfig

    token_ids = dict(token_ids or {})
    text_ids = {k: token_ids.pop(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in token_ids}
    return Qwen2_5_VLConfig(
        text_config={**QWEN_7B_TEXT, **text_ids, **(text or {})},
        vision_config={**QWEN_7B_VISION, **(vision or {})},
        tie_word_embeddings=False,
        **{**QWEN_7B_TOKENS, **token_ids},
    )


def clip_vit_b16_config(
    text_token_ids: dict[str, int] | None = None, *, text: dict | None = None, vision: dict | None = None
):
    """openai/clip-vit-base-patch16's config; ``text_token_ids`` overrides bos/eos/pad of the text tower."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={**CLIP_B16_TEXT, **(text_token_ids or {}), **(text or {})},
        vision_config={**CLIP_B16_VISION, **(vision or {})},
        **CLIP_B16,
    )


def count_parameters(model_class, config) -> int:
    """Parameters of ``model_class(config)`` built on the meta device (no memory, no init)."""
    import torch

    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- FLOPs
@dataclass(frozen=True)
class Flops:
    """FLOPs of one optimiser step. model = forward + backward; hardware adds the recomputed forward."""

    forward: float
    backward: float
    recompute: float = 0.0

    @property
    def model(self) -> float:
        return self.forward + self.backward

    @property
    def hardware(self) -> float:
        return self.model + self.recompute

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.forward + other.forward, self.backward + other.backward, self.recompute + other.recompute)

    def scale(self, k: float) -> Flops:
        return Flops(k * self.forward, k * self.backward, k * self.recompute)


def stack_flops(
    *,
    tokens: int,
    hidden: int,
    layers: int,
    linear_per_layer: int,
    context: Sequence[int],
    lora_per_layer: int = 0,
    trainable_below: bool = False,
    checkpointed: bool = False,
) -> Flops:
    """One transformer stack over one sequence of ``tokens``.

    linear_per_layer: weights of the layer's matmuls; context: keys each query sees, per layer;
    lora_per_layer: LoRA weights (r·(d_in + d_out) per adapted matrix); trainable_below: whether a backward
    must run through this stack (it or something before it holds LoRA); checkpointed: its forward is
    recomputed in the backward.
    """
    if len(context) != layers:
        raise ValueError(f"context must give the keys per query of each of the {layers} layers")
    linear = 2.0 * linear_per_layer * layers * tokens
    attention = sum(4.0 * tokens * c * hidden for c in context)
    lora = 2.0 * lora_per_layer * layers * tokens
    forward = linear + attention + lora
    if not trainable_below:
        return Flops(forward, 0.0)
    return Flops(forward, linear + 2.0 * attention + 2.0 * lora, forward if checkpointed else 0.0)


def linear(d_in: int, d_out: int) -> int:
    return d_in * d_out


def qwen_flops(
    config, *, image_size: int, text_tokens: int, batch: int, lora_r: int, checkpointed: bool = False
) -> dict[str, Flops]:
    """Per-step FLOPs of the Qwen2.5-VL classifier: {"vision", "language", "head", "total"}.

    Per image: P = (image_size / patch)² patches through the frozen vision tower (window attention over
    (window / patch)² patches except the full-attention blocks), the merger on P / merge² tokens, then
    T = P / merge² + text_tokens tokens through the language model with LoRA on q, k, v, o of every layer.
    """
    v, t = config.vision_config, config.get_text_config()
    patches = (image_size // v.patch_size) ** 2
    window = min(patches, (v.window_size // v.patch_size) ** 2)
    d, inter = v.hidden_size, v.intermediate_size
    vision_block = linear(d, 3 * d) + linear(d, d) + 3 * linear(d, inter)  # fused qkv, proj, gated MLP
    context = [patches if i in v.fullatt_block_indexes else window for i in range(v.depth)]
    vision = stack_flops(tokens=patches, hidden=d, layers=v.depth, linear_per_layer=vision_block, context=context)
    merged = patches // v.spatial_merge_size**2
    merge_in = d * v.spatial_merge_size**2
    embed = 2.0 * linear(v.in_channels * v.temporal_patch_size * v.patch_size**2, d) * patches
    merger = 2.0 * (linear(merge_in, merge_in) + linear(merge_in, v.out_hidden_size)) * merged
    vision = vision + Flops(embed + merger, 0.0)

    h, heads, kv = t.hidden_size, t.num_attention_heads, t.num_key_value_heads
    kv_dim = kv * h // heads
    layer = 2 * linear(h, h) + 2 * linear(h, kv_dim) + 3 * linear(h, t.intermediate_size)
    lora = lora_r * (2 * (h + h) + 2 * (h + kv_dim))
    tokens = merged + text_tokens
    language = stack_flops(
        tokens=tokens,
        hidden=h,
        layers=t.num_hidden_layers,
        linear_per_layer=layer,
        context=[tokens] * t.num_hidden_layers,
        lora_per_layer=lora,
        trainable_below=True,
        checkpointed=checkpointed,
    )
    head = Flops(2.0 * h * 2, 2 * 2.0 * h * 2)  # Linear(h, 2): forward; weight and input gradients
    parts = {"vision": vision.scale(batch), "language": language.scale(batch), "head": head.scale(batch)}
    parts["total"] = parts["vision"] + parts["language"] + parts["head"]
    return parts


def clip_flops(
    config, *, image_size: int, prompt_tokens: int, prompts: int, batch: int, lora_r: int, checkpointed: bool = False
) -> dict[str, Flops]:
    """Per-step FLOPs of the CLIP classifier: {"vision", "text", "total"}.

    LoRA on q, k, v, out of both towers, so both need a full backward. The vision tower sees
    (image_size / patch)² + 1 tokens per image; the text tower embeds the ``prompts`` class prompts
    (``prompt_tokens`` each, padded) once per step, whatever the batch.
    """
    v, t = config.vision_config, config.text_config
    patches = (image_size // v.patch_size) ** 2
    tokens = patches + 1

    def tower(width: int, inter: int, layers: int, n_tokens: int) -> Flops:
        return stack_flops(
            tokens=n_tokens,
            hidden=width,
            layers=layers,
            linear_per_layer=4 * linear(width, width) + 2 * linear(width, inter),
            context=[n_tokens] * layers,
            lora_per_layer=lora_r * 4 * 2 * width,
            trainable_below=True,
            checkpointed=checkpointed,
        )

    vision = tower(v.hidden_size, v.intermediate_size, v.num_hidden_layers, tokens)
    vision = vision + Flops(
        2.0 * linear(3 * v.patch_size**2, v.hidden_size) * patches + 2.0 * linear(v.hidden_size, config.projection_dim),
        0.0,
    )
    text = tower(t.hidden_size, t.intermediate_size, t.num_hidden_layers, prompt_tokens)
    text = text + Flops(2.0 * linear(t.hidden_size, config.projection_dim), 0.0)
    parts = {"vision": vision.scale(batch), "text": text.scale(prompts)}
    parts["total"] = parts["vision"] + parts["text"]
    return parts


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known GPU (longest matching name wins), else None."""
    matches = [name for name in PEAK_BF16_TFLOPS if name in device_name]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def utilization(flops: float, seconds: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over peak (peak in TFLOP/s); None when the peak is unknown."""
    return None if not peak else flops / seconds / (peak * 1e12)


# --------------------------------------------------------------------------------------- measure
def noise_images(n: int, size: int, seed: int = 0) -> list:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def tiny_token_ids(task: str) -> dict[str, int]:
    """The special-token ids of the embedded tiny checkpoint's tokenizer (whose tokenizer we borrow)."""
    from transformers import AutoConfig

    from training.backbones import EMBEDDED_BACKBONES, resolve_backbone

    config = AutoConfig.from_pretrained(resolve_backbone(EMBEDDED_BACKBONES[task]))
    text = config.get_text_config()
    ids = {k: getattr(text, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return ids | ({k: getattr(config, k) for k in QWEN_7B_TOKENS} if task == "fundus" else {})


def build_qwen(config, device: str = "cuda", dtype=None):
    """Random-init Qwen2.5-VL classifier of `config` with LoRA, the tiny checkpoint's tokenizer and image
    processor (pixel budget: exactly QWEN_IMAGE_SIZE²)."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from training.backbones import EMBEDDED_BACKBONES, QwenVLClassifier, add_lora, resolve_backbone
    from training.tasks import get_task

    tiny = resolve_backbone(EMBEDDED_BACKBONES["fundus"])
    pixels = QWEN_IMAGE_SIZE * QWEN_IMAGE_SIZE
    processor = AutoImageProcessor.from_pretrained(tiny, backend="pil", min_pixels=pixels, max_pixels=pixels)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype or torch.bfloat16)
    clf = QwenVLClassifier(
        model,
        base_model_id="Qwen2.5-VL-7B architecture (random init)",
        task=get_task("fundus"),
        tokenizer=AutoTokenizer.from_pretrained(tiny),
        image_processor=processor,
    )
    add_lora(clf, r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], seed=0)
    return clf.to(device)


def build_clip(config, device: str = "cuda", dtype=None):
    """Random-init CLIP classifier of `config` with LoRA, the tiny checkpoint's tokenizer, CLIP_IMAGE_SIZE² images."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from training.backbones import EMBEDDED_BACKBONES, ClipClassifier, add_lora, resolve_backbone
    from training.tasks import get_task

    tiny = resolve_backbone(EMBEDDED_BACKBONES["skin"])
    size = {
        "size": {"shortest_edge": CLIP_IMAGE_SIZE},
        "crop_size": {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    }
    processor = AutoImageProcessor.from_pretrained(tiny, backend="pil", **size)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype or torch.bfloat16)
    clf = ClipClassifier(
        model,
        base_model_id="CLIP ViT-B/16 architecture (random init)",
        task=get_task("skin"),
        tokenizer=AutoTokenizer.from_pretrained(tiny),
        image_processor=processor,
        image_size=CLIP_IMAGE_SIZE,
    )
    add_lora(clf, r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], seed=0)
    return clf.to(device)


def time_training(clf, inputs: dict, batch: int, micro: int, steps: int, warmup: int) -> dict[str, Any]:
    """Median step seconds and peak memory of `steps` optimiser steps of `batch` samples in micro-batches."""
    import torch

    from training.losses import compute_loss

    device = clf.device
    cuda = device.type == "cuda"
    labels = (torch.arange(batch) % 2).to(device)
    groups = (torch.arange(batch) % 3).to(device)
    params = [p for p in clf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    chunks = [_split(inputs, i, micro) for i in range(0, batch, micro)]
    clf.train()

    def step() -> None:
        logits = torch.cat([clf(chunk) for chunk in chunks])
        compute_loss(VANILLA, logits, labels, groups).total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {
        "step_s": statistics.median(times),
        "step_s_all": times,
        "micro_batch": micro,
        "grad_accum": batch // micro,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def _split(inputs: dict, start: int, size: int) -> dict:
    """Micro-batch `start:start+size` of a preprocessed batch (Qwen's pixel rows belong to images by grid)."""
    if "image_grid_thw" not in inputs:
        return {k: v[start : start + size] for k, v in inputs.items()}
    rows = inputs["image_grid_thw"].prod(-1)
    offsets = [0, *rows.cumsum(0).tolist()]
    out = {k: v[start : start + size] for k, v in inputs.items() if k != "pixel_values"}
    out["pixel_values"] = inputs["pixel_values"][offsets[start] : offsets[start + size]]
    return out


def measure(clf, inputs: dict, batch: int, steps: int, warmup: int, micro: int | None = None) -> dict[str, Any]:
    """time_training at the largest micro-batch (batch, batch/2, ...) that fits in memory."""
    import torch

    micro = micro or batch
    while True:
        try:
            return time_training(clf, inputs, batch, micro, steps, warmup)
        except torch.cuda.OutOfMemoryError:
            clf.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if micro == 1:
                raise
            micro //= 2


MODEL_NAMES = {"qwen": "Qwen2.5-VL-7B (LoRA, 448²)", "clip": "CLIP ViT-B/16 (LoRA, 224²)"}


def full_size_config(kind: str):
    """The full-size config of `kind` ("qwen" / "clip") with the borrowed tokenizer's special-token ids."""
    if kind == "qwen":
        return qwen2_5_vl_7b_config(tiny_token_ids("fundus"))
    return clip_vit_b16_config(tiny_token_ids("skin"))


def run_model(
    kind: str,
    config,
    *,
    steps: int,
    warmup: int,
    peak: float | None,
    device: str = "cuda",
    dtype=None,
    batch: int | None = None,
    micro: int | None = None,
) -> list[dict[str, Any]]:
    """Build `config`'s classifier and time LoRA training with gradient checkpointing off, then on.

    The defaults are the benchmark's (CUDA, bf16, batch 8 for Qwen / 32 for CLIP); the tests run a
    shrunken config on the CPU through this same function.
    """
    import torch

    if kind == "qwen":
        clf, batch, size = build_qwen(config, device, dtype), batch or QWEN_BATCH, QWEN_IMAGE_SIZE
    else:
        clf, batch, size = build_clip(config, device, dtype), batch or CLIP_BATCH, CLIP_IMAGE_SIZE
    inputs = {k: v.to(clf.device) for k, v in clf.preprocess(noise_images(batch, size)).items()}
    if kind == "qwen":
        image_tokens = clf.image_tokens(inputs["image_grid_thw"])[0]
        tokens = {"image_tokens": image_tokens, "text_tokens": int(inputs["attention_mask"][0].sum()) - image_tokens}
    else:
        prompts, prompt_tokens = clf.prompt_input_ids.shape
        tokens = {
            "image_tokens": (size // config.vision_config.patch_size) ** 2 + 1,
            "prompts": prompts,
            "prompt_tokens": prompt_tokens,
        }
    total = count_parameters(type(clf.hf_model), config)
    rows = []
    for checkpointing in (False, True):
        if checkpointing:
            clf.hf_model.activation_checkpointing_enable({"use_reentrant": False})
        measured = measure(clf, inputs, batch, steps, warmup, micro)
        if kind == "qwen":
            flops = qwen_flops(
                config,
                image_size=size,
                text_tokens=tokens["text_tokens"],
                batch=batch,
                lora_r=LORA["r"],
                checkpointed=checkpointing,
            )["total"]
        else:
            flops = clip_flops(
                config,
                image_size=size,
                prompt_tokens=tokens["prompt_tokens"],
                prompts=tokens["prompts"],
                batch=batch,
                lora_r=LORA["r"],
                checkpointed=checkpointing,
            )["total"]
        rows.append(_row(MODEL_NAMES[kind], checkpointing, batch, total, clf, measured, flops, peak, tokens))
    del clf
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def _row(
    model: str,
    checkpointing: bool,
    batch: int,
    total: int,
    clf,
    measured: dict,
    flops: Flops,
    peak: float | None,
    tokens: dict,
) -> dict[str, Any]:
    from training.backbones import trainable_parameters

    seconds = measured["step_s"]
    return {
        "model": model,
        "gradient_checkpointing": checkpointing,
        "batch": batch,
        "parameters": total,
        "trainable": trainable_parameters(clf).trainable,
        **tokens,
        **measured,
        "samples_per_s": batch / seconds,
        "flops": asdict(flops) | {"model": flops.model, "hardware": flops.hardware},
        "tflops_per_s": flops.model / seconds / 1e12,
        "mfu": utilization(flops.model, seconds, peak),
        "hfu": utilization(flops.hardware, seconds, peak),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    return markdown_table(
        [
            "model",
            "grad. ckpt",
            "batch (micro×accum)",
            "step s",
            "samples/s",
            "peak GiB",
            "TFLOP/step",
            "TFLOP/s",
            "MFU",
            "HFU",
        ],
        [
            [
                r["model"],
                "on" if r["gradient_checkpointing"] else "off",
                f"{r['batch']} ({r['micro_batch']}×{r['grad_accum']})",
                f"{r['step_s']:.3f}",
                f"{r['samples_per_s']:.1f}",
                "–" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}",
                f"{r['flops']['model'] / 1e12:.2f}",
                f"{r['tflops_per_s']:.0f}",
                pct(r["mfu"]),
                pct(r["hfu"]),
            ]
            for r in rows
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: known GPUs)")
    parser.add_argument("--models", nargs="+", choices=("qwen", "clip"), default=["qwen", "clip"])
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "gpu_throughput.json")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    env = environment()
    peak = args.peak_tflops or peak_tflops(env["gpu"])
    rows = []
    for kind in args.models:
        rows += run_model(kind, full_size_config(kind), steps=args.steps, warmup=args.warmup, peak=peak)
    print(environment_line(env) + (f" · peak {peak:.0f} TFLOP/s bf16" if peak else " · peak unknown (--peak-tflops)"))
    print(table(rows))
    write_result(args.json, {"peak_tflops": peak, "results": rows}, env)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
