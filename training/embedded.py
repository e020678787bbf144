"""The checkpoints shipped in assets/backbones, by the demo task each serves: constants only.

Kept apart from `training.backbones` (which imports torch, transformers and peft) so that code that only
needs the names, such as `studio.settings`, imports in milliseconds. `training.backbones` re-exports it.
"""

from __future__ import annotations

# The embedded default of each demo task, as the demo runs use them (Gu et al.: a VLM for fundus;
# CMAC-MMD: CLIP for skin). Paths are relative to the repository so runs stay portable.
EMBEDDED_BACKBONES: dict[str, str] = {
    "fundus": "assets/backbones/tiny-qwen2.5-vl",
    "skin": "assets/backbones/tiny-clip",
}
