"""Model cards: metadata the Hub parses, and tables whose figures are the run's own.

``make_run`` writes a run directory laid out as training.train writes one (config.json, eval.json
from training.metrics.evaluate, predictions.csv, metrics.jsonl, README.md and, on request, a real
adapter of the embedded tiny backbone); tests/test_hub.py uses it too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from huggingface_hub import ModelCard

from tests.conftest import exactly
from training import card, methods
from training.backbones import add_lora, default_backbone, load_classifier, save_adapter
from training.config import TrainConfig
from training.metrics import evaluate
from training.rundir import METRICS, PREDICTIONS, list_runs

ATTRIBUTE_VALUES = {
    "fundus": {
        "race": (["Asian", "Black", "White"], [0.1, 0.15, 0.75]),
        "ethnicity": (["Hispanic", "Non-Hispanic"], [0.1, 0.9]),
        "gender": (["Female", "Male"], [0.45, 0.55]),
        "age_group": (["0-40", "40-60", "60+"], [0.2, 0.4, 0.4]),
    },
    "skin": {
        "sex": (["Female", "Male"], [0.45, 0.55]),
        "age_group": (["0-40", "40-60", "60+"], [0.3, 0.35, 0.35]),
        "fitzpatrick": (["I", "II", "III", "IV", "V", "VI"], [0.2, 0.3, 0.2, 0.15, 0.1, 0.05]),
    },
}
EVAL_ATTRIBUTES = {"fundus": ["race", "ethnicity"], "skin": ["sex+age_group", "sex"]}
FAMILY = {"fundus": "qwen2_5_vl", "skin": "clip"}


def make_predictions(task: str, *, n_test: int = 160, n_val: int = 40, seed: int = 0) -> pd.DataFrame:
    """A predictions.csv frame with a mild group effect, so groups differ and figures are not trivial."""
    rng = np.random.default_rng(seed)
    n = n_test + n_val
    frame = {"id": [f"{task}-{i:04d}" for i in range(n)], "split": ["test"] * n_test + ["val"] * n_val}
    label = rng.integers(0, 2, n)
    frame["label"] = label
    columns = {}
    for name, (values, p) in ATTRIBUTE_VALUES[task].items():
        columns[name] = rng.choice(values, n, p=p)
    minority = columns[next(iter(columns))] != ATTRIBUTE_VALUES[task][next(iter(columns))][0][-1]
    signal = np.where(label == 1, 1.0, -1.0) * np.where(minority, 0.6, 1.6)
    logit = signal + rng.normal(0, 1, n)
    frame["prob"] = 1 / (1 + np.exp(-logit))
    frame["margin"] = np.where(label == 1, logit, -logit)
    return pd.DataFrame({**frame, **columns})


def make_config(task: str = "fundus", *, method: str = "fr", run_id: str = "fundus-fr", **overrides) -> dict:
    """config.json as the contract describes it: a resolved TrainConfig plus task, family, summaries."""
    cfg = TrainConfig(
        method=method,
        data=f"synth:{task}",
        backbone=default_backbone(task),
        lr=0.002,
        epochs=1,
        max_samples=64,
        run_name=run_id,
        eval_bootstrap=50,
        lora_r=4,
        lora_alpha=8.0,
        attribute=EVAL_ATTRIBUTES[task][-1],
        cmac_attribute="sex+age_group" if task == "skin" else None,
    ).to_dict()
    attributes = list(ATTRIBUTE_VALUES[task])
    cfg.update(
        task=task,
        family=FAMILY[task],
        run_id=run_id,
        created="2026-11-23T10:00:00+00:00",
        versions={"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "fairdx": "0.1.0"},
        dataset={
            "spec": f"synth:{task}",
            "root": f"/tmp/data/synth-{task}",
            "n": {"train": 64, "val": 40, "test": 160},
            "attributes": attributes,
            "group_counts": {
                cfg["attribute"]: {"Asian": 7, "Black": 10, "White": 47}
                if task == "fundus"
                else {"Female": 29, "Male": 35}
            },
        },
        training={
            "steps": 8,
            "seconds": 12.5,
            "seconds_per_step": 1.56,
            "samples_per_s": 5.1,
            "effective_batch": 8,
            "final_loss": 0.6931,
        },
    )
    cfg.update(overrides)
    return cfg


def make_eval(task: str = "fundus", *, run_id: str = "fundus-fr", bootstrap: int = 50) -> dict:
    report = evaluate(
        make_predictions(task), EVAL_ATTRIBUTES[task], bootstrap=bootstrap, seed=0, split="test", gap_min_n=1
    )  # the small synthetic groups here test the formatting, not the rule
    return {"run_id": run_id, "split": "test", "attributes": EVAL_ATTRIBUTES[task], "report": report}


def make_run(
    runs_dir: Path,
    run_id: str = "fundus-fr",
    *,
    task: str = "fundus",
    method: str = "fr",
    adapter: bool = False,
    **config_overrides,
) -> Path:
    """A complete run directory; with ``adapter=True`` a real LoRA adapter of the tiny backbone."""
    run = runs_dir / run_id
    (run / "adapter").mkdir(parents=True)
    config = make_config(task, method=method, run_id=run_id, **config_overrides)
    (run / "config.json").write_text(json.dumps(config, indent=2))
    (run / "eval.json").write_text(json.dumps(make_eval(task, run_id=run_id), indent=2))
    make_predictions(task).to_csv(run / PREDICTIONS, index=False)
    lines = [
        {"event": "start", "total_steps": 2, "time": 0.0},
        {
            "step": 1,
            "total_steps": 2,
            "epoch": 0,
            "loss": 0.70,
            "ce": 0.69,
            "fairness": 0.02,
            "lr": 0.002,
            "samples_per_s": 5.0,
            "elapsed_s": 1.0,
        },
        {
            "step": 2,
            "total_steps": 2,
            "epoch": 0,
            "loss": 0.68,
            "ce": 0.67,
            "fairness": 0.02,
            "lr": 0.001,
            "samples_per_s": 5.2,
            "elapsed_s": 2.0,
        },
        {"event": "end", "seconds": 2.1},
    ]
    (run / METRICS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    if adapter:
        clf = load_classifier(config["backbone"], task=task)
        add_lora(clf, r=config["lora_r"], alpha=config["lora_alpha"], dropout=config["lora_dropout"], seed=0)
        save_adapter(clf, run / "adapter")
    else:  # a placeholder adapter: the card reads no weights
        (run / "adapter" / "adapter_config.json").write_text("{}")
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    card.write_card(run)
    return run


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """Rows of the first Markdown table whose header row starts with ``header``, keyed by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0]] = cells[1:]
    return rows


