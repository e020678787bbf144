"""Build the tiny Qwen2.5-VL and CLIP checkpoints that ship in assets/backbones/.

    python -m training.build_assets [--out assets/backbones] [--no-pretrain]

Each is the real architecture at toy width, saved in Hugging Face format (config.json,
model.safetensors, tokenizer, image-processor config), so it loads through exactly the code path
that loads ``Qwen/Qwen2.5-VL-7B-Instruct`` or ``openai/clip-vit-base-patch16``. Nothing downloads:
the tokenizers are trained here with `tokenizers` on the task prompts plus a few medical sentences.

``build(out)`` = `build_architecture` (random init from fixed seeds) then `pretrain`: full-parameter
training on synthetic fundus and skin images drawn with a seed the benchmark never uses, regressing
what a foundation model that has seen many such images would encode: the generator's scene
parameters that the image shows (`fundus_latents`: cup-to-disc ratio, rim thickness, notch, disc
size and position, pigmentation, blur, noise; `skin_latents`: asymmetry, border, colour and diameter
scores, colour count, lesion size and position, skin tone, sun damage) plus label-free image
statistics (`image_statistics`). No label and no group is ever a target, so every method starts from
the same unadapted model; the LoRA stage still has to learn how the findings map to the diagnosis.
Why: the tiny models' vision towers are frozen during LoRA training, and with statistics-only
pretraining their pooled features held little of the evidence (logistic probe on the benchmark's
fundus test split: AUC 0.73; vanilla LoRA, 3 epochs at lr 1e-3: AUC 0.65, train loss 0.67). Each
checkpoint is pretrained for its demo task (`PRETRAIN_PLAN`): the Qwen on fundus images that span the
benchmark's range of image quality (`FULL_RANGE`: the appearance mechanism on, no label or group
information), the CLIP on unbiased skin images. The README's "Demo runs" and "Learnability" sections
give what the demo runs reach on them; the plan's comment gives the trials behind it.

Same command, same bytes: seeds are fixed, training runs on one thread (matmul reduction order
depends on the thread count), and every file is written deterministically; each folder's
``fairdx_build.json`` records seeds, pretraining steps and losses, versions and file hashes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import peft
import tokenizers
import torch
import transformers
from PIL import Image
from tokenizers import AddedToken, pre_tokenizers
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

from training.backbones import BUILD_INFO, load_classifier
from training.synth import BiasConfig, deficit_schedule
from training.tasks import TASKS

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("assets/backbones")
QWEN_DIR = "tiny-qwen2.5-vl"
CLIP_DIR = "tiny-clip"

ARCHITECTURE_SEED = 0
PRETRAIN_SEED = 0
PRETRAIN_DATA_SEED = 90_210  # never a benchmark seed: the benchmark and the demos use small seeds
PRETRAIN_IMAGES = {"fundus": 1000, "skin": 3000}  # skin's findings are smaller and vary more
PRETRAIN_STEPS = 3000
# The pretraining images each checkpoint sees: `UNBIASED` (bias strength 0) or `FULL_RANGE`, which
# spans the benchmark's range of image quality -- the generator's appearance mechanism on (darker,
# lower-contrast, blurrier, noisier images for the groups it weights, as at bias strength 1), its
# prevalence and difficulty mechanisms off, so the images carry no label information and no group is
# ever a target. A foundation model is pretrained on images of every patient; on fundus our stand-in
# needs that too (figures below).
UNBIASED = BiasConfig(strength=0.0)
FULL_RANGE = BiasConfig(strength=1.0, appearance=1.0, prevalence=0.0, difficulty=0.0)
# Per checkpoint: optimiser steps, the share of them spent on each task's images, and the images' bias.
# Each checkpoint is one task's model (the demos and the bench train fundus on the Qwen, skin on the CLIP,
# CMAC-MMD's backbone); each still loads and fine-tunes on the other task, from a start that never saw it.
# Measured with the demo recipe (vanilla, test AUC on the n=2000 synthetic set at bias strength 1):
# - Qwen, fundus (seed 42; race-enriched test split / reweighted to the population mix): fundus 0.5 + skin
#   0.5, unbiased, 0.715 / 0.877 -- at chance on Asian and Black patients (per-group AUC 0.47 / 0.43,
#   generator ceilings 0.89 / 0.84): its frozen vision tower had never seen a dark, blurry fundus;
#   fundus only, unbiased, 0.727 / 0.895; fundus 0.5 + skin 0.5, full range, 0.793 / 0.902; fundus only,
#   full range, 0.879 / 0.930 (per-group 0.84 / 0.80 / 0.95), 240 s of pretraining.
# - CLIP, skin (seeds 42 / 1): fundus 0.2 + skin 0.8, unbiased, 6000 steps 0.828 / 0.826, the same for
#   12000 steps 0.849 / 0.845 (968 s of pretraining), skin only 6000 steps 0.874 / 0.870 (419 s); skin only
#   at full range 0.853 (seed 42), so the CLIP stays unbiased.
PRETRAIN_PLAN = {
    "qwen2_5_vl": {"steps": PRETRAIN_STEPS, "shares": {"fundus": 1.0, "skin": 0.0}, "bias": FULL_RANGE},
    "clip": {"steps": 6000, "shares": {"fundus": 0.0, "skin": 1.0}, "bias": UNBIASED},
}
PRETRAIN_BATCH = 16
PRETRAIN_LR = 2e-3  # peak, after PRETRAIN_WARMUP steps; cosine decay to 0
PRETRAIN_WARMUP = 50
PRETRAIN_MAX_GRAD_NORM = 1.0
KEY_TARGET_WEIGHT = 3.0  # loss weight of the targets in KEY_LATENTS (the others weigh 1)
# The lr `training.train --lr auto` uses with these checkpoints (LoRA + head, batch 8, 3 epochs).
RECOMMENDED_LR = 1e-3

# Image budgets of the tiny checkpoints (written to their preprocessor_config.json; a 7B checkpoint
# keeps its own). A 224x224 synthetic image becomes 168x168 for Qwen -> 12x12 patches of 14 px ->
# 36 image tokens after the 2x2 merger; the optic disc (~13% of the width) spans ~22 px, about 2x2
# patches. CLIP sees the full 224x224 -> 14x14 patches of 16 px: a lesion's globules (5-10 px) and
# ragged border need it -- at 160x160 the same pretraining gave vanilla skin test AUC 0.75 instead of
# 0.82 (and patch 14 at 224, 0.79). Measured on 1 CPU thread, batch 8, LoRA forward + backward + AdamW:
# Qwen 27 ms (+13 ms preprocessing).
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 168 * 168
CLIP_IMAGE_SIZE = 224
CLIP_PATCH = 16
CLIP_PROJECTION = 64  # 32 was a bottleneck: one embedding must carry both tasks' findings
# Width and depth: 96x3 and 128x4 towers learnt skin no better than 64x2 at this data size (test AUC
# 0.75 / 0.65-0.77 vs 0.71-0.82 in our trials) and cost 2-4x the pretraining time.
CLIP_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)

# Qwen2.5-VL's special tokens in their published order (ids 151643..151656 there, 400..413 here).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_BPE_VOCAB = 400
# Qwen2.5-VL-Instruct's published chat template.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_BPE_VOCAB = 768  # 512 bytes and word-final bytes + 256 merges
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

MEDICAL_SENTENCES = (
    "You are a helpful assistant.",
    "system user assistant",
    "The optic disc is round with a sharp margin and a pink neuroretinal rim.",
    "An enlarged cup to disc ratio and a thin inferior rim suggest glaucomatous optic neuropathy.",
    "The retinal vessels emerge from the optic nerve head and branch across the fundus.",
    "The macula and fovea appear normal without haemorrhage or exudate.",
    "Glaucoma damages the optic nerve and causes irreversible loss of the visual field.",
    "A notch in the neuroretinal rim is a sign of glaucoma.",
    "Colour fundus photographs are taken with a fundus camera after pupil dilation.",
    "The patient has elevated intraocular pressure and a family history of glaucoma.",
    "Dermoscopy shows a symmetric pigment network with regular dots and globules.",
    "An asymmetric lesion with irregular borders and several colours raises concern for melanoma.",
    "Melanoma, basal cell carcinoma and actinic keratosis are malignant or premalignant lesions.",
    "A melanocytic nevus, seborrheic keratosis, dermatofibroma or vascular lesion is benign.",
    "The lesion has a diameter larger than six millimetres and is evolving over time.",
    "Blue white veil, atypical vessels and regression structures are dermoscopic warning signs.",
    "Skin tone, age and sun damage change how a lesion looks under the dermatoscope.",
    "Answer yes or no. Yes. No. The answer is yes. The answer is no.",
    "Is this image normal or abnormal? Describe the findings in this medical image.",
)


# ============================================================================= tokenizers


def _corpus() -> list[str]:
    texts = list(MEDICAL_SENTENCES)
    for task in TASKS.values():
        texts += [task.question, *task.class_prompts, *task.classes]
    return texts


def _words(tokenizer_class: type, end_of_word: str = "") -> Counter[tuple[str, ...]]:
    """The corpus split into symbol sequences exactly as `tokenizer_class` pre-tokenizes text."""
    backend = tokenizer_class().backend_tokenizer
    words: Counter[tuple[str, ...]] = Counter()
    for text in _corpus():
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            words[(*piece[:-1], piece[-1] + end_of_word)] += 1
    return words


def learn_bpe(
    words: Mapping[tuple[str, ...], int], alphabet: Sequence[str], vocab_size: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair encoding learnt greedily until the vocabulary holds `vocab_size` symbols.

    Written out here rather than using `tokenizers.trainers.BpeTrainer`, whose ids for the alphabet
    follow hash-map order and whose ties between equally frequent pairs fall differently from run to
    run, so tokenizer.json changed bytes between builds. Ties go to the lexicographically smallest pair.
    Vocabulary order: the alphabet sorted, then each merge's result. Merges are tuples (strings raise
    "failed to extract enum PyMerges").
    """
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    counts = dict(words)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in counts.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            raise RuntimeError(f"the corpus allows only {len(vocab)} BPE symbols, not {vocab_size}; add sentences")
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        counts = {_merge(word, best): count for word, count in counts.items()}
    return vocab, merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_qwen_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE split like Qwen2's, then Qwen's 14 special tokens at fixed ids 400..413."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab, merges = learn_bpe(_words(Qwen2Tokenizer), alphabet, QWEN_BPE_VOCAB)
    # merges must be tuples (see learn_bpe); transformers annotates them as strings only.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)  # type: ignore[arg-type]
    # Register on the backend: v5 `add_tokens` silently skips strings it can already encode, which
    # would split <|image_pad|> into bytes (FEASIBILITY §2).
    missing = [t for t in QWEN_SPECIAL_TOKENS if t not in tok.get_vocab()]
    tok.backend_tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    if ids != list(range(QWEN_BPE_VOCAB, QWEN_BPE_VOCAB + len(QWEN_SPECIAL_TOKENS))):
        raise RuntimeError(f"Qwen special tokens got ids {ids}")
    tok.eos_token = "<|im_end|>"  # as in Qwen2.5-VL-*-Instruct; pad stays <|endoftext|>
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def train_clip_tokenizer() -> CLIPTokenizer:
    """CLIP-style BPE: lower-cased words ending in </w>; every byte and byte</w>, merges, then bos/eos last."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab, merges = learn_bpe(_words(CLIPTokenizer, "</w>"), alphabet + [c + "</w>" for c in alphabet], CLIP_BPE_VOCAB)
    vocab[CLIP_BOS], vocab[CLIP_EOS] = len(vocab), len(vocab) + 1
    # merges must be tuples (see learn_bpe); transformers annotates them as strings only.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


# ============================================================================= architectures


def _round_up(n: int, multiple: int) -> int:
    return multiple * math.ceil(n / multiple)


def build_tiny_qwen(out_dir: Path, *, seed: int = ARCHITECTURE_SEED) -> Path:
    """Qwen2.5-VL at toy width (FEASIBILITY §2), saved as the hub repos are: ForConditionalGeneration."""
    tok = train_qwen_tokenizer()

    def ids(token: str) -> int:
        """One token's id (`convert_tokens_to_ids` returns a list only when given a list)."""
        token_id = tok.convert_tokens_to_ids(token)
        if not isinstance(token_id, int):
            raise RuntimeError(f"{token!r} has ids {token_id}, expected one id")
        return token_id

    text = dict(
        vocab_size=_round_up(len(tok), 64),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        max_window_layers=2,
        # M-RoPE: temporal/height/width sections must sum to head_dim / 2 = 64 / 4 / 2 = 8.
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        out_hidden_size=64,
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2VLImageProcessorPil(
        min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    _save(out_dir, model, tok, processor)
    return out_dir


def build_tiny_clip(out_dir: Path, *, seed: int = ARCHITECTURE_SEED) -> Path:
    """CLIP at toy width (FEASIBILITY §3); text eos_token_id = the tokenizer's eos id (else argmax pooling)."""
    tok = train_clip_tokenizer()
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=CLIP_PROJECTION,
    )
    vision = dict(**CLIP_VISION, image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH, projection_dim=CLIP_PROJECTION)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_PROJECTION)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    _save(out_dir, model, tok, processor)
    return out_dir


