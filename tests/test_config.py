"""The typed training config: one model behind the CLI, the Studio form, the sweep and the card.

What a user can type wrong (NaN, ±inf, an empty attribute, a number where a name goes) is refused
with one message naming every problem and no traceback; a run's own config.json trains again.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import pytest

from tests.conftest import FUNDUS_SPEC, run_cli
from training import config, methods, rundir
from training.config import FIELDS, ConfigError, TrainConfig, cli_flag, from_args, help_of, parse
from training.rundir import DEMO_RUNS_DIR
from training.train import PROCESSES_NOT_LAUNCHED, build_parser, launch_command, on_processes
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


# ---------------------------------------------------------------------- several processes
def test_processes_need_one_cuda_device_each_and_the_message_says_what_to_set(monkeypatch):
    monkeypatch.setattr(config, "cuda_devices", lambda: 0)
    with pytest.raises(ConfigError) as caught:
        parse({"processes": 2, "data": FUNDUS_SPEC})
    assert caught.value.problems == [config.ERR_PROCESSES.format(n=2, found=0, fix="1")]
    monkeypatch.setattr(config, "cuda_devices", lambda: 2)
    with pytest.raises(ConfigError) as caught:
        parse({"processes": 4, "data": FUNDUS_SPEC})
    assert caught.value.problems == [config.ERR_PROCESSES.format(n=4, found=2, fix="at most 2")]
    assert parse({"processes": 2, "data": FUNDUS_SPEC}).processes == 2
    assert parse({"data": FUNDUS_SPEC}).processes == 1  # one plain process needs no GPU


def test_the_command_of_several_processes_is_an_accelerate_launch_that_gives_the_config_back(monkeypatch):
    monkeypatch.setattr(config, "cuda_devices", lambda: 2)
    cfg = TrainConfig(method="fr", processes=2, data=FUNDUS_SPEC, sweep="s1", run_name="x")
    command = config.command_line(cfg)
    launcher = shlex.join(["accelerate", "launch", *config.launch_arguments(2), "-m", "training.train"])
    assert command.startswith(launcher + " ") and "--processes 2" in command
    assert "--sweep" not in command and "--run-name" not in command  # bookkeeping, left to the reader
    flags = shlex.split(command)[len(shlex.split(launcher)) :]
    assert cli_config(*flags) == cfg.replace(sweep=None, run_name=None)
    assert config.command_line(cfg.replace(processes=1)).startswith("python -m training.train --method fr")


def test_the_trainer_records_the_processes_it_runs_on_and_refuses_fewer_than_asked():
    assert on_processes(TrainConfig(), 1).processes == 1
    assert on_processes(TrainConfig(), 2).processes == 2  # a plain `accelerate launch --num_processes 2`
    assert on_processes(TrainConfig(processes=2), 2).processes == 2
    with pytest.raises(ConfigError) as caught:
        on_processes(TrainConfig(processes=2), 1)
    assert caught.value.problems == [PROCESSES_NOT_LAUNCHED.format(n=2, world=1)]


def test_command_txt_holds_what_the_studio_started_else_this_processs_own_command(monkeypatch):
    monkeypatch.delenv(rundir.COMMAND_ENV, raising=False)
    assert launch_command(1) == shlex.join(sys.orig_argv)
    monkeypatch.setenv(rundir.COMMAND_ENV, "python -m training.train --config job.json")
    assert launch_command(2) == "python -m training.train --config job.json"
