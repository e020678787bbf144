"""Training objectives of FairDx: vanilla, FR, GR, Hybrid (Gu et al., fair LoRA) and CMAC-MMD (Zhang et al.).

Every function is vectorised over the batch: group statistics come from ``torch.unique`` plus
``index_add_`` (a scatter-sum), never from a Python loop over samples. Inputs of lower precision
than float32 (bf16/fp16 logits under mixed precision) are promoted to float32 before any
softmax, mean or kernel, and float64 inputs stay float64 (the tests use that).

Group statistics are only meaningful over the samples they are computed on: the caller passes the
*effective* batch (every micro-batch of one optimiser step, gathered over ranks), see docs/architecture.md.

Equations cited as "Eq. k" are Gu et al.'s fair-LoRA paper for glaucoma (Eqs. 1-9); CMAC-MMD is
Zhang et al., intersectional fairness in vision-language models (CLIP + MMD of certainty margins).
"""

from collections.abc import Sequence
from numbers import Real
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from training import methods
from training.methods import DEFAULT_BANDWIDTH  # re-exported for callers
from training.methods import NAMES as METHODS

# Error messages: module constants so that callers and tests can match them word for word.
UNKNOWN_METHOD = "unknown method {method!r}; choose one of: {choices}"
NEGATIVE_LAM = "lam must be a number >= 0, got {lam!r}"
MISSING_GROUP_WEIGHT = (
    "method {method!r} needs group_weight, one weight per group id "
    "(use group_weights(training_counts, w_max)); got None"
)
GROUP_WITHOUT_WEIGHT = (
    "group id {group} has no weight: group_weight has {n} entries (ids 0..{last}); "
    "compute the weights from the training counts of every group"
)
NON_POSITIVE_COUNT = (
    "group {index} has {count} training samples; every group needs at least one "
    "(pick another attribute or merge groups)"
)
BAD_COUNTS = "counts must be a non-empty 1-D sequence of group sizes, got shape {shape}"
BAD_W_MAX = "w_max must be >= 1 (w_max = 1 weights every group equally), got {w_max!r}"
BAD_BANDWIDTH = "bandwidth must be > 0 (or None for the median heuristic), got {bandwidth!r}"
TOO_FEW_FOR_MMD = "{name} has {n} sample(s); the unbiased MMD needs at least 2 per sample"
MIN_BANDWIDTH = 0.5
"""Floor of the median-heuristic width, in logit-margin units (a margin of 0.5 is an odds ratio of
1.65 between the classes): below it the heuristic makes the CMAC penalty scale-free (see
:func:`median_bandwidth`)."""
EMPTY_BATCH = "{name} is empty; a loss needs at least one sample"
NOT_1D = "{name} must be 1-D (one value per sample), got shape {shape}"
LENGTH_MISMATCH = "{name} has {got} entries but the batch has {n} samples"
NOT_INTEGER = "{name} must hold integer ids, got dtype {dtype}"
NOT_BOOL = "{name} must be a bool tensor (True = takes part), got dtype {dtype}"
BAD_LOGITS = "logits must have shape (batch, classes) with at least 2 classes, got shape {shape}"


class LossParts(NamedTuple):
    """One objective's value and its parts, for the optimiser and the log.

    Always ``total == ce + lam * fairness``.
    """

    total: Tensor
    """The scalar to call ``backward()`` on."""
    ce: Tensor
    """The classification term as it enters ``total``: mean CE (vanilla, fr, cmac) or the
    group-weighted CE of Eq. 8 (gr, hybrid)."""
    fairness: Tensor
    """The unscaled fairness term: soft MaxAccGap (fr, hybrid), mean pairwise MMD² (cmac), or a
    zero tensor (vanilla, gr)."""


def soft_accuracy_gap(p_true: Tensor, groups: Tensor) -> Tensor:
    """Soft MaxAccGap (Gu et al., Eqs. 5-6): max_s − min_s of the mean true-class probability.

    Only groups present in the batch count: an absent group has no soft accuracy, and treating it as
    0 would make the gap meaningless. With one group present the gap is 0 and its gradient a valid
    zero (max and min pick the same group, +1 and −1 cancel).

    The gradient follows Eq. 7: d gap / d Acc_s is +1 for the best group, −1 for the worst and 0
    for the rest, so each sample of the worst group s receives −1/n_s on its p_true (descent raises
    it) and each sample of the best group +1/n_s (descent lowers it). On ties torch splits the ±1
    evenly.

    Args:
        p_true: (n,) probability of each sample's true class, p_θ(y|x).
        groups: (n,) integer group ids (any values; they need not be contiguous).
    """
    _check_samples(p_true, "p_true")
    _check_ids(groups, "groups", len(p_true))
    p_true = _promote(p_true)
    means = _group_means(p_true, groups)
    return means.max() - means.min()