def _save(out_dir: Path, model, tokenizer, image_processor) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_model(out_dir, model)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)


def _save_model(out_dir: Path, model) -> None:
    model.save_pretrained(out_dir)
    (out_dir / "model.safetensors").chmod(0o644)  # written 0600; a container user must be able to read it


def build_architecture(out: Path, *, seed: int = ARCHITECTURE_SEED) -> dict[str, Path]:
    """Both tiny checkpoints, randomly initialised from `seed`, under `out`."""
    return {
        "qwen2_5_vl": build_tiny_qwen(Path(out) / QWEN_DIR, seed=seed),
        "clip": build_tiny_clip(Path(out) / CLIP_DIR, seed=seed),
    }


# ============================================================================= pretraining


def image_statistics(image: Image.Image) -> list[float]:
    """Seventeen cheap label-free targets describing colour, layout and the brightest / darkest structures.

    RGB means and spreads, centre-minus-surround brightness, edge energy, upper brightness quantiles
    and the share of very bright pixels (where a fundus's optic disc and cup are), the share of pixels
    much darker than the median and their colour spread (where a skin lesion is). None uses a label.
    """
    x = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    grey = x.mean(axis=2)
    centre = grey[16:48, 16:48].mean() - grey.mean()
    edges = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
    dark = grey < 0.6 * np.median(grey)
    return [
        *x.mean(axis=(0, 1)).tolist(),
        *x.std(axis=(0, 1)).tolist(),
        float(centre),
        float(edges),
        *np.quantile(grey, [0.9, 0.97, 0.99, 0.999]).tolist(),
        *[float((grey > t).mean()) for t in (0.6, 0.7, 0.8)],
        float(dark.mean()),
        float(x[dark].std()) if dark.sum() > 5 else 0.0,
    ]


