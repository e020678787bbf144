"""The training CLI end to end on the tiny embedded checkpoints and a small synthetic benchmark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel

from tests.conftest import FUNDUS_SPEC, REPO, SKIN_SPEC, run_cli
from training import data_spec, ood, rundir
from training.backbones import load_classifier, pool_last_token, resolve_backbone
from training.config import TrainConfig
from training.evaluate import load_run_classifier
from training.train import main as train_main
from training.train import training_samples

FAST = [
    "--epochs",
    "1",
    "--max-samples",
    "32",
    "--batch-size",
    "4",
    "--warmup-steps",
    "2",
    "--eval-bootstrap",
    "20",
    "--eval-gap-min-n",
    "1",
    "--fairness-min-n",
    "1",
    "--no-progress",
]


def train_run(runs: Path, name: str, *extra: str, data: str = FUNDUS_SPEC) -> Path:
    """The CLI's main() in-process (saves the interpreter start-up of a subprocess per run)."""
    code = train_main(["--data", data, "--runs-dir", str(runs), "--run-name", name, *FAST, *extra])
    assert code == 0
    return runs / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("method", ["vanilla", "fr", "gr", "hybrid", "cmac"])
def test_each_method_writes_a_complete_run(runs, method):
    # CMAC compares subgroups with >= 2 samples in a batch: balanced batches of 8 make that likely
    extra = ["--balanced-sampling", "--batch-size", "8"] if method == "cmac" else []
    run = train_run(runs, f"fundus-{method}", "--method", method, "--lambda", "0.5", *extra)
    assert rundir.missing_files(run) == []
    assert not list(runs.glob(".staging-*")), "the staging folder must be renamed away"
    config = json.loads((run / "config.json").read_text())
    assert (config["method"], config["task"], config["family"]) == (method, "fundus", "qwen2_5_vl")
    n_steps = 32 // config["training"]["effective_batch"]
    assert config["training"]["steps"] == n_steps
    predictions = pd.read_csv(run / "predictions.csv")
    dataset = data_spec.load(FUNDUS_SPEC)
    assert len(predictions) == len(dataset.split("val")) + len(dataset.split("test"))
    assert set(predictions.columns) >= {"id", "split", "label", "prob", "margin", "race", "ethnicity", "gender"}
    assert predictions["prob"].between(0, 1).all()
    report = json.loads((run / "eval.json").read_text())["report"]
    assert "race+ethnicity" in report["attributes"]  # every pair of attributes, as Compare offers them
    model = ood.OodModel.load(run / ood.FILE)  # Diagnose's "does this look like the training data?"
    assert model.n_train == min(len(dataset.split("train")), ood.MAX_TRAIN) and model.threshold > 0
    race = report["attributes"]["race"]
    accuracies = [g["accuracy"] for g in race["groups"].values() if g["accuracy"] is not None]
    assert race["max_acc_gap"] == pytest.approx(max(accuracies) - min(accuracies))
    assert race["ci"]["max_acc_gap"] is not None
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "step" in s and "loss" in s]
    assert len(logged) == n_steps and all(s["loss"] > 0 for s in logged)
    # the validation curve: once per epoch (one epoch here), loss and the gap on the training attribute
    val = [s for s in steps if s.get("event") == "val"]
    assert [v["step"] for v in val] == [n_steps] and val[0]["val_loss"] > 0 and 0 <= val[0]["val_accuracy"] <= 1
    assert val[0]["val_gap_attribute"] == "race"
    if method in ("fr", "hybrid", "cmac"):
        assert any(s["fairness"] > 0 for s in logged), "the fairness term must be active"
    else:
        assert all(s["fairness"] == 0 for s in logged)


