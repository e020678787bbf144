"""LoRA on the full-size backbones, Qwen2.5-VL-7B-Instruct and CLIP ViT-B/16, without a GPU or a download.

Both models are built from their published config.json (tests/fixtures/, provenance in the README there)
on ``torch.device("meta")``: every module has its real shape, but no weight is allocated, so the 8B
model costs no memory and takes seconds to build. Then they go through the steps a GPU run
takes after loading its weights (`training.train`): `detect_family` picks the classifier class, the
class is built around the headless `AutoModel` (as `load_parts` would return it), and `add_lora` wraps
it with the run's default r and alpha. What is checked against the paper:

* Qwen (Gu et al., paper 000 §4): LoRA r = 32, alpha = 64 on the language model's q/k/v/o projections
  only, vision tower frozen, plus a trainable Linear(hidden, 2) head on the last token's hidden state.
* CLIP: LoRA on exactly the modules `ClipClassifier.lora_target_modules` names, in both towers.

Expected counts are computed from the config, never read back from the model: each wrapped
``nn.Linear(in, out)`` adds r * (in + out) parameters (A is r x in, B is out x r).

Loading weights is the one step skipped (`load_parts` reads tokenizer, image processor and weights
from the checkpoint). The classifiers need a tokenizer to build their prompts; the published Qwen one
(7 MB, 151k tokens) is not in the repository, so the test builds one from the tiny checkpoint's BPE
that puts Qwen's special tokens at their published ids (``<|image_pad|>`` = 151655, which the
classifier checks against the model config). CLIP's prompts are tokenised with the tiny CLIP tokenizer;
no forward pass runs, so the ids never meet an embedding.

Every input is a local file (configs given as paths, tokenizers built here or read from assets/), so
nothing reaches the hub: the test passes with HF_HUB_OFFLINE=1 and no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPImageProcessorPil,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

from training.backbones import (
    FAMILIES,
    ClipClassifier,
    QwenVLClassifier,
    add_lora,
    detect_family,
    lora_module_names,
    trainable_parameters,
)
from training.build_assets import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
from training.config import TrainConfig
from training.tasks import get_task

# peft 0.21 calls a transformers API that 5.23 deprecates; FairDx silences it, plain peft use does not.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ASSETS = Path(__file__).resolve().parents[1] / "assets" / "backbones"
QWEN_CONFIG = FIXTURES / "qwen2.5-vl-7b-instruct.config.json"
CLIP_CONFIG = FIXTURES / "clip-vit-base-patch16.config.json"
QWEN_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
CLIP_ID = "openai/clip-vit-base-patch16"
QWEN_FIRST_SPECIAL_ID = 151643  # <|endoftext|> in the published tokenizer; <|image_pad|> is 151655

# What a run uses unless told otherwise (training.config), i.e. what `training.train` passes to add_lora.
DEFAULTS = {name: TrainConfig.model_fields[name].default for name in ("lora_r", "lora_alpha", "lora_dropout")}
PAPER_R, PAPER_ALPHA = 32, 64  # Gu et al., paper 000 §4


def lora_params(r: int, shapes: list[tuple[int, int]]) -> int:
    """Parameters LoRA adds to Linear layers of these (in_features, out_features): r * (in + out) each."""
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in shapes)


def build_on_meta(config_path: Path):
    """The headless model `load_parts` would load (AutoModel), with real shapes and no weights."""
    config = AutoConfig.from_pretrained(config_path)
    with torch.device("meta"):
        model = AutoModel.from_config(config, dtype=torch.bfloat16)  # bf16, as a GPU run loads the 7B
    return config, model


def wrap(clf):
    """`training.train`'s LoRA step with the run defaults."""
    return add_lora(clf, r=DEFAULTS["lora_r"], alpha=DEFAULTS["lora_alpha"], dropout=DEFAULTS["lora_dropout"], seed=0)


def qwen_tokenizer_with_published_special_ids() -> Qwen2Tokenizer:
    """The tiny checkpoint's byte-level BPE, padded with unused entries so that Qwen's 14 special tokens
    land at their published ids 151643..151656 (the tiny checkpoint has them at 400..413)."""
    tiny = json.loads((ASSETS / "tiny-qwen2.5-vl" / "tokenizer.json").read_text())["model"]
    vocab = dict(tiny["vocab"])
    vocab.update({f"<|fairdx_unused_{i}|>": i for i in range(len(vocab), QWEN_FIRST_SPECIAL_ID)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m) for m in tiny["merges"]], model_max_length=32768)
    specials = [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]
    tok.backend_tokenizer.add_special_tokens(specials)
    tok.eos_token = "<|im_end|>"
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert ids == list(range(QWEN_FIRST_SPECIAL_ID, QWEN_FIRST_SPECIAL_ID + len(QWEN_SPECIAL_TOKENS)))
    return tok


