"""The app's tab logic without Gradio: settings from the environment, the Studio form, run choices,
what a diagnosis and a comparison show, the jobs table.

Run directories are real files written by tests/test_compare.py's `write_run` (predictions with known
per-group accuracies); a diagnosis is built from real logits; the jobs table reads a real JobStore.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from inference import catalog, compare_view, diagnose_view
from inference.compare_engine import NO_RUNS, PICKED_TWICE, wilson_interval
from inference.diagnosis import Diagnosis
from studio import actions, form, jobs_view
from studio import settings as settings_module
from studio.jobs import ERR_GRID_W_MAX_METHOD, ERR_SWEEP_METHOD, Job, JobStore
from studio.progress import Progress
from studio.settings import (
    NOT_YOUR_JOB,
    SIGN_IN_REQUIRED,
    Settings,
    SettingsError,
    StudioAccessError,
    check_may_control,
    generate_synthetic,
    job_owner,
    synthetic_to_generate,
)
from tests.conftest import FUNDUS_SPEC, SKIN_SPEC
from tests.test_compare import FIVE_METHODS, fundus_predictions, skin_predictions, write_run
from training import config as training_config
from training import methods, rundir
from training.backbones import EMBEDDED_BACKBONES
from training.config import ERR_PROCESSES, ConfigError, TrainConfig, parse, validate

TEST_DATASETS = f"{FUNDUS_SPEC}; {SKIN_SPEC}"


@pytest.fixture(scope="module", autouse=True)
def fundus_data(data_dir):
    """The form's validation reads the benchmark's metadata; generate it outside this process first."""
    generate_synthetic([FUNDUS_SPEC])


def local_settings(tmp_path: Path, **changes) -> Settings:
    env = {"FAIRDX_RUNS_DIR": str(tmp_path / "runs"), "FAIRDX_DATASETS": TEST_DATASETS}
    return dataclasses.replace(Settings.from_env(env), **changes)


def form_input(**changes) -> dict:
    """Valid form values for a tiny fundus job (what the browser sends), with `changes` applied."""
    values = dict(
        method="fr",
        lam=0.5,
        w_max=10.0,
        attribute="race",
        data=FUNDUS_SPEC,
        backbone="auto",
        epochs=1,
        lr="auto",
        lora_r=8,
        balanced_sampling=True,
        seed=1,
        max_samples=32,
    )
    return {**values, **changes}


# ---------------------------------------------------------------------- settings
def test_defaults_locally_offer_the_synthetic_data_and_embedded_backbones():
    s = Settings.from_env({})
    assert (s.runs_dir, s.studio, s.on_space, s.max_jobs, s.max_queue) == (Path("runs"), True, False, 1, 10)
    assert (s.max_jobs_per_user, s.max_epochs, s.max_samples, s.max_lora_r, s.auth) == (None, None, None, None, ())
    assert s.datasets == {"synth:fundus": "synth:fundus", "synth:skin": "synth:skin"}
    assert s.backbones == {
        "auto": None,
        "tiny-qwen2.5-vl": EMBEDDED_BACKBONES["fundus"],
        "tiny-clip": EMBEDDED_BACKBONES["skin"],
    }
    assert s.run_dirs == (rundir.DEMO_RUNS_DIR, Path("runs"))
    assert not s.multi_user


def test_a_space_keeps_the_studio_off_unless_its_owner_turns_it_on():
    space = Settings.from_env({"SYSTEM": "spaces", "SPACE_ID": "someone/fairdx"})
    assert (space.studio, space.on_space, space.max_jobs_per_user) == (False, True, 1)
    assert (space.max_epochs, space.max_samples, space.max_lora_r) == (3, 2000, 32)
    enabled = Settings.from_env(
        {"SYSTEM": "spaces", "SPACE_ID": "someone/fairdx", "FAIRDX_STUDIO": "on", "FAIRDX_MAX_EPOCHS": "none"}
    )
    assert (enabled.studio, enabled.max_epochs, enabled.multi_user) == (True, None, True)
    assert Settings.from_env({"FAIRDX_STUDIO": "off"}).studio is False


def test_every_bad_variable_is_named_at_once():
    env = {
        "FAIRDX_STUDIO": "maybe",
        "FAIRDX_MAX_JOBS": "0",
        "FAIRDX_MAX_QUEUE": "lots",
        "FAIRDX_AUTH": "alice",
        "FAIRDX_DATASETS": "a=synth:fundus; a=synth:skin",
        "FAIRDX_BACKBONES": " ; ",
    }
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert caught.value.problems == [
        settings_module.ERR_SWITCH.format(var="FAIRDX_STUDIO", value="maybe"),
        settings_module.ERR_DUPLICATE.format(var="FAIRDX_DATASETS", name="a"),
        settings_module.ERR_EMPTY_LIST.format(var="FAIRDX_BACKBONES", what="backbones"),
        settings_module.ERR_WHOLE.format(var="FAIRDX_MAX_JOBS", minimum=1, value="0", or_none=""),
        settings_module.ERR_WHOLE.format(var="FAIRDX_MAX_QUEUE", minimum=0, value="lots", or_none=' or "none"'),
        settings_module.ERR_AUTH,
    ]


def test_allow_lists_show_names_never_folders(tmp_path):
    folder = tmp_path / "ham10000"
    folder.mkdir()
    s = Settings.from_env(
        {
            "FAIRDX_DATASETS": f"glaucoma=/srv/fairvlmed; synth:skin:n=2000,seed=0; {folder}",
            "FAIRDX_BACKBONES": "auto; Qwen/Qwen2.5-VL-7B-Instruct; clip=/models/clip",
            "FAIRDX_AUTH": "alice:s3:cret; bob:pw",
        }
    )
    assert s.datasets == {
        "glaucoma": "/srv/fairvlmed",
        "synth:skin:n=2000,seed=0": "synth:skin:n=2000,seed=0",
        "ham10000": str(folder),
    }
    assert s.backbones == {
        "auto": None,
        "Qwen/Qwen2.5-VL-7B-Instruct": "Qwen/Qwen2.5-VL-7B-Instruct",
        "clip": "/models/clip",
    }
    assert s.auth == (("alice", "s3:cret"), ("bob", "pw")) and s.multi_user
    runs = (tmp_path / "runs").resolve()
    s = dataclasses.replace(s, runs_dir=runs)
    assert (
        s.redact(f"missing {folder}/meta.csv and /srv/fairvlmed/x; see {runs}/.jobs/1.log")
        == "missing ham10000/meta.csv and glaucoma/x; see runs/.jobs/1.log"
    )


def test_job_owner_needs_sign_in_on_a_space_and_cancel_is_owner_only():
    space = Settings(on_space=True)
    with pytest.raises(StudioAccessError, match=re.escape(SIGN_IN_REQUIRED)):
        job_owner(space, profile_name=None, username="ignored")
    assert job_owner(space, profile_name="alice") == "alice"
    assert job_owner(Settings(), username=None) == settings_module.LOCAL_OWNER
    assert job_owner(Settings(auth=(("bob", "pw"),)), username="bob") == "bob"
    check_may_control(Settings(), "local", "j1", "someone")  # one local user: anything goes
    check_may_control(space, "alice", "j1", "alice")
    with pytest.raises(StudioAccessError) as caught:
        check_may_control(space, "mallory", "j1", "alice")
    assert str(caught.value) == NOT_YOUR_JOB.format(job_id="j1")


def test_only_offered_synthetic_data_not_yet_generated_is_generated_at_start(tmp_path):
    s = Settings.from_env({"FAIRDX_DATASETS": f"{FUNDUS_SPEC}; synth:skin:n=60,seed=99; mine={tmp_path}"})
    assert synthetic_to_generate(s) == ["synth:skin:n=60,seed=99"]  # FUNDUS_SPEC: made by the module fixture


# ---------------------------------------------------------------------- the Studio form
def test_a_lambda_beyond_the_papers_range_needs_an_explicit_confirmation(tmp_path):
    s = local_settings(tmp_path)
    with pytest.raises(ConfigError) as caught:
        form.config_from_form(form_input(lam=1e9), s)
    assert caught.value.problems == [
        form.ERR_LARGE_LAMBDA.format(lam=1e9, limit=10, confirm=form.LABELS[form.CONFIRM_LAMBDA])
    ]
    assert form.config_from_form(form_input(lam=1e9, confirm_large_lambda=True), s).lam == 1e9
    assert form.config_from_form(form_input(lam=10.0), s).lam == 10.0  # the papers' range is fine
    assert form.config_from_form(form_input(method="gr", lam=1e9), s).method == "gr"  # GR never reads λ
    with pytest.raises(ConfigError, match="λ = 50 is beyond the range"):
        form.sweep_from_form(form_input(), "0.5, 50", s)
    config, lambdas = form.sweep_from_form(form_input(lam=1e9), "0.5, 1", s)  # the sweep's λ values count
    assert lambdas == [0.5, 1.0]
    assert "confirm_large_lambda" not in config.to_dict()


def test_form_is_built_from_train_config_fields_and_their_help(tmp_path):
    s = local_settings(tmp_path)
    specs = form.form_fields(s)
    help_of = {name: info.description for name, info in TrainConfig.model_fields.items()}
    assert [spec.name for spec in specs] == list(form.FORM_FIELDS)
    assert all(spec.help == help_of.get(spec.name, form.CONFIRM_HELP) for spec in specs)
    by_name = {spec.name: spec for spec in specs}
    assert [value for _, value in by_name["method"].choices] == ["vanilla", "fr", "gr", "hybrid", "cmac"]
    assert {name: (spec.kind, spec.default) for name, spec in by_name.items()} == {
        "method": ("radio", "vanilla"),
        "lam": ("number", 0.5),
        form.CONFIRM_LAMBDA: ("checkbox", False),  # a form-only field: λ beyond the papers' range
        "w_max": ("number", 10.0),
        "attribute": ("dropdown", "race"),
        "data": ("dropdown", FUNDUS_SPEC),
        "backbone": ("dropdown", "auto"),
        "epochs": ("integer", 3),
        "lr": ("text", "auto"),
        "lora_r": ("integer", 32),
        "balanced_sampling": ("checkbox", False),
        "seed": ("integer", 42),
        "max_samples": ("integer", None),
        "processes": ("integer", 1),
    }
    assert [value for _, value in by_name["data"].choices] == [FUNDUS_SPEC, SKIN_SPEC]
    assert by_name["max_samples"].optional and by_name["attribute"].custom


def test_caps_set_the_form_defaults_and_maxima(tmp_path):
    s = local_settings(tmp_path, max_epochs=2, max_samples=500, max_lora_r=16)
    by_name = {spec.name: spec for spec in form.form_fields(s)}
    assert (by_name["epochs"].default, by_name["epochs"].maximum) == (2, 2)
    assert (by_name["lora_r"].default, by_name["lora_r"].maximum) == (16, 16)
    assert (by_name["max_samples"].default, by_name["max_samples"].optional) == (500, False)


def test_attribute_choices_follow_the_dataset(tmp_path):
    s = local_settings(tmp_path)
    assert form.attribute_choices(s, SKIN_SPEC) == [
        "sex",
        "age_group",
        "fitzpatrick",
        "sex+age_group",
        "sex+fitzpatrick",
        "age_group+fitzpatrick",
    ]
    assert form.attribute_choices(s, FUNDUS_SPEC)[:4] == ["race", "ethnicity", "gender", "age_group"]
    assert len(form.attribute_choices(s, FUNDUS_SPEC)) == 4 + 6
    assert (form.default_attribute(s, FUNDUS_SPEC), form.default_attribute(s, SKIN_SPEC)) == ("race", "sex+age_group")
    assert form.attribute_choices(s, "/etc") == []  # not offered: never read


def test_form_values_become_the_config_the_cli_would_run(tmp_path):
    s = local_settings(tmp_path)
    cfg = form.config_from_form(form_input(backbone="tiny-clip", lr="0.002", epochs=2.0), s)
    assert (cfg.method, cfg.lam, cfg.attribute, cfg.data, cfg.epochs, cfg.lr, cfg.lora_r, cfg.max_samples) == (
        "fr",
        0.5,
        "race",
        FUNDUS_SPEC,
        2,
        0.002,
        8,
        32,
    )
    assert (cfg.backbone, cfg.runs_dir, cfg.balanced_sampling, cfg.seed) == (
        EMBEDDED_BACKBONES["skin"],
        str(s.runs_dir),
        True,
        1,
    )
    assert isinstance(cfg.epochs, int)
    validate(cfg)  # the CLI accepts what the form accepts
    auto = form.config_from_form(form_input(max_samples=None, lr=" auto "), s)
    assert (auto.backbone, auto.max_samples, auto.lr) == (None, None, "auto")


def test_every_invalid_value_is_reported_together_with_the_clis_own_messages(tmp_path):
    s = local_settings(tmp_path)
    values = form_input(lam=-1, w_max=0.5, attribute="nope", epochs=2.5, lr="fast", lora_r=0, seed=-3, max_samples=5)
    with pytest.raises(ConfigError) as caught:
        form.config_from_form(values, s)
    with pytest.raises(ConfigError) as from_cli:
        parse(
            {
                **form.studio_base().to_dict(),
                "lam": -1.0,
                "w_max": 0.5,
                "attribute": "nope",
                "data": FUNDUS_SPEC,
                "lr": "fast",
                "lora_r": 0,
                "max_samples": 5,
                "seed": -3,
            }
        )
    assert caught.value.problems == [
        form.ERR_WHOLE.format(label="Epochs", value=2.5),
        *from_cli.value.problems,
    ]
    assert len(caught.value.problems) == 8
    assert str(caught.value).startswith("invalid training configuration (8 problems):")


def test_names_outside_the_allow_lists_are_refused_and_never_read(tmp_path):
    s = local_settings(tmp_path)
    secret = tmp_path / "private-data"
    secret.mkdir()
    with pytest.raises(ConfigError) as caught:
        form.config_from_form(form_input(data=str(secret), backbone="/etc", method="magic", lam=None), s)
    assert caught.value.problems == [
        form.ERR_REQUIRED.format(label="λ (fairness weight)"),
        form.ERR_DATASET.format(value=str(secret), choices=f"{FUNDUS_SPEC}, {SKIN_SPEC}"),
        form.ERR_BACKBONE.format(value="/etc", choices="auto, tiny-qwen2.5-vl, tiny-clip"),
        "method 'magic' is unknown; choose one of vanilla, fr, gr, hybrid, cmac",
    ]


def test_server_caps_are_enforced(tmp_path):
    s = local_settings(tmp_path, max_epochs=3, max_samples=100, max_lora_r=16)
    with pytest.raises(ConfigError) as caught:
        form.config_from_form(form_input(epochs=5, lora_r=64, max_samples=None), s)
    assert caught.value.problems == [
        form.ERR_REQUIRED.format(label="Max training samples"),
        form.ERR_CAP.format(label="Epochs", cap=3, value=5),
        form.ERR_CAP.format(label="LoRA rank r", cap=16, value=64),
    ]
    assert form.config_from_form(form_input(epochs=3, lora_r=16, max_samples=100), s).max_samples == 100


def test_lambda_sweep_text_is_parsed_and_checked(tmp_path):
    assert form.parse_lambdas("0.1, 0.5 1.0", 5) == ([0.1, 0.5, 1.0], [])
    assert form.parse_lambdas(" ", 5) == ([], [form.ERR_LAMBDAS_EMPTY])
    assert form.parse_lambdas("0.1; x, -1, nan", 3) == (
        [0.1],
        [
            form.ERR_LAMBDA_VALUE.format(value="x"),
            form.ERR_LAMBDA_VALUE.format(value="-1"),
            form.ERR_LAMBDA_VALUE.format(value="nan"),
            form.ERR_LAMBDAS_TOO_MANY.format(cap=3, n=4),
        ],
    )
    s = local_settings(tmp_path, max_jobs_per_user=2)
    cfg, lambdas = form.sweep_from_form(form_input(), "0.1 1.0", s)
    assert (cfg.method, lambdas) == ("fr", [0.1, 1.0])
    with pytest.raises(ConfigError) as caught:
        form.sweep_from_form(form_input(method="vanilla", epochs=0), "0.1, 0.5, 1.0", s)
    assert caught.value.problems == [
        "epochs must be a whole number ≥ 1 (got 0)",
        ERR_SWEEP_METHOD.format(method="vanilla"),
        form.ERR_SWEEP_USER_LIMIT.format(n=3, cap=2),
    ]


def test_a_grid_sweep_is_parsed_checked_and_capped(tmp_path):
    s = local_settings(tmp_path, max_sweep=8)
    config, axes = form.grid_from_form(form_input(method="hybrid"), "0.1, 1", "5 10", "0 1", s)
    assert config.method == "hybrid" and axes == {"lam": [0.1, 1.0], "w_max": [5.0, 10.0], "seed": [0, 1]}
    _, axes = form.grid_from_form(form_input(method="gr"), "", "5, 20", "", s)  # GR sweeps w_max alone
    assert axes == {"w_max": [5.0, 20.0]}
    with pytest.raises(ConfigError) as caught:
        form.grid_from_form(form_input(method="fr"), "", "0.5, x", "1.5", s)
    assert caught.value.problems == [
        form.ERR_GRID_VALUE.format(name="w_max", value="0.5", rule="a number ≥ 1"),
        form.ERR_GRID_VALUE.format(name="w_max", value="x", rule="a number ≥ 1"),
        form.ERR_GRID_VALUE.format(name="seed", value="1.5", rule="a whole number ≥ 0"),
        ERR_GRID_W_MAX_METHOD.format(method="fr"),
    ]
    with pytest.raises(ConfigError, match="enter the values to sweep"):
        form.grid_from_form(form_input(), " ", "", "", s)
    big = " ".join(str(i) for i in range(s.max_sweep))
    with pytest.raises(ConfigError, match=f"at most {s.max_sweep} jobs on this server; this grid has"):
        form.grid_from_form(form_input(method="hybrid"), "0.1 0.5", "", big, s)


# ---------------------------------------------------------------------- runs on offer
@pytest.fixture
def runs_on_disk(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Five demo fundus runs (DEMO_RUNS_DIR pointed at tmp), two user runs, one skin demo run."""
    demo, user = tmp_path / "assets-runs", tmp_path / "runs"
    monkeypatch.setattr(rundir, "DEMO_RUNS_DIR", demo)
    for i, (method, accuracy) in enumerate(FIVE_METHODS.items()):
        write_run(demo, f"fundus-{method}", fundus_predictions(accuracy, seed=i), method=method)
    write_run(user, "fundus-fr", fundus_predictions(FIVE_METHODS["fr"], seed=9), method="fr", lam=1.0)
    write_run(
        user,
        "fundus-mine",
        fundus_predictions(FIVE_METHODS["gr"], seed=8),
        method="cmac",
        attribute="race+gender+age_group",
    )
    write_run(
        demo,
        "skin-cmac",
        skin_predictions({"Female & 0-40": 0.9, "Male & 60+": 0.6}),
        task="skin",
        method="cmac",
        attribute="sex+age_group",
    )
    return demo, user