FUNDUS_LATENTS = (
    "cup_to_disc_ratio",
    "min_rim_thickness",
    "notch_depth",
    "cup_radius",
    "disc_radius",
    "disc_x",
    "disc_y",
    "pigment",
    "blur",
    "noise",
)
SKIN_LATENTS = (
    "asymmetry_score",
    "border_score",
    "colour_score",
    "diameter_score",
    "structure_score",
    "globules",
    "streaks",
    "asymmetry",
    "border_irregularity",
    "colour_count",
    "warning_colours",
    "diameter",
    "edge_blur",
    "pigment_network",
    "vessels",
    "lesion_x",
    "lesion_y",
    "skin_r",
    "skin_g",
    "skin_b",
    "sun_damage",
    "lentigines",
)
# What a reader of the image would call the findings: weighted up so the small embedding keeps them.
KEY_LATENTS = {
    "fundus": ("cup_to_disc_ratio", "min_rim_thickness", "cup_radius"),
    "skin": ("asymmetry_score", "border_score", "colour_score", "diameter_score", "structure_score"),
}
WARNING_COLOURS = frozenset({"black", "bluegrey", "red", "white"})


def fundus_latents(n: int, seed: int, bias) -> dict[str, list[float]]:
    """Per image id, the generator's scene parameters that the image shows, in FUNDUS_LATENTS order.

    Re-drawn from training.synth's own seeded streams, by the calls `generate_fundus` makes. The disc
    geometry is drawn inside `render_fundus`, so its first draws are replayed on the image's stream
    (colour jitter, illumination gradient, mottling, then disc centre and radius).
    """
    from training.synth import fundus_params, plan_fundus

    out = {}
    for i, row in enumerate(plan_fundus(n, seed, bias).to_dict("records")):
        p = fundus_params({**row, "index": i + 1}, seed, bias, i + 1)
        rng = p["rng"]
        rng.uniform(0.9, 1.1, 3), rng.uniform(-0.15, 0.15, 2), rng.standard_normal((7, 7))
        cx, cy, rd = p["side"] * rng.uniform(0.32, 0.42), rng.uniform(-0.08, 0.08), rng.uniform(0.13, 0.16)
        cup = min(p["cdr"] * (1.0 + p["notch_depth"]), 0.97)  # the cup's reach at the notch
        out[Path(row["filename"]).stem] = [
            p["cdr"],
            1.0 - cup,
            p["notch_depth"],
            p["cdr"] * rd,
            rd,
            cx,
            cy,
            p["pigment"],
            p["blur"],
            p["noise"],
        ]
    return out