@pytest.fixture(scope="module")
def qwen7b():
    family = detect_family(str(QWEN_CONFIG))
    config, model = build_on_meta(QWEN_CONFIG)
    cls = FAMILIES[family]
    clf = cls(
        model,
        base_model_id=QWEN_ID,
        task=get_task("fundus"),
        tokenizer=qwen_tokenizer_with_published_special_ids(),
        # The published preprocessor_config.json: min_pixels 3136, max_pixels 12845056.
        image_processor=Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056),
        seed=0,
    )
    return config, wrap(clf)


@pytest.fixture(scope="module")
def clip_b16():
    family = detect_family(str(CLIP_CONFIG))
    config, model = build_on_meta(CLIP_CONFIG)
    cls = FAMILIES[family]
    clf = cls(
        model,
        base_model_id=CLIP_ID,
        task=get_task("skin"),
        tokenizer=AutoTokenizer.from_pretrained(ASSETS / "tiny-clip"),
        image_processor=CLIPImageProcessorPil(),  # defaults = the published one: resize 224, crop 224x224
        image_size=config.vision_config.image_size,
    )
    return config, wrap(clf)


def test_run_defaults_are_the_papers_lora():
    assert (DEFAULTS["lora_r"], DEFAULTS["lora_alpha"]) == (PAPER_R, PAPER_ALPHA)


def test_fixtures_hold_the_published_architectures():
    qwen, clip = AutoConfig.from_pretrained(QWEN_CONFIG), AutoConfig.from_pretrained(CLIP_CONFIG)
    text, vision = qwen.get_text_config(), qwen.vision_config
    assert (
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.intermediate_size,
        text.vocab_size,
    ) == (3584, 28, 28, 4, 18944, 152064)
    assert (
        vision.depth,
        vision.hidden_size,
        vision.num_heads,
        vision.intermediate_size,
        vision.out_hidden_size,
        vision.patch_size,
        vision.spatial_merge_size,
    ) == (32, 1280, 16, 3420, 3584, 14, 2)
    assert qwen.image_token_id == 151655
    assert (
        clip.vision_config.hidden_size,
        clip.vision_config.num_hidden_layers,
        clip.vision_config.patch_size,
        clip.vision_config.image_size,
        clip.vision_config.intermediate_size,
    ) == (768, 12, 16, 224, 3072)
    assert (
        clip.text_config.hidden_size,
        clip.text_config.num_hidden_layers,
        clip.text_config.intermediate_size,
        clip.projection_dim,
    ) == (512, 12, 2048, 512)


# ============================================================================= Qwen2.5-VL-7B-Instruct


def test_qwen7b_is_full_size_and_never_materialised(qwen7b):
    _, clf = qwen7b
    assert isinstance(clf, QwenVLClassifier) and isinstance(clf.model, PeftModel)
    assert type(clf.hf_model).__name__ == "Qwen2_5_VLModel"  # what AutoModel.from_pretrained(QWEN_ID) gives
    assert clf.device.type == "meta"
    assert all(p.device.type == "meta" for p in clf.hf_model.parameters())  # LoRA weights included
    assert len(clf.hf_model.language_model.layers) == 28 and len(clf.hf_model.visual.blocks) == 32


def test_qwen7b_lora_wraps_exactly_the_language_models_qkvo(qwen7b):
    config, clf = qwen7b
    layers = config.get_text_config().num_hidden_layers
    expected = {f"language_model.layers.{i}.self_attn.{p}_proj" for i in range(layers) for p in "qkvo"}
    wrapped = lora_module_names(clf)
    assert len(wrapped) == len(expected) == 112
    assert set(wrapped) == expected
    assert not any(isinstance(m, LoraLayer) for m in clf.hf_model.visual.modules())
    peft_config = clf.model.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (PAPER_R, PAPER_ALPHA, 0.05)
    assert peft_config.base_model_name_or_path == QWEN_ID
    for name, module in clf.hf_model.named_modules():
        if isinstance(module, LoraLayer):
            assert module.r["default"] == PAPER_R and module.scaling["default"] == PAPER_ALPHA / PAPER_R, name