def test_adapters_of_a_task_demo_runs_first_in_method_order(runs_on_disk):
    runs = catalog.available_runs(runs_on_disk)
    choices = diagnose_view.adapter_choices(runs, "fundus")
    for title, key in choices:  # each title ends with what to weigh before trusting the adapter
        run = catalog.find_run(key, runs)
        auc = run.eval()["report"]["overall"]["auc"]
        attribute = run.settings.fairness_attribute or run.settings.attribute
        groups = run.eval()["report"]["attributes"].get(attribute, {}).get("groups", {})
        kept = [g["accuracy"] for g in groups.values() if g["in_gaps"]]  # the groups its gaps count
        worst = f", worst group {min(kept):.0%}" if kept else ""
        assert title.endswith(f" · AUC {auc:.2f}{worst}")
    assert [(title.split(" · AUC")[0], key) for title, key in choices] == [
        ("fundus-vanilla (demo) · Vanilla", "fundus-vanilla (demo)"),
        ("fundus-fr (demo) · FR, λ=0.5", "fundus-fr (demo)"),
        ("fundus-gr (demo) · GR", "fundus-gr (demo)"),
        ("fundus-hybrid (demo) · Hybrid, λ=0.5", "fundus-hybrid (demo)"),
        ("fundus-cmac (demo) · CMAC-MMD, λ=0.5", "fundus-cmac (demo)"),
        ("fundus-fr · FR, λ=1", "fundus-fr"),
        ("fundus-mine · CMAC-MMD, λ=0.5", "fundus-mine"),
    ]
    assert diagnose_view.default_adapter(runs, "fundus") == "fundus-hybrid (demo)"
    assert diagnose_view.default_adapter(runs, "skin") == "skin-cmac (demo)"
    assert diagnose_view.keep_or_default(runs, "fundus", "fundus-mine") == "fundus-mine"
    assert diagnose_view.keep_or_default(runs, "skin", "fundus-mine") == "skin-cmac (demo)"