def skin_latents(n: int, seed: int, bias) -> dict[str, list[float]]:
    """Per image id, the lesion's visible parameters in SKIN_LATENTS order, re-drawn like `fundus_latents`.

    The four scores are the generator's asymmetry / border / colour / diameter variables (the lesion's
    cue plus noise, replayed from its stream); the rest are measured from the drawn parameters and the
    view (zoom and offset are the view stream's first draws).
    """
    from training.synth import plan_skin, skin_lesion_params

    out = {}
    for row in plan_skin(n, seed, bias).to_dict("records"):
        p = skin_lesion_params(row, seed, bias)
        scores = p["scores"]
        view = np.random.default_rng([seed, 203, row["image_index"]])  # training.synth _STREAM_SKIN_VIEW
        view.uniform(0, 2 * np.pi)
        zoom = view.uniform(0.85, 1.15)
        tx, ty = view.uniform(-0.1, 0.1, 2)
        amp, names = p["harm_amp"], [c for c, _ in p["colours"]]
        out[row["image_id"]] = [
            *scores,
            float(len(p["globules"])),
            float(len(p["streaks"])),
            float(np.sqrt((amp[:2] ** 2).sum())),
            float(np.sqrt((amp[2:] ** 2).sum())),
            float(len(names)),
            float(sum(c in WARNING_COLOURS for c in names)),
            p["radius"] * zoom,
            p["edge"],
            p["network"],
            float(p["vessels"] is not None),
            float(tx),
            float(ty),
            *p["skin"].tolist(),
            p["sun"],
            float(p["lentigines"]),
        ]
    return out


