"""Deployment settings of the app, read once from the environment (docs/architecture.md "Scale", issue 5).

The operator decides what a visitor may do; the browser only ever picks *names* from lists built
here, so a client can never make the server read a path it chose. Every variable is optional:

    FAIRDX_RUNS_DIR           where user runs and the job database live (default: runs/)
    FAIRDX_STUDIO             on | off. Default: on locally, off on a Hugging Face Space unless the owner
                              sets FAIRDX_STUDIO=on; a Space then requires sign-in. A Space is detected
                              as Gradio detects it (gradio.utils.get_space): SYSTEM=spaces and SPACE_ID
                              set, so a stray SPACE_ID alone does not make a local server a Space.
    FAIRDX_MAX_JOBS           training jobs running at once (default 1: one GPU job at a time)
    FAIRDX_MAX_QUEUE          jobs allowed to wait (default 10; "none" = unbounded)
    FAIRDX_MAX_JOBS_PER_USER  queued + running jobs per user (default: unlimited locally, 1 on a Space)
    FAIRDX_MAX_SWEEP          λ values in one sweep (default 5)
    FAIRDX_MAX_EPOCHS, FAIRDX_MAX_SAMPLES, FAIRDX_MAX_LORA_R
                              server-side caps on the Studio form (default: none locally; 3, 2000 and
                              32 on a Space; "none" removes a cap)
    FAIRDX_DATASETS           the datasets the Studio offers, separated by ';' (commas belong to synth
                              specs): "synth:fundus; glaucoma=/data/fairvlmed". "name=folder" shows only
                              the name; an unnamed folder shows its last path component.
                              Default: synth:fundus; synth:skin
    FAIRDX_BACKBONES          the base models the Studio offers, same syntax; "auto" = the embedded
                              default of the task. Default: auto plus the two embedded checkpoints.
    FAIRDX_AUTH               "user:password" (several separated by ';'): HTTP login for the whole app
                              (not used on a Space, where the Studio uses Hugging Face sign-in)
    FAIRDX_COMPARE_BOOTSTRAP  bootstrap resamples behind the Compare tab's intervals (default 1000)
    FAIRDX_MAX_ADAPTERS       adapters kept loaded per base model (default 8)
    FAIRDX_WARMUP             on | off: load the default adapter in the background at start (default on)

Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which Gradio reads itself.
`Settings.from_env` raises one `SettingsError` naming every bad variable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

from training.data_spec import REPO_ROOT, SYNTH_PREFIX, data_dir, parse_synth
from training.embedded import EMBEDDED_BACKBONES  # not training.backbones: that imports torch
from training.rundir import DEMO_RUNS_DIR
from training.synth import CONFIG_NAME as SYNTH_CONFIG_NAME

AUTO_BACKBONE = "auto"
DEFAULT_DATASETS = "synth:fundus; synth:skin"
DEFAULT_BACKBONES = "; ".join([AUTO_BACKBONE] + [f"{Path(p).name}={p}" for p in EMBEDDED_BACKBONES.values()])
DEFAULT_MAX_QUEUE = 10
DEFAULT_MAX_SWEEP = 5
DEFAULT_COMPARE_BOOTSTRAP = 1000
DEFAULT_MAX_ADAPTERS = 8
SPACE_CAPS = {"epochs": 3, "max_samples": 2000, "lora_r": 32}  # a cpu-basic Space finishes such a job in minutes
SPACE_MAX_JOBS_PER_USER = 1
LOCAL_OWNER = "local"
SEPARATOR = re.compile(r"[;\n]")
NAMED = re.compile(r"^\s*(?P<name>[\w .()-]+?)\s*=\s*(?P<value>.+?)\s*$")  # a name never holds ':' or '/'

ERR_HEADER = "invalid FairDx settings ({n} problem{s}):"
ERR_SWITCH = "{var} must be on or off (got {value!r})"
ERR_WHOLE = "{var} must be a whole number ≥ {minimum}{or_none} (got {value!r})"
ERR_EMPTY_LIST = "{var} names no {what}; list at least one, separated by ';'"
ERR_DUPLICATE = "{var} names '{name}' twice; give each entry its own name (name=value)"
ERR_AUTH = "FAIRDX_AUTH must be user:password pairs separated by ';' (got an entry without ':')"

# Messages for visitors of the Studio.
SIGN_IN_REQUIRED = (
    "Sign in with Hugging Face (button at the top of the Studio) to launch, cancel or resume training jobs."
)
NOT_YOUR_JOB = "job '{job_id}' belongs to another user; you can cancel or resume only your own jobs"
STUDIO_DISABLED = (
    "The Studio (training in the browser) is off on this deployment. Its owner can turn it on with the "
    "environment variable FAIRDX_STUDIO=on; training from the command line works as always: "
    "`python -m training.train --help`."
)


class SettingsError(ValueError):
    """Raised with every problem of the environment at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(
            "\n".join([ERR_HEADER.format(n=n, s="" if n == 1 else "s")] + [f"  - {p}" for p in self.problems])
        )