def test_plain_peft_loads_the_adapter_and_matches_predictions(runs):
    """A user without FairDx: AutoModel + PeftModel.from_pretrained + the saved head give our probabilities."""
    run = runs / "fundus-vanilla"
    if not run.exists():
        run = train_run(runs, "fundus-vanilla")
    config = json.loads((run / "config.json").read_text())
    base = AutoModel.from_pretrained(resolve_backbone(config["backbone"]))
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    head = load_file(str(run / "adapter" / "head.safetensors"))
    helper = load_classifier(config["backbone"], task=config["task"])  # only to build the inputs
    predictions = pd.read_csv(run / "predictions.csv").head(6)
    samples = {s.id: s for s in data_spec.load(FUNDUS_SPEC).samples}
    batch = helper.preprocess([samples[i].load_image() for i in predictions["id"]])
    with torch.inference_mode():
        hidden = model(**batch, use_cache=False).last_hidden_state
        logits = pool_last_token(hidden, batch["attention_mask"]) @ head["weight"].T + head["bias"]
    assert torch.allclose(
        logits.softmax(-1)[:, 1], torch.tensor(predictions["prob"].values, dtype=torch.float32), atol=1e-5
    )


def test_same_command_twice_gives_identical_predictions(runs, tmp_path):
    first = runs / "fundus-fr"
    if not first.exists():
        first = train_run(runs, "fundus-fr", "--method", "fr", "--lambda", "0.5")
    second = train_run(tmp_path, "fundus-fr", "--method", "fr", "--lambda", "0.5")
    assert (first / "predictions.csv").read_bytes() == (second / "predictions.csv").read_bytes()