def target_names(task: str) -> list[str]:
    """Names of `synthetic_pretraining_data`'s targets for `task`: its latents, then the image statistics."""
    return list(FUNDUS_LATENTS if task == "fundus" else SKIN_LATENTS) + [f"image_statistics[{i}]" for i in range(17)]


def target_weights(task: str) -> list[float]:
    """Loss weight per target of `task`, in `target_names` order: KEY_TARGET_WEIGHT for its KEY_LATENTS."""
    return [KEY_TARGET_WEIGHT if name in KEY_LATENTS[task] else 1.0 for name in target_names(task)]


def synthetic_pretraining_data(
    n_per_task: Mapping[str, int] = PRETRAIN_IMAGES,
    *,
    seed: int = PRETRAIN_DATA_SEED,
    bias: BiasConfig = UNBIASED,
    image_size: int = 224,
) -> dict[str, list[tuple[Image.Image, list[float]]]]:
    """(image, targets) pairs per task from training.synth drawn at `bias`, seed `seed`.

    Targets: the task's latents (`fundus_latents` / `skin_latents`) then `image_statistics`. The sets
    are written in the real layouts to a temporary folder and read back with the real loaders, so
    pretraining sees exactly what training will. All splits are used: none of this is the
    benchmark's data.
    """
    from training.data import load_dataset
    from training.synth import generate_fundus, generate_skin

    data = {}
    with tempfile.TemporaryDirectory(prefix="fairdx-pretrain-") as tmp:
        for task, generate, latents in (
            ("fundus", generate_fundus, fundus_latents),
            ("skin", generate_skin, skin_latents),
        ):
            root = generate(
                Path(tmp) / task,
                n=n_per_task[task],
                seed=seed,
                bias=bias,
                image_size=image_size,
                workers=2,
                progress=False,  # same bytes for any number of workers
            )
            by_id = latents(n_per_task[task], seed, bias)
            pairs = []
            for s in load_dataset(root, task=task).samples:
                image = s.load_image()
                pairs.append((image, by_id[s.id] + image_statistics(image)))
            data[task] = pairs
    return data


