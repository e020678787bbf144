"""The training objectives FairDx knows, declared once (see docs/architecture.md, "Registries").

Every list of methods in FairDx -- the config's choices, the CLI's ``--method``, the loss dispatch
in :func:`training.losses.compute_loss`, the Studio form (which fields a method enables), the model
card, Compare's labels and colours, the reproduction report and the benchmarks -- derives from
:data:`REGISTRY`. Adding an objective is one :class:`Method` entry here, its term in
``training/losses.py`` and its tests.

This module imports nothing heavy (no torch), so the app, the Studio form and the CLI's help can
read it at start-up.

The two papers:

- **Gu et al., fair LoRA** -- Gu, Liu, Zhang, Wang, *Fairness-Aware Fine-Tuning of Vision-Language
  Models for Medical Glaucoma Diagnosis*: Vanilla (Eq. 3), FR (Eqs. 4-6), GR (Eq. 8), Hybrid (Eq. 9)
  on Qwen2.5-VL-7B with LoRA r = 32, α = 64.
- **CMAC-MMD** -- Zhang, Dunn, Naseem, Kim, *Intersectional Fairness in Vision-Language Models for
  Medical Image Disease Classification* (arXiv:2512.15249): CE + λ·MMD between intersectional
  subgroups' certainty-margin distributions, on CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FairnessTerm = Literal["soft_gap", "mmd"]
"""The λ-weighted term an objective adds: Gu et al.'s soft MaxAccGap (Eqs. 5-6) or CMAC-MMD's MMD²."""

SOFT_GAP: FairnessTerm = "soft_gap"
MMD: FairnessTerm = "mmd"

DEFAULT_BANDWIDTH = 1.0
"""CMAC's fixed RBF width in logit-margin units (log-odds). CMAC-MMD leaves its bandwidth unspecified;
a fixed width on the margins' own scale cannot be shrunk by shrinking the margins, unlike the median
heuristic, so a constant classifier is no refuge from the penalty (``training.losses.median_bandwidth``)."""


@dataclass(frozen=True)
class Paper:
    """A paper an objective comes from, named by its authors or its method (never a file number)."""

    short: str
    """How code, UI and reports name it: "Gu et al., fair LoRA" / "CMAC-MMD"."""
    citation: str
    """The full reference in Markdown, as the model card and the report print it."""


GU_FAIR_LORA = Paper(
    short="Gu et al., fair LoRA",
    citation="Gu et al., *Fairness-Aware Fine-Tuning of Vision-Language Models for Medical Glaucoma Diagnosis*",
)
CMAC_MMD = Paper(
    short="CMAC-MMD",
    citation=(
        "Zhang et al., *Intersectional Fairness in Vision-Language Models for Medical Image Disease "
        "Classification* (CMAC-MMD, [arXiv:2512.15249](https://arxiv.org/abs/2512.15249))"
    ),
)


@dataclass(frozen=True)
class Method:
    """One training objective: its name, how it is shown, what it optimises and which settings it reads."""

    name: str
    """The value of ``--method`` and of ``config.json["method"]``; part of a run's default name."""
    title: str
    """Short display name (Compare's labels, the Studio's radio buttons, the report's tables)."""
    card_title: str
    """The model card's heading."""
    objective: str
    """One sentence with the paper's equation in LaTeX (the model card)."""
    help: str
    """A plain-words summary (the CLI's and the form's help)."""
    paper: Paper
    fairness_term: FairnessTerm | None
    """The λ-weighted term, or None for an objective without λ."""
    group_weighted: bool
    """Whether the cross-entropy carries Gu et al.'s inverse-frequency group weights (Eq. 8, w_max)."""
    colour: str
    """Its colour in every Compare plot."""

    @property
    def uses_lambda(self) -> bool:
        return self.fairness_term is not None

    @property
    def uses_w_max(self) -> bool:
        return self.group_weighted

    @property
    def uses_bandwidth(self) -> bool:
        return self.fairness_term == MMD

    @property
    def uses_cmac_attribute(self) -> bool:
        """CMAC aligns the subgroups of its own attribute (``--cmac-attribute``), by default --attribute's."""
        return self.fairness_term == MMD

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """The TrainConfig fields only this objective reads (the Studio enables exactly these)."""
        used = {
            "lam": self.uses_lambda,
            "w_max": self.uses_w_max,
            "bandwidth": self.uses_bandwidth,
            "cmac_attribute": self.uses_cmac_attribute,
        }
        return tuple(name for name, on in used.items() if on)


