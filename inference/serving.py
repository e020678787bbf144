"""`ModelPool`: one base model per backbone in memory, each run's adapter hot-swapped onto it.

docs/architecture.md, "Serving": switching the Diagnose tab from one run to another must cost milliseconds, not a
model load. So the pool keeps one `Classifier` per base (backbone, dtype) and loads each run's PEFT
adapter onto it once, under its own adapter name (`training.backbones.load_adapter`); later requests
for that run only `set_adapter`. What else a run's predictions depend on is switched per request: the
task (`clf.set_task`: question / class prompts) and the image pixel budget the run was trained with
(`clf.set_image_budget`: Qwen2.5-VL loads one image processor per budget and shares the weights; a family
without a pixel budget, CLIP, refuses a run that names one).

    pool = ModelPool(max_adapters_per_base=8)
    diagnosis = pool.predict(image, read_run("runs/fundus-fr"))     # -> inference.diagnosis.Diagnosis

Threads. Gradio runs handlers in worker threads. Each base has a lock held from `set_task` /
`set_adapter` through the forward pass, so two runs sharing a base never interleave; different bases
run in parallel.

Memory. With `max_adapters_per_base` set, the least recently used adapter of a base is deleted
(`PeftModel.delete_adapter`) when one more is loaded, so a public server's memory stays bounded. A
prediction counts as memory in use (`inference.memory.in_use`): after a burst, what its preprocessing
freed is given back to the operating system.

Untrusted adapters. Adapters load from safetensors only (never pickle) and `trust_remote_code` is never
passed. Before anything touches the model, `check_adapter` reads the adapter's config and the tensor
*headers* (not the data) and checks them against the base: LoRA, recorded base model, target modules,
every tensor's shape, the head. A corrupt or mismatched adapter raises `AdapterError` with one of the
messages below and the base stays exactly as it was, still serving its other adapters. If loading
fails anyway after those checks, the half-loaded adapter is deleted again; if the base cannot be
restored to a known state it is dropped and reloaded on the next request (never served half-wrapped).
A file that changes on disk after it was loaded (same run folder, new mtime or size) is loaded again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, get_args

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from PIL import Image
from safetensors import safe_open
from torch import Tensor, nn

from inference import memory, saliency
from inference.diagnosis import Diagnosis
from training import ood, rundir
from training.backbones import Classifier, load_adapter, load_classifier, resolve_backbone, set_adapter
from training.backbones.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_WEIGHTS
from training.config import DType
from training.rundir import RunInfo, read_run

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- messages
ADAPTER_DIR_MISSING = "run '{run_id}' has no adapter folder; the run is incomplete — train it again"
ADAPTER_NO_SAFETENSORS = (
    "run '{run_id}': adapter/adapter_model.safetensors is missing; FairDx loads adapters from safetensors "
    "only — copy the run again"
)
ADAPTER_PICKLE = (
    "run '{run_id}': the adapter is a pickle file ({name}); FairDx never loads pickle files — convert it "
    "to adapter_model.safetensors with safetensors.torch.save_file"
)
ADAPTER_CONFIG_BAD = "run '{run_id}': adapter/adapter_config.json cannot be read ({reason}); copy the run again"
ADAPTER_NOT_LORA = "run '{run_id}': the adapter is a {peft_type} adapter; FairDx serves LoRA adapters only"
ADAPTER_WRONG_BASE = (
    "run '{run_id}': the adapter was trained on base model '{adapter_base}', but the run's config.json names "
    "'{backbone}'; the adapter belongs to another run"
)
ADAPTER_TARGETS = (
    "run '{run_id}': the adapter's target_modules select {found} modules of base model '{backbone}', not the "
    "{expected} modules a {family} classifier puts LoRA on; the adapter was not made by FairDx for this base"
)
ADAPTER_CORRUPT = "run '{run_id}': adapter/{file} is truncated or corrupt ({reason}); copy the run again"
ADAPTER_UNEXPECTED_TENSOR = (
    "run '{run_id}': adapter tensor '{name}' does not belong to a LoRA module of base model '{backbone}'; "
    "the adapter was trained on another base model"
)
ADAPTER_SHAPE = (
    "run '{run_id}': adapter tensor '{name}' has shape {shape}, but base model '{backbone}' needs {expected}; "
    "the adapter was trained on another base model"
)
ADAPTER_INCOMPLETE = (
    "run '{run_id}': the adapter has no LoRA weights for {n} of its {total} modules (first: '{module}'); "
    "the file is incomplete — copy the run again"
)
HEAD_MISSING = "run '{run_id}': adapter/head.safetensors is missing; a {family} adapter needs its classification head"
HEAD_SHAPE = (
    "run '{run_id}': adapter/head.safetensors holds {found}, but base model '{backbone}' needs {expected}; "
    "the head was trained on another base model"
)
HEAD_TASK = "run '{run_id}': the head was trained for task '{head_task}', but the run's config.json says '{task}'"
ADAPTER_LOAD_FAILED = "run '{run_id}': the adapter could not be loaded ({reason}); the other adapters keep serving"
BASE_UNAVAILABLE = (
    "run '{run_id}': base model '{backbone}' could not be loaded ({reason}); on an offline server download it "
    "first, or train the run on a local checkpoint"
)
BAD_IMAGE_BUDGET = "run '{run_id}': its image budget (min_pixels, max_pixels) = {budget} cannot be used ({reason})"
BAD_DTYPE = "run '{run_id}': config.json has dtype '{dtype}'; FairDx serves {choices}"
NO_IMAGES = "predict_batch needs at least one image"
NOT_AN_IMAGE = "expected a PIL.Image.Image, got {type}; read uploads with inference.images.load_image"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class ServingError(ValueError):
    """A run cannot be served; the message says why and what to do."""


class AdapterError(ServingError):
    """A run's adapter is missing, corrupt or made for another base; the pool keeps serving the others."""