def test_adapter_keys_resolve_to_runs_and_never_to_paths(runs_on_disk):
    demo, user = runs_on_disk
    runs = catalog.available_runs(runs_on_disk)
    assert diagnose_view.adapter_for("fundus-fr", "fundus", runs).path == user / "fundus-fr"
    assert diagnose_view.adapter_for("fundus-fr (demo)", "fundus", runs).path == demo / "fundus-fr"
    assert diagnose_view.adapter_for("fundus-gr", "fundus", runs).path == demo / "fundus-gr"  # unique bare id
    unknown = f"no complete run '{user / 'fundus-fr'}'; choose one of: fundus-vanilla (demo)"
    with pytest.raises(ValueError, match=f"^{re.escape(unknown)}"):
        diagnose_view.adapter_for(str(user / "fundus-fr"), "fundus", runs)
    with pytest.raises(ValueError, match="trained for task skin, not fundus"):
        diagnose_view.adapter_for("skin-cmac (demo)", "fundus", runs)
    with pytest.raises(ValueError, match=catalog.RUN_KEY_MISSING):
        diagnose_view.adapter_for(None, "fundus", runs)
    with pytest.raises(ValueError, match="task must be one of: fundus, skin"):
        diagnose_view.adapter_for("fundus-fr", "eye", runs)