class StudioAccessError(PermissionError):
    """The visitor may not do this in the Studio (not signed in, not their job); the message says why."""


@dataclass(frozen=True)
class Settings:
    """What this deployment allows; built by `from_env`, or directly in tests."""

    runs_dir: Path = Path("runs")
    studio: bool = True
    on_space: bool = False
    max_jobs: int = 1
    max_queue: int | None = DEFAULT_MAX_QUEUE
    max_jobs_per_user: int | None = None
    max_sweep: int = DEFAULT_MAX_SWEEP
    max_epochs: int | None = None
    max_samples: int | None = None
    max_lora_r: int | None = None
    datasets: dict[str, str] = field(default_factory=lambda: parse_named(DEFAULT_DATASETS)[0])
    backbones: dict[str, str | None] = field(default_factory=lambda: _backbone_values(DEFAULT_BACKBONES))
    auth: tuple[tuple[str, str], ...] = ()
    compare_bootstrap: int = DEFAULT_COMPARE_BOOTSTRAP
    max_adapters: int = DEFAULT_MAX_ADAPTERS
    warmup: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default os.environ); one SettingsError lists every bad variable."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        on_space = space_id(env) is not None
        studio = reader.switch("FAIRDX_STUDIO", default=not on_space)
        caps = {
            name: reader.whole(f"FAIRDX_MAX_{name.upper()}", 1, SPACE_CAPS[name] if on_space else None)
            for name in SPACE_CAPS
        }
        datasets = reader.named("FAIRDX_DATASETS", DEFAULT_DATASETS, "datasets")
        backbones = reader.named("FAIRDX_BACKBONES", DEFAULT_BACKBONES, "backbones")
        settings = cls(
            runs_dir=Path(env.get("FAIRDX_RUNS_DIR") or "runs").expanduser(),
            studio=studio,
            on_space=on_space,
            max_jobs=reader.whole("FAIRDX_MAX_JOBS", 1, 1, optional=False),
            max_queue=reader.whole("FAIRDX_MAX_QUEUE", 0, DEFAULT_MAX_QUEUE),
            max_jobs_per_user=reader.whole(
                "FAIRDX_MAX_JOBS_PER_USER", 1, SPACE_MAX_JOBS_PER_USER if on_space else None
            ),
            max_sweep=reader.whole("FAIRDX_MAX_SWEEP", 1, DEFAULT_MAX_SWEEP, optional=False),
            max_epochs=caps["epochs"],
            max_samples=caps["max_samples"],
            max_lora_r=caps["lora_r"],
            datasets=datasets,
            backbones={name: None if value == AUTO_BACKBONE else value for name, value in backbones.items()},
            auth=reader.auth("FAIRDX_AUTH"),
            compare_bootstrap=reader.whole("FAIRDX_COMPARE_BOOTSTRAP", 0, DEFAULT_COMPARE_BOOTSTRAP, optional=False),
            max_adapters=reader.whole("FAIRDX_MAX_ADAPTERS", 1, DEFAULT_MAX_ADAPTERS, optional=False),
            warmup=reader.switch("FAIRDX_WARMUP", default=True),
        )
        if reader.problems:
            raise SettingsError(reader.problems)
        return settings

    @property
    def run_dirs(self) -> tuple[Path, ...]:
        """Where the app looks for runs: the shipped demos, then the user's runs folder."""
        if self.runs_dir.resolve() == DEMO_RUNS_DIR.resolve():
            return (DEMO_RUNS_DIR,)
        return (DEMO_RUNS_DIR, self.runs_dir)

    @property
    def multi_user(self) -> bool:
        """Whether visitors are told apart (a Space with sign-in, or HTTP auth): jobs then have owners."""
        return self.on_space or bool(self.auth)

    def redact(self, text: str) -> str:
        """`text` with this server's absolute paths replaced by what a visitor may see.

        Messages and log lines of the trainer name the runs folder, the data cache and dataset
        folders; a visitor gets 'runs/', 'data/' and the dataset's name instead.
        """
        replacements = {
            str(folder): name for name, folder in self.datasets.items() if not folder.startswith(SYNTH_PREFIX)
        }
        replacements[str(self.runs_dir.resolve())] = "runs"
        replacements[str(data_dir().resolve())] = "data"
        replacements[str(REPO_ROOT)] = "."
        for path in sorted(replacements, key=len, reverse=True):  # longest first: nested folders
            text = text.replace(path, replacements[path])
        return text


def space_id(env: Mapping[str, str]) -> str | None:
    """The Hugging Face Space this server runs in, or None: the rule of `gradio.utils.get_space`.

    It must match Gradio's: Gradio attaches the real OAuth routes only where it sees a Space and mocked
    ones (which need a local Hugging Face login, else start-up fails) wherever a LoginButton appears
    outside one, and the Studio shows a LoginButton exactly on a Space.
    """
    return env.get("SPACE_ID") if env.get("SYSTEM") == "spaces" else None