def pretrain(
    model_dir: Path,
    data: Mapping[str, Iterable[tuple[Image.Image, Sequence[float]]]],
    *,
    steps: int = PRETRAIN_STEPS,
    seed: int = PRETRAIN_SEED,
    batch_size: int = PRETRAIN_BATCH,
    lr: float = PRETRAIN_LR,
    weights: Mapping[str, Sequence[float]] | None = None,
    shares: Mapping[str, float] | None = None,
) -> dict:
    """Full-parameter training of the checkpoint in `model_dir` on (image, target vector) pairs; re-saves it.

    `data` maps a task name to its pairs; steps interleave the tasks (in proportion to `shares`,
    default equal) so the Qwen model sees each task's own question. A throw-away linear probe per task
    on the classifier's embedding (Qwen: last-token state; CLIP: image embedding) regresses the task's
    z-scored targets with an MSE weighted by `weights[task]` (default: all 1; `build` passes
    `target_weights`); only the backbone is kept. Returns the loss curve summary that goes into fairdx_build.json.
    """
    with torch.random.fork_rng(devices=[]):  # seeded here without disturbing the caller's RNG
        torch.manual_seed(seed)
        return _pretrain(
            Path(model_dir), data, steps=steps, seed=seed, batch_size=batch_size, lr=lr, weights=weights, shares=shares
        )


