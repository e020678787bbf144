"""The benchmarks' pure parts: full-size configs and the FLOP formula, the fairness bench's plan and
aggregation, the overhead bench's paired ratios, and the CLIs. No timing is asserted here."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import pytest
import torch
from torch import nn

from bench import fairness, gpu_throughput, overhead
from bench.__main__ import NAMES, STAGES, _fairness, _overhead
from tests.conftest import run_cli

# --------------------------------------------------------------------------------- GPU bench: configs
QWEN_7B_PARAMETERS = 8_292_166_656  # Qwen/Qwen2.5-VL-7B-Instruct safetensors ("8.29B params")
CLIP_B16_PARAMETERS = 149_620_737  # openai/clip-vit-base-patch16


def linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def test_qwen_7b_config_has_the_published_size_and_shape():
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

    config = gpu_throughput.qwen2_5_vl_7b_config()
    text, vision = config.get_text_config(), config.vision_config
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
        vision.intermediate_size,
        vision.num_heads,
        vision.out_hidden_size,
        vision.patch_size,
        vision.window_size,
    ) == (32, 1280, 3420, 16, 3584, 14, 112)
    assert list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert gpu_throughput.count_parameters(Qwen2_5_VLForConditionalGeneration, config) == QWEN_7B_PARAMETERS
    # the classifier uses the headless model: no lm_head (vocab × hidden, untied)
    assert gpu_throughput.count_parameters(Qwen2_5_VLModel, config) == QWEN_7B_PARAMETERS - 152064 * 3584


def test_token_ids_override_changes_no_shape():
    from transformers import Qwen2_5_VLModel

    ids = gpu_throughput.tiny_token_ids("fundus")
    config = gpu_throughput.qwen2_5_vl_7b_config(ids)
    assert config.image_token_id == ids["image_token_id"] != 151655
    assert config.get_text_config().eos_token_id == ids["eos_token_id"]
    assert gpu_throughput.count_parameters(Qwen2_5_VLModel, config) == QWEN_7B_PARAMETERS - 152064 * 3584


def test_clip_b16_config_has_the_published_size():
    from transformers import CLIPModel

    config = gpu_throughput.clip_vit_b16_config()
    assert (
        config.vision_config.hidden_size,
        config.vision_config.num_hidden_layers,
        config.vision_config.patch_size,
        config.vision_config.image_size,
        config.text_config.hidden_size,
        config.text_config.num_hidden_layers,
        config.projection_dim,
    ) == (768, 12, 16, 224, 512, 12, 512)
    assert gpu_throughput.count_parameters(CLIPModel, config) == CLIP_B16_PARAMETERS


# ----------------------------------------------------------------------------------- FLOP formula
def test_qwen_flops_count_the_weights_the_model_has():
    """The formula's matmul weights per token are the meta model's nn.Linear (+ patch conv) weights."""
    from transformers import Qwen2_5_VLModel

    config = gpu_throughput.qwen2_5_vl_7b_config()
    with torch.device("meta"):
        model = Qwen2_5_VLModel(config)
    patches, merged, text_tokens = 1024, 256, 40
    tokens = merged + text_tokens
    flops = gpu_throughput.qwen_flops(config, image_size=448, text_tokens=text_tokens, batch=1, lora_r=0)
    h, layers = 3584, 28
    language_linear = linear_weights(model.language_model.layers)
    assert flops["language"].forward == 2 * language_linear * tokens + layers * 4 * tokens * tokens * h
    blocks, merger = linear_weights(model.visual.blocks), linear_weights(model.visual.merger)
    conv = model.visual.patch_embed.proj.weight.numel()
    attention = 4 * 1024 * 1024 * 1280 * 4 + 4 * 1024 * 64 * 1280 * 28  # 4 full blocks, 28 windowed (8×8 patches)
    assert flops["vision"].forward == 2 * blocks * patches + 2 * merger * merged + 2 * conv * patches + attention
    assert language_linear > 6.5e9 and blocks + merger + conv > 0.6e9


def test_qwen_flops_backward_runs_through_the_language_model_only():
    config = gpu_throughput.qwen2_5_vl_7b_config()
    plain = gpu_throughput.qwen_flops(config, image_size=448, text_tokens=40, batch=8, lora_r=32)
    checkpointed = gpu_throughput.qwen_flops(
        config, image_size=448, text_tokens=40, batch=8, lora_r=32, checkpointed=True
    )
    vision, language, total = plain["vision"], plain["language"], plain["total"]
    assert vision.backward == 0 and vision.recompute == 0  # frozen, no LoRA below: no backward
    # input gradients of frozen matmuls = 1× their forward; attention 2×; LoRA adds a little
    assert 1.0 < language.backward / language.forward < 1.15
    assert plain["total"].recompute == 0
    assert checkpointed["total"].recompute == pytest.approx(language.forward)
    assert checkpointed["total"].model == total.model  # recomputation is hardware work, not model work
    # ≈ 9 TFLOP per 448² sample: 2·6.5e9·296 tokens twice (fwd + input grads) plus the vision tower's forward
    assert 8e12 < total.model / 8 < 11e12
    doubled = gpu_throughput.qwen_flops(config, image_size=448, text_tokens=40, batch=16, lora_r=32)
    assert doubled["total"].model == pytest.approx(2 * total.model)


def test_lora_flops_are_a_small_share():
    config = gpu_throughput.qwen2_5_vl_7b_config()
    with_lora = gpu_throughput.qwen_flops(config, image_size=448, text_tokens=40, batch=1, lora_r=32)["total"].model
    without = gpu_throughput.qwen_flops(config, image_size=448, text_tokens=40, batch=1, lora_r=0)["total"].model
    # 20.2 M LoRA weights × 296 tokens × 6 FLOPs each
    assert with_lora - without == pytest.approx(6 * 32 * (2 * 2 * 3584 + 2 * (3584 + 512)) * 28 * 296)
    assert (with_lora - without) / without < 0.01


def test_clip_flops_both_towers_backward_text_once_per_step():
    config = gpu_throughput.clip_vit_b16_config()
    one = gpu_throughput.clip_flops(config, image_size=224, prompt_tokens=12, prompts=2, batch=1, lora_r=32)
    many = gpu_throughput.clip_flops(config, image_size=224, prompt_tokens=12, prompts=2, batch=32, lora_r=32)
    assert many["vision"].model == pytest.approx(32 * one["vision"].model)
    assert many["text"].model == one["text"].model  # class prompts: once per step, whatever the batch
    assert 0.95 < one["vision"].backward / one["vision"].forward < 1.2  # LoRA in every layer: full input grads
    # forward ≈ 2 · 85 M vision weights · 197 tokens (+ attention, patch embedding)
    assert 2 * 85e6 * 197 < one["vision"].forward < 1.3 * 2 * 85e6 * 197


def test_peak_and_utilization():
    assert gpu_throughput.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_throughput.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_throughput.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_throughput.peak_tflops("Some Unknown GPU") is None
    assert gpu_throughput.utilization(494.5e12, 1.0, 989.0) == pytest.approx(0.5)
    assert gpu_throughput.utilization(1e12, 1.0, None) is None


def test_flops_add_and_scale():
    a = gpu_throughput.Flops(1.0, 2.0, 3.0) + gpu_throughput.Flops(1.0, 1.0, 0.0)
    assert (a.forward, a.backward, a.recompute, a.model, a.hardware) == (2.0, 3.0, 3.0, 5.0, 8.0)
    assert a.scale(2).model == 10.0
    with pytest.raises(ValueError, match="context must give the keys per query of each of the 2 layers"):
        gpu_throughput.stack_flops(tokens=1, hidden=1, layers=2, linear_per_layer=1, context=[1])


SMALL_QWEN_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 448,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
}
SMALL_QWEN_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "fullatt_block_indexes": [1],
}


def test_the_gpu_bench_path_runs_a_shrunken_qwen_on_cpu():
    """build → preprocess 448² → micro-batches (pixel rows split per image) → steps → FLOPs, as on a GPU."""
    config = gpu_throughput.qwen2_5_vl_7b_config(
        gpu_throughput.tiny_token_ids("fundus"), text=SMALL_QWEN_TEXT, vision=SMALL_QWEN_VISION
    )
    rows = gpu_throughput.run_model(
        "qwen", config, steps=1, warmup=0, peak=None, device="cpu", dtype=torch.float32, batch=2, micro=1
    )
    assert [r["gradient_checkpointing"] for r in rows] == [False, True]
    for row in rows:
        assert row["image_tokens"] == 256  # 448² → 32×32 patches of 14 → 2×2 merged
        assert (row["micro_batch"], row["grad_accum"], row["batch"]) == (1, 2, 2)
        assert row["samples_per_s"] > 0 and row["mfu"] is None and row["peak_memory_gib"] is None
        assert row["trainable"] == 2 * 32 * (2 * 2 * 64 + 2 * (64 + 32)) + 64 * 2 + 2  # LoRA q/k/v/o + head
    assert rows[1]["flops"]["recompute"] > 0 == rows[0]["flops"]["recompute"]
    assert "Qwen2.5-VL-7B" in gpu_throughput.table(rows)


def test_the_gpu_bench_path_runs_a_shrunken_clip_on_cpu():
    config = gpu_throughput.clip_vit_b16_config(
        gpu_throughput.tiny_token_ids("skin"),
        text={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 770,
        },
        vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    )
    rows = gpu_throughput.run_model(
        "clip", config, steps=1, warmup=0, peak=None, device="cpu", dtype=torch.float32, batch=4, micro=2
    )
    assert rows[0]["image_tokens"] == 197 and rows[0]["prompts"] == 2
    assert (rows[0]["micro_batch"], rows[0]["grad_accum"]) == (2, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_bench_without_cuda_says_so(capsys):
    assert gpu_throughput.main(["--json", "unused.json"]) == 1
    assert capsys.readouterr().err == gpu_throughput.NO_CUDA + "\n"


# ------------------------------------------------------------------------------ fairness: the plan
def test_full_plan_covers_every_section_once_per_setting():
    runs = fairness.plan_runs(fairness.FULL)
    names = [r.name for r in runs]
    # main 2 tasks × 5 methods × 10 seeds; λ 0.1 and 1.0 for 3 methods;
    # 2 more strengths × (vanilla + the paper's method)
    assert len(names) == len(set(names)) == 100 + 6 + 2 * 2 * 2
    assert "fundus-fr-l0.5-s1-seed9" in names and "skin-cmac-l0.1-s1-seed0" in names
    assert "fundus-hybrid-l0.5-s0.5-seed0" in names and "skin-vanilla-l0.5-s0-seed0" in names
    shared = next(r for r in runs if r.name == "fundus-hybrid-l0.5-s1-seed0")
    assert shared.sections == ("main", "lambda", "strength")
    for task in fairness.TASKS:
        for method in fairness.METHODS:
            assert sum(r.task == task and r.method == method and "main" in r.sections for r in runs) == 10


def test_quick_plan_trains_every_method_once():
    runs = fairness.plan_runs(fairness.QUICK)
    assert {r.method for r in runs if "main" in r.sections} == set(fairness.METHODS)
    assert [r.name for r in runs] == [
        "fundus-vanilla-l0.5-s1-seed0",
        "fundus-fr-l0.5-s1-seed0",
        "fundus-gr-l0.5-s1-seed0",
        "fundus-hybrid-l0.5-s1-seed0",
        "fundus-fr-l1-s1-seed0",
        "fundus-vanilla-l0.5-s0-seed0",
        "fundus-hybrid-l0.5-s0-seed0",
        "skin-vanilla-l0.5-s1-seed0",
        "skin-cmac-l0.5-s1-seed0",
    ]


def test_bench_config_is_the_demo_recipe_with_the_bench_changes(tmp_path):
    from training.demos import DEMOS

    run = fairness.BenchRun("skin", "cmac", 0.1, 0.5, 2)
    cfg = fairness.bench_config(run, fairness.FULL, tmp_path)
    assert cfg.data == "synth:skin:n=2000,seed=0,strength=0.5,test_min=50"
    assert (cfg.method, cfg.lam, cfg.seed, cfg.max_samples, cfg.eval_bootstrap) == ("cmac", 0.1, 2, 960, 0)
    assert (cfg.runs_dir, cfg.run_name) == (str(tmp_path), "skin-cmac-l0.1-s0.5-seed2")
    unchanged = {"method", "lam", "seed", "data", "max_samples", "eval_bootstrap", "runs_dir", "run_name"}
    base = DEMOS["skin"].to_dict()
    assert {k: v for k, v in cfg.to_dict().items() if k not in unchanged} == {
        k: v for k, v in base.items() if k not in unchanged
    }
    assert fairness.bench_config(run, fairness.QUICK, tmp_path).epochs == 1


def test_run_state_reuses_a_matching_run_and_flags_another_setting(tmp_path):
    from training import rundir
    from training.backbones import backbone_fingerprint, resolve_backbone
    from training.train import resolve

    cfg = fairness.bench_config(fairness.BenchRun("fundus", "fr", 0.5, 1.0, 0), fairness.QUICK, tmp_path)
    assert fairness.run_state(cfg) == ("todo", [])
    path = tmp_path / cfg.run_name
    for name in rundir.REQUIRED:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("{}")
    recorded = {**resolve(cfg, "fundus").to_dict(), "task": "fundus"}
    (path / rundir.CONFIG).write_text(json.dumps(recorded))
    assert fairness.run_state(cfg) == ("done", [])
    assert fairness.run_state(cfg.replace(epochs=3)) == ("stale", ["epochs"])
    current = backbone_fingerprint(resolve_backbone(recorded["backbone"]))
    for fingerprint, state in ((current, "done"), ("sha256:0000", "stale")):  # the checkpoint rebuilt in place
        (path / rundir.CONFIG).write_text(json.dumps({**recorded, "versions": {"backbone": fingerprint}}))
        assert fairness.run_state(cfg)[0] == state
    assert fairness.run_state(cfg)[1] == ["backbone weights"]
    fairness.remove_run(cfg)
    assert fairness.run_state(cfg) == ("todo", [])
    checkpoint = rundir.staging_dir(tmp_path, cfg.run_name) / rundir.CHECKPOINT
    checkpoint.mkdir(parents=True)
    torch.save({"config": resolve(cfg, "fundus").to_dict()}, checkpoint / "state.pt")
    assert fairness.run_state(cfg) == ("resume", [])  # an interrupted run continues
    assert fairness.run_state(cfg.replace(lam=1.0)) == ("stale", ["lam"])  # ... only with the same settings


# ------------------------------------------------------------------------- fairness: aggregation
def report(accuracy, auc, race, ethnicity) -> dict:
    return {
        "overall": {"accuracy": accuracy, "auc": auc},
        "attributes": {"race": {"max_acc_gap": race}, "ethnicity": {"max_acc_gap": ethnicity}},
    }


def record(method, seed, accuracy, race, *, lam=0.5, strength=1.0, sections=("main",), ethnicity=0.1) -> dict:
    run = fairness.BenchRun("fundus", method, lam, strength, seed, tuple(sections))
    return {
        "name": run.name,
        "task": "fundus",
        "method": method,
        "lam": lam,
        "strength": strength,
        "seed": seed,
        "sections": list(sections),
        "metrics": {
            m.key: fairness.metric_value(report(accuracy, 0.8, race, ethnicity), m) for m in fairness.METRICS["fundus"]
        },
    }


RECORDS = [
    record("vanilla", 0, 0.70, 0.20, sections=("main", "lambda", "strength")),
    record("vanilla", 1, 0.72, 0.30),
    record("fr", 0, 0.69, 0.10, sections=("main", "lambda", "strength")),
    record("fr", 1, 0.72, 0.24, ethnicity=None),
    record("fr", 0, 0.68, 0.05, lam=1.0, sections=("lambda",)),
    record("vanilla", 0, 0.75, 0.04, strength=0.0, sections=("strength",)),
    record("fr", 0, 0.75, 0.05, strength=0.0, sections=("strength",)),
]
PLAN = replace(
    fairness.QUICK,
    seeds=(0, 1),
    lambdas=(0.5, 1.0),
    lambda_methods={"fundus": ("fr",)},
    strengths=(0.0, 1.0),
    strength_methods={"fundus": ("fr",)},
)


def test_aggregate_pairs_each_method_with_vanilla_of_the_same_seed():
    result = fairness.aggregate(RECORDS, PLAN)
    fr = result["main"]["fundus"]["fr"]
    gap = fr["max_acc_gap:race"]
    assert gap["value"]["mean"] == pytest.approx(0.17) and gap["value"]["sd"] == pytest.approx(0.0989949, abs=1e-6)
    # seed 0: 0.10 vs 0.20 → −50 %; seed 1: 0.24 vs 0.30 → −20 %
    assert gap["relative"]["values"] == pytest.approx([-0.5, -0.2])
    assert gap["relative"]["mean"] == pytest.approx(-0.35)
    assert gap["relative"]["sd"] == pytest.approx(statistics.stdev([-0.5, -0.2]))
    assert fr["accuracy"]["delta"]["values"] == pytest.approx([-0.01, 0.0])
    assert fr["max_acc_gap:ethnicity"]["value"]["n"] == 1  # an undefined figure is left out, not counted as 0
    assert result["main"]["fundus"]["vanilla"]["max_acc_gap:race"]["relative"]["values"] == [0.0, 0.0]
    assert set(result["main"]["fundus"]) == {"vanilla", "fr"}  # the λ and strength runs stay out of the main table


def test_aggregate_lambda_and_strength_sections():
    result = fairness.aggregate(RECORDS, PLAN)
    by_lam = result["lambda"]["fundus"]["fr"]
    assert set(by_lam) == {"0.5", "1"}
    assert by_lam["1"]["max_acc_gap:race"]["relative"]["mean"] == pytest.approx(-0.75)  # 0.05 vs vanilla seed 0 0.20
    assert by_lam["0.5"]["max_acc_gap:race"]["value"]["values"] == [0.10]  # seed 0 only
    weak = result["strength"]["fundus"]["0"]
    assert weak["fr"]["max_acc_gap:race"]["relative"]["mean"] == pytest.approx(0.25)  # 0.05 vs 0.04
    assert result["strength"]["fundus"]["1"]["fr"]["max_acc_gap:race"]["relative"]["mean"] == pytest.approx(-0.5)


def test_tables_show_mean_sd_and_change():
    result = fairness.aggregate(RECORDS, PLAN)
    main = fairness.main_table("fundus", result["main"]["fundus"])
    # paired over the two seeds: accuracy −0.01, 0.00 → mean −0.005, t(1) interval ±12.706·0.005, p 0.5;
    # race gap −0.10, −0.06 → −0.080 ± 12.706·0.02, p 0.16; AUC differences all 0 → no interval
    assert (
        "| fr | 2 | 0 | 0.705 ± 0.021 | −0.005 [−0.069, +0.059] p=0.5 | 0.800 ± 0.000 | +0.000 | "
        "0.170 ± 0.099 | −0.080 [−0.334, +0.174] p=0.16 |"
    ) in main
    assert main.splitlines()[0].startswith("| method | seeds | degenerate | accuracy | vs vanilla | AUC |")
    assert fairness.NOISE_FLOOR not in main  # two seeds: too few for a vanilla-vs-vanilla row
    lam = fairness.lambda_table("fundus", result["lambda"]["fundus"])
    assert "| fr | 1 | 0.680 | −2.0 pt | 0.800 | +0.0 pt | 0.050 | −75% |" in lam
    sweep = fairness.strength_table("fundus", result["strength"]["fundus"])
    assert "| 0 | 0.750 | 0.040 | 0.050 (+25%) |" in sweep
    text = fairness.report_text(result, PLAN)
    assert "## fundus: λ ablation (seed 0)" in text and "## fundus: gap against data bias strength" in text


def test_summaries_of_undefined_figures():
    assert fairness.summarize([None, None]) == {"mean": None, "sd": None, "n": 0, "values": []}
    assert fairness.summarize([0.3]) == {"mean": 0.3, "sd": 0.0, "n": 1, "values": [0.3]}
    assert fairness.relative_change(0.1, 0.0) is None and fairness.relative_change(None, 0.2) is None
    assert fairness.fmt_value(fairness.summarize([])) == "–" == fairness.fmt_relative(fairness.summarize([]))


def test_read_record_takes_the_figures_from_eval_json(tmp_path):
    run = fairness.BenchRun("skin", "cmac", 0.5, 1.0, 0, ("main",))
    path = tmp_path / run.name
    path.mkdir()
    eval_report = {
        "overall": {"accuracy": 0.8, "auc": 0.9},
        "attributes": {"sex+age_group": {"delta_tpr": None, "max_acc_gap": 0.25}},
    }
    (path / "eval.json").write_text(json.dumps({"report": eval_report}))
    (path / "config.json").write_text(json.dumps({"training": {"seconds": 12.5, "steps": 60}}))
    got = fairness.read_record(path, run)
    assert got["metrics"] == {
        "accuracy": 0.8,
        "auc": 0.9,
        "delta_tpr:sex+age_group": None,
        "max_acc_gap:sex+age_group": 0.25,
    }
    assert (got["train_seconds"], got["steps"], got["sections"]) == (12.5, 60, ["main"])


# ---------------------------------------------------------------------------------------- overhead
def test_paired_ratios_divide_within_each_repeat():
    times = {"vanilla": [1.0, 2.0, 4.0], "fr": [1.1, 2.0, 4.4]}  # the machine slowed down 4×; fr stays ≈ 1.07×
    got = overhead.paired_ratios(times)
    assert got["fr"]["ratio"] == pytest.approx(1.1) and got["vanilla"]["ratio"] == 1.0
    assert (got["fr"]["ratio_q1"], got["fr"]["ratio_q3"]) == pytest.approx((1.05, 1.1))
    assert got["fr"]["median_s"] == 2.0


def test_round_robin_rotates_the_order_and_gives_each_round_one_input():
    calls = []
    times = overhead.round_robin({name: (lambda k, n=name: calls.append(f"{n}{k}")) for name in "abc"}, rounds=3)
    assert calls == ["a0", "b0", "c0", "b1", "c1", "a1", "c2", "a2", "b2"]
    assert {clock: {k: len(v) for k, v in by.items()} for clock, by in times.items()} == {
        "cpu": {"a": 3, "b": 3, "c": 3},
        "wall": {"a": 3, "b": 3, "c": 3},
    }


def test_overhead_table_reads_the_cpu_clock():
    figures = {
        m: {
            "median_s": 0.05,
            "ratio": 1.0 if m == "vanilla" else 1.04,
            "ratio_q1": 1.0,
            "ratio_q3": 1.1,
            "extra_over_step": 0.0 if m == "vanilla" else 0.01,
        }
        for m in overhead.METHODS
    }
    result = {
        "model": "tiny CLIP",
        "cpu": {"step": figures, "loss": figures},
        "wall": {"step": figures, "loss": figures},
    }
    assert "| tiny CLIP | cmac | 50.0 | 1.040 | 1.000–1.100 | 1.040 | 50000 | 1.0 | 1.010 | yes |" in overhead.table(
        [result]
    )


# ------------------------------------------------------------------------------------ runner, CLIs
def test_runner_stages_and_headlines():
    assert NAMES == ("synth_bias", "fairness", "overhead", "serving", "compare_speed", "gpu_throughput")
    stage = next(s for s in STAGES if s.name == "overhead")
    assert stage.args(True)[-1].endswith("bench/results/overhead_quick.json") and stage.args(True)[0] == "--quick"
    assert (
        _overhead({"worst_step_ratio": {"tiny CLIP": 1.031}, "goal": 1.05})
        == "worst step ratio tiny CLIP 1.031 (goal ≤ 1.05)"
    )
    result = {
        "main": fairness.aggregate(RECORDS, PLAN)["main"],
        "primary_gap": fairness.PRIMARY_GAP,
        "metrics": {"fundus": [{"key": m.key, "label": m.label} for m in fairness.METRICS["fundus"]]},
    }
    assert _fairness(result) == "fundus MaxAccGap race vs vanilla: fr -35%"


def test_bench_help_lists_the_stages():
    proc = run_cli("bench", "--help", check=True)
    assert "--quick" in proc.stdout and "gpu_throughput" in proc.stdout


def test_fairness_dry_run_lists_the_plan(tmp_path):
    proc = run_cli("bench.fairness", "--quick", "--dry-run", "--runs-dir", str(tmp_path), check=True)
    assert "| fundus-fr-l1-s1-seed0 | lambda | todo |" in proc.stdout
    assert "9 runs in" in proc.stderr and "9 to train" in proc.stderr
    bad = run_cli("bench.fairness", "--sections", "nope", "--dry-run")
    assert bad.returncode == 2
    assert fairness.UNKNOWN_SECTION.format(name="nope", choices="main, lambda, strength") in bad.stderr


def test_paired_test_and_noise_floor_over_seeds():
    from scipy import stats

    differences = [-0.12, -0.05, -0.09, -0.02, -0.07]
    test = fairness.paired_test([*differences, None])
    assert test["n"] == 5 and test["n_undefined"] == 1
    assert test["p_value"] == pytest.approx(stats.ttest_1samp(differences, 0.0).pvalue)
    half = stats.t.ppf(0.975, 4) * statistics.stdev(differences) / 5**0.5
    assert test["ci"] == pytest.approx([statistics.mean(differences) - half, statistics.mean(differences) + half])
    vanilla = {seed: {"seed": seed, "metrics": {"accuracy": 0.7 + 0.01 * seed, "auc": 0.8}} for seed in range(4)}
    floor = fairness.noise_floor(vanilla, [fairness.ACCURACY])
    # seed k against seed k-1: +0.01 three times and −0.03 once (seed 0 against seed 3)
    assert floor["accuracy"]["test"]["values"] == pytest.approx([-0.03, 0.01, 0.01, 0.01])