def test_interrupted_then_resumed_matches_uninterrupted(tmp_path):
    args = [
        "--data",
        FUNDUS_SPEC,
        "--runs-dir",
        str(tmp_path),
        "--method",
        "hybrid",
        "--epochs",
        "2",
        "--max-samples",
        "48",
        "--batch-size",
        "4",
        "--warmup-steps",
        "2",
        "--eval-bootstrap",
        "0",
        "--no-progress",
    ]
    assert train_main([*args, "--run-name", "straight"]) == 0

    cmd = [sys.executable, "-m", "training.train", *args, "--run-name", "resumed"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = rundir.staging_dir(tmp_path, "resumed") / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"step": 3,' not in (log.read_text() if log.exists() else ""):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "resume with the same flags plus --resume" in err
    assert not (tmp_path / "resumed").exists(), "an interrupted run must not be listed"
    assert rundir.list_runs(tmp_path)[0].run_id == "straight"

    assert train_main([*args, "--run-name", "resumed", "--resume"]) == 0
    straight = pd.read_csv(tmp_path / "straight" / "predictions.csv")
    resumed = pd.read_csv(tmp_path / "resumed" / "predictions.csv")
    pd.testing.assert_frame_equal(straight, resumed, rtol=0, atol=1e-6)
    resumed_config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert resumed_config["training"]["resumed_from_step"] >= 3


def test_effective_batch_statistics_do_not_depend_on_accumulation(tmp_path):
    """FR's group statistics span the whole effective batch: 4 x 2 micro-batches == one batch of 8."""
    common = [
        "--method",
        "fr",
        "--lambda",
        "1.0",
        "--lora-dropout",
        "0",
        "--eval-bootstrap",
        "0",
        "--epochs",
        "1",
        "--max-samples",
        "32",
        "--warmup-steps",
        "2",
        "--no-progress",
        "--data",
        FUNDUS_SPEC,
        "--runs-dir",
        str(tmp_path),
    ]
    assert train_main([*common, "--batch-size", "8", "--grad-accum", "1", "--run-name", "one"]) == 0
    assert train_main([*common, "--batch-size", "4", "--grad-accum", "2", "--run-name", "two"]) == 0
    one = pd.read_csv(tmp_path / "one" / "predictions.csv")["prob"]
    two = pd.read_csv(tmp_path / "two" / "predictions.csv")["prob"]
    assert (one - two).abs().max() < 1e-4


def test_clip_cmac_on_skin_intersection(tmp_path):
    run = train_run(tmp_path, "skin-cmac", "--method", "cmac", "--attribute", "sex+age_group", data=SKIN_SPEC)
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "clip" and config["task"] == "skin"
    report = json.loads((run / "eval.json").read_text())["report"]
    assert "sex+age_group" in report["attributes"]
    assert " & " in next(iter(report["attributes"]["sex+age_group"]["groups"]))
    # the run loads back through the evaluation path and reproduces its own predictions
    clf = load_run_classifier(rundir.read_run(run))
    predictions = pd.read_csv(run / "predictions.csv").head(4)
    samples = {s.id: s for s in data_spec.load(SKIN_SPEC).samples}
    with torch.inference_mode():
        probs = clf(clf.preprocess([samples[i].load_image() for i in predictions["id"]])).softmax(-1)[:, 1]
    assert torch.allclose(probs, torch.tensor(predictions["prob"].values, dtype=torch.float32), atol=1e-5)


def test_invalid_config_names_every_problem_and_writes_nothing(tmp_path):
    """Through a real subprocess: the user sees one message, no traceback."""
    proc = run_cli(
        "training.train",
        "--data",
        str(tmp_path / "missing"),
        "--lambda",
        "-1",
        "--w-max",
        "0.5",
        "--epochs",
        "0",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert proc.returncode == 2
    assert "invalid training configuration (4 problems)" in proc.stderr
    for text in ("lambda must be ≥ 0", "w_max must be ≥ 1", "epochs must be a whole number ≥ 1", "does not exist"):
        assert text in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_attribute_and_bad_config_file(tmp_path, capsys):
    assert train_main(["--data", FUNDUS_SPEC, "--attribute", "religion", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown attribute 'religion'" in capsys.readouterr().err
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    assert train_main(["--config", str(bad)]) == 2
    assert f"cannot read config file {bad}" in capsys.readouterr().err


def test_config_file_round_trip(tmp_path):
    out = tmp_path / "cfg.json"
    assert train_main(["--method", "gr", "--w-max", "5", "--data", FUNDUS_SPEC, "--save-config", str(out)]) == 0
    saved = TrainConfig.from_json(out)
    assert (saved.method, saved.w_max, saved.data) == ("gr", 5, FUNDUS_SPEC)


def test_max_samples_is_stratified_and_keeps_every_group():
    dataset = data_spec.load(FUNDUS_SPEC)
    cfg = TrainConfig(data=FUNDUS_SPEC, max_samples=30, attribute="race")
    subset = training_samples(dataset, cfg)
    assert len(subset) == 30
    assert {s.attributes["race"] for s in subset} == {"Asian", "Black", "White"}
    full = dataset.group_counts("race")
    white_share = sum(s.attributes["race"] == "White" for s in subset) / 30
    assert white_share == pytest.approx(full["White"] / sum(full.values()), abs=0.1)


def test_sigkilled_run_resumes_from_its_last_checkpoint_to_the_same_result(tmp_path):
    """A worker killed outright (no chance to save) leaves only its periodic checkpoint; --resume finishes it."""
    args = [
        "--data",
        FUNDUS_SPEC,
        "--runs-dir",
        str(tmp_path),
        "--method",
        "fr",
        "--epochs",
        "2",
        "--max-samples",
        "48",
        "--batch-size",
        "4",
        "--warmup-steps",
        "2",
        "--eval-bootstrap",
        "0",
        "--save-every",
        "4",
        "--no-progress",
    ]
    assert train_main([*args, "--run-name", "straight"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.train", *args, "--run-name", "killed"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = rundir.staging_dir(tmp_path, "killed") / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"step": 6,' not in (log.read_text() if log.exists() else ""):
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [r.run_id for r in rundir.list_runs(tmp_path)] == ["straight"], "no half-written run is listed"
    staging = rundir.staging_dir(tmp_path, "killed")
    assert rundir.checkpoint_in(staging) == staging / "checkpoint"
    # the state a kill between save_checkpoint's two renames leaves: only the previous checkpoint, as .old
    (staging / "checkpoint").rename(staging / "checkpoint.old")
    assert rundir.checkpoint_in(staging) == staging / "checkpoint.old"

    assert train_main([*args, "--run-name", "killed", "--resume"]) == 0
    assert not any(p.name.startswith("checkpoint") for p in (tmp_path / "killed").iterdir())
    straight = pd.read_csv(tmp_path / "straight" / "predictions.csv")
    resumed = pd.read_csv(tmp_path / "killed" / "predictions.csv")
    pd.testing.assert_frame_equal(straight, resumed, rtol=0, atol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]  # training steps, not the val records
    assert steps == sorted(set(steps)) == list(range(1, 25)), "each step logged once after the resume"


def test_a_group_without_training_samples_is_named_when_the_job_starts(tmp_path, capsys):
    """A HAM10000 folder whose split column puts every male 60+ lesion in the test split.

    The values are checked before anything is read; the groups when the job loads the metadata.
    """
    import shutil

    source = data_spec.materialize(SKIN_SPEC, progress=False)
    folder = Path(shutil.copytree(source, tmp_path / "skin"))
    table = pd.read_csv(folder / "HAM10000_metadata.csv")
    table.loc[(table["sex"] == "male") & (table["age"] >= 60), "split"] = "test"
    table.to_csv(folder / "HAM10000_metadata.csv", index=False)
    code = train_main(
        ["--data", str(folder), "--attribute", "sex+age_group", "--lambda", "-1", "--runs-dir", str(tmp_path / "runs")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "invalid training configuration (1 problem)" in err and "lambda must be ≥ 0" in err
    code = train_main(
        [
            "--data",
            str(folder),
            "--attribute",
            "sex+age_group",
            "--eval-attributes",
            "sex",
            "religion",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid training configuration (2 problems)" in err
    assert "attribute 'sex+age_group' has a group 'Male & 60+' with 0 training samples" in err
    assert "unknown attribute 'religion'" in err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- CMAC's schedule and batches


def test_stratified_batches_give_every_group_its_share_of_each_effective_batch():
    from training.train import epoch_order

    groups = torch.tensor([0] * 700 + [1] * 200 + [2] * 64 + [3] * 36)  # 70 / 20 / 6.4 / 3.6 %
    cfg = TrainConfig(stratified_batches=True, seed=5)
    order = epoch_order(1000, 0, cfg, groups)
    assert sorted(order.tolist()) == list(range(1000)), "one epoch is every sample once"
    for start in range(0, 1000 - 31, 32):  # every full effective batch of 32
        counts = torch.bincount(groups[order[start : start + 32]], minlength=4).tolist()
        expected = [32 * share for share in (0.7, 0.2, 0.064, 0.036)]
        assert all(abs(c - e) <= 1.5 for c, e in zip(counts, expected, strict=True)), counts
    assert not torch.equal(order, epoch_order(1000, 1, cfg, groups)), "each epoch its own order"
    plain = epoch_order(1000, 0, TrainConfig(seed=5), groups)
    worst = min(torch.bincount(groups[plain[s : s + 32]], minlength=4)[3].item() for s in range(0, 992, 32))
    assert worst == 0, "without stratification some batches miss the rarest group (why CMAC needs it)"


def test_fairness_weight_waits_then_ramps():
    from training.train import fairness_weight

    cfg = TrainConfig(lam=0.5, fairness_delay_epochs=1.0, fairness_ramp_epochs=0.4)  # 10 steps an epoch
    assert [fairness_weight(cfg, s, 10) for s in (0, 9, 10, 11, 12, 13, 50)] == [0, 0, 0.125, 0.25, 0.375, 0.5, 0.5]
    assert fairness_weight(TrainConfig(lam=0.7), 0, 10) == 0.7  # defaults: the paper's constant λ from step 1


def test_tiny_groups_stay_out_of_the_fairness_term():
    """A group below --fairness-min-n counts in the CE but never in FR's gap (training.losses fairness_mask)."""
    from training.losses import compute_loss

    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [-3.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    groups = torch.tensor([0, 0, 1, 1, 2])  # group 2: one badly predicted sample
    everyone = compute_loss("fr", logits, labels, groups, lam=1.0)
    masked = compute_loss("fr", logits, labels, groups, lam=1.0, fairness_mask=groups != 2)
    assert everyone.fairness.item() > 0.8 and masked.fairness.item() == pytest.approx(0.0, abs=1e-7)
    assert masked.ce.item() == pytest.approx(everyone.ce.item())