def synthetic_to_generate(settings: Settings) -> list[str]:
    """The offered synthetic benchmarks not yet in the data cache.

    The app generates them in a separate process at start: generating inside the server would block the
    first Studio submission for seconds and fork the multi-threaded server process (training.synth uses
    a fork pool). A submission meanwhile waits on the generator's file lock (training.data_spec).
    """
    missing = []
    for spec in settings.datasets.values():
        if not spec.startswith(SYNTH_PREFIX):
            continue
        try:
            folder = data_dir() / parse_synth(spec).folder_name
        except ValueError:
            continue  # the form names the bad spec when someone picks it
        if not (folder / SYNTH_CONFIG_NAME).is_file():
            missing.append(spec)
    return missing


GENERATE = (
    "import sys; from training.data_spec import materialize; [materialize(s, progress=False) for s in sys.argv[1:]]"
)


def generate_synthetic(specs: list[str]) -> None:
    """Generate synthetic benchmarks in a plain child process (no threads, no signal handlers to inherit);
    CalledProcessError (with the child's stderr) if it fails."""
    subprocess.run([sys.executable, "-c", GENERATE, *specs], cwd=REPO_ROOT, check=True, capture_output=True, text=True)


def parse_named(text: str) -> tuple[dict[str, str], list[str]]:
    """'a=x; y' -> ({'a': 'x', <name of y>: 'y'}, duplicate names). Unnamed folders show their last part."""
    entries: dict[str, str] = {}
    duplicates = []
    for item in filter(None, (part.strip() for part in SEPARATOR.split(text))):
        match = NAMED.match(item)
        if match:
            name, value = match["name"], match["value"]
        elif item.startswith(SYNTH_PREFIX) or item == AUTO_BACKBONE or _looks_like_hub_id(item):
            name, value = item, item
        else:
            name, value = Path(item).name or item, item
        if name in entries:
            duplicates.append(name)
        entries[name] = value
    return entries, duplicates


def _looks_like_hub_id(item: str) -> bool:
    """'Qwen/Qwen2.5-VL-7B-Instruct': owner/name and not a folder on this machine."""
    return item.count("/") == 1 and not item.startswith((".", "/", "~")) and not Path(item).exists()


def _backbone_values(text: str) -> dict[str, str | None]:
    return {name: None if value == AUTO_BACKBONE else value for name, value in parse_named(text)[0].items()}


class _Reader:
    """Reads variables and collects every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def switch(self, var: str, *, default: bool) -> bool:
        value = self.env.get(var, "").strip().lower()
        if not value:
            return default
        if value in ("on", "true", "1", "yes"):
            return True
        if value in ("off", "false", "0", "no"):
            return False
        self.problems.append(ERR_SWITCH.format(var=var, value=self.env[var]))
        return default

    @overload
    def whole(self, var: str, minimum: int, default: int, *, optional: Literal[False]) -> int: ...

    @overload
    def whole(self, var: str, minimum: int, default: int | None, *, optional: bool = True) -> int | None: ...

    def whole(self, var: str, minimum: int, default: int | None, *, optional: bool = True) -> int | None:
        """A whole number ≥ minimum; `default` when unset or bad (the problem recorded), None for "none"
        unless the variable is required (optional=False, never None then: its default is a number)."""
        value = self.env.get(var, "").strip()
        if not value:
            return default
        if optional and value.lower() == "none":
            return None
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            self.problems.append(
                ERR_WHOLE.format(
                    var=var, minimum=minimum, value=self.env[var], or_none=' or "none"' if optional else ""
                )
            )
            return default
        return number

    def named(self, var: str, default: str, what: str) -> dict[str, str]:
        entries, duplicates = parse_named(self.env.get(var) or default)
        self.problems += [ERR_DUPLICATE.format(var=var, name=name) for name in duplicates]
        if not entries:
            self.problems.append(ERR_EMPTY_LIST.format(var=var, what=what))
            return parse_named(default)[0]
        return entries

    def auth(self, var: str) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in filter(None, (part.strip() for part in SEPARATOR.split(self.env.get(var, "")))):
            user, sep, password = item.partition(":")
            if not sep or not user or not password:
                self.problems.append(ERR_AUTH)
                continue
            pairs.append((user, password))
        return tuple(pairs)


# ---------------------------------------------------------------------- who does what in the Studio
def job_owner(settings: Settings, *, profile_name: str | None = None, username: str | None = None) -> str:
    """The owner recorded with a job: the Hugging Face user on a Space (sign-in required), the HTTP-auth
    user behind FAIRDX_AUTH, else 'local'."""
    if settings.on_space:
        if not profile_name:
            raise StudioAccessError(SIGN_IN_REQUIRED)
        return profile_name
    return username or LOCAL_OWNER


def check_may_control(settings: Settings, owner: str, job_id: str, job_owner_name: str) -> None:
    """On a multi-user deployment a visitor cancels or resumes only their own jobs."""
    if settings.multi_user and owner != job_owner_name:
        raise StudioAccessError(NOT_YOUR_JOB.format(job_id=job_id))