VANILLA = Method(
    name="vanilla",
    title="Vanilla",
    card_title="Vanilla LoRA",
    objective=(
        r"mean cross-entropy, $\mathcal{L} = -\frac{1}{N}\sum_{i} \log p_\theta(y_i \mid x_i)$ "
        f"({GU_FAIR_LORA.citation}, Eq. 3)."
    ),
    help="cross-entropy only (Gu et al. Eq. 3)",
    paper=GU_FAIR_LORA,
    fairness_term=None,
    group_weighted=False,
    colour="#636363",
)
FR = Method(
    name="fr",
    title="FR",
    card_title="FR-LoRA (fairness-regularised)",
    objective=(
        r"$\mathcal{L} = \mathcal{L}_{CE} + \lambda \left(\max_s \mathrm{Acc}^s_{soft} - \min_s "
        r"\mathrm{Acc}^s_{soft}\right)$ with $\mathrm{Acc}^s_{soft}$ the mean probability of the true class "
        f"in group $s$ ({GU_FAIR_LORA.citation}, Eqs. 4-6)."
    ),
    help="CE + λ·soft MaxAccGap (Gu et al. Eq. 5)",
    paper=GU_FAIR_LORA,
    fairness_term=SOFT_GAP,
    group_weighted=False,
    colour="#1f77b4",
)
GR = Method(
    name="gr",
    title="GR",
    card_title="GR-LoRA (group-reweighted)",
    objective=(
        r"$\mathcal{L} = \sum_s w_s \mathcal{L}^s_{CE}$, $w_s = \min(N / N_s, w_{max})$ "
        f"({GU_FAIR_LORA.citation}, Eq. 8); FairDx weights each sample by $w_s$ and normalises by the "
        "batch's total weight."
    ),
    help="inverse-frequency group weights clipped at w_max (Gu et al. Eq. 8)",
    paper=GU_FAIR_LORA,
    fairness_term=None,
    group_weighted=True,
    colour="#2ca02c",
)
HYBRID = Method(
    name="hybrid",
    title="Hybrid",
    card_title="Hybrid-LoRA (reweighted + regularised)",
    objective=(
        r"$\mathcal{L} = \sum_s w_s \mathcal{L}^s_{CE} + \lambda\, \mathrm{MaxAccGap}_{soft}$ "
        f"({GU_FAIR_LORA.citation}, Eq. 9)."
    ),
    help="GR's weights + λ·soft MaxAccGap (Gu et al. Eq. 9)",
    paper=GU_FAIR_LORA,
    fairness_term=SOFT_GAP,
    group_weighted=True,
    colour="#9467bd",
)
CMAC = Method(
    name="cmac",
    title="CMAC-MMD",
    card_title="CMAC-MMD",
    objective=(
        r"$\mathcal{L} = \mathcal{L}_{CE} + \lambda \cdot \mathrm{mean}_{s<t}\, \mathrm{MMD}^2_{RBF}(m_s, m_t)$ "
        r"over pairs of intersectional subgroups, $m$ the certainty margin (true-class score minus the best "
        f"other class) ({CMAC_MMD.citation})."
    ),
    help="CE + λ·MMD of certainty margins between intersectional subgroups (CMAC-MMD)",
    paper=CMAC_MMD,
    fairness_term=MMD,
    group_weighted=False,
    colour="#ff7f0e",
)

REGISTRY: dict[str, Method] = {m.name: m for m in (VANILLA, FR, GR, HYBRID, CMAC)}
"""Every objective by name, in the order of every table, plot and form."""
NAMES: tuple[str, ...] = tuple(REGISTRY)
BASELINE = VANILLA
"""The reference every comparison is made against (Compare, the report, the bench)."""
LAMBDA_METHODS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if m.uses_lambda)
WEIGHT_METHODS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if m.uses_w_max)
PAPERS: tuple[Paper, ...] = (GU_FAIR_LORA, CMAC_MMD)

UNKNOWN_METHOD = "method '{method}' is unknown; choose one of {choices}"


def get(name: str) -> Method:
    """The objective called `name`; ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(UNKNOWN_METHOD.format(method=name, choices=", ".join(NAMES))) from None


def title(name: str | None) -> str:
    """Display name of `name` (itself when FairDx does not know it, e.g. a run from a newer version)."""
    method = REGISTRY.get(name or "")
    return method.title if method else str(name)


def rank(name: str | None) -> int:
    """Position of `name` in the registry (unknown names last): the sort key of every list of runs."""
    return NAMES.index(name) if name in REGISTRY else len(NAMES)


def help_text() -> str:
    """One line per objective for ``--method``'s help and the config field's description."""
    return "Objective: " + "; ".join(f"{m.name} = {m.help}" for m in REGISTRY.values()) + "."