def _pretrain(model_dir: Path, data, *, steps: int, seed: int, batch_size: int, lr: float, weights, shares) -> dict:
    rng = np.random.default_rng(seed)
    pairs = {task: list(items) for task, items in data.items()}
    targets = {t: torch.tensor([y for _, y in items], dtype=torch.float32) for t, items in pairs.items()}
    scale = {t: (y.mean(0), y.std(0).clamp_min(1e-6)) for t, y in targets.items()}
    tasks = sorted(pairs)
    schedule = deficit_schedule(steps, [(shares or {}).get(t, 1.0) for t in tasks])
    weights = {t: torch.tensor((weights or {}).get(t) or [1.0] * targets[t].shape[1]) for t in tasks}

    clf = load_classifier(model_dir, task=tasks[0]).train()
    with torch.no_grad():
        dim = clf.embed(clf.preprocess([pairs[tasks[0]][0][0]])).shape[-1]
    probes = nn.ModuleDict({t: nn.Linear(dim, targets[t].shape[1]) for t in tasks})
    params = list(clf.hf_model.parameters()) + list(probes.parameters())
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / PRETRAIN_WARMUP) * 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps)),
    )
    losses: list[float] = []
    errors: dict[str, list[torch.Tensor]] = {t: [] for t in tasks}
    for step in range(steps):
        task = tasks[schedule[step]]
        clf.set_task(task)
        idx = rng.choice(len(pairs[task]), size=min(batch_size, len(pairs[task])), replace=False)
        batch = clf.preprocess([pairs[task][i][0] for i in idx])
        mean, std = scale[task]
        error = (probes[task](clf.embed(batch).float()) - (targets[task][idx] - mean) / std) ** 2
        loss = (error * weights[task]).sum(1).mean() / weights[task].sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, PRETRAIN_MAX_GRAD_NORM)
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        errors[task].append(error.detach().mean(0))
        if (step + 1) % 100 == 0:
            log.info("  %s step %d/%d: loss %.4f", model_dir.name, step + 1, steps, np.mean(losses[-20:]))
    _resave_backbone(model_dir, clf.hf_model)
    window = max(1, min(20, steps // 5))
    return {
        "objective": "weighted MSE of a per-task linear probe regressing z-scored latent scene parameters "
        "(training.build_assets.fundus_latents / skin_latents) and image statistics",
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "schedule": f"{PRETRAIN_WARMUP} warm-up steps, cosine",
        "optimizer": "AdamW(weight_decay=0)",
        "max_grad_norm": PRETRAIN_MAX_GRAD_NORM,
        "seed": seed,
        "images": {t: len(v) for t, v in pairs.items()},
        "key_targets": {t: list(KEY_LATENTS[t]) for t in tasks},
        "key_target_weight": KEY_TARGET_WEIGHT,
        "loss_first": round(float(np.mean(losses[:window])), 4),
        "loss_last": round(float(np.mean(losses[-window:])), 4),
        # per target, the z-scored squared error over the last 50 steps of its task (1 = not learnt)
        "target_mse_last": {
            t: [round(v, 3) for v in torch.stack(errors[t][-50:]).mean(0).tolist()] for t in tasks if errors[t]
        },
    }


def _resave_backbone(model_dir: Path, trained: nn.Module) -> None:
    """Copy trained weights into the checkpoint's own class (e.g. ForConditionalGeneration) and save it."""
    config = transformers.AutoConfig.from_pretrained(model_dir)
    full = getattr(transformers, config.architectures[0]).from_pretrained(model_dir)
    full.base_model.load_state_dict(trained.state_dict())
    _save_model(model_dir, full.eval())


# ============================================================================= orchestration


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_build_info(model_dir: Path, info: dict) -> None:
    files = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != BUILD_INFO)
    info = {**info, "files": {name: sha256(model_dir / name) for name in files}}
    (model_dir / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def build(
    out: Path = DEFAULT_OUT, *, pretraining: bool = True, steps: int | None = None, workers: int = 2
) -> dict[str, Path]:
    """Build both checkpoints into `out` (replacing them), pre-train unless told not to, record how.

    The two pretrainings are independent and single-threaded, so with ``workers=2`` they run side by
    side in two processes (each draws the same pretraining images itself): the same bytes as one after
    the other, in about half the time on two cores. ``steps`` overrides every family's plan.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same bytes on every machine: results depend on the thread count
    try:
        out = Path(out)
        for name in (QWEN_DIR, CLIP_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        dirs = build_architecture(out)
        summaries: dict[str, dict | None] = dict.fromkeys(dirs)
        if pretraining:
            plans = {family: {**PRETRAIN_PLAN[family], **({"steps": steps} if steps else {})} for family in dirs}
            log.info("pretraining %s on %s synthetic images (seed %d)", plans, PRETRAIN_IMAGES, PRETRAIN_DATA_SEED)
            if workers > 1:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                with ProcessPoolExecutor(
                    min(workers, len(dirs)), mp_context=multiprocessing.get_context("spawn")
                ) as pool:
                    futures = {f: pool.submit(_pretrain_family, dirs[f], plans[f]) for f in dirs}
                    summaries = {family: future.result() for family, future in futures.items()}
            else:
                summaries = {f: _pretrain_family(dirs[f], plans[f]) for f in dirs}
        for family, model_dir in dirs.items():
            info = {
                "built_by": "python -m training.build_assets",
                "family": family,
                "architecture_seed": ARCHITECTURE_SEED,
                "versions": {
                    "torch": torch.__version__.split("+")[0],
                    "transformers": transformers.__version__,
                    "tokenizers": tokenizers.__version__,
                    "peft": peft.__version__,
                },
                "pretraining": summaries[family],
                "recommended_lr": RECOMMENDED_LR,
            }
            _write_build_info(model_dir, info)
        return dirs
    finally:
        torch.set_num_threads(threads)


def _pretrain_family(model_dir: Path, plan: Mapping) -> dict:
    """One checkpoint's pretraining by its plan (steps, task shares, bias), on images drawn at its bias."""
    torch.set_num_threads(1)
    if not logging.getLogger().handlers:  # a spawned worker: log its progress like the parent does
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = synthetic_pretraining_data(bias=plan["bias"])
    started = time.perf_counter()
    summary = pretrain(
        model_dir, data, steps=plan["steps"], shares=plan["shares"], weights={t: target_weights(t) for t in data}
    )
    log.info("pretrained %s in %.1f s", model_dir, time.perf_counter() - started)
    return {
        **summary,
        "task_shares": dict(plan["shares"]),
        "bias": dataclasses.asdict(plan["bias"]),
        "seconds": round(time.perf_counter() - started, 1),
        "targets": {t: target_names(t) for t in data},
        "data": f"training.synth, seed {PRETRAIN_DATA_SEED}, images {PRETRAIN_IMAGES}, {plan['bias']}, all splits",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for tiny-qwen2.5-vl/ and tiny-clip/")
    parser.add_argument("--no-pretrain", action="store_true", help="random initialisation only (seconds)")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"pretraining steps of every model (default: {PRETRAIN_PLAN})"
    )
    parser.add_argument("--workers", type=int, default=2, help="pretrain the two models side by side (1: in turn)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    dirs = build(args.out, pretraining=not args.no_pretrain, steps=args.steps, workers=args.workers)
    print(f"built in {time.perf_counter() - started:.0f} s")
    for family, model_dir in dirs.items():
        size = sum(p.stat().st_size for p in model_dir.iterdir())
        print(f"{family}: {model_dir} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
