"""Which weights a backbone name stood for when a run was trained.

A run records its backbone by name or path, and a path can be rebuilt in place
(``python -m training.build_assets`` rewrites ``assets/backbones/``). The fingerprint recorded
beside it (``versions.backbone`` in config.json) lets the bench tell a run trained on the current
weights from one trained on weights that are gone, instead of reusing it by its settings alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUILD_INFO = "fairdx_build.json"  # written by training.build_assets (seeds, pretraining, a sha256 per file)
_CHUNK = 1 << 20


def backbone_fingerprint(name_or_path: str) -> str | None:
    """A short, stable id of the checkpoint's files, or None when it cannot be known without a download.

    `name_or_path` as `resolve_backbone` returns it (a folder, or a hub id):

    - our embedded checkpoints: a hash of the per-file sha256s their ``fairdx_build.json`` records
      (instant; the same bytes give the same id on every machine);
    - a Hugging Face cache snapshot (``.../snapshots/<commit>``): the commit;
    - any other local folder: a hash of every file's bytes (seconds to minutes for a 7B checkpoint,
      once per run);
    - a hub id not in the local cache: None.
    """
    local = Path(name_or_path).expanduser()
    path = local if local.is_dir() else _cached_snapshot(name_or_path)
    if path is None:
        return None
    info = path / BUILD_INFO
    if info.is_file():
        try:
            files = json.loads(info.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            files = None
        if isinstance(files, dict) and files:
            return "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    if path.parent.name == "snapshots":
        return "commit:" + path.name
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub id, if it is in the Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a valid id, or offline: nothing to fingerprint
        return None