def test_a_diagnosis_shows_both_classes_the_margin_reading_and_the_adapter(runs_on_disk):
    run = catalog.find_run("fundus-hybrid (demo)", catalog.available_runs(runs_on_disk))
    config = {**run.config, "lam": 0.5}
    diagnosis = Diagnosis.from_logits(torch.tensor([0.2, 2.2]), run_config=config, run_id=run.run_id, latency_ms=41.6)
    image = Image.new("RGB", (224, 200))
    image.info = {"source_format": "PNG", "source_mode": "L"}
    view = diagnose_view.show(diagnosis, run, image)
    assert view.confidences == pytest.approx(
        {"no glaucoma": 1 - diagnosis.prob_positive, "glaucoma": diagnosis.prob_positive}
    )
    assert diagnosis.prob_positive == pytest.approx(torch.tensor([0.2, 2.2]).softmax(0)[1].item())
    assert view.summary.splitlines() == [
        "**Certainty margin 2.00** — high certainty — a decision aid, not a diagnosis.  ",
        diagnose_view.MARGIN_SCALE,
        "",
        "**Adapter** `fundus-hybrid (demo)` (Hybrid, λ = 0.5) on base model `assets/backbones/tiny-qwen2.5-vl`  ",
        "**Latency** 42 ms · image 224×200 RGB (PNG, was L)",
    ]
    assert view.details["adapter"] == "fundus-hybrid (demo)" and view.details["margin"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=re.escape(diagnose_view.NO_IMAGE)):
        diagnose_view.check_image(None)


