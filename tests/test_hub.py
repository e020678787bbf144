"""Hub push and pull, up to the network call.

Everything a push uploads is built by ``prepare_upload`` in a local folder, so it is checked here
without a network. A pull is exercised end to end with one substitution, clearly marked below:
``huggingface_hub.snapshot_download`` (the only network call) is replaced by a copy from a local
folder that plays the remote repository, honouring the same ``allow_patterns``. The round trip
against the real Hub runs only when FAIRDX_HUB_TEST_REPO names a repository to write to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)
from huggingface_hub.utils import filter_repo_objects
from PIL import Image

from inference import hub
from tests.test_card import make_run
from training.backbones import load_adapter, load_classifier, resolve_backbone
from training.rundir import list_runs, read_run

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {
    "README.md",
    "config.json",
    "eval.json",
    "metrics.jsonl",
    "predictions.csv",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "adapter/head.safetensors",
}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A complete fundus run with a real LoRA adapter of the embedded tiny Qwen2.5-VL."""
    return make_run(tmp_path_factory.mktemp("runs"), "fundus-fr", task="fundus", method="fr", adapter=True)


@pytest.fixture
def remote(tmp_path, run_dir) -> Path:
    """A folder laid out as the pushed repository, plus files a pull must not take."""
    folder = hub.prepare_upload(run_dir, repo_id="alice/fundus-fr", dest=tmp_path / "remote")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / "adapter" / "optimizer.bin").write_bytes(b"\x80\x04pickle")
    (folder / "notes.txt").write_text("not part of a run")
    return folder


@pytest.fixture
def offline_copy(monkeypatch, remote):
    """SUBSTITUTION: snapshot_download copies from ``remote`` instead of the Hub (same filtering)."""
    calls = []

    def fake_snapshot_download(repo_id, *, repo_type, revision, local_dir, allow_patterns):
        calls.append({"repo_id": repo_id, "repo_type": repo_type, "revision": revision})
        for name in filter_repo_objects(sorted(files_under(remote)), allow_patterns=allow_patterns):
            target = Path(local_dir) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(remote / name, target)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)  # as the real one leaves
        return str(local_dir)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    return calls


# ------------------------------------------------------------------------------------------- push
def test_upload_folder_is_the_run_with_a_card_and_no_pickle(run_dir):
    folder = hub.prepare_upload(run_dir, repo_id="alice/fundus-fr")
    try:
        assert files_under(folder) == RUN_FILES  # synthetic data: predictions.csv is shared
        for name in RUN_FILES - {"README.md"}:
            assert (folder / name).read_bytes() == (run_dir / name).read_bytes()
        assert not any(Path(name).suffix in hub.PICKLE_SUFFIXES for name in files_under(folder))
        assert (run_dir / "adapter" / "README.md").is_file()  # PEFT's placeholder card stays behind
        card = ModelCard((folder / "README.md").read_text())
        assert card.data.to_dict()["library_name"] == "peft"
        assert card.text.lstrip().startswith("# alice/fundus-fr\n")
    finally:
        shutil.rmtree(folder)


def test_predictions_are_shared_only_for_synthetic_data_unless_asked(run_dir, tmp_path):
    real_run = make_run(tmp_path, "fundus-real", data="/data/FairVLMed")
    assert "predictions.csv" not in files_under(hub.prepare_upload(real_run, dest=tmp_path / "a"))
    assert "predictions.csv" in files_under(hub.prepare_upload(real_run, with_predictions=True, dest=tmp_path / "b"))
    assert "predictions.csv" not in files_under(
        hub.prepare_upload(run_dir, with_predictions=False, dest=tmp_path / "c")
    )


