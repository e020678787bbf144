"""The typed training config: one model behind the CLI, the Studio form, the sweep and the card.

What a user can type wrong (NaN, ±inf, an empty attribute, a number where a name goes) is refused
with one message naming every problem and no traceback; a run's own config.json trains again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import FUNDUS_SPEC, run_cli
from training import methods
from training.config import FIELDS, ConfigError, TrainConfig, cli_flag, from_args, help_of, parse
from training.rundir import DEMO_RUNS_DIR
from training.train import build_parser
from training.train import main as train_main

DEMO_CONFIGS = sorted(DEMO_RUNS_DIR.glob("*/config.json"))


def cli_config(*argv: str) -> TrainConfig:
    return from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("--lambda", "nan"), "lambda must be a finite number (got nan)"),
        (("--lambda", "inf"), "lambda must be a finite number (got inf)"),
        (("--lr", "inf"), "lr must be a positive finite number or 'auto' (got 'inf')"),
        (("--lr", "0"), "lr must be a positive finite number or 'auto' (got '0')"),
        (("--w-max", "nan"), "w_max must be a finite number (got nan)"),
        (("--attribute", ""), "attribute must not be empty (got '')"),
        (("--attribute", "  "), "attribute must not be empty (got '  ')"),
        (("--epochs", "2.5"), "epochs must be a whole number ≥ 1 (got 2.5)"),
        (("--bandwidth", "0"), "bandwidth must be > 0 (got 0)"),
        (("--eval-threshold", "1.5"), "eval_threshold must be ≤ 1 (got 1.5)"),
        (("--data", "42"), "dataset folder 42 does not exist; check the path"),
    ],
)
def test_bad_values_are_named_in_words(argv, problem):
    with pytest.raises(ConfigError) as caught:
        cli_config(*argv)
    assert caught.value.problems == [
        problem
        + (
            "; Gu et al. use 0.1, 0.5 or 1.0"
            if argv[0] == "--lambda"
            else "; it caps the weight of the rarest group, Gu et al. use 10"
            if argv[0] == "--w-max"
            else ""
        )
    ]


def test_every_problem_at_once_from_the_cli_with_exit_2_and_no_traceback(tmp_path):
    proc = run_cli(
        "training.train",
        "--lambda",
        "nan",
        "--lr",
        "inf",
        "--w-max",
        "nan",
        "--attribute",
        "",
        "--data",
        str(tmp_path / "missing"),
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert proc.returncode == 2
    assert "invalid training configuration (5 problems)" in proc.stderr
    assert "Traceback" not in proc.stderr and "ValidationError" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_text_that_looks_like_a_number_stays_text_where_a_name_goes():
    cfg = cli_config("--run-name", "2024", "--backbone", "none", "--cmac-attribute", "")
    assert (cfg.run_name, cfg.backbone, cfg.cmac_attribute) == ("2024", None, None)
    assert cli_config("--lr", " AUTO ").lr == "auto" and cli_config("--lr", "2e-3").lr == 0.002


def test_assignment_is_validated_too():
    cfg = TrainConfig()
    with pytest.raises(ValueError, match=r"\blam\n\s+Input should be a finite number"):
        cfg.lam = math.nan
    with pytest.raises(ConfigError) as caught:
        cfg.replace(lam=-1.0, method="dro")
    assert caught.value.fields == ("method", "lam")


def test_unknown_keys_and_a_run_record_in_a_config_file():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({"lamda": 0.5})
    assert caught.value.problems[0].startswith("config file has unknown keys: lamda; valid keys: method, lam,")
    record = {
        **TrainConfig(method="gr").to_dict(),
        "task": "fundus",
        "family": "qwen2_5_vl",
        "run_id": "x",
        "created": "2026-01-01",
        "versions": {},
        "dataset": {},
        "training": {},
        "run_name": "x",
        "runs_dir": "/elsewhere",
    }
    cfg = TrainConfig.from_dict(record)
    assert (cfg.method, cfg.run_name, cfg.runs_dir) == ("gr", None, "runs")  # where it lived is not the recipe


@pytest.mark.parametrize("path", DEMO_CONFIGS, ids=[p.parent.name for p in DEMO_CONFIGS])
def test_every_shipped_demo_config_is_a_valid_config_file(path):
    recorded = json.loads(path.read_text())
    cfg = TrainConfig.from_json(path)
    assert cfg.method == recorded["method"] and cfg.lam == recorded["lam"] and cfg.seed == recorded["seed"]


def test_a_runs_config_json_trains_the_same_recipe_again(tmp_path):
    demo = DEMO_RUNS_DIR / "fundus-hybrid" / "config.json"
    code = train_main(
        [
            "--config",
            str(demo),
            "--epochs",
            "1",
            "--data",
            FUNDUS_SPEC,
            "--max-samples",
            "32",
            "--eval-bootstrap",
            "0",
            "--runs-dir",
            str(tmp_path),
            "--run-name",
            "again",
            "--no-progress",
        ]
    )
    assert code == 0
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    recorded = json.loads(demo.read_text())
    same = ("method", "lam", "w_max", "attribute", "grad_accum", "stratified_batches", "fairness_delay_epochs")
    assert {k: again[k] for k in same} == {k: recorded[k] for k in same}


def test_help_flags_and_the_method_list_come_from_one_place():
    assert cli_flag("lam") == "--lambda" and cli_flag("w_max") == "--w-max"
    assert all(help_of(name) for name in FIELDS)
    method = next(a for a in build_parser()._actions if a.dest == "method")
    assert tuple(method.choices) == methods.NAMES
    assert all(m.name in help_of("method") for m in methods.REGISTRY.values())


def test_parse_names_field_and_data_problems_together():
    with pytest.raises(ConfigError) as caught:
        parse({"lam": -1, "data": "synth:skin", "attribute": "race", "eval_attributes": ["sex", "nope"]})
    assert caught.value.problems == [
        "lambda must be ≥ 0 (got -1); Gu et al. use 0.1, 0.5 or 1.0",
        "unknown attribute 'race'; available: sex, age_group, fitzpatrick",
        "unknown attribute 'nope'; available: sex, age_group, fitzpatrick",
    ]


def test_validation_reads_and_generates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRDX_DATA_DIR", str(tmp_path))
    parse({"data": "synth:skin:n=99,seed=123", "attribute": "sex+age_group"})
    assert list(Path(tmp_path).iterdir()) == []