def group_weights(counts: Tensor | Sequence[int], w_max: float) -> Tensor:
    """Inverse-frequency group weights of Eq. 8 (Gu et al.): w_s = min(N / N_s, w_max).

    ``counts`` are the training-split sizes N_s of every group (index = group id), N = Σ_s N_s.
    The clip at w_max (paper: 10) bounds how much one minority sample can outweigh a majority
    sample; without it the paper saw loss spikes of up to 30× baseline. w_max = 1 gives every group
    weight 1 (GR reduces to vanilla), since N / N_s ≥ 1 always.

    Returns a float tensor (default dtype) of shape (number of groups,).
    """
    w_max = float(w_max)
    if not w_max >= 1.0:  # also rejects NaN
        raise ValueError(BAD_W_MAX.format(w_max=w_max))
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(BAD_COUNTS.format(shape=tuple(counts.shape)))
    bad = torch.nonzero(~(counts > 0))
    if bad.numel():
        index = int(bad[0])
        count = counts[index].item()
        raise ValueError(NON_POSITIVE_COUNT.format(index=index, count=_as_int_if_whole(count)))
    weights = (counts.sum() / counts).clamp(max=w_max)
    return weights.to(torch.get_default_dtype())


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None) -> Tensor:
    """Unbiased squared MMD (U-statistic) between two 1-D samples, RBF kernel k(a, b) = exp(−(a − b)² / (2h²)).

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (n(n−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1)) − 2·mean k(x, y)
    (Gretton et al. 2012, Eq. 3). CMAC-MMD (Zhang et al.) does not name its estimator; we take the
    unbiased one because its expectation is exactly 0 when both samples come from one distribution.
    The biased V-statistic (diagonals included) is not: with 8 margins per subgroup it averaged
    0.38 ± 0.25 on a perfectly fair model, a penalty that chases its own bias. The U-statistic can
    be slightly negative by chance; its gradient is an unbiased estimate of the gradient of the true
    MMD², so on average the optimiser follows the real distribution distance.

    Args:
        x: (n,) first sample, n ≥ 2 (e.g. certainty margins of subgroup s).
        y: (m,) second sample, m ≥ 2.
        bandwidth: kernel width h on the scale of the values (see :func:`certainty_margin`);
            None = :func:`median_bandwidth` of x and y pooled, floored at :data:`MIN_BANDWIDTH`.
    """
    _check_bandwidth(bandwidth)
    _check_samples(x, "x")
    _check_samples(y, "y")
    for name, sample in (("x", x), ("y", y)):
        if len(sample) < 2:
            raise ValueError(TOO_FEW_FOR_MMD.format(name=name, n=len(sample)))
    x, y = _promote(x), _promote(y)
    if bandwidth is None:
        bandwidth = median_bandwidth(torch.cat([x, y]))
    n, m = len(x), len(y)
    kxx, kyy = _rbf_kernel(x, x, bandwidth), _rbf_kernel(y, y, bandwidth)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * _rbf_kernel(x, y, bandwidth).mean()


def median_bandwidth(values: Tensor, floor: float | None = None) -> float:
    """Median heuristic for the RBF width, floored: max(median |a_i − a_j| over pairs i < j, floor).

    Puts the kernel on the scale of the data. Returned as a float, i.e. outside autograd: letting
    gradients reach the width would let the optimiser lower the penalty by widening the kernel
    instead of aligning the distributions. The floor (default :data:`MIN_BANDWIDTH`) is what keeps the
    heuristic from driving collapse: without it the penalty is scale-free -- shrinking every margin
    100× leaves the MMD unchanged while its gradient grows 100× -- so a model near margin 0 is pulled
    towards a constant classifier it cannot leave. Falls back to the floor when all values coincide.

    Args:
        values: (n,) the pooled samples.
        floor: smallest width returned; None = :data:`MIN_BANDWIDTH`.
    """
    _check_samples(values, "values")
    floor = MIN_BANDWIDTH if floor is None else float(floor)
    values = _promote(values).detach()
    i, j = torch.triu_indices(len(values), len(values), offset=1, device=values.device)
    distances = (values[i] - values[j]).abs()
    width = distances.median().item() if distances.numel() else 0.0
    return max(width, floor)