def test_a_bundled_example_shows_its_true_label_and_nothing_else_does(runs_on_disk):
    run = catalog.find_run("fundus-hybrid (demo)", catalog.available_runs(runs_on_disk))
    diagnosis = Diagnosis.from_logits(torch.tensor([0.2, 2.2]), run_config=run.config, run_id=run.run_id, latency_ms=1)
    for name, truth in (("fundus-positive-1.png", "glaucoma"), ("skin-negative-2.png", "benign")):
        with Image.open(diagnose_view.EXAMPLES_DIR / name) as image:
            assert diagnose_view.example_truth(image) == truth
            view = diagnose_view.show(diagnosis, run, image)
        assert view.summary.startswith(f"**Bundled example** — its true label is **{truth}**")
        assert view.details["true_label"] == truth
    assert diagnose_view.example_truth(Image.new("RGB", (224, 224))) is None


def test_bundled_examples_are_offered_with_their_task():
    rows, labels = diagnose_view.example_rows()
    assert len(rows) == 8 and all(Path(path).is_file() for path, _ in rows)
    assert sorted(task for _, task in rows) == ["fundus"] * 4 + ["skin"] * 4
    assert (
        labels[rows.index([str(diagnose_view.EXAMPLES_DIR / "fundus-positive-1.png"), "fundus"])]
        == "fundus · glaucoma 1"
    )
    assert labels[rows.index([str(diagnose_view.EXAMPLES_DIR / "skin-negative-2.png"), "skin"])] == "skin · benign 2"


def test_compare_defaults_are_the_five_demo_runs_and_their_attribute(runs_on_disk):
    runs = catalog.available_runs(runs_on_disk)
    assert compare_view.default_runs(runs, "fundus") == [f"fundus-{m} (demo)" for m in FIVE_METHODS]
    assert compare_view.default_attribute(runs, "fundus") == "race"
    assert compare_view.default_attribute(runs, "skin") == "sex+age_group"
    fundus = compare_view.attribute_choices(runs, "fundus")
    assert fundus[:4] == ["race", "ethnicity", "gender", "age_group"]
    assert fundus[4:] == [
        "race+ethnicity",
        "race+gender",
        "race+age_group",
        "ethnicity+gender",
        "ethnicity+age_group",
        "gender+age_group",
        "race+gender+age_group",
    ]
    assert compare_view.attribute_choices(runs, "skin") == [
        "sex",
        "age_group",
        "fitzpatrick",
        "sex+age_group",
        "sex+fitzpatrick",
        "age_group+fitzpatrick",
    ]
    assert [key for _, key in catalog.run_choices(runs, "fundus")][-2:] == ["fundus-fr", "fundus-mine"]
    assert compare_view.keep_or_default_runs(runs, "fundus", ["fundus-mine", "gone"]) == ["fundus-mine"]
    assert compare_view.keep_or_default_runs(runs, "fundus", ["gone"]) == compare_view.default_runs(runs, "fundus")


def test_without_demo_runs_the_tasks_first_five_runs_are_compared(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "DEMO_RUNS_DIR", tmp_path / "no-demos")
    for i, method in enumerate(["cmac", "vanilla", "fr", "gr", "hybrid", "fr"]):
        write_run(tmp_path / "runs", f"run-{i}", fundus_predictions(FIVE_METHODS[method], seed=i), method=method)
    runs = catalog.available_runs([tmp_path / "no-demos", tmp_path / "runs"])
    assert compare_view.default_runs(runs, "fundus") == ["run-1", "run-2", "run-5", "run-3", "run-4"]


def test_comparison_tables_name_runs_by_key_and_give_group_accuracy_with_n(runs_on_disk, tmp_path):
    runs = catalog.available_runs(runs_on_disk)
    chosen = compare_view.selected_runs(["fundus-vanilla (demo)", "fundus-fr"], runs, "fundus")
    view = compare_view.show(chosen, "race", bootstrap=50)
    assert view.summary["Run"].tolist() == ["fundus-vanilla (demo)", "fundus-fr"]
    assert view.summary.columns[:4].tolist() == ["Run", "Method", "Trained on", "n"]
    assert view.summary["Method"].tolist() == ["Vanilla", "FR λ=1"]
    assert list(view.summary.columns[-6:]) == [
        "Overall accuracy",
        "AUC",
        "MaxAccGap",
        "ΔTPR",
        "Equalized odds",
        "ES-AUC",
    ]
    assert len(compare_view.SUMMARY_COLUMN_WIDTHS) == len(view.summary.columns)
    # groups are rows, runs columns: an intersection's many groups do not push the table sideways
    assert view.groups.columns.tolist() == ["Group", "fundus-vanilla (demo)", "fundus-fr"]
    assert view.groups["Group"].tolist() == ["Asian", "Black", "White"]
    low, high = wilson_interval(320, 400)
    groups = view.groups.set_index("Group")
    assert groups.loc["White", "fundus-vanilla (demo)"] == f"0.80 [{low:.2f}, {high:.2f}] (n=400)"
    assert groups.loc["Asian", "fundus-fr"].endswith("(n=80)")
    gap = view.comparison.table.iloc[0]["max_acc_gap"]
    assert gap == pytest.approx(0.20)
    assert view.summary.iloc[0]["MaxAccGap"].startswith("0.20 [")
    assert " · chance " in view.summary.iloc[0]["MaxAccGap"]  # the gap beside its noise floor
    assert {len(f.data) for f in (view.accuracy_figure, view.frontier_figure)} == {2}
    csv = compare_view.write_csv(view.comparison, tmp_path, "fundus")
    assert pd.read_csv(csv)["max_acc_gap"].tolist() == pytest.approx(view.comparison.table["max_acc_gap"].tolist())
    report = compare_view.write_report(chosen, tmp_path, "fundus", bootstrap=20)
    assert report.read_text().startswith("# FairDx reproduction report")
    with pytest.raises(ValueError, match=NO_RUNS):
        compare_view.selected_runs([], runs, "fundus")
    with pytest.raises(ValueError, match="no complete run 'skin-cmac \\(demo\\)' for task fundus"):
        compare_view.selected_runs(["skin-cmac (demo)"], runs, "fundus")


