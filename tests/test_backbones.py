"""Backbones on real tiny checkpoints: built once per session by training.build_assets (no pretraining)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file

from training import build_assets
from training.backbones import (
    ClipClassifier,
    QwenVLClassifier,
    add_lora,
    certainty_margin,
    load_adapter,
    load_classifier,
    lora_module_names,
    pool_last_token,
    save_adapter,
    set_adapter,
    trainable_parameters,
)
from training.tasks import TASKS, Task, get_task

# peft 0.21 calls a transformers API that 5.23 deprecates; FairDx silences it, plain peft use does not.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "backbones"
FAMILIES = ("qwen2_5_vl", "clip")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_assets.build_architecture(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Four RGB images of different sizes and aspect ratios, so Qwen batches need padding."""
    rng = np.random.default_rng(0)
    sizes = [(224, 224), (100, 300), (60, 60), (300, 200)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _perturb_lora(clf, seed: int = 1) -> None:
    """LoRA B starts at zero; give it values so adapter tests compare something non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def _lora_classifier(tiny, family: str, task: str = "fundus", **kwargs):
    clf = add_lora(load_classifier(tiny[family], task=task, **kwargs), seed=kwargs.get("seed", 0))
    _perturb_lora(clf, seed=1 + kwargs.get("seed", 0))
    return clf.eval()


# ----------------------------------------------------------------------------- tasks


def test_tasks_define_two_classes_question_and_prompts():
    assert TASKS["fundus"].classes == ("no glaucoma", "glaucoma")
    assert TASKS["skin"].classes == ("benign", "malignant")
    assert get_task("skin") is TASKS["skin"]
    assert get_task(TASKS["fundus"]) is TASKS["fundus"]
    with pytest.raises(ValueError, match="unknown task 'xray'; choose one of: fundus, skin"):
        get_task("xray")
    with pytest.raises(ValueError, match="class_prompts must give one prompt per class"):
        Task("t", ("a", "b"), "q?", ("only one",))


# ----------------------------------------------------------------------------- both families


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_shape_and_margin_is_true_minus_other(tiny, images, family):
    clf = _lora_classifier(tiny, family)
    with torch.no_grad():
        logits = clf(clf.preprocess(images))
    assert logits.shape == (4, 2) and logits.dtype == torch.float32
    labels = torch.tensor([0, 1, 1, 0])
    expected = logits[torch.arange(4), labels] - logits[torch.arange(4), 1 - labels]
    torch.testing.assert_close(certainty_margin(logits, labels), expected, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [QwenVLClassifier, ClipClassifier])
def test_preprocess_takes_images_only_never_demographics(cls):
    params = inspect.signature(cls.preprocess).parameters
    assert list(params)[:2] == ["self", "images"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[2:])
    assert set(params) <= {"self", "images", "padding_side"}


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_forward_and_backward(tiny, images, family):
    clf = add_lora(load_classifier(tiny[family], task="skin", dtype=torch.bfloat16)).train()
    assert clf.dtype == torch.bfloat16
    logits = clf(clf.preprocess(images[:2]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for n, p in clf.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_round_trip_through_plain_peft(tiny, images, family, tmp_path):
    clf = _lora_classifier(tiny, family)
    batch = clf.preprocess(images)
    with torch.no_grad():
        expected = clf(batch)
    save_adapter(clf, tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny[family])
    # What a user does without FairDx: plain transformers + peft (+ the head for Qwen).
    base = transformers.AutoModel.from_pretrained(tiny[family])
    model = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        if family == "qwen2_5_vl":
            head = load_file(tmp_path / "head.safetensors")
            hidden = model(**batch, use_cache=False).last_hidden_state
            logits = pool_last_token(hidden, batch["attention_mask"]) @ head["weight"].T + head["bias"]
        else:
            assert not (tmp_path / "head.safetensors").exists()
            out = model(input_ids=clf.prompt_input_ids, attention_mask=clf.prompt_attention_mask, **batch)
            logits = model.logit_scale.exp() * out.image_embeds @ out.text_embeds.T
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)

    reloaded = load_adapter(load_classifier(tiny[family], task="fundus"), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(batch), expected)


def test_load_adapter_needs_safetensors(tiny, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_adapter(load_classifier(tiny["clip"], task="fundus"), tmp_path)


def test_load_classifier_rejects_the_other_familys_budget(tiny):
    with pytest.raises(ValueError, match=r"for Qwen2\.5-VL use min_pixels/max_pixels"):
        load_classifier(tiny["qwen2_5_vl"], task="fundus", image_size=224)
    with pytest.raises(ValueError, match="for CLIP use image_size"):
        load_classifier(tiny["clip"], task="fundus", max_pixels=224 * 224)


# ----------------------------------------------------------------------------- Qwen2.5-VL


def test_qwen_logits_do_not_depend_on_padding_side_or_batching(tiny, images):
    clf = _lora_classifier(tiny, "qwen2_5_vl")
    left = clf.preprocess(images, padding_side="left")
    right = clf.preprocess(images, padding_side="right")
    assert (left["attention_mask"] == 0).any(), "the images must give different lengths"
    assert not torch.equal(left["input_ids"], right["input_ids"])
    with torch.no_grad():
        by_left, by_right = clf(left), clf(right)
        one_at_a_time = torch.cat([clf(clf.preprocess([im])) for im in images])
    torch.testing.assert_close(by_left, by_right, rtol=0, atol=1e-5)
    torch.testing.assert_close(one_at_a_time, by_right, rtol=0, atol=1e-5)
    assert clf.hf_model.rope_deltas is None  # no M-RoPE state carried into the next call


def test_qwen_image_token_count_matches_grid(tiny, images):
    clf = load_classifier(tiny["qwen2_5_vl"], task="fundus")
    batch = clf.preprocess(images)
    per_image = (batch["image_grid_thw"].prod(-1) // 4).tolist()
    assert per_image[0] == 36  # 224x224 under the tiny budget (168*168 pixels): 12x12 patches, 2x2 merge
    assert (batch["input_ids"] == clf.image_token_id).sum(1).tolist() == per_image
    assert batch["mm_token_type_ids"].sum(1).tolist() == per_image
    assert batch["pixel_values"].shape[0] == batch["image_grid_thw"].prod(-1).sum()
    assert TASKS["fundus"].question in clf.tokenizer.decode(batch["input_ids"][0])


def test_qwen_lora_wraps_exactly_the_language_model_attention(tiny):
    clf = add_lora(load_classifier(tiny["qwen2_5_vl"], task="fundus"))
    assert sorted(lora_module_names(clf)) == sorted(
        f"language_model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"
    )
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    assert not any(p.requires_grad for p in clf.hf_model.visual.parameters())
    count = trainable_parameters(clf)
    assert count.trainable == 8 * 32 * (64 + 64) - 4 * 32 * 32 + 130  # k/v project to 2 KV heads x 16 = 32
    assert "on 8 modules" in clf.describe()


def test_qwen_backward_reaches_lora_and_head_not_vision(tiny, images):
    clf = add_lora(load_classifier(tiny["qwen2_5_vl"], task="fundus")).train()
    logits = clf(clf.preprocess(images[:2]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert clf.head.weight.grad is not None and clf.head.weight.grad.abs().sum() > 0
    lora_a = [p.grad for n, p in clf.named_parameters() if "lora_A" in n]
    assert len(lora_a) == 8 and all(g is not None for g in lora_a)
    assert all(p.grad is None for p in clf.hf_model.visual.parameters())


def test_qwen_gradient_checkpointing_gives_the_same_gradients(tiny, images):
    grads = []
    for checkpointing in (False, True):
        clf = _lora_classifier(tiny, "qwen2_5_vl", gradient_checkpointing=checkpointing)
        clf.train()
        for module in clf.modules():  # dropout off, so both runs compute the same function
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        logits = clf(clf.preprocess(images[:2]))
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
        grads.append({n: p.grad for n, p in clf.named_parameters() if p.requires_grad})
    assert any(getattr(m, "gradient_checkpointing", False) for m in clf.hf_model.modules())
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_qwen_set_task_changes_the_question(tiny, images):
    clf = load_classifier(tiny["qwen2_5_vl"], task="fundus")
    clf.set_task("skin")
    text = clf.tokenizer.decode(clf.preprocess(images[:1])["input_ids"][0])
    assert TASKS["skin"].question in text and TASKS["fundus"].question not in text


def test_qwen_adapter_for_another_task_is_refused(tiny, tmp_path):
    save_adapter(add_lora(load_classifier(tiny["qwen2_5_vl"], task="fundus")), tmp_path)
    with pytest.raises(ValueError, match="trained for task 'fundus'"):
        load_adapter(load_classifier(tiny["qwen2_5_vl"], task="skin"), tmp_path)


def test_two_adapters_swap_lora_and_head(tiny, images, tmp_path):
    batch_images = images[:2]
    expected = {}
    for i, name in enumerate(("a", "b")):
        clf = _lora_classifier(tiny, "qwen2_5_vl", seed=i)
        with torch.no_grad():
            expected[name] = clf(clf.preprocess(batch_images))
        save_adapter(clf, tmp_path / name)
    served = load_classifier(tiny["qwen2_5_vl"], task="fundus")
    load_adapter(served, tmp_path / "a", adapter_name="a")
    load_adapter(served, tmp_path / "b", adapter_name="b")
    served.eval()
    batch = served.preprocess(batch_images)
    for name in ("a", "b", "a"):
        set_adapter(served, name)
        with torch.no_grad():
            torch.testing.assert_close(served(batch), expected[name], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- CLIP


def test_clip_lora_on_both_towers(tiny):
    clf = add_lora(load_classifier(tiny["clip"], task="skin"))
    names = lora_module_names(clf)
    assert sum(n.startswith("text_model.") for n in names) == 12  # 2 layers x (q, k, v, out, fc1, fc2)
    assert sum(n.startswith("vision_model.") for n in names) == 12
    assert {n.rsplit(".", 1)[-1] for n in names} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
        "visual_projection",
        "text_projection",
    }
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_clip_logits_are_scaled_cosines(tiny, images):
    clf = _lora_classifier(tiny, "clip", task="skin")
    batch = clf.preprocess(images)
    model = clf.model  # PEFT-wrapped CLIPModel: LoRA active in both towers
    with torch.no_grad():
        logits = clf(batch)
        prompts = clf.tokenizer(list(TASKS["skin"].class_prompts), padding=True, return_tensors="pt")
        text = model.get_text_features(**prompts).pooler_output
        image = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        cosine = torch.nn.functional.cosine_similarity(image[:, None], text[None], dim=-1)
        manual = model.logit_scale.exp() * cosine
    torch.testing.assert_close(logits, manual, rtol=1e-5, atol=1e-5)
    assert batch["pixel_values"].shape[-2:] == (build_assets.CLIP_IMAGE_SIZE,) * 2


def test_clip_set_task_retokenises_prompts(tiny):
    clf = load_classifier(tiny["clip"], task="fundus")
    clf.set_task("skin")
    decoded = clf.tokenizer.batch_decode(clf.prompt_input_ids, skip_special_tokens=True)
    assert decoded == list(TASKS["skin"].class_prompts)


# ----------------------------------------------------------------------------- building


def test_build_is_deterministic(tiny, tmp_path):
    again = build_assets.build_architecture(tmp_path)
    for family in FAMILIES:
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            assert build_assets.sha256(again[family] / name) == build_assets.sha256(tiny[family] / name), (family, name)


def test_pretrain_updates_weights_and_reports_loss(tiny, tmp_path):
    import shutil

    rng = np.random.default_rng(0)
    fake = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    data = {"fundus": [(im, build_assets.image_statistics(im)) for im in fake]}
    for family in FAMILIES:
        model_dir = shutil.copytree(tiny[family], tmp_path / family)
        before = load_file(model_dir / "model.safetensors")
        summary = build_assets.pretrain(model_dir, data, steps=2, batch_size=2)
        after = load_file(model_dir / "model.safetensors")
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert summary["steps"] == 2 and np.isfinite(summary["loss_last"])
        load_classifier(model_dir, task="fundus")  # still loads through the ordinary path


@pytest.mark.skipif(not ASSETS.is_dir(), reason="assets/backbones not built")
@pytest.mark.parametrize("folder", [build_assets.QWEN_DIR, build_assets.CLIP_DIR])
def test_shipped_checkpoints_match_their_build_record(folder, images):
    model_dir = ASSETS / folder
    info = json.loads((model_dir / build_assets.BUILD_INFO).read_text())
    for name, digest in info["files"].items():
        assert build_assets.sha256(model_dir / name) == digest, name
    assert sum(p.stat().st_size for p in model_dir.iterdir()) < 2 * 1024 * 1024
    clf = load_classifier(model_dir, task="fundus")
    with torch.no_grad():
        assert clf(clf.preprocess(images[:1])).shape == (1, 2)


def _as_published_layout(src: Path, dst: Path) -> Path:
    """Rewrite a tiny checkpoint the way Qwen/Qwen2.5-VL-7B-Instruct is published (transformers 4.x):
    flat text config with rope_scaling {"type": "mrope"}, tensors named model.layers.* / visual.*,
    min_pixels / max_pixels in preprocessor_config.json."""
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((src / "config.json").read_text())
    text = config.pop("text_config")
    rope = text.pop("rope_parameters")
    text.pop("model_type")
    flat = {
        **config,
        **text,
        "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
        "rope_theta": rope["rope_theta"],
    }
    (dst / "config.json").write_text(json.dumps(flat, indent=2))
    # transformers 5 already saves Qwen2.5-VL tensors under the published names.
    names = load_file(src / "model.safetensors").keys()
    assert "model.layers.0.self_attn.q_proj.weight" in names and "visual.blocks.0.attn.qkv.weight" in names
    processor = json.loads((src / "preprocessor_config.json").read_text())
    size = processor.pop("size")
    processor.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    (dst / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return dst


def test_qwen_loads_the_published_checkpoint_layout_identically(tiny, images, tmp_path):
    published = _as_published_layout(tiny["qwen2_5_vl"], tmp_path / "published")
    current = load_classifier(tiny["qwen2_5_vl"], task="fundus").eval()
    legacy = load_classifier(published, task="fundus").eval()
    batch = current.preprocess(images)
    for name, tensor in legacy.preprocess(images).items():
        assert torch.equal(tensor, batch[name]), name
    with torch.no_grad():
        assert torch.equal(legacy(batch), current(batch))


# ------------------------------------------------------------------------------ fingerprint
def test_backbone_fingerprint_follows_the_weights_not_the_name(tmp_path):
    from training.backbones import backbone_fingerprint

    built = tmp_path / "built"
    built.mkdir()
    info = {"files": {"model.safetensors": "a" * 64, "config.json": "b" * 64}}
    (built / build_assets.BUILD_INFO).write_text(json.dumps(info))
    first = backbone_fingerprint(str(built))
    assert first is not None and first.startswith("sha256:")
    info["files"]["model.safetensors"] = "c" * 64  # rebuilt in place: same path, other weights
    (built / build_assets.BUILD_INFO).write_text(json.dumps(info))
    assert backbone_fingerprint(str(built)) not in (None, first)

    plain = tmp_path / "plain"  # a folder without build info: its bytes decide
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"weights")
    before = backbone_fingerprint(str(plain))
    assert backbone_fingerprint(str(plain)) == before
    (plain / "model.safetensors").write_bytes(b"other weights")
    assert backbone_fingerprint(str(plain)) != before

    snapshot = tmp_path / "models--org--name" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert backbone_fingerprint(str(snapshot)) == "commit:0123abcd"
    assert backbone_fingerprint("org/not-in-the-local-cache") is None  # never downloads


def test_embedded_backbones_have_a_fingerprint():
    from training.backbones import EMBEDDED_BACKBONES, backbone_fingerprint, resolve_backbone

    prints = {backbone_fingerprint(resolve_backbone(path)) for path in EMBEDDED_BACKBONES.values()}
    assert None not in prints and len(prints) == len(set(EMBEDDED_BACKBONES.values()))
