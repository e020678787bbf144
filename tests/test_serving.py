"""The serving layer behind the Diagnose tab, on the real tiny backbones and real run directories.

Run directories come from `bench.serving_speed.synthetic_run` (real backbone + seeded LoRA with perturbed B
weights, predictions.csv computed in batches like training.train) and, for the key consistency check,
from a real `python -m training.train` run.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from bench.serving_speed import noise_images, synthetic_run
from inference import diagnosis, serving
from inference.diagnosis import Diagnosis, certainty_level, margin_for_probability
from inference.serving import AdapterError, ModelPool
from training import data_spec, rundir
from training.backbones import QwenVLClassifier, default_backbone, load_classifier
from training.tasks import TASKS

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

QWEN, CLIP = default_backbone("fundus"), default_backbone("skin")
TRAIN_PY = Path(__file__).resolve().parents[1] / "training" / "train.py"


@pytest.fixture(scope="module")
def images():
    """Six images of different sizes and aspect ratios, so Qwen batches in predictions.csv need padding."""
    sized = [noise_images(1, seed=i, size=s)[0] for i, s in enumerate((224, 96, 160))]
    wide = [im.resize((im.width * 2, im.height)) for im in noise_images(3, seed=7, size=100)]
    return sized + wide


@pytest.fixture(scope="module")
def runs(tmp_path_factory, images) -> dict[str, rundir.RunInfo]:
    """Fundus runs a/b (tiny Qwen, different adapters), a skin run on the same Qwen base, two skin runs on CLIP."""
    root = tmp_path_factory.mktemp("runs")
    specs = {
        "fundus-a": dict(task="fundus", seed=0),
        "fundus-b": dict(task="fundus", seed=1, method="fr", lam=1.0),
        "skin-qwen": dict(task="skin", backbone=QWEN, seed=2, method="cmac", lam=0.1),
        "skin-c": dict(task="skin", seed=3, method="gr"),
        "skin-d": dict(task="skin", seed=4),
        "fundus-small": dict(task="fundus", seed=5, max_pixels=112 * 112),  # another Qwen image budget
    }
    return {name: synthetic_run(root, name, images=images, **kw) for name, kw in specs.items()}


def _csv_probs(run: rundir.RunInfo) -> pd.DataFrame:
    return pd.read_csv(run.path / rundir.PREDICTIONS)


def _copy_run(run: rundir.RunInfo, dst: Path, name: str | None = None) -> rundir.RunInfo:
    path = shutil.copytree(run.path, dst / (name or run.run_id))
    return rundir.read_run(path)


# ----------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("name", ["fundus-a", "skin-c"])
def test_pool_reproduces_predictions_csv_one_image_at_a_time(runs, images, name):
    run = runs[name]
    expected = _csv_probs(run)
    pool = ModelPool()
    got = [pool.predict(image, run) for image in images]
    assert [d.prob_positive for d in got] == pytest.approx(expected["prob"].tolist(), abs=1e-5)
    # predictions.csv holds the true-class margin; at inference it is the predicted class's: equal up to sign
    for d, label, margin in zip(got, expected["label"], expected["margin"], strict=True):
        sign = 1.0 if d.label == TASKS[run.task].classes[label] else -1.0
        assert sign * d.margin == pytest.approx(margin, abs=1e-4)


def test_predict_batch_equals_predict(runs, images):
    pool = ModelPool()
    batch = pool.predict_batch(images, runs["fundus-a"])
    single = [pool.predict(image, runs["fundus-a"]) for image in images]
    assert [d.prob_positive for d in batch] == pytest.approx([d.prob_positive for d in single], abs=1e-5)
    assert len({d.latency_ms for d in batch}) == 1  # one call, one latency


@pytest.mark.skipif(not TRAIN_PY.is_file(), reason="training/train.py not written yet")
@pytest.mark.filterwarnings("ignore::training.metrics.UndefinedMetricWarning")  # tiny groups in eval.json
def test_pool_reproduces_a_real_training_run(tmp_path_factory):
    from tests.conftest import FUNDUS_SPEC
    from training.train import main as train_main  # the CLI's main, in-process (no interpreter start-up)

    runs_dir = tmp_path_factory.mktemp("trained")
    assert (
        train_main(
            [
                "--data",
                FUNDUS_SPEC,
                "--max-samples",
                "64",
                "--epochs",
                "1",
                "--eval-bootstrap",
                "0",
                "--runs-dir",
                str(runs_dir),
                "--run-name",
                "r1",
                "--no-progress",
            ]
        )
        == 0
    )
    run = rundir.read_run(runs_dir / "r1")
    expected = _csv_probs(run).query("split == 'test'").head(16).set_index("id")
    samples = {s.id: s for s in data_spec.load(FUNDUS_SPEC, progress=False).samples}
    pool = ModelPool()
    got = pool.predict_batch([samples[i].load_image() for i in expected.index], run)
    assert len(got) == 16
    assert [d.prob_positive for d in got] == pytest.approx(expected["prob"].tolist(), abs=1e-5)
    single = pool.predict(samples[expected.index[0]].load_image(), run)
    assert single.prob_positive == pytest.approx(expected["prob"].iloc[0], abs=1e-5)
    assert single.base_model == "assets/backbones/tiny-qwen2.5-vl" and single.run_id == "r1"


# ----------------------------------------------------------------------------- the Diagnosis


def test_diagnosis_fields_follow_the_logits_and_the_run(runs, images):
    pool = ModelPool()
    run = runs["fundus-b"]
    logits = pool.logits(images[:1], run)[0]
    d = pool.predict(images[0], run)
    probs = logits.softmax(-1)
    predicted = int(logits.argmax())
    assert d.label == ("no glaucoma", "glaucoma")[predicted]
    assert d.probability == pytest.approx(float(probs[predicted]), abs=1e-7)
    assert d.prob_positive == pytest.approx(float(probs[1]), abs=1e-7)
    assert d.margin == pytest.approx(abs(float(logits[1] - logits[0])), abs=1e-6)
    assert d.probability == pytest.approx(float(torch.sigmoid(torch.tensor(d.margin))), abs=1e-6)
    assert d.certainty == certainty_level(d.probability)
    assert d.reading == diagnosis.READINGS[d.certainty].format(label=d.label)
    assert (d.run_id, d.method, d.lam, d.task, d.base_model) == ("fundus-b", "fr", 1.0, "fundus", QWEN)
    assert d.latency_ms > 0
    assert pool.predict(images[0], runs["skin-c"]).lam is None  # gr has no λ
    assert d.summary().startswith(f"{d.label} ({d.probability:.0%}) — ")
    assert set(d.as_dict()) == set(Diagnosis.__dataclass_fields__)


def test_certainty_thresholds_on_distance_from_a_coin_flip():
    assert [certainty_level(p) for p in (0.5, 0.64, 0.65, 0.84, 0.85, 0.999)] == [
        "low",
        "low",
        "moderate",
        "moderate",
        "high",
        "high",
    ]
    assert [certainty_level(p) for p in (0.36, 0.35, 0.16, 0.15)] == ["low", "moderate", "moderate", "high"]
    assert margin_for_probability(0.65) == pytest.approx(0.6190, abs=1e-4)
    assert margin_for_probability(0.85) == pytest.approx(1.7346, abs=1e-4)
    assert diagnosis.reading("glaucoma", 0.55) == "low certainty: borderline case — consider a second opinion"
    # the label is shown once, by the Diagnosis label; the reading does not repeat it
    assert diagnosis.reading("benign", 0.7) == "moderate certainty — read it together with the clinical findings"
    assert diagnosis.reading("malignant", 0.95) == "high certainty — a decision aid, not a diagnosis"


def test_predict_takes_images_only_and_checks_them(runs, images):
    assert list(inspect.signature(ModelPool.predict).parameters) == ["self", "image", "run"]
    assert list(inspect.signature(ModelPool.predict_batch).parameters) == ["self", "images", "run"]
    pool = ModelPool()
    with pytest.raises(TypeError, match=serving.NOT_AN_IMAGE.format(type="ndarray")):
        pool.predict(np.zeros((8, 8, 3)), runs["fundus-a"])
    with pytest.raises(ValueError, match=serving.NO_IMAGES):
        pool.predict_batch([], runs["fundus-a"])
    assert pool.base_loads == 0  # rejected before anything loaded


# ----------------------------------------------------------------------------- hot swapping


def test_switching_adapters_is_exact_and_never_reloads_the_base(runs, images):
    pool = ModelPool()
    a, b = runs["fundus-a"], runs["fundus-b"]
    first_a = pool.logits(images, a)
    base = pool.classifier(a)
    first_b = pool.logits(images, b)
    again_a = pool.logits(images, a)
    assert torch.equal(again_a, first_a)
    assert not torch.allclose(first_a, first_b, atol=1e-3)  # the two adapters really differ
    assert torch.equal(pool.logits(images, b), first_b)
    assert pool.base_loads == 1 and pool.classifier(b) is base
    assert isinstance(base.model, PeftModel) and set(base.model.peft_config) == {"fundus-a", "fundus-b"}
    assert not base.training


def test_two_tasks_share_one_base(runs, images):
    pool = ModelPool()
    fundus, skin = runs["fundus-a"], runs["skin-qwen"]
    for run in (fundus, skin, fundus, skin):
        got = [d.prob_positive for d in pool.predict_batch(images, run)]
        assert got == pytest.approx(_csv_probs(run)["prob"].tolist(), abs=1e-5)
    d = pool.predict(images[0], skin)
    assert d.label in TASKS["skin"].classes and d.task == "skin" and d.method == "cmac" and d.lam == 0.1
    assert pool.base_loads == 1
    assert pool.classifier(skin).prompt.count(TASKS["skin"].question) == 1  # the last request's question


def test_runs_with_another_image_budget_share_the_base(runs, images):
    pool = ModelPool()
    for name in ("fundus-a", "fundus-small", "fundus-a", "fundus-small"):
        got = [d.prob_positive for d in pool.predict_batch(images, runs[name])]
        assert got == pytest.approx(_csv_probs(runs[name])["prob"].tolist(), abs=1e-5), name
    assert pool.classifier(runs["fundus-a"]).image_processor.size["longest_edge"] == 112 * 112
    assert pool.base_loads == 1
    assert serving.image_budget(runs["fundus-small"]) == (None, 112 * 112)


def test_a_clip_run_with_a_pixel_budget_is_refused(runs, images, tmp_path):
    run = _copy_run(runs["skin-c"], tmp_path)
    (run.path / "config.json").write_text(json.dumps({**run.config, "max_pixels": 4096}))
    pool = ModelPool()
    pool.predict(images[0], runs["skin-c"])
    with pytest.raises(serving.ServingError) as caught:
        pool.predict(images[0], run.path)
    assert str(caught.value) == serving.BAD_IMAGE_BUDGET.format(
        run_id="skin-c", budget=(None, 4096), reason="a clip model has no pixel budget"
    )
    assert pool.predict(images[0], runs["skin-c"]).prob_positive == pytest.approx(
        _csv_probs(runs["skin-c"])["prob"].iloc[0], abs=1e-5
    )


def test_concurrent_predictions_equal_sequential_ones(runs, images):
    pool = ModelPool()
    a, b = runs["fundus-a"], runs["fundus-b"]
    expected = {name: [pool.predict(im, run).prob_positive for im in images[:3]] for name, run in (("a", a), ("b", b))}
    results: dict[tuple[int, int], float] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(thread: int) -> None:
        try:
            barrier.wait()
            for k in range(6):  # each thread alternates adapters, threads start on different ones
                run = (a, b)[(thread + k) % 2]
                results[thread, k] = pool.predict(images[k % 3], run).prob_positive
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 48
    for (thread, k), prob in results.items():
        assert prob == expected["ab"[(thread + k) % 2]][k % 3], (thread, k)
    assert pool.base_loads == 1


def test_lru_keeps_a_bounded_number_of_adapters(runs, images):
    pool = ModelPool(max_adapters_per_base=2)
    a, b, skin = runs["fundus-a"], runs["fundus-b"], runs["skin-qwen"]
    reference = pool.logits(images[:2], a)
    pool.logits(images[:2], b)
    pool.logits(images[:2], skin)
    (key,) = pool.loaded_adapters()
    assert pool.loaded_adapters()[key] == ["fundus-b", "skin-qwen"]
    clf = pool.classifier(a)
    assert set(clf.model.peft_config) == set(clf.adapter_heads) == {"fundus-b", "skin-qwen"}
    assert torch.equal(pool.logits(images[:2], a), reference)  # evicted, loaded again, same result
    assert pool.loaded_adapters()[key] == ["skin-qwen", "fundus-a"]
    assert pool.base_loads == 1


def test_an_adapter_rewritten_on_disk_is_loaded_again(runs, images, tmp_path):
    a = _copy_run(runs["fundus-a"], tmp_path)
    pool = ModelPool()
    before = pool.logits(images[:2], a)
    shutil.rmtree(a.path / "adapter")
    shutil.copytree(runs["fundus-b"].path / "adapter", a.path / "adapter")
    assert torch.equal(pool.logits(images[:2], a), ModelPool().logits(images[:2], runs["fundus-b"]))
    assert not torch.equal(before, pool.logits(images[:2], a))
    clf = pool.classifier(a)
    assert len(clf.model.peft_config) == 1 and pool.base_loads == 1


# ----------------------------------------------------------------------------- broken adapters


def _remove_weights(adapter: Path) -> str:
    (adapter / "adapter_model.safetensors").unlink()
    return serving.ADAPTER_NO_SAFETENSORS.format(run_id="bad")


def _pickle_instead(adapter: Path) -> str:
    weights = load_file(adapter / "adapter_model.safetensors")
    torch.save(weights, adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    return serving.ADAPTER_PICKLE.format(run_id="bad", name="adapter_model.bin")


def _other_base_recorded(adapter: Path) -> str:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-VL-7B-Instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return serving.ADAPTER_WRONG_BASE.format(run_id="bad", adapter_base="Qwen/Qwen2.5-VL-7B-Instruct", backbone=QWEN)


def _other_base_shapes(adapter: Path) -> str:
    """Same recorded base, but tensors from a base with a wider hidden size (what a mixed-up copy gives)."""
    weights = load_file(adapter / "adapter_model.safetensors")
    name = "base_model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    weights[name] = torch.zeros(32, 96)
    save_file(weights, adapter / "adapter_model.safetensors")
    return serving.ADAPTER_SHAPE.format(run_id="bad", name=name, shape=[32, 96], backbone=QWEN, expected=[32, 64])


def _truncated(adapter: Path) -> str:
    path = adapter / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    reason = "Error while deserializing header: incomplete metadata, file not fully covered"
    return serving.ADAPTER_CORRUPT.format(run_id="bad", file="adapter_model.safetensors", reason=reason)


def _head_wrong_shape(adapter: Path) -> str:
    save_file(
        {"weight": torch.zeros(3, 64), "bias": torch.zeros(3)},
        adapter / "head.safetensors",
        metadata={"task": "fundus"},
    )
    return serving.HEAD_SHAPE.format(
        run_id="bad", found="bias [3], weight [3, 64]", backbone=QWEN, expected="bias [2], weight [2, 64]"
    )


def _head_missing(adapter: Path) -> str:
    (adapter / "head.safetensors").unlink()
    return serving.HEAD_MISSING.format(run_id="bad", family="qwen2_5_vl")


def _head_other_task(adapter: Path) -> str:
    head = load_file(adapter / "head.safetensors")
    save_file(head, adapter / "head.safetensors", metadata={"task": "skin"})
    return serving.HEAD_TASK.format(run_id="bad", head_task="skin", task="fundus")


def _module_missing(adapter: Path) -> str:
    weights = load_file(adapter / "adapter_model.safetensors")
    del weights["base_model.model.language_model.layers.1.self_attn.v_proj.lora_B.weight"]
    save_file(weights, adapter / "adapter_model.safetensors")
    return serving.ADAPTER_INCOMPLETE.format(
        run_id="bad", n=1, total=8, module="language_model.layers.1.self_attn.v_proj"
    )


def _foreign_tensor(adapter: Path) -> str:
    weights = load_file(adapter / "adapter_model.safetensors")
    weights["base_model.model.visual.blocks.0.attn.qkv.lora_A.weight"] = torch.zeros(32, 32)
    save_file(weights, adapter / "adapter_model.safetensors")
    return serving.ADAPTER_UNEXPECTED_TENSOR.format(
        run_id="bad", name="base_model.model.visual.blocks.0.attn.qkv.lora_A.weight", backbone=QWEN
    )


def _other_targets(adapter: Path) -> str:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return serving.ADAPTER_TARGETS.format(run_id="bad", found=2, backbone=QWEN, expected=8, family="qwen2_5_vl")


def _config_not_json(adapter: Path) -> str:
    (adapter / "adapter_config.json").write_text("{not json")
    reason = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    return serving.ADAPTER_CONFIG_BAD.format(run_id="bad", reason=reason)


def _not_lora(adapter: Path) -> str:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["peft_type"] = "PROMPT_TUNING"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return serving.ADAPTER_NOT_LORA.format(run_id="bad", peft_type="PROMPT_TUNING")


BREAKAGES = [
    _remove_weights,
    _pickle_instead,
    _other_base_recorded,
    _other_base_shapes,
    _truncated,
    _head_wrong_shape,
    _head_missing,
    _head_other_task,
    _module_missing,
    _foreign_tensor,
    _other_targets,
    _config_not_json,
    _not_lora,
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_a_broken_adapter_is_refused_and_the_pool_keeps_serving(runs, images, tmp_path, breakage):
    pool = ModelPool()
    good = runs["fundus-a"]
    before = pool.logits(images, good)
    base = pool.classifier(good)
    bad = _copy_run(runs["fundus-b"], tmp_path, "bad")
    message = breakage(bad.path / "adapter")
    with pytest.raises(AdapterError) as caught:
        pool.predict(images[0], bad)
    assert str(caught.value) == message
    assert torch.equal(pool.logits(images, good), before)
    assert pool.classifier(good) is base and pool.base_loads == 1
    assert set(base.model.peft_config) == set(base.adapter_heads) == {"fundus-a"}
    assert list(pool.loaded_adapters().values()) == [["fundus-a"]]


def test_a_broken_first_adapter_leaves_the_base_unwrapped(runs, images, tmp_path):
    pool = ModelPool()
    bad = _copy_run(runs["fundus-b"], tmp_path, "bad")
    _other_base_shapes(bad.path / "adapter")
    with pytest.raises(AdapterError):
        pool.predict(images[0], bad)
    clf = pool.classifier(bad)
    assert not isinstance(clf.model, PeftModel)
    assert not any(isinstance(m, LoraLayer) for m in clf.model.modules())
    got = [d.prob_positive for d in pool.predict_batch(images, runs["fundus-a"])]
    assert got == pytest.approx(_csv_probs(runs["fundus-a"])["prob"].tolist(), abs=1e-5)
    assert pool.base_loads == 1


def test_a_failure_inside_peft_is_rolled_back(runs, images, tmp_path, monkeypatch):
    """A failure the header checks cannot foresee (simulated in check_lora, after PEFT injected the layers)."""
    pool = ModelPool()
    good, other = runs["fundus-a"], runs["fundus-b"]
    before = pool.logits(images, good)
    original = QwenVLClassifier.check_lora

    def failing(self, wrapped):
        if any("fundus-b" in name for name, _ in self.named_parameters()):
            raise AssertionError("simulated")
        original(self, wrapped)

    monkeypatch.setattr(QwenVLClassifier, "check_lora", failing)
    with pytest.raises(AdapterError) as caught:
        pool.predict(images[0], other)
    assert str(caught.value) == serving.ADAPTER_LOAD_FAILED.format(
        run_id="fundus-b", reason="AssertionError: simulated"
    )
    clf = pool.classifier(good)
    assert set(clf.model.peft_config) == {"fundus-a"} and pool.base_loads == 1
    assert torch.equal(pool.logits(images, good), before)
    monkeypatch.setattr(QwenVLClassifier, "check_lora", original)
    assert [d.prob_positive for d in pool.predict_batch(images, other)] == pytest.approx(
        _csv_probs(other)["prob"].tolist(), abs=1e-5
    )


def test_a_failure_inside_peft_on_the_first_adapter_drops_the_base(runs, images, monkeypatch):
    pool = ModelPool()
    monkeypatch.setattr(
        QwenVLClassifier, "check_lora", lambda self, wrapped: (_ for _ in ()).throw(AssertionError("x"))
    )
    with pytest.raises(AdapterError):
        pool.predict(images[0], runs["fundus-a"])
    assert pool.classifier(runs["fundus-a"]) is None  # never served half-wrapped
    monkeypatch.undo()
    got = [d.prob_positive for d in pool.predict_batch(images, runs["fundus-a"])]
    assert got == pytest.approx(_csv_probs(runs["fundus-a"])["prob"].tolist(), abs=1e-5)
    assert pool.base_loads == 2


def test_a_run_with_an_unavailable_base_says_so(runs, images, tmp_path):
    run = _copy_run(runs["skin-c"], tmp_path)
    config = {**run.config, "backbone": str(tmp_path / "no-such-checkpoint")}
    (run.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(serving.ServingError, match=r"base model '.*no-such-checkpoint' could not be loaded"):
        ModelPool().predict(images[0], run.path)


def test_serving_never_trusts_remote_code_or_pickles():
    source = Path(serving.__file__).read_text()
    assert "trust_remote_code=" not in source
    assert "torch.load" not in source and "weights_only" not in source


def test_the_classifier_reports_and_switches_its_image_budget():
    qwen = load_classifier(QWEN, task="fundus")
    default = qwen.image_processor
    assert qwen.image_budget == (None, None)
    qwen.set_image_budget(None, 112 * 112)
    assert qwen.image_budget == (None, 112 * 112) and qwen.image_processor.size["longest_edge"] == 112 * 112
    qwen.set_image_budget()
    assert qwen.image_budget == (None, None) and qwen.image_processor is default  # each budget loaded once
    small = load_classifier(QWEN, task="fundus", max_pixels=112 * 112)
    assert small.image_budget == (None, 112 * 112)

    clip = load_classifier(CLIP, task="skin")
    assert clip.image_budget == (None, None)
    clip.set_image_budget(None, None)  # its one budget: nothing to do
    with pytest.raises(ValueError, match=r"^a clip model has no pixel budget$"):
        clip.set_image_budget(max_pixels=4096)


def test_serving_asks_the_classifier_and_imports_only_public_peft_names():
    source = Path(serving.__file__).read_text()
    assert "QwenVL" not in source and "AutoImageProcessor" not in source
    assert not re.search(r"\.family\s*[!=]=", source)  # no branching on the backbone family
    imports = re.findall(r"^from (peft[\w.]*) import (.+)$", source, re.MULTILINE)
    assert imports
    assert all(not name.strip().startswith("_") for _, names in imports for name in names.split(","))