def test_qwen7b_trainable_parameters_match_the_paper(qwen7b):
    config, clf = qwen7b
    text = config.get_text_config()
    hidden, head_dim = text.hidden_size, text.hidden_size // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim  # grouped-query attention: k and v project to 4 heads x 128
    per_layer = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]  # q, k, v, o
    expected_lora = lora_params(PAPER_R, per_layer * text.num_hidden_layers)
    assert expected_lora == 28 * 32 * (2 * 7168 + 2 * 4096) == 20_185_088

    trainable = {n: p for n, p in clf.named_parameters() if p.requires_grad}
    lora = {n: p for n, p in trainable.items() if "lora_" in n}
    assert sum(p.numel() for p in lora.values()) == expected_lora
    assert set(trainable) - set(lora) == {"head.weight", "head.bias"}  # nothing else: base weights frozen

    # The head: Linear(hidden, 2) on the last token's hidden state, trained, outside PEFT.
    assert (clf.head.in_features, clf.head.out_features) == (hidden, 2)
    assert clf.head.weight.requires_grad and clf.head.bias.requires_grad
    assert sum(p.numel() for p in clf.head.parameters()) == 3584 * 2 + 2 == 7_170

    assert trainable_parameters(clf).trainable == expected_lora + 7_170 == 20_192_258
    description = clf.describe()
    assert "LoRA r=32 alpha=64" in description and "on 112 modules" in description
    assert "20,192,258 trainable of" in description

    # And the base really is the 8B: with the untied lm_head (which AutoModel leaves out) the model page's 8.29B.
    base = sum(p.numel() for n, p in clf.hf_model.named_parameters() if "lora_" not in n)
    assert round((base + text.vocab_size * hidden) / 1e9, 2) == 8.29


def test_qwen7b_vision_tower_is_frozen(qwen7b):
    _, clf = qwen7b
    vision = list(clf.hf_model.visual.parameters())
    assert sum(p.numel() for p in vision) > 600_000_000  # the 32-block ViT is really there...
    assert not any(p.requires_grad for p in vision)  # ...and nothing in it trains
    assert not any(p.requires_grad for n, p in clf.hf_model.named_parameters() if "lora_" not in n)


# ============================================================================= CLIP ViT-B/16


def test_clip_b16_is_full_size_and_never_materialised(clip_b16):
    _, clf = clip_b16
    assert isinstance(clf, ClipClassifier) and isinstance(clf.model, PeftModel)
    assert type(clf.hf_model).__name__ == "CLIPModel"
    assert all(p.device.type == "meta" for p in clf.hf_model.parameters())
    assert clf.image_size == 224 and "image 224x224" in clf.describe()


def test_clip_b16_lora_wraps_exactly_its_target_list(clip_b16):
    config, clf = clip_b16
    per_layer = {
        "q_proj": "self_attn",
        "k_proj": "self_attn",
        "v_proj": "self_attn",
        "out_proj": "self_attn",
        "fc1": "mlp",
        "fc2": "mlp",
    }
    assert set(ClipClassifier.lora_target_modules) == {*per_layer, "visual_projection", "text_projection"}
    assert len(per_layer) == ClipClassifier.LORA_PER_LAYER
    expected = {"visual_projection", "text_projection"}
    for tower, tower_config in (("text_model", config.text_config), ("vision_model", config.vision_config)):
        expected |= {
            f"{tower}.encoder.layers.{i}.{block}.{name}"
            for i in range(tower_config.num_hidden_layers)
            for name, block in per_layer.items()
        }
    wrapped = lora_module_names(clf)
    assert len(wrapped) == len(expected) == 2 * 12 * 6 + 2 == 146
    assert set(wrapped) == expected
    peft_config = clf.model.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha) == (PAPER_R, PAPER_ALPHA)
    assert peft_config.base_model_name_or_path == CLIP_ID


def test_clip_b16_trainable_parameters(clip_b16):
    config, clf = clip_b16

    def tower(c) -> list[tuple[int, int]]:
        h, m = c.hidden_size, c.intermediate_size
        return [(h, h)] * 4 + [(h, m), (m, h)]  # q, k, v, out; fc1, fc2

    shapes = (
        tower(config.vision_config) * config.vision_config.num_hidden_layers
        + tower(config.text_config) * config.text_config.num_hidden_layers
        + [
            (config.vision_config.hidden_size, config.projection_dim),  # visual_projection
            (config.text_config.hidden_size, config.projection_dim),
        ]
    )  # text_projection
    expected = lora_params(PAPER_R, shapes)
    assert expected == 12 * 442_368 + 12 * 294_912 + 40_960 + 32_768 == 8_921_088

    trainable = {n: p for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # CLIP has no head; logit_scale stays frozen
    assert sum(p.numel() for p in trainable.values()) == trainable_parameters(clf).trainable == expected
    assert "on 146 modules" in clf.describe()