def test_a_run_picked_twice_is_compared_once(runs_on_disk):
    # Picked twice (the /compare API allows it), a run used to reach group_table with two rows per group
    # and end in pandas' "The truth value of a Series is ambiguous".
    runs = catalog.available_runs(runs_on_disk)
    chosen = compare_view.selected_runs(["fundus-fr", "fundus-vanilla (demo)", "fundus-fr"], runs, "fundus")
    view = compare_view.show(chosen, "race", bootstrap=0)
    assert view.summary["Run"].tolist() == view.groups.columns[1:].tolist() == ["fundus-fr", "fundus-vanilla (demo)"]
    assert view.groups.set_index("Group").loc["Asian", "fundus-fr"].endswith("(n=80)")
    assert view.notes.splitlines()[2] == f"- {PICKED_TWICE.format(run='fundus-fr')}"


def test_the_export_folder_is_made_once_and_removed_when_the_process_exits():
    folder = compare_view.export_folder()
    assert folder == compare_view.export_folder() and folder.is_dir()
    assert folder.name.startswith(compare_view.EXPORT_PREFIX)
    code = (
        "from inference import compare_view; folder = compare_view.export_folder(); "
        "(folder / 'compare-runs.csv').write_text('run'); print(folder)"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    theirs = Path(child.stdout.strip().splitlines()[-1])
    assert theirs.name.startswith(compare_view.EXPORT_PREFIX) and theirs != folder
    assert not theirs.exists()  # an app start no longer leaves a fairdx-exports-* folder behind


def test_notes_list_small_groups_of_an_intersection(runs_on_disk):
    runs = catalog.available_runs(runs_on_disk)
    skin = compare_view.show(
        compare_view.selected_runs(["skin-cmac (demo)"], runs, "skin"), "sex+age_group", bootstrap=0
    )
    assert skin.notes == compare_view.NOTES_NONE
    assert skin.groups["Group"].tolist() == ["Female & 0-40", "Male & 60+"]
    fundus = compare_view.show(compare_view.selected_runs(["fundus-gr"], runs, "fundus"), "race+ethnicity", bootstrap=0)
    lines = fundus.notes.splitlines()
    assert lines[0] == compare_view.NOTES_HEADER.format(n=len(fundus.comparison.notes)) and len(lines) > 2
    assert lines[2].startswith("- run 'fundus-gr (demo)'")
    assert fundus.groups["Group"].iloc[-1] == "White & Unknown"
    left_out = fundus.groups.set_index("Group").loc["White & Unknown", "fundus-gr (demo)"]
    n = int(left_out.split("n=")[1].split(",")[0].rstrip(")"))
    assert left_out.endswith(f", {compare_view.LEFT_OUT})") == (n < 30)


# ---------------------------------------------------------------------- the jobs table
def _job(tmp_path: Path, **changes) -> Job:
    values = dict(
        id="abc123",
        run_id="fundus-fr-race",
        state="running",
        owner="local",
        created=0.0,
        started=time.time() - 65,
        finished=None,
        pid=None,
        exit_code=None,
        reason=None,
        cancel_requested=None,
        runs_dir=tmp_path,
        config_path=tmp_path / "c.json",
        log_path=tmp_path / "l.log",
    )
    return Job(**{**values, **changes})


def test_durations_progress_and_loss_curve(tmp_path):
    assert [jobs_view.format_duration(s) for s in (None, 0, 65.4, 3 * 3600 + 5)] == ["–", "0:00", "1:05", "3:00:05"]
    progress = Progress(
        step=5, total_steps=20, samples_per_s=12.5, eta_s=75, curve=[(1, 0.9, 0.7, 0.2), (5, 0.6, 0.5, 0.1)]
    )
    text = jobs_view.status_markdown(_job(tmp_path), progress, Settings())
    assert text.splitlines()[0].startswith(
        "**running** · run `fundus-fr-race` · owner local · step 5/20 (25%) · ETA 1:15 · 12.5 samples/s · 1:0"
    )
    assert text.splitlines()[2] == f"`{'█' * 8}{'░' * 22}` 25%"
    assert jobs_view.state_text(_job(tmp_path, cancel_requested=1.0)) == jobs_view.CANCELLING
    figure = jobs_view.loss_figure(progress, title="x")
    assert [trace.name for trace in figure.data] == ["loss", "cross-entropy", "fairness term"]
    assert list(figure.data[0].y) == [0.9, 0.6]
    vanilla = Progress(step=1, total_steps=2, curve=[(1, 0.7, 0.7, None)])
    assert [trace.name for trace in jobs_view.loss_figure(vanilla).data] == ["loss"]
    done = jobs_view.status_markdown(
        _job(tmp_path, state="failed", reason=f"crashed in {tmp_path}/x"), Progress(), Settings(runs_dir=tmp_path)
    )
    assert "crashed in runs/x" in done


def test_status_says_when_a_job_can_be_resumed_and_what_it_resumes(tmp_path):
    failed = _job(tmp_path, state="failed", reason="killed by signal 9")
    assert jobs_view.RESUMABLE not in jobs_view.status_markdown(failed, Progress(), Settings())
    checkpoint = failed.staging_path / rundir.CHECKPOINT
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"")
    failed.config_path.write_text("{}")  # the saved config a resume runs
    text = jobs_view.status_markdown(failed, Progress(), Settings())
    assert text.splitlines()[-3:] == ["killed by signal 9", "", jobs_view.RESUMABLE]
    resumed = _job(tmp_path, id="def456", resume_of="abc123")
    assert jobs_view.RESUMES.format(old="abc123") in jobs_view.status_markdown(resumed, Progress(), Settings())
    assert jobs_view.RESUMABLE not in jobs_view.status_markdown(resumed, Progress(), Settings())  # running