# ------------------------------------------------------------------------------------- pool state
class BaseKey(NamedTuple):
    """Which weights a run needs: runs with the same key share one base model in memory."""

    backbone: str  # resolved checkpoint: absolute folder, or the hub id
    dtype: str

    @classmethod
    def of(cls, run: RunInfo) -> BaseKey:
        dtype = run.settings.dtype
        if dtype not in get_args(DType):
            raise ServingError(BAD_DTYPE.format(run_id=run.run_id, dtype=dtype, choices=", ".join(get_args(DType))))
        return cls(_canonical(run.backbone), dtype)


def image_budget(run: RunInfo) -> tuple[int | None, int | None]:
    """The (min_pixels, max_pixels) a run was trained and evaluated with (None: the checkpoint's)."""
    return run.settings.min_pixels, run.settings.max_pixels


Stamp = tuple[tuple[int, int] | None, ...]  # (mtime_ns, size) per adapter file, None where it is missing


@dataclass(frozen=True)
class _Loaded:
    name: str  # PEFT adapter name
    run_id: str
    stamp: Stamp  # (mtime_ns, size) of the adapter files when loaded


@dataclass(eq=False)
class _Base:
    """One base model and the adapters loaded on it; every field is guarded by `lock`."""

    key: BaseKey
    lock: threading.Lock = field(default_factory=threading.Lock)
    clf: Classifier | None = None
    lora_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # LoRA module -> (in, out)
    linear_names: tuple[str, ...] = ()  # every nn.Linear of the pristine base (what target_modules can select)
    head_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    adapters: OrderedDict[str, _Loaded] = field(default_factory=OrderedDict)  # run path -> adapter, LRU first
    active: str | None = None

    def reset(self) -> None:
        """Forget the model: the next request loads the base again."""
        self.clf, self.active = None, None
        self.adapters.clear()

    def loaded_clf(self) -> Classifier:
        """The base model; only called once `ModelPool._load_base` has put it there."""
        if self.clf is None:
            raise RuntimeError(f"serving: base {self.key.backbone} is not loaded (the pool's bookkeeping is broken)")
        return self.clf