def cmac_mmd(margins: Tensor, subgroups: Tensor, bandwidth: float | None) -> Tensor:
    """CMAC-MMD penalty (Zhang et al.): mean unbiased MMD² (:func:`mmd_rbf`) over all pairs of subgroups present.

    Only intersectional subgroups with at least 2 samples in the batch take part: the U-statistic
    needs two samples per side, and a single margin is no estimate of a distribution. With fewer
    than two such subgroups there is no pair and the result is a zero that still belongs to the
    autograd graph (``margins.sum() * 0``), so ``backward()`` works unchanged. The paper warns that
    the estimate is unreliable with few samples per subgroup; the trainer's ``stratified_batches``
    and ``grad_accum`` give every subgroup its share of each optimiser step.

    We take the *mean* over pairs (the paper sums; it does not normalise) so that the scale of the
    term, and hence a good λ (paper: 0.5), does not grow with the number of subgroups, which differs
    between tasks (6 in dermatology, 8 in glaucoma) and from batch to batch.

    Vectorised: one m×m kernel matrix over the eligible samples, summed into a G×G matrix of
    between-subgroup kernel sums with two ``index_add_`` calls; the diagonal blocks drop the kernel's
    diagonal (the U-statistic), MMD²(s, t) = W_s + W_t − 2·M_st.

    Args:
        margins: (n,) per-sample certainty margins (:func:`certainty_margin`).
        subgroups: (n,) integer intersectional subgroup ids (any values).
        bandwidth: RBF kernel width, on the scale of ``margins``; None = :func:`median_bandwidth`
            of the eligible samples pooled (one width for every pair, so the pairs' MMDs are
            comparable and their mean is of like terms).
    """
    _check_bandwidth(bandwidth)
    _check_samples(margins, "margins")
    _check_ids(subgroups, "subgroups", len(margins))
    margins = _promote(margins)
    _, inverse, counts = torch.unique(subgroups, return_inverse=True, return_counts=True)
    eligible_groups = counts >= 2
    n_groups = int(eligible_groups.sum())
    if n_groups < 2:
        return margins.sum() * 0.0
    # Renumber eligible subgroups 0..G-1 and keep only their samples.
    new_id = torch.cumsum(eligible_groups, 0) - 1
    keep = eligible_groups[inverse]
    ids = new_id[inverse[keep]]
    values = margins[keep]
    sizes = counts[eligible_groups].to(values.dtype)
    if bandwidth is None:
        bandwidth = median_bandwidth(values)

    kernel = _rbf_kernel(values, values, bandwidth)  # (m, m); its diagonal is exp(0) = 1
    row_sums = values.new_zeros(n_groups, len(values)).index_add_(0, ids, kernel)
    block_sums = values.new_zeros(n_groups, n_groups).index_add_(1, ids, row_sums)
    cross = block_sums / (sizes[:, None] * sizes[None, :])
    within = (block_sums.diagonal() - sizes) / (sizes * (sizes - 1.0))  # U-statistic: i ≠ j only
    s, t = torch.triu_indices(n_groups, n_groups, offset=1, device=values.device)
    return (within[s] + within[t] - 2.0 * cross[s, t]).mean()