def test_jobs_table_reads_the_store(tmp_path):
    command = [sys.executable, "-c", "import time; time.sleep(30)"]
    with JobStore(tmp_path / "runs", command_for=lambda job: command) as store:
        s = local_settings(tmp_path)
        job = store.submit(form.config_from_form(form_input(), s), owner="alice")
        table = jobs_view.jobs_table(store)
        assert table.columns.tolist() == jobs_view.JOB_COLUMNS
        assert table.iloc[0][["Job", "Run", "Owner", "State", "Progress", "ETA"]].tolist() == [
            job.id,
            job.run_id,
            "alice",
            "running",
            "0%",
            "–",
        ]
        assert jobs_view.job_choices(store) == [(f"{job.run_id} · running", job.id)]
        assert jobs_view.selected_or_newest(store, "unknown") == job.id
        store.cancel(job.id)
        store.wait(job.id, timeout=10)
        assert jobs_view.jobs_table(store).iloc[0]["State"] == "cancelled"
        detail = jobs_view.job_detail(store, job.id, s)
        assert detail.status.startswith("**cancelled**") and "$ " in detail.log
        assert str(tmp_path) not in detail.log


def test_nan_inf_and_an_empty_attribute_from_the_form_are_refused_before_queueing(tmp_path):
    s = local_settings(tmp_path)
    store = JobStore(tmp_path / "runs")
    for changes, problem in (
        (dict(lam="nan"), "lambda must be a finite number (got nan)"),
        (dict(lam=float("inf")), "lambda must be a finite number (got inf)"),
        (dict(w_max="nan"), "w_max must be a finite number (got nan)"),
        (dict(lr="inf"), "lr must be a positive finite number or 'auto'"),
        (dict(attribute=""), "attribute must not be empty (got '')"),
    ):
        with pytest.raises(ConfigError) as caught:
            store.submit(form.config_from_form(form_input(**changes), s))
        assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
    assert store.list_jobs() == []
    store.close()


def test_the_form_enables_lambda_and_w_max_for_the_methods_that_read_them(tmp_path):
    by_name = {spec.name: spec for spec in form.form_fields(local_settings(tmp_path))}
    assert [m for m in methods.NAMES if by_name["lam"].enabled_for(m)] == list(methods.LAMBDA_METHODS)
    assert [m for m in methods.NAMES if by_name["w_max"].enabled_for(m)] == list(methods.WEIGHT_METHODS)
    assert by_name["epochs"].enabled_for(methods.VANILLA.name)


# ---------------------------------------------------------------------- every adapter on one image
def test_every_skin_adapter_on_a_bundled_example_with_its_validated_figures():
    from inference.serving import ModelPool

    runs = [run for run in rundir.list_runs(rundir.DEMO_RUNS_DIR) if run.task == "skin"]
    image = Image.open(diagnose_view.EXAMPLES_DIR / "skin-positive-1.png")
    pool = ModelPool()
    results = [(pool.predict(image, run), run) for run in diagnose_view.task_adapters(runs, "skin")]
    table = diagnose_view.all_adapters_table(results)
    assert table.columns.tolist() == diagnose_view.ALL_COLUMNS and len(table) == 5
    for (diagnosis, run), row in zip(results, table.to_dict("records"), strict=True):
        overall = run.eval()["report"]["overall"]
        assert row["Adapter"].startswith(run.label())
        assert (
            row["Test sensitivity"] == f"{overall['tpr']:.0%}"
            and row["Test specificity"] == f"{1 - overall['fpr']:.0%}"
        )
        called = "malignant" if diagnosis.prob_positive >= run.threshold else "benign"
        assert row["At its validated threshold"] == f"{called} (t = {run.threshold:.3f})"
        groups = run.eval()["report"]["attributes"]["sex+age_group"]["groups"]
        worst = min((f["accuracy"], g) for g, f in groups.items() if f["in_gaps"])
        assert row["Worst-group accuracy"] == f"{worst[0]:.0%} ({worst[1]}, sex+age_group)"
    calls = [r["At its validated threshold"].split(" (")[0] for r in table.to_dict("records")]
    top = max(set(calls), key=calls.count)
    assert (
        diagnose_view.agreement(results)
        == f"**{calls.count(top)} of 5 adapters call it {top}** at their validated thresholds."
    )
    with pytest.raises(ValueError, match="no complete runs of task fundus"):
        diagnose_view.task_adapters(runs, "fundus")


def test_every_adapter_table_has_a_width_per_column():
    assert len(diagnose_view.ALL_COLUMN_WIDTHS) == len(diagnose_view.ALL_COLUMNS)
    assert sum(float(w.rstrip("%")) for w in diagnose_view.ALL_COLUMN_WIDTHS) <= 100


# ---------------------------------------------------------------------- the Studio where training is off
def test_where_training_is_off_the_form_gives_the_exact_command(tmp_path):
    import argparse
    import shlex

    from studio import actions
    from training.config import add_arguments, from_args

    s = local_settings(tmp_path)
    text = actions.command(s, form_input(method="hybrid", lam=0.25, epochs=2))
    command = text.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("python -m training.train ") and "--lambda 0.25" in command
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    again = from_args(parser.parse_args(shlex.split(command)[3:]))
    expected = form.config_from_form(form_input(method="hybrid", lam=0.25, epochs=2), s)
    assert again.to_dict() == expected.replace(runs_dir=TrainConfig().runs_dir).to_dict()  # the same job
    with pytest.raises(ConfigError, match="λ = 1e\\+09 is beyond"):
        actions.command(s, form_input(lam=1e9))  # checked exactly as Launch checks it


def test_the_studio_tab_offers_the_form_when_training_is_off(tmp_path):
    import app as fairdx_app

    demo = fairdx_app.build_app(
        settings_module.Settings.from_env({"FAIRDX_RUNS_DIR": str(tmp_path), "FAIRDX_STUDIO": "off"})
    )
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"studio-disabled", "studio-command-btn", "studio-command", "studio-method", "studio-lam"} <= ids
    assert "launch-btn" not in ids


def test_fields_the_default_method_does_not_read_start_disabled(tmp_path):
    import app as fairdx_app

    demo = fairdx_app.build_app(local_settings(tmp_path))
    blocks = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    method = form.studio_base().method  # vanilla: reads neither λ nor w_max
    assert method == "vanilla"
    assert blocks["studio-lam"].interactive is False and blocks["studio-w-max"].interactive is False
    assert blocks["studio-confirm-large-lambda"].interactive is False and blocks["studio-epochs"].interactive
    demo.fairdx_store.close()