def fmt(value, interval=None) -> str:
    text = f"{value:.3f}"
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text


@pytest.fixture(scope="module")
def fundus_card() -> tuple[dict, dict, str]:
    config, evaluation = make_config("fundus"), make_eval("fundus")
    return config, evaluation, card.render_card(config, evaluation)


def test_metadata_parses_and_names_peft_task_method(fundus_card):
    config, _, text = fundus_card
    data = ModelCard(text).data.to_dict()
    assert data == {
        "library_name": "peft",
        "pipeline_tag": "image-classification",
        "tags": ["fairdx", "fairness", "lora", "medical-imaging", "fr", "fundus", "synthetic-data"],
    }
    # A repo-relative embedded checkpoint is no Hub id: named in the text, not as base_model.
    assert config["backbone"] == "assets/backbones/tiny-qwen2.5-vl"
    assert "the local checkpoint `assets/backbones/tiny-qwen2.5-vl`" in text


def test_hub_backbone_becomes_base_model():
    config = make_config("fundus", backbone="Qwen/Qwen2.5-VL-7B-Instruct")
    text = card.render_card(config, make_eval("fundus"))
    data = ModelCard(text).data.to_dict()
    assert data["base_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "[`Qwen/Qwen2.5-VL-7B-Instruct`](https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct)" in text
    assert "local checkpoint" not in text
    assert 'load_classifier("Qwen/Qwen2.5-VL-7B-Instruct", task="fundus")' in text


def test_fairness_table_holds_the_reports_gaps_with_intervals(fundus_card):
    _, evaluation, text = fundus_card
    report = evaluation["report"]
    rows = table_rows(text, "| attribute |")
    assert list(rows) == ["race", "ethnicity"]
    for spec, cells in rows.items():
        attribute = report["attributes"][spec]
        expected = [
            fmt(attribute[gap], attribute["ci"][gap])
            for gap in ("max_acc_gap", "delta_tpr", "equalized_odds", "es_auc")
        ]
        assert cells == expected
    overall = report["overall"]
    assert (
        f"Overall: n = 160, accuracy {fmt(overall['accuracy'], overall['ci']['accuracy'])}, "
        f"AUC {fmt(overall['auc'], overall['ci']['auc'])}"
    ) in text
    assert "95% percentile intervals from 50 bootstrap resamples" in text


def test_per_group_tables_give_n_and_accuracy(fundus_card):
    _, evaluation, text = fundus_card
    race = evaluation["report"]["attributes"]["race"]["groups"]
    rows = table_rows(text, "| group | n | accuracy |")
    mark = " (left out of gaps)"  # the one small-group rule: shown with its n, left out of the gaps
    assert set(rows) == {g if race[g]["in_gaps"] else f"{g}{mark}" for g in race}
    for group, figures in race.items():
        cells = rows[group if figures["in_gaps"] else f"{group}{mark}"]
        assert cells[:2] == [str(figures["n"]), f"{figures['accuracy']:.3f}"]
    assert sum(int(cells[0]) for cells in rows.values()) == 160


def test_hyperparameter_table_lists_config_fields_with_their_help(fundus_card):
    _, _, text = fundus_card
    rows = table_rows(text, "| flag | value | meaning |")
    expected = [name for name in TrainConfig.model_fields if name not in card.NOT_HYPERPARAMETERS]
    assert list(rows) == [f"`{card.cli_flag(name)}`" for name in expected]
    assert rows["`--lambda`"] == ["0.5", card._cell(TrainConfig.model_fields["lam"].description)]
    assert rows["`--lora-r`"][0] == "4"
    assert rows["`--lr`"][0] == "0.002"
    assert rows["`--cmac-attribute`"][0] == "(empty)"
    assert "`--runs-dir`" not in rows


def test_the_training_run_says_how_the_effective_batch_is_made_and_which_sweep_the_run_is_part_of(fundus_card):
    _, _, text = fundus_card
    assert "8 optimiser steps (effective batch 8 = 8 per micro-batch × 1 accumulated × 1 process) in" in text
    assert "Part of the sweep" not in text
    summary = {**make_config("fundus")["training"], "effective_batch": 32, "processes": 2}
    config = make_config("fundus", processes=2, grad_accum=2, sweep="fundus-fr-sweep-1", training=summary)
    text = card.render_card(config, make_eval("fundus"))
    assert "(effective batch 32 = 8 per micro-batch × 2 accumulated × 2 processes)" in text
    assert "Part of the sweep `fundus-fr-sweep-1`" in text
    assert table_rows(text, "| flag | value | meaning |")["`--processes`"][0] == "2"


@pytest.mark.parametrize(
    ("method", "reference", "settings"),
    [
        ("vanilla", "Eq. 3", []),
        ("fr", "Eqs. 4-6", ["λ = 0.5"]),
        ("gr", "Eq. 8", ["w_max = 10.0"]),
        ("hybrid", "Eq. 9", ["λ = 0.5", "w_max = 10.0"]),
        ("cmac", "arXiv:2512.15249", ["λ = 0.5", "subgroups of `sex+age_group`", "RBF bandwidth 1.0"]),
    ],
)
def test_each_method_states_its_objective(method, reference, settings):
    task = "skin" if method == "cmac" else "fundus"
    text = card.render_card(make_config(task, method=method), make_eval(task))
    section = text.split("## Method: ")[1].split("\n## ")[0]
    assert section.startswith(methods.get(method).card_title)
    assert reference in section
    for setting in settings:
        assert setting in section
    if method in ("vanilla", "gr"):
        assert "λ" not in section.split("Settings:")[1]


def test_synthetic_caveat_only_for_synthetic_data():
    synthetic = card.render_card(make_config("skin", method="cmac"), make_eval("skin"))
    assert "Trained and evaluated on **synthetic data**" in synthetic
    assert "not a medical device" in synthetic
    real = make_config(
        "skin",
        method="cmac",
        data="/data/HAM10000",
        dataset={"spec": "/data/HAM10000", "n": {"train": 7000, "val": 1500, "test": 1500}},
    )
    text = card.render_card(real, make_eval("skin"))
    assert "**synthetic data**" not in text and "synthetic benchmark" not in text
    assert "not a medical device" in text
    assert "synthetic-data" not in ModelCard(text).data.to_dict()["tags"]
    assert table_rows(text, "| split | n |") == {"train": ["7000"], "val": ["1500"], "test": ["1500"]}


def test_intersection_groups_and_pipes_are_table_safe():
    evaluation = make_eval("skin")
    groups = evaluation["report"]["attributes"]["sex+age_group"]["groups"]
    assert "Female & 60+" in groups
    groups["odd|name"] = groups.pop("Female & 60+")
    text = card.render_card(make_config("skin", method="cmac"), evaluation)
    rows = table_rows(text, "| group | n | accuracy |")
    assert rows["odd\\|name"][0] == str(groups["odd|name"]["n"]) and len(rows) == 6


def test_without_bootstrap_the_card_says_so():
    evaluation = make_eval("fundus", bootstrap=0)
    text = card.render_card(make_config("fundus"), evaluation)
    race = evaluation["report"]["attributes"]["race"]
    assert table_rows(text, "| attribute |")["race"][0] == f"{race['max_acc_gap']:.3f}"
    assert "No bootstrap intervals were computed for this run (eval_bootstrap = 0)." in text


def test_write_card_renders_the_runs_files(tmp_path):
    run = make_run(tmp_path, "skin-cmac", task="skin", method="cmac")
    config = json.loads((run / "config.json").read_text())
    evaluation = json.loads((run / "eval.json").read_text())
    written = (run / "README.md").read_text()
    assert written == card.render_card(config, evaluation)
    assert written == card.render_card(config, evaluation["report"] | {"split": "test"})
    assert 'adapter_dir = "runs/skin-cmac/adapter"' in written
    assert [r.run_id for r in list_runs(tmp_path)] == ["skin-cmac"]
    assert not list(run.glob(".*.tmp"))


def test_repo_id_names_the_card_and_the_download():
    text = card.render_card(make_config("fundus"), make_eval("fundus"), repo_id="alice/fundus-fr")
    assert text.split("---\n", 2)[2].lstrip().startswith("# alice/fundus-fr\n")
    assert 'snapshot_download("alice/fundus-fr", allow_patterns=["adapter/*"])' in text
    assert "python -m inference.hub pull alice/fundus-fr" in text


def test_bad_inputs_name_the_problem():
    with pytest.raises(
        ValueError, match=exactly(card.UNKNOWN_METHOD.format(method="dro", choices="vanilla, fr, gr, hybrid, cmac"))
    ):
        card.render_card({**make_config("fundus"), "method": "dro"}, make_eval("fundus"))  # e.g. a newer FairDx
    with pytest.raises(ValueError, match=exactly(card.MISSING_KEY.format(what="eval report", key="overall"))):
        card.render_card(make_config("fundus"), {"split": "test", "report": {"attributes": {}}})