class ModelPool:
    """Base models kept in memory, one per `BaseKey`; run adapters loaded once and swapped in.

    max_adapters_per_base: keep at most this many adapters per base (least recently used deleted
    first); None keeps every adapter loaded.
    device: where bases live (default: CUDA if available, else CPU).
    """

    def __init__(self, *, max_adapters_per_base: int | None = None, device: str | torch.device | None = None) -> None:
        if max_adapters_per_base is not None and max_adapters_per_base < 1:
            raise ValueError(f"max_adapters_per_base must be at least 1 (or None), got {max_adapters_per_base}")
        self.max_adapters_per_base = max_adapters_per_base
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.base_loads = 0  # how many times a base model was loaded from disk (tests, bench)
        self._bases: dict[BaseKey, _Base] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------- public
    def predict(self, image: Image.Image, run: RunInfo | str | Path) -> Diagnosis:
        """Diagnose one image with `run`'s adapter. Takes the image only: demographics are never an input."""
        return self.predict_batch([image], run)[0]

    def predict_batch(self, images: Sequence[Image.Image], run: RunInfo | str | Path) -> list[Diagnosis]:
        """Diagnose several images in one forward pass; every `Diagnosis` carries the batch's latency and,
        when the run has an out-of-distribution model (training.ood), whether each image looks like its
        training data."""
        start = time.perf_counter()
        run = _as_run(run)
        ood_model = _ood_model(run)
        logits, embeddings = self._forward(images, run, embed=ood_model is not None)
        latency_ms = (time.perf_counter() - start) * 1000.0
        diagnoses = [
            Diagnosis.from_logits(row, run_config=run.config, run_id=run.run_id, latency_ms=latency_ms)
            for row in logits
        ]
        if ood_model is None or embeddings is None:
            return diagnoses
        distances = ood_model.distance(embeddings.numpy())
        return [
            dataclasses.replace(
                d,
                in_distribution=bool(distance <= ood_model.threshold),
                ood_score=float(distance),
                ood_threshold=ood_model.threshold,
            )
            for d, distance in zip(diagnoses, distances, strict=True)
        ]

    def logits(self, images: Sequence[Image.Image], run: RunInfo | str | Path) -> Tensor:
        """Class logits [B, 2] (float32, CPU) of `images` under `run`'s adapter."""
        return self._forward(images, run, embed=False)[0]

    def _forward(
        self, images: Sequence[Image.Image], run: RunInfo | str | Path, *, embed: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Logits [B, 2] and, with `embed`, the embeddings ``Classifier.embed`` [B, D] (float32, CPU)."""
        images = list(images)
        if not images:
            raise ValueError(NO_IMAGES)
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(NOT_AN_IMAGE.format(type=type(image).__name__))
        run = _as_run(run)
        base = self._base(run)
        with memory.in_use(), base.lock:  # the processor's arrays go back to the OS after a burst
            clf = self._activate(base, run)
            with torch.inference_mode():
                batch = clf.preprocess(images)
                logits = clf(batch).cpu()
                return logits, clf.embed(batch).float().cpu() if embed else None

    def explain(
        self, image: Image.Image, run: RunInfo | str | Path, *, steps: int = saliency.DEFAULT_STEPS
    ) -> saliency.Attribution:
        """Integrated Gradients of `run`'s answer for one image (inference.saliency), with the base locked:
        `steps` forward and backward passes that change nothing in the model."""
        if not isinstance(image, Image.Image):
            raise TypeError(NOT_AN_IMAGE.format(type=type(image).__name__))
        saliency.check_steps(steps)
        run = _as_run(run)
        base = self._base(run)
        with memory.in_use(), base.lock:
            return saliency.integrated_gradients(self._activate(base, run), image, steps=steps)

    def activate(self, run: RunInfo | str | Path) -> None:
        """Load `run`'s base and adapter if needed and make it the active one (warm-up; switch timing)."""
        run = _as_run(run)
        base = self._base(run)
        with base.lock:
            self._activate(base, run)

    def classifier(self, run: RunInfo | str | Path) -> Classifier | None:
        """The base model that serves `run`, if it is loaded (for inspection; do not run it unlocked)."""
        run = _as_run(run)
        with self._lock:
            base = self._bases.get(BaseKey.of(run))
        return None if base is None else base.clf

    def loaded_adapters(self) -> dict[BaseKey, list[str]]:
        """Run ids of the adapters loaded on each base, least recently used first."""
        with self._lock:
            bases = list(self._bases.values())
        result = {}
        for base in bases:
            with base.lock:
                if base.clf is not None:
                    result[base.key] = [loaded.run_id for loaded in base.adapters.values()]
        return result

    # --------------------------------------------------------------------------------- internals
    def _base(self, run: RunInfo) -> _Base:
        key = BaseKey.of(run)
        with self._lock:
            if key not in self._bases:
                self._bases[key] = _Base(key)
            return self._bases[key]

    def _activate(self, base: _Base, run: RunInfo) -> Classifier:
        """With base.lock held: base loaded, run's task set, run's adapter loaded and active."""
        clf = base.clf if base.clf is not None else self._load_base(base, run)
        if clf.task.name != run.task:
            clf.set_task(run.task)
        budget = image_budget(run)
        if budget != clf.image_budget:
            self._set_image_budget(base, run, budget)
        key, stamp = str(run.path.resolve()), _stamp(run.path / rundir.ADAPTER)
        loaded = base.adapters.get(key)
        if loaded is None or loaded.stamp != stamp:
            self._load_adapter(base, run, key, stamp)
        else:
            base.adapters.move_to_end(key)
            if base.active != loaded.name:
                set_adapter(clf, loaded.name)
                base.active = loaded.name
        return base.loaded_clf()

    def _load_base(self, base: _Base, run: RunInfo) -> Classifier:
        budget = image_budget(run)
        try:
            clf = load_classifier(
                run.backbone,
                task=run.task,
                dtype=getattr(torch, base.key.dtype),
                min_pixels=budget[0],
                max_pixels=budget[1],
            )
        except (OSError, ValueError) as err:
            raise ServingError(BASE_UNAVAILABLE.format(run_id=run.run_id, backbone=run.backbone, reason=err)) from err
        clf.to(self.device).eval()
        linear = {name: m for name, m in clf.hf_model.named_modules() if isinstance(m, nn.Linear)}
        family_targets = _selected(LoraConfig(target_modules=clf.lora_target_modules), linear)
        base.lora_shapes = {name: (linear[name].in_features, linear[name].out_features) for name in family_targets}
        base.linear_names = tuple(linear)
        base.head_shapes = {name: tuple(t.shape) for name, t in clf.head_state_dict().items()}
        base.clf, base.active = clf, None
        base.adapters.clear()
        with self._lock:
            self.base_loads += 1
        log.info("serving: loaded base %s", clf.describe())
        return clf

    def _set_image_budget(self, base: _Base, run: RunInfo, budget: tuple[int | None, int | None]) -> None:
        """Preprocess under `run`'s pixel budget from now on (the classifier says whether it has one)."""
        try:
            base.loaded_clf().set_image_budget(*budget)
        except (OSError, ValueError) as err:
            raise ServingError(BAD_IMAGE_BUDGET.format(run_id=run.run_id, budget=budget, reason=err)) from err

    def _load_adapter(self, base: _Base, run: RunInfo, key: str, stamp: Stamp) -> None:
        adapter_dir = run.path / rundir.ADAPTER
        clf = base.loaded_clf()
        check_adapter(
            run, clf, lora_shapes=base.lora_shapes, linear_names=base.linear_names, head_shapes=base.head_shapes
        )
        name = _adapter_name(run.run_id, {loaded.name for loaded in base.adapters.values()})
        stale = base.adapters.get(key)
        try:
            load_adapter(clf, adapter_dir, adapter_name=name)
        except Exception as err:  # checked above, so this is unexpected: restore the base, keep serving
            self._roll_back(base, name)
            reason = f"{type(err).__name__}: {err}"
            raise AdapterError(ADAPTER_LOAD_FAILED.format(run_id=run.run_id, reason=reason)) from err
        clf.eval()
        base.active = name
        if stale is not None:
            self._delete(base, key)
        base.adapters[key] = _Loaded(name, run.run_id, stamp)
        while self.max_adapters_per_base and len(base.adapters) > self.max_adapters_per_base:
            self._delete(base, next(iter(base.adapters)))
        log.info("serving: adapter of run %s loaded as %r (%d on this base)", run.run_id, name, len(base.adapters))

    def _delete(self, base: _Base, key: str) -> None:
        """Remove one loaded adapter (never the active one) from the base and the bookkeeping."""
        loaded = base.adapters.pop(key)
        clf = base.loaded_clf()
        clf.model.delete_adapter(loaded.name)
        clf.adapter_heads.pop(loaded.name, None)

    def _roll_back(self, base: _Base, name: str) -> None:
        """Undo a failed load_adapter; if the base cannot be put back in a known state, drop it."""
        clf = base.loaded_clf()
        clf.adapter_heads.pop(name, None)
        try:
            if isinstance(clf.model, PeftModel) and base.adapters:
                if name in clf.model.peft_config:
                    clf.model.delete_adapter(name)
                if _lora_adapter_names(clf) != {loaded.name for loaded in base.adapters.values()}:
                    raise RuntimeError("LoRA layers left behind")
                if base.active is None:
                    raise RuntimeError("no active adapter to switch back to")
                set_adapter(clf, base.active)
                clf.eval()
                return
        except Exception:
            log.exception("serving: could not restore base %s after a failed adapter load", base.key.backbone)
        log.warning(
            "serving: dropping base %s after a failed adapter load; it reloads on the next request", base.key.backbone
        )
        base.reset()


# ------------------------------------------------------------------------------------ the checks
def check_adapter(
    run: RunInfo,
    clf: Classifier,
    *,
    lora_shapes: dict[str, tuple[int, int]],
    linear_names: Sequence[str],
    head_shapes: dict[str, tuple[int, ...]],
) -> None:
    """Raise `AdapterError` unless `run`'s adapter loads cleanly onto `clf`; reads headers, changes nothing.

    lora_shapes: (in, out) features of each module the family puts LoRA on, in the pristine base.
    linear_names: every nn.Linear of the pristine base; head_shapes: the head tensors the family needs.
    """
    run_id, adapter_dir = run.run_id, run.path / rundir.ADAPTER
    if not adapter_dir.is_dir():
        raise AdapterError(ADAPTER_DIR_MISSING.format(run_id=run_id))
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise AdapterError(ADAPTER_PICKLE.format(run_id=run_id, name=pickles[0]))
        raise AdapterError(ADAPTER_NO_SAFETENSORS.format(run_id=run_id))
    config = _adapter_config(run_id, adapter_dir)
    recorded = config.get("base_model_name_or_path")
    if recorded and _canonical(recorded) != _canonical(run.backbone):
        raise AdapterError(ADAPTER_WRONG_BASE.format(run_id=run_id, adapter_base=recorded, backbone=run.backbone))
    try:
        lora_config = LoraConfig(**{k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__})
    except (TypeError, ValueError) as err:
        raise AdapterError(ADAPTER_CONFIG_BAD.format(run_id=run_id, reason=err)) from None
    targets = _selected(lora_config, linear_names)
    if set(targets) != set(lora_shapes):
        raise AdapterError(
            ADAPTER_TARGETS.format(
                run_id=run_id, found=len(targets), backbone=run.backbone, expected=len(lora_shapes), family=clf.family
            )
        )
    _check_lora_tensors(run, adapter_dir / ADAPTER_WEIGHTS, lora_config, lora_shapes)
    if head_shapes:
        _check_head(run, adapter_dir / HEAD_WEIGHTS, clf, head_shapes)


def _adapter_config(run_id: str, adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(ADAPTER_CONFIG_BAD.format(run_id=run_id, reason="file missing")) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(ADAPTER_CONFIG_BAD.format(run_id=run_id, reason=err)) from None
    if not isinstance(config, dict):
        raise AdapterError(ADAPTER_CONFIG_BAD.format(run_id=run_id, reason="not a JSON object"))
    if config.get("peft_type") != "LORA":
        raise AdapterError(ADAPTER_NOT_LORA.format(run_id=run_id, peft_type=config.get("peft_type")))
    return config


def _check_lora_tensors(run: RunInfo, path: Path, config: LoraConfig, lora_shapes: dict[str, tuple[int, int]]) -> None:
    """Every tensor is lora_A [r, in] / lora_B [out, r] of a LoRA module, and every module has both."""
    shapes = _tensor_shapes(run.run_id, path)
    found: dict[str, set[str]] = {}
    for name, shape in shapes.items():
        match = LORA_KEY.match(name)
        if match is None or match["module"] not in lora_shapes:
            raise AdapterError(ADAPTER_UNEXPECTED_TENSOR.format(run_id=run.run_id, name=name, backbone=run.backbone))
        module, part = match["module"], match["part"]
        in_features, out_features = lora_shapes[module]
        rank = config.r if not config.rank_pattern else shape[0 if part == "A" else -1]
        expected = [rank, in_features] if part == "A" else [out_features, rank]
        if shape != expected:
            raise AdapterError(
                ADAPTER_SHAPE.format(
                    run_id=run.run_id, name=name, shape=shape, backbone=run.backbone, expected=expected
                )
            )
        found.setdefault(module, set()).add(part)
    incomplete = [m for m in lora_shapes if found.get(m) != {"A", "B"}]
    if incomplete:
        raise AdapterError(
            ADAPTER_INCOMPLETE.format(
                run_id=run.run_id, n=len(incomplete), total=len(lora_shapes), module=incomplete[0]
            )
        )


def _check_head(run: RunInfo, path: Path, clf: Classifier, head_shapes: dict[str, tuple[int, ...]]) -> None:
    if not path.is_file():
        raise AdapterError(HEAD_MISSING.format(run_id=run.run_id, family=clf.family))
    shapes = _tensor_shapes(run.run_id, path)
    expected = {name: list(shape) for name, shape in head_shapes.items()}
    if shapes != expected:
        raise AdapterError(
            HEAD_SHAPE.format(
                run_id=run.run_id, found=_describe(shapes), backbone=run.backbone, expected=_describe(expected)
            )
        )
    with safe_open(str(path), framework="pt") as f:
        head_task = (f.metadata() or {}).get("task")
    if head_task is not None and head_task != run.task:
        raise AdapterError(HEAD_TASK.format(run_id=run.run_id, head_task=head_task, task=run.task))


def _tensor_shapes(run_id: str, path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header; a truncated file fails here (header vs file size)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            # safe_open has keys() but is not iterable, so `in f` would fail (ruff assumes a dict)
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except Exception as err:
        raise AdapterError(ADAPTER_CORRUPT.format(run_id=run_id, file=path.name, reason=err)) from None


# ------------------------------------------------------------------------------------------ helpers
@functools.lru_cache(maxsize=64)
def _ood_file(path: str, mtime_ns: int) -> ood.OodModel:
    return ood.OodModel.load(path)


def _ood_model(run: RunInfo) -> ood.OodModel | None:
    """The run's out-of-distribution model (ood.npz, cached until the file changes), None without one."""
    path = run.path / ood.FILE
    try:
        return _ood_file(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError, KeyError):
        return None


def _as_run(run: RunInfo | str | Path) -> RunInfo:
    return run if isinstance(run, RunInfo) else read_run(run)


def _canonical(backbone: str) -> str:
    """A local checkpoint as its absolute folder (however the run spelled it); a hub id as it is."""
    resolved = Path(resolve_backbone(str(backbone)))
    return str(resolved.resolve()) if resolved.is_dir() else str(backbone)


def _stamp(adapter_dir: Path) -> Stamp:
    """(mtime_ns, size) of the adapter files, so a run rewritten on disk is loaded again."""
    stamp: list[tuple[int, int] | None] = []
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_WEIGHTS):
        try:
            st = (adapter_dir / name).stat()
            stamp.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def _selected(config: LoraConfig, names) -> list[str]:
    """The module names PEFT would put LoRA on under `config` (its own matching rules).

    `check_target_module_exists` returns something true (True, a re.Match) for a target and something false
    (False, None, or PEFT's falsy marker of an excluded module) otherwise; its truth value is the answer.
    """
    return [name for name in names if check_target_module_exists(config, name)]


def _adapter_name(run_id: str, taken: set[str]) -> str:
    """A PEFT adapter name for the run: its id where PEFT allows it (no dots), unique on this base."""
    stem = re.sub(r"[^0-9A-Za-z_-]", "_", run_id) or "run"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def _lora_adapter_names(clf: Classifier) -> set[str]:
    """Adapter names present in the LoRA layers (after a rollback they must equal the pool's bookkeeping)."""
    names: set[str] = set()
    for module in clf.hf_model.modules():
        if isinstance(module, LoraLayer):
            names |= set(module.lora_A.keys())
    return names


def _describe(shapes: dict[str, list[int]]) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in sorted(shapes.items())) or "no tensors"