# ---------------------------------------------------------------------- several GPUs
def test_processes_are_offered_only_where_there_are_two_gpus_and_hidden_they_stay_1(tmp_path, monkeypatch):
    s = local_settings(tmp_path)
    monkeypatch.setattr(training_config, "cuda_devices", lambda: 0)
    processes = {spec.name: spec for spec in form.form_fields(s)}["processes"]
    assert (processes.visible, processes.default) == (False, 1)
    assert form.config_from_form(form_input(), s).processes == 1  # hidden: the browser's value or none at all
    with pytest.raises(ConfigError) as caught:  # an API client that asks for 2 anyway
        form.config_from_form(form_input(processes=2), s)
    assert caught.value.problems == [ERR_PROCESSES.format(n=2, found=0, fix="1")]

    monkeypatch.setattr(training_config, "cuda_devices", lambda: 4)
    processes = {spec.name: spec for spec in form.form_fields(s)}["processes"]
    assert (processes.visible, processes.minimum, processes.maximum) == (True, 1, 4)
    assert form.config_from_form(form_input(processes=2), s).processes == 2
    text = actions.command(s, form_input(processes=2))  # training off: the command to run on one's own GPUs
    assert "accelerate launch --multi_gpu --num_processes 2 " in text and " -m training.train " in text


def test_the_studio_form_hides_processes_on_a_cpu_and_shows_it_with_gpus(tmp_path, monkeypatch):
    import app as fairdx_app

    for gpus, visible in ((0, False), (2, True)):
        monkeypatch.setattr(training_config, "cuda_devices", lambda gpus=gpus: gpus)
        demo = fairdx_app.build_app(local_settings(tmp_path / str(gpus)))
        blocks = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
        assert blocks["studio-processes"].visible is visible and blocks["studio-processes"].value == 1
        demo.fairdx_store.close()


def test_a_job_shows_the_command_it_was_started_with_and_its_sweep(tmp_path):
    tmp_path.joinpath("c.json").write_text(json.dumps({"sweep": "fundus-fr-sweep-x"}))
    command = f"{sys.executable} -m training.train --config {tmp_path}/runs/.jobs/abc123.json --run-name r"
    text = jobs_view.status_markdown(_job(tmp_path, command=command), Progress(), Settings(runs_dir=tmp_path / "runs"))
    assert jobs_view.IN_SWEEP.format(sweep="fundus-fr-sweep-x") in text
    started = text.split(jobs_view.STARTED_WITH + "\n\n```bash\n")[1].split("\n```")[0]
    assert started == Settings(runs_dir=tmp_path / "runs").redact(command) and "runs/.jobs/abc123.json" in started
    assert jobs_view.STARTED_WITH not in jobs_view.status_markdown(_job(tmp_path), Progress(), Settings())


# ---------------------------------------------------------------------- sweeps in Compare
def test_compare_names_each_runs_sweep_and_ticks_a_whole_sweep_with_its_reference(runs_on_disk):
    _, user = runs_on_disk
    for lam, seed in ((0.1, 30), (0.5, 31)):
        write_run(
            user, f"sw-l{lam:g}", fundus_predictions(FIVE_METHODS["fr"], seed=seed), method="fr", lam=lam, sweep="sw"
        )
    write_run(user, "old-l1", fundus_predictions(FIVE_METHODS["fr"], seed=32), method="fr", lam=1.0, sweep="old")
    runs = catalog.available_runs(runs_on_disk)
    titles = {key: title for title, key in compare_view.source_choices(runs, "fundus")}
    assert titles["sw-l0.1"] == "sw-l0.1 · FR, λ=0.1" + compare_view.SWEEP_TITLE.format(sweep="sw")
    assert titles["fundus-fr"] == "fundus-fr · FR, λ=1"  # a run of its own keeps its title
    assert compare_view.sweep_choices(runs, "fundus") == [
        (compare_view.NO_SWEEP, ""),
        ("sw (2 runs)", "sw"),
        ("old (1 run)", "old"),
    ]
    assert compare_view.sweep_choices(runs, "skin") == [(compare_view.NO_SWEEP, "")]
    # the sweep's runs, and the Vanilla run every setting is paired against
    assert compare_view.sweep_runs(runs, "fundus", "sw") == ["sw-l0.1", "sw-l0.5", "fundus-vanilla (demo)"]
    view = compare_view.show(
        compare_view.selected_sources(compare_view.sweep_runs(runs, "fundus", "sw"), runs, "fundus"),
        "race",
        bootstrap=0,
    )
    assert [trace.name for trace in view.frontier_figure.data][:2] == ["Vanilla", "sweep sw (FR)"]
    assert "sweep" not in set(view.config_diff[compare_view.DIFF_FIELD_COLUMN])  # a grouping, not a setting
    with pytest.raises(
        ValueError, match=re.escape(compare_view.UNKNOWN_SWEEP.format(sweep="sw", task_words=" for task skin"))
    ):
        compare_view.sweep_runs(runs, "skin", "sw")


def test_show_in_compare_picks_a_jobs_sweep_or_its_own_run_once_it_has_finished(runs_on_disk):
    _, user = runs_on_disk
    write_run(user, "sw-l0.1", fundus_predictions(FIVE_METHODS["fr"], seed=30), method="fr", lam=0.1, sweep="sw")
    runs = catalog.available_runs(runs_on_disk)
    assert compare_view.job_selection(runs, run_id="sw-l0.5", sweep="sw") == (
        "fundus",
        ["sw-l0.1", "fundus-vanilla (demo)"],
    )
    assert compare_view.job_selection(runs, run_id="fundus-mine", sweep=None) == ("fundus", ["fundus-mine"])
    with pytest.raises(ValueError, match=re.escape(compare_view.RUN_NOT_READY.format(run="queued-run"))):
        compare_view.job_selection(runs, run_id="queued-run", sweep=None)
    with pytest.raises(ValueError, match=re.escape(compare_view.UNKNOWN_SWEEP.format(sweep="later", task_words=""))):
        compare_view.job_selection(runs, run_id="x", sweep="later")