def certainty_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample certainty margin (CMAC-MMD): true-class score minus the best other class's score.

    Positive when the sample is classified correctly, and larger the more certain. The other classes
    are found by masking the true class with −inf before ``max``, so any number of classes works.

    CMAC-MMD defines the margin on CLIP cosine similarities. FairDx computes it on whatever class
    logits the backbone returns, so for CLIP (logits = scale · cosine) it is scale × the paper's
    margin. To reproduce the paper, either divide by the logit scale before calling (the caller
    knows the scale; this module does not) or, equivalently for the MMD value, pass
    ``bandwidth × scale`` to :func:`cmac_mmd`, since k(s·a, s·b; s·h) = k(a, b; h). With
    ``bandwidth=None`` (median heuristic) the MMD is scale-free: either margin gives the same value.

    Args:
        logits: (n, C) class scores, C ≥ 2.
        labels: (n,) integer true classes.
    """
    _check_logits(logits)
    _check_ids(labels, "labels", len(logits))
    logits = _promote(logits)
    true_mask = F.one_hot(labels, logits.shape[1]).bool()
    true_score = logits.gather(1, labels[:, None]).squeeze(1)
    best_other = logits.masked_fill(true_mask, float("-inf")).amax(dim=1)
    return true_score - best_other


def compute_loss(
    method: str,
    logits: Tensor,
    labels: Tensor,
    groups: Tensor,
    *,
    lam: float = 0.5,
    group_weight: Tensor | None = None,
    bandwidth: float | None = DEFAULT_BANDWIDTH,
    subgroups: Tensor | None = None,
    margins: Tensor | None = None,
    fairness_mask: Tensor | None = None,
) -> LossParts:
    """The five FairDx objectives on one (effective) batch.

    - vanilla: mean CE (Gu et al., Eq. 3).
    - fr: mean CE + λ · soft MaxAccGap (Eqs. 4-6), p_true = softmax(logits)[label].
    - gr: group-weighted CE (Eq. 8), normalised as ``Σ_i w_{g_i} CE_i / Σ_i w_{g_i}``; see below.
    - hybrid: gr + λ · soft MaxAccGap (Eq. 9).
    - cmac: mean CE + λ · :func:`cmac_mmd` of the certainty margins over intersectional subgroups
      (CMAC-MMD).

    GR normalisation. Eq. 8 reads Σ_s w_s · CE_s with CE_s the mean CE of group s. Taken literally
    with w_s = N / N_s it counts group size twice (the group mean already removes it): a sample's
    weight is w_s / n_s, so on the paper's ethnicity split (90.3 / 4.3 / 5.4 %, w_max = 10) a
    Hispanic sample gets (10 / 0.043) / (1.107 / 0.903) ≈ 190× the gradient of a non-Hispanic one,
    not the "up to w_max×" the paper states, and the loss is Σ_s w_s ≈ 21× vanilla on every batch.
    We implement the paper's stated intent, inverse-frequency weighting of each sample: sample i
    gets weight w_{g_i} and the weighted sum is divided by Σ_i w_{g_i}. Then

    * an identical minority sample gets exactly w_s / w_majority (≤ w_max) times the gradient of a
      majority one, as the paper says after Eq. 8;
    * in expectation every unclipped group contributes the same total gradient
      (n_s·w_s ∝ N_s·N/N_s), the "equalized gradient magnitudes across groups" of §3.3.3;
    * the loss is a convex combination of per-sample CEs, Σ_s α_s CE_s with
      α_s = w_s n_s / Σ_t w_t n_t (Eq. 8 with its weights renormalised to the batch), so its scale
      equals vanilla CE and the same learning rate works; dividing by n instead would scale the
      loss by the batch's mean weight (≈ 2-3× on the paper's data) and make it spike on
      minority-heavy batches.

    The cost of self-normalising: a batch holding one group only gets plain CE, so at tiny effective
    batches (paper: 8) rare groups are weighted a little less than w_s / w_majority on average over
    an epoch; a larger effective batch shrinks this. With gradient accumulation the normaliser
    Σ_i w_{g_i} must be that of the whole effective batch, one more reason to pass it here. Do not
    combine GR with a group-balanced sampler: balancing the batches already applies N / N_s.

    Args:
        method: one of :data:`METHODS`.
        logits: (n, C) class logits (bf16/fp16 are promoted to float32).
        labels: (n,) integer true classes.
        groups: (n,) integer group ids of the sensitive attribute. For gr/hybrid they index
            ``group_weight`` (ids 0..G-1); for fr any integer ids work.
        lam: λ ≥ 0, weight of the fairness term (paper: 0.5).
        group_weight: (G,) per-group weights from :func:`group_weights`; required for gr/hybrid.
        bandwidth: RBF width for cmac, on the scale of the margins (default :data:`DEFAULT_BANDWIDTH`);
            None = floored median heuristic (:func:`median_bandwidth`) on each batch.
        subgroups: (n,) intersectional subgroup ids for cmac; defaults to ``groups``.
        margins: (n,) certainty margins for cmac if the backbone supplies them (e.g. CLIP cosine
            margins); defaults to :func:`certainty_margin` of ``logits``.
        fairness_mask: (n,) bool, the samples that take part in the fairness term (fr, hybrid, cmac);
            None = all. The trainer leaves out groups too small to estimate anything (a subgroup of
            4 training images, e.g. HAM10000's unknown sex) so they cannot drive the penalty; every
            sample still counts in the CE.
    """
    if method not in METHODS:
        raise ValueError(UNKNOWN_METHOD.format(method=method, choices=", ".join(METHODS)))
    spec = methods.get(method)
    if isinstance(lam, bool) or not isinstance(lam, Real) or not lam >= 0:
        raise ValueError(NEGATIVE_LAM.format(lam=lam))
    _check_logits(logits)
    n = len(logits)
    _check_ids(labels, "labels", n)
    _check_ids(groups, "groups", n)

    logits = _promote(logits)
    ce_per_sample = F.cross_entropy(logits, labels, reduction="none")
    zero = ce_per_sample.new_zeros(())

    if spec.group_weighted:
        ce = _group_weighted_ce(ce_per_sample, groups, group_weight, method)
    else:
        ce = ce_per_sample.mean()

    if fairness_mask is not None:
        _check_mask(fairness_mask, n)
    if spec.uses_lambda and fairness_mask is not None and not bool(fairness_mask.any()):
        fairness = ce_per_sample.sum() * 0.0  # nobody takes part: a zero inside the graph
    elif spec.fairness_term == methods.SOFT_GAP:
        # p_true = softmax(logits)[label] = exp(−CE_i): reuses the CE already computed.
        p_true = torch.exp(-ce_per_sample)
        if fairness_mask is not None:
            p_true, groups = p_true[fairness_mask], groups[fairness_mask]
        fairness = soft_accuracy_gap(p_true, groups)
    elif spec.fairness_term == methods.MMD:
        if margins is None:
            margins = certainty_margin(logits, labels)
        else:
            _check_samples(margins, "margins")
            if len(margins) != n:
                raise ValueError(LENGTH_MISMATCH.format(name="margins", got=len(margins), n=n))
        subgroups = groups if subgroups is None else subgroups
        _check_ids(subgroups, "subgroups", n)
        if fairness_mask is not None:
            margins, subgroups = margins[fairness_mask], subgroups[fairness_mask]
        fairness = cmac_mmd(margins, subgroups, bandwidth)
    else:
        fairness = zero

    total = ce + lam * fairness if spec.uses_lambda else ce
    return LossParts(total=total, ce=ce, fairness=fairness)


# --------------------------------------------------------------------------------------------
# helpers


def _group_weighted_ce(ce_per_sample: Tensor, groups: Tensor, group_weight: Tensor | None, method: str) -> Tensor:
    """Σ_i w_{g_i} CE_i / Σ_i w_{g_i} (Eq. 8, normalisation explained in :func:`compute_loss`)."""
    if group_weight is None:
        raise ValueError(MISSING_GROUP_WEIGHT.format(method=method))
    group_weight = torch.as_tensor(group_weight).to(ce_per_sample.device, ce_per_sample.dtype)
    n_weights = len(group_weight)
    low, high = int(groups.min()), int(groups.max())
    if low < 0 or high >= n_weights:
        group = low if low < 0 else high
        raise ValueError(GROUP_WITHOUT_WEIGHT.format(group=group, n=n_weights, last=n_weights - 1))
    weights = group_weight[groups]
    return (weights * ce_per_sample).sum() / weights.sum()


def _group_means(values: Tensor, groups: Tensor) -> Tensor:
    """Mean of ``values`` per group present in ``groups`` (scatter-sum, no loop)."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    sums = values.new_zeros(len(counts)).index_add_(0, inverse, values)
    return sums / counts.to(values.dtype)


def _rbf_kernel(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """exp(−(a_i − b_j)² / (2·bandwidth²)) for 1-D a, b: an (len(a), len(b)) matrix.

    Squared differences by broadcasting, not ``torch.cdist``, whose sqrt has an infinite gradient
    at a_i = b_j (every diagonal entry).
    """
    diff = a[:, None] - b[None, :]
    return torch.exp(-(diff * diff) / (2.0 * bandwidth * bandwidth))


def _promote(x: Tensor) -> Tensor:
    """At least float32: group means and kernels in bf16 lose the small differences we penalise."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_samples(x: Tensor, name: str) -> None:
    if x.ndim != 1:
        raise ValueError(NOT_1D.format(name=name, shape=tuple(x.shape)))
    if x.numel() == 0:
        raise ValueError(EMPTY_BATCH.format(name=name))


def _check_ids(ids: Tensor, name: str, n: int) -> None:
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(NOT_INTEGER.format(name=name, dtype=ids.dtype))
    _check_samples(ids, name)
    if len(ids) != n:
        raise ValueError(LENGTH_MISMATCH.format(name=name, got=len(ids), n=n))


def _check_mask(mask: Tensor, n: int) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(NOT_BOOL.format(name="fairness_mask", dtype=mask.dtype))
    _check_samples(mask, "fairness_mask")
    if len(mask) != n:
        raise ValueError(LENGTH_MISMATCH.format(name="fairness_mask", got=len(mask), n=n))


def _check_logits(logits: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(BAD_LOGITS.format(shape=tuple(logits.shape)))
    if logits.shape[0] == 0:
        raise ValueError(EMPTY_BATCH.format(name="logits"))


def _check_bandwidth(bandwidth: float | None) -> None:
    if bandwidth is None:
        return
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, Real) or not bandwidth > 0:
        raise ValueError(BAD_BANDWIDTH.format(bandwidth=bandwidth))


def _as_int_if_whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