def test_push_refuses_pickle_weights_and_incomplete_runs(tmp_path):
    run = make_run(tmp_path, "fundus-vanilla", method="vanilla")
    (run / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(hub.HubError) as err:
        hub.prepare_upload(run)
    assert str(err.value) == hub.PICKLE_FILES.format(where=run / "adapter", files="adapter_model.bin")

    (run / "adapter" / "adapter_model.bin").unlink()
    (run / "eval.json").unlink()
    with pytest.raises(hub.HubError) as err:
        hub.prepare_upload(run)
    assert str(err.value) == f"{run} is not a complete run: missing eval.json"


def test_push_without_token_stops_before_the_network(run_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "inference.hub", "push", str(run_dir), "--repo-id", "alice/fundus-fr"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == f"error: {hub.NO_TOKEN}\n"
    assert result.stdout == ""


def test_token_is_not_a_command_line_flag(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        hub.main(["push", str(run_dir), "--repo-id", "alice/x", "--token", "hf_secret"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --token hf_secret" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- pull
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft 0.21 on transformers 5
def test_pull_validates_and_publishes_a_loadable_run(offline_copy, run_dir, tmp_path):
    runs = tmp_path / "runs"
    path = hub.pull("alice/fundus-fr", runs_dir=runs, revision="v1")

    assert offline_copy == [{"repo_id": "alice/fundus-fr", "repo_type": "model", "revision": "v1"}]
    assert path == runs / "fundus-fr"
    assert files_under(path) == RUN_FILES  # no .bin, no notes.txt, no .gitattributes, no .cache
    assert sorted(p.name for p in runs.iterdir()) == ["fundus-fr"]  # staging folder gone
    assert [r.run_id for r in list_runs(runs)] == ["fundus-fr"]
    assert read_run(path).config == read_run(run_dir).config

    # The pulled adapter gives the original's logits, through FairDx and through plain PEFT.
    image = Image.new("RGB", (64, 64), (200, 120, 40))
    logits = []
    for adapter_dir in (run_dir / "adapter", path / "adapter"):
        clf = load_classifier("assets/backbones/tiny-qwen2.5-vl", task="fundus")
        load_adapter(clf, adapter_dir)
        with torch.no_grad():
            logits.append(clf(clf.preprocess([image])))
    assert torch.equal(logits[0], logits[1])
    assert logits[0].shape == (1, 2)

    from peft import PeftModel
    from transformers import AutoModel

    base = AutoModel.from_pretrained(resolve_backbone("assets/backbones/tiny-qwen2.5-vl"))
    model = PeftModel.from_pretrained(base, path / "adapter")
    assert sum("lora_A" in name for name, _ in model.named_parameters()) == 8


def test_pull_keeps_an_existing_run(offline_copy, tmp_path):
    runs = tmp_path / "runs"
    hub.pull("alice/fundus-fr", runs_dir=runs)
    with pytest.raises(hub.HubError) as err:
        hub.pull("alice/fundus-fr", runs_dir=runs)
    assert str(err.value) == hub.RUN_EXISTS.format(name="fundus-fr", runs_dir=runs)
    assert hub.pull("alice/fundus-fr", runs_dir=runs, name="fundus-fr-2") == runs / "fundus-fr-2"
    assert len(offline_copy) == 2
    with pytest.raises(hub.HubError) as err:
        hub.pull("alice/fundus-fr", runs_dir=runs, name=".hidden")
    assert str(err.value) == hub.BAD_NAME.format(name=".hidden")


def test_pull_refuses_a_repository_that_is_not_a_run(offline_copy, remote, tmp_path):
    (remote / "adapter" / "adapter_model.safetensors").unlink()
    (remote / "config.json").write_text('{"task": "fundus"}')
    runs = tmp_path / "runs"
    with pytest.raises(hub.HubError) as err:
        hub.pull("alice/fundus-fr", runs_dir=runs)
    problems = "missing adapter/adapter_model.safetensors; config.json has no 'method', 'backbone'"
    assert str(err.value) == hub.NOT_A_RUN.format(repo_id="alice/fundus-fr", problems=problems)
    assert list(runs.iterdir()) == []  # neither the run nor its staging folder


def test_snapshot_with_pickle_files_is_refused(remote):
    assert hub.validate_snapshot(remote) == [hub.PICKLE_FILES.format(where="it", files="adapter/optimizer.bin")]
    (remote / "adapter" / "optimizer.bin").unlink()
    assert hub.validate_snapshot(remote) == []


def test_pull_without_predictions_is_pulled_with_a_note(offline_copy, remote, tmp_path, capsys):
    (remote / "predictions.csv").unlink()
    assert hub.main(["pull", "alice/fundus-fr", "--runs-dir", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    assert out == f"pulled alice/fundus-fr into {tmp_path / 'runs' / 'fundus-fr'}\n"
    assert err == hub.NO_PREDICTIONS_NOTE.format(repo_id="alice/fundus-fr") + "\n"


def test_pull_defaults_to_the_apps_runs_dir(offline_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRDX_RUNS_DIR", str(tmp_path / "app-runs"))
    assert hub.pull("alice/fundus-fr") == tmp_path / "app-runs" / "fundus-fr"


# ----------------------------------------------------------------------------------------- errors
def _http_error(status: int) -> HfHubHTTPError:
    response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError(f"{status} Client Error\nmore detail", response=response)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OfflineModeIsEnabled("offline"), hub.OFFLINE),
        (
            httpx2.ConnectError("[Errno -2] Name or service not known"),
            hub.UNREACHABLE.format(reason="[Errno -2] Name or service not known"),
        ),
        (
            LocalEntryNotFoundError("Got: ConnectError: timed out\nAn error happened"),
            hub.UNREACHABLE.format(reason="ConnectError: timed out"),
        ),
        (_http_error(401), hub.REFUSED.format(repo_id="alice/x", status=401)),
        (_http_error(403), hub.REFUSED.format(repo_id="alice/x", status=403)),
        (_http_error(500), hub.HUB_ERROR.format(repo_id="alice/x", status=500, reason="500 Client Error")),
        (HFValidationError("bad"), hub.BAD_REPO_ID.format(repo_id="alice/x")),
        (
            OSError(28, "No space left on device"),
            hub.TRANSFER_FAILED.format(repo_id="alice/x", reason="OSError: [Errno 28] No space left on device"),
        ),
    ],
)
def test_hub_errors_become_one_line(error, expected):
    message = hub.describe_hub_error(error, repo_id="alice/x")
    assert message == expected
    assert "\n" not in message


def test_pull_offline_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "inference.hub", "pull", "alice/fundus-fr", "--runs-dir", str(tmp_path / "runs")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == f"error: {hub.OFFLINE}\n"
    assert list((tmp_path / "runs").iterdir()) == []


def test_bad_repo_id_is_refused_before_anything_else(tmp_path):
    with pytest.raises(hub.HubError) as err:
        hub.pull("not a repo!", runs_dir=tmp_path)
    assert str(err.value) == hub.BAD_REPO_ID.format(repo_id="not a repo!")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- network
@pytest.mark.skipif(
    not os.environ.get("FAIRDX_HUB_TEST_REPO"),
    reason="network test: set FAIRDX_HUB_TEST_REPO=USER/NAME (a repository the token in HF_TOKEN may write) "
    "to push a run to the real Hub and pull it back",
)
def test_push_and_pull_round_trip_on_the_hub(run_dir, tmp_path):
    repo_id = os.environ["FAIRDX_HUB_TEST_REPO"]
    url = hub.push(run_dir, repo_id, private=True)
    assert repo_id in url
    path = hub.pull(repo_id, runs_dir=tmp_path / "runs")
    assert files_under(path) == RUN_FILES
    assert json.loads((path / "config.json").read_text()) == read_run(run_dir).config
