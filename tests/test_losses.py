"""training.losses against float64 references written straight from the papers' equations.

Gu et al.: Eq. 3 (CE), Eqs. 5-6 (soft MaxAccGap), Eq. 7 (its gradient), Eq. 8 (GR), Eq. 9 (Hybrid).
CMAC-MMD: CMAC-MMD (RBF MMD² between subgroups' certainty margins).
"""

import itertools
import math
import re
import statistics
import time

import pytest
import torch

from tests.conftest import exactly
from training import losses
from training.losses import (
    METHODS,
    certainty_margin,
    cmac_mmd,
    compute_loss,
    group_weights,
    median_bandwidth,
    mmd_rbf,
    soft_accuracy_gap,
)

TOL = 1e-6
SEEDS = [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# float64 references, plain Python loops over the equations


def ref_softmax(row):
    top = max(row)
    exps = [math.exp(z - top) for z in row]
    return [e / sum(exps) for e in exps]


def ref_p_true(logits, labels):
    return [ref_softmax(row)[y] for row, y in zip(logits, labels, strict=True)]


def ref_ce(logits, labels):
    return [-math.log(p) for p in ref_p_true(logits, labels)]


def ref_gap(p_true, groups):
    """Eqs. 5-6 over the groups present."""
    acc = {}
    for s in sorted(set(groups)):
        members = [p for p, g in zip(p_true, groups, strict=True) if g == s]
        acc[s] = sum(members) / len(members)
    return max(acc.values()) - min(acc.values())


def ref_group_weights(counts, w_max):
    total = sum(counts)
    return [min(total / c, w_max) for c in counts]


def ref_gr(ce, groups, weights):
    """Eq. 8 with per-sample weights, normalised by their sum (see compute_loss's docstring)."""
    num = sum(weights[g] * c for c, g in zip(ce, groups, strict=True))
    den = sum(weights[g] for g in groups)
    return num / den


def ref_kernel(a, b, h):
    return math.exp(-((a - b) ** 2) / (2 * h * h))


def ref_mmd(x, y, h):
    """Unbiased MMD² (Gretton et al. 2012, Eq. 3): within-sample sums over i ≠ j."""
    kxx = sum(ref_kernel(a, b, h) for i, a in enumerate(x) for j, b in enumerate(x) if i != j)
    kyy = sum(ref_kernel(a, b, h) for i, a in enumerate(y) for j, b in enumerate(y) if i != j)
    kxy = sum(ref_kernel(a, b, h) for a in x for b in y) / (len(x) * len(y))
    return kxx / (len(x) * (len(x) - 1)) + kyy / (len(y) * (len(y) - 1)) - 2 * kxy


def ref_mmd_biased(x, y, h):
    """The V-statistic (diagonals included) that the first CMAC implementation used."""
    kxx = sum(ref_kernel(a, b, h) for a in x for b in x) / (len(x) * len(x))
    kyy = sum(ref_kernel(a, b, h) for a in y for b in y) / (len(y) * len(y))
    kxy = sum(ref_kernel(a, b, h) for a in x for b in y) / (len(x) * len(y))
    return kxx + kyy - 2 * kxy


def ref_cmac(margins, subgroups, h):
    by_group = {}
    for m, g in zip(margins, subgroups, strict=True):
        by_group.setdefault(g, []).append(m)
    eligible = [v for _, v in sorted(by_group.items()) if len(v) >= 2]
    pairs = list(itertools.combinations(eligible, 2))
    if not pairs:
        return 0.0
    return sum(ref_mmd(x, y, h) for x, y in pairs) / len(pairs)


def ref_median_bandwidth(values, floor=0.5):
    distances = [abs(a - b) for i, a in enumerate(values) for b in values[i + 1 :]]
    return max(statistics.median_low(distances), floor)


def ref_margin(logits, labels):
    return [row[y] - max(z for k, z in enumerate(row) if k != y) for row, y in zip(logits, labels, strict=True)]


# ---------------------------------------------------------------------------------------------
# random batches: unequal group sizes, and group 2 of 0..4 absent from the batch


def make_batch(seed, n=37, classes=2, group_ids=(0, 1, 3, 4), sizes_from=(0.55, 0.25, 0.12, 0.08)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen, dtype=torch.float64) * 2.0
    labels = torch.randint(0, classes, (n,), generator=gen)
    probs = torch.tensor(sizes_from, dtype=torch.float64)
    picks = torch.multinomial(probs, n, replacement=True, generator=gen)
    groups = torch.tensor(group_ids)[picks]
    groups[: len(group_ids)] = torch.tensor(group_ids)  # every listed group present at least once
    return logits, labels, groups


def as_lists(*tensors):
    return [t.tolist() for t in tensors]


# ---------------------------------------------------------------------------------------------
# values against the references


@pytest.mark.parametrize("seed", SEEDS)
def test_soft_accuracy_gap_matches_eq6(seed):
    logits, labels, groups = make_batch(seed)
    p_true = torch.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    got = soft_accuracy_gap(p_true, groups)
    want = ref_gap(*as_lists(p_true, groups))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, abs=TOL)
    assert got.item() > 0.0


def test_soft_accuracy_gap_ignores_absent_and_non_contiguous_ids():
    p_true = torch.tensor([0.9, 0.7, 0.2, 0.4], dtype=torch.float64)
    groups = torch.tensor([7, 7, 100, 100])  # ids 0..6 and 8..99 absent
    assert soft_accuracy_gap(p_true, groups).item() == pytest.approx(0.8 - 0.3, abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_weights_match_eq8(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 2000, (6,), generator=gen)
    w_max = 10.0
    got = group_weights(counts, w_max)
    want = ref_group_weights(counts.tolist(), w_max)
    assert got.tolist() == pytest.approx(want, abs=TOL)


def test_group_weights_clip_at_w_max_on_paper_split():
    # Ethnicity split of Gu et al.: 90.3 / 4.3 / 5.4 % of 10,000.
    got = group_weights([9030, 430, 540], w_max=10)
    assert got.dtype == torch.get_default_dtype()
    assert got.tolist() == pytest.approx([10000 / 9030, 10.0, 10.0], abs=TOL)
    unclipped = group_weights([9030, 430, 540], w_max=100)
    assert unclipped.tolist() == pytest.approx([10000 / 9030, 10000 / 430, 10000 / 540], rel=1e-6)
    assert group_weights([9030, 430, 540], w_max=1).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", SEEDS)
def test_mmd_rbf_matches_u_statistic(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, generator=gen, dtype=torch.float64)
    y = torch.randn(4, generator=gen, dtype=torch.float64) + 0.8
    for h in (0.3, 1.0, 2.5):
        want = ref_mmd(x.tolist(), y.tolist(), h)
        assert mmd_rbf(x, y, h).item() == pytest.approx(want, abs=TOL)


def test_mmd_rbf_of_two_points_each():
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y = torch.tensor([3.0, 4.0], dtype=torch.float64)
    k = lambda d: math.exp(-d * d / 2)  # noqa: E731
    want = k(1) + k(1) - 2 * (k(3) + k(4) + k(2) + k(3)) / 4
    assert mmd_rbf(x, y, 1.0).item() == pytest.approx(want, abs=TOL)


def test_mmd_rbf_needs_two_samples_per_side():
    with pytest.raises(ValueError, match=re.escape(losses.TOO_FEW_FOR_MMD.format(name="x", n=1))):
        mmd_rbf(torch.tensor([0.0]), torch.tensor([1.0, 2.0]), 1.0)


@pytest.mark.parametrize("bandwidth", [1.0, None])
def test_cmac_penalty_is_zero_on_average_for_identically_distributed_subgroups(bandwidth):
    """A perfectly fair model: six subgroups of 8 margins from one distribution. The unbiased penalty
    averages ≈ 0 over many draws; the biased V-statistic the first version used does not."""
    gen = torch.Generator().manual_seed(0)
    subgroups = torch.arange(6).repeat_interleave(8)
    unbiased, biased = [], []
    for _ in range(400):
        margins = 1.0 + 1.5 * torch.randn(48, generator=gen, dtype=torch.float64)
        unbiased.append(cmac_mmd(margins, subgroups, bandwidth).item())
        if bandwidth == 1.0 and len(biased) < 40:
            parts = [margins[subgroups == g].tolist() for g in range(6)]
            biased.append(statistics.mean(ref_mmd_biased(a, b, 1.0) for a, b in itertools.combinations(parts, 2)))
    assert abs(statistics.mean(unbiased)) <= 0.03
    assert statistics.stdev(unbiased) > 0.01  # it is a noisy estimate, not a constant 0
    if biased:
        assert statistics.mean(biased) > 0.1  # the V-statistic's bias at 8 samples per subgroup


@pytest.mark.parametrize("seed", SEEDS)
def test_cmac_mmd_matches_mean_over_pairs(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 41
    margins = torch.randn(n, generator=gen, dtype=torch.float64)
    # subgroups 0..5 with unequal sizes; 5 has exactly one sample (ineligible); 6 absent.
    subgroups = torch.multinomial(torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08]), n, replacement=True, generator=gen)
    subgroups[:5] = torch.arange(5)
    subgroups[5] = 5
    margins = margins + 0.5 * subgroups  # shift so subgroups really differ
    for h in (0.5, 1.0):
        want = ref_cmac(*as_lists(margins, subgroups), h)
        got = cmac_mmd(margins, subgroups, h)
        assert got.item() == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_median_bandwidth_and_cmac_with_it(seed):
    gen = torch.Generator().manual_seed(seed)
    margins = torch.randn(23, generator=gen, dtype=torch.float64) * 3.0
    subgroups = torch.randint(0, 4, (23,), generator=gen)
    subgroups[:4] = torch.arange(4)
    subgroups[4] = 9  # a lone sample: not eligible, not part of the pooled median
    assert median_bandwidth(margins) == pytest.approx(ref_median_bandwidth(margins.tolist()))
    eligible = margins[subgroups != 9]
    h = ref_median_bandwidth(eligible.tolist())
    want = ref_cmac(*as_lists(margins, subgroups), h)
    assert cmac_mmd(margins, subgroups, None).item() == pytest.approx(want, abs=TOL)
    x, y = margins[:9], margins[9:]
    want = ref_mmd(x.tolist(), y.tolist(), ref_median_bandwidth(margins.tolist()))
    assert mmd_rbf(x, y, None).item() == pytest.approx(want, abs=TOL)

    # Not scale-free any more: margins shrunk 100x (a collapsing model) fall under the floor, so the
    # penalty shrinks with them instead of staying put while its gradient grows 100x.
    def grad_norm(values, bandwidth):
        values = values.detach().clone().requires_grad_()
        cmac_mmd(values, subgroups, bandwidth(values)).backward()
        return values.grad.norm().item()

    shifted = margins + 2.0 * (subgroups % 2)
    bare = lambda v: median_bandwidth(v[subgroups != 9], floor=1e-12)  # noqa: E731 - the unfloored heuristic
    floored = lambda v: None  # noqa: E731
    assert grad_norm(shifted / 100, bare) / grad_norm(shifted, bare) == pytest.approx(100.0, rel=1e-6)
    assert grad_norm(shifted / 100, floored) / grad_norm(shifted, floored) < 5.0


def test_median_bandwidth_floor():
    assert median_bandwidth(torch.tensor([1.0, 1.0, 1.0, 4.0])) == losses.MIN_BANDWIDTH  # median 0
    assert median_bandwidth(torch.tensor([2.0, 2.0])) == losses.MIN_BANDWIDTH  # all equal
    assert median_bandwidth(torch.tensor([2.0])) == losses.MIN_BANDWIDTH  # no pair
    assert median_bandwidth(torch.tensor([0.0, 3.0, 6.0])) == 3.0
    assert median_bandwidth(torch.tensor([0.0, 0.01, 0.02]), floor=0.001) == pytest.approx(0.01)


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_certainty_margin(seed, classes):
    logits, labels, _ = make_batch(seed, classes=classes)
    got = certainty_margin(logits, labels)
    assert got.tolist() == pytest.approx(ref_margin(*as_lists(logits, labels)), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_compute_loss_all_methods_match_references(seed):
    logits, labels, groups = make_batch(seed)
    subgroups = (groups * 2 + labels) % 7  # an intersection-like id
    weights = group_weights([500, 300, 120, 60, 20], w_max=10).double()  # group 2 absent
    lam = 0.7
    L, Y, G, S = as_lists(logits, labels, groups, subgroups)
    ce = ref_ce(L, Y)
    mean_ce = sum(ce) / len(ce)
    gr = ref_gr(ce, G, weights.tolist())
    gap = ref_gap(ref_p_true(L, Y), G)
    cmac = ref_cmac(ref_margin(L, Y), S, 1.3)
    want = {
        "vanilla": (mean_ce, mean_ce, 0.0),
        "fr": (mean_ce + lam * gap, mean_ce, gap),
        "gr": (gr, gr, 0.0),
        "hybrid": (gr + lam * gap, gr, gap),
        "cmac": (mean_ce + lam * cmac, mean_ce, cmac),
    }
    for method in METHODS:
        parts = compute_loss(
            method,
            logits,
            labels,
            groups,
            lam=lam,
            group_weight=weights,
            bandwidth=1.3,
            subgroups=subgroups,
        )
        got = (parts.total.item(), parts.ce.item(), parts.fairness.item())
        assert got == pytest.approx(want[method], abs=TOL), method
        assert parts.total.item() == pytest.approx(parts.ce.item() + lam * parts.fairness.item())


def test_gr_with_equal_weights_is_vanilla():
    logits, labels, groups = make_batch(3)
    ones = group_weights([1, 2, 3, 4, 5], w_max=1)
    gr = compute_loss("gr", logits, labels, groups, group_weight=ones).total
    vanilla = compute_loss("vanilla", logits, labels, groups).total
    assert gr.item() == pytest.approx(vanilla.item(), abs=TOL)


def test_cmac_defaults_to_groups_and_accepts_backbone_margins():
    logits, labels, groups = make_batch(4)
    by_default = compute_loss("cmac", logits, labels, groups, bandwidth=0.8)
    explicit = compute_loss("cmac", logits, labels, groups, bandwidth=0.8, subgroups=groups)
    assert by_default.total.item() == pytest.approx(explicit.total.item(), abs=1e-12)
    # A CLIP backbone reports cosine margins = logit margins / scale: same MMD with bandwidth/scale.
    scale = 25.0
    cosine = certainty_margin(logits, labels) / scale
    given = compute_loss("cmac", logits, labels, groups, bandwidth=0.8 / scale, margins=cosine)
    assert given.fairness.item() == pytest.approx(by_default.fairness.item(), abs=TOL)


def test_low_precision_logits_are_promoted():
    logits, labels, groups = make_batch(5)
    parts = compute_loss("fr", logits.bfloat16(), labels, groups)
    assert parts.total.dtype == torch.float32
    reference = compute_loss("fr", logits.bfloat16().double(), labels, groups)
    assert parts.total.item() == pytest.approx(reference.total.item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# gradients


def test_fr_gap_gradient_follows_eq7():
    # Three groups: 0 best (mean .8), 1 intermediate (.5), 2 worst (.2); sizes 3, 2, 4.
    p_true = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.1, 0.3, 0.2, 0.2], dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    soft_accuracy_gap(p_true, groups).backward()
    want = [1 / 3] * 3 + [0.0] * 2 + [-1 / 4] * 4
    assert p_true.grad.tolist() == pytest.approx(want, abs=1e-12)


def test_fr_gap_gradient_moves_logits_the_right_way():
    # Binary logits; the fairness part alone. Descent must raise the worst group's true-class
    # logit, lower the best group's, and leave the intermediate group alone.
    logits = torch.tensor(
        [[0.0, 3.0], [0.0, 2.0], [0.0, 0.1], [0.0, -0.1], [0.0, -2.0], [0.0, -3.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    labels = torch.ones(6, dtype=torch.long)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    parts = compute_loss("fr", logits, labels, groups, lam=1.0)
    parts.fairness.backward()
    true_class_grad = logits.grad[:, 1]
    assert (true_class_grad[4:] < 0).all()  # worst group: −grad raises p_true
    assert (true_class_grad[:2] > 0).all()  # best group: −grad lowers p_true
    assert true_class_grad[2:4].tolist() == [0.0, 0.0]


def test_gr_minority_gradient_is_weight_ratio_times_majority():
    weights = group_weights([9030, 430, 540], w_max=10).double()
    row = [0.3, -0.4]
    logits = torch.tensor([row, row, row, [1.0, 0.2], [0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 1, 1, 0, 1])
    groups = torch.tensor([0, 1, 2, 0, 0])  # samples 0, 1, 2 identical, groups differ
    compute_loss("gr", logits, labels, groups, group_weight=weights).total.backward()
    majority, minority = logits.grad[0], logits.grad[1]
    ratio = (weights[1] / weights[0]).item()
    assert ratio == pytest.approx(9030 / 1000)
    assert minority.tolist() == pytest.approx((ratio * majority).tolist(), abs=1e-12)
    assert logits.grad[2].tolist() == pytest.approx(logits.grad[1].tolist(), abs=1e-12)


def test_cmac_gradient_only_reaches_subgroups_with_two_samples():
    margins = torch.tensor([0.1, 0.5, 1.5, 2.0, 2.2, -1.0, 3.0], dtype=torch.float64, requires_grad=True)
    subgroups = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # 2 and 3 have one sample each
    cmac_mmd(margins, subgroups, 1.0).backward()
    assert (margins.grad[:5] != 0).all()
    assert margins.grad[5:].tolist() == [0.0, 0.0]


def test_mmd_gradient_step_pulls_distributions_together():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, generator=gen, dtype=torch.float64) - 1.0).requires_grad_()
    y = (torch.randn(5, generator=gen, dtype=torch.float64) + 1.0).requires_grad_()
    before = mmd_rbf(x, y, 1.0)
    before.backward()
    assert x.grad.sum() < 0 < y.grad.sum()  # descent moves x up and y down, towards each other
    with torch.no_grad():
        after = mmd_rbf(x - 0.1 * x.grad, y - 0.1 * y.grad, 1.0)
    assert after.item() < before.item()


def test_cmac_gradient_step_reduces_penalty():
    margins = torch.tensor([0.0, 0.2, 0.1, 1.0, 1.3, 0.9, 2.0, 2.4], dtype=torch.float64, requires_grad=True)
    subgroups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    before = cmac_mmd(margins, subgroups, 1.0)
    before.backward()
    with torch.no_grad():
        after = cmac_mmd(margins - 0.2 * margins.grad, subgroups, 1.0)
    assert after.item() < before.item()


# ---------------------------------------------------------------------------------------------
# edge cases


def test_one_group_gives_zero_gap_with_valid_zero_gradient():
    p_true = torch.tensor([0.2, 0.9, 0.4], dtype=torch.float64, requires_grad=True)
    gap = soft_accuracy_gap(p_true, torch.tensor([3, 3, 3]))
    assert gap.item() == 0.0
    gap.backward()
    assert p_true.grad.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "subgroups",
    [[0, 0, 0, 0], [0, 0, 1, 2], [0, 1, 2, 3]],
    ids=["one subgroup", "one eligible", "none eligible"],
)
def test_cmac_with_fewer_than_two_eligible_subgroups_is_zero(subgroups):
    margins = torch.tensor([0.1, 0.9, -0.5, 2.0], requires_grad=True)
    penalty = cmac_mmd(margins, torch.tensor(subgroups), 1.0)
    assert penalty.item() == 0.0
    assert penalty.requires_grad
    penalty.backward()
    assert margins.grad.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_cmac_loss_with_one_subgroup_is_plain_ce():
    logits, labels, _ = make_batch(6)
    one = torch.zeros(len(labels), dtype=torch.long)
    parts = compute_loss("cmac", logits, labels, one)
    assert parts.fairness.item() == 0.0
    vanilla = compute_loss("vanilla", logits, labels, one)
    assert parts.total.item() == pytest.approx(vanilla.total.item())


@pytest.mark.parametrize("counts, index, count", [([10, 0, 5], 1, 0), ([4, 3, -2], 2, -2)])
def test_group_weights_reject_empty_groups(counts, index, count):
    with pytest.raises(
        ValueError,
        match=exactly(
            f"group {index} has {count} training samples; every group needs at least one "
            "(pick another attribute or merge groups)"
        ),
    ):
        group_weights(counts, 10)


@pytest.mark.parametrize("w_max", [0.5, 0, -3, float("nan")])
def test_group_weights_reject_w_max_below_one(w_max):
    with pytest.raises(
        ValueError, match=exactly(f"w_max must be >= 1 (w_max = 1 weights every group equally), got {float(w_max)!r}")
    ):
        group_weights([10, 5], w_max)


def test_unknown_method_message():
    logits, labels, groups = make_batch(0)
    with pytest.raises(
        ValueError, match=exactly("unknown method 'fair'; choose one of: vanilla, fr, gr, hybrid, cmac")
    ):
        compute_loss("fair", logits, labels, groups)


@pytest.mark.parametrize("lam", [-0.1, float("nan"), "0.5"])
def test_invalid_lambda_message(lam):
    logits, labels, groups = make_batch(0)
    with pytest.raises(ValueError, match=exactly(f"lam must be a number >= 0, got {lam!r}")):
        compute_loss("fr", logits, labels, groups, lam=lam)


def test_lambda_zero_is_allowed():
    logits, labels, groups = make_batch(0)
    parts = compute_loss("fr", logits, labels, groups, lam=0)
    assert parts.total.item() == pytest.approx(parts.ce.item())


@pytest.mark.parametrize("method", ["gr", "hybrid"])
def test_gr_needs_group_weight(method):
    logits, labels, groups = make_batch(0)
    with pytest.raises(
        ValueError,
        match=exactly(
            f"method '{method}' needs group_weight, one weight per group id "
            "(use group_weights(training_counts, w_max)); got None"
        ),
    ):
        compute_loss(method, logits, labels, groups)


def test_gr_group_id_without_weight():
    logits, labels, groups = make_batch(0)  # ids up to 4
    with pytest.raises(
        ValueError,
        match=exactly(
            "group id 4 has no weight: group_weight has 3 entries (ids 0..2); "
            "compute the weights from the training counts of every group"
        ),
    ):
        compute_loss("gr", logits, labels, groups, group_weight=torch.ones(3))


@pytest.mark.parametrize("bandwidth", [0.0, -1.0])
def test_bandwidth_must_be_positive(bandwidth):
    x = torch.zeros(3)
    with pytest.raises(
        ValueError, match=exactly(f"bandwidth must be > 0 (or None for the median heuristic), got {bandwidth!r}")
    ):
        mmd_rbf(x, x, bandwidth)


def test_shape_errors():
    with pytest.raises(ValueError, match=exactly("groups has 3 entries but the batch has 4 samples")):
        soft_accuracy_gap(torch.rand(4), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=exactly("groups must hold integer ids, got dtype torch.float32")):
        soft_accuracy_gap(torch.rand(3), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=exactly("p_true is empty; a loss needs at least one sample")):
        soft_accuracy_gap(torch.rand(0), torch.zeros(0, dtype=torch.long))
    with pytest.raises(
        ValueError, match=exactly("logits must have shape (batch, classes) with at least 2 classes, got shape (4, 1)")
    ):
        certainty_margin(torch.rand(4, 1), torch.zeros(4, dtype=torch.long))


def test_messages_are_module_constants():
    message = losses.UNKNOWN_METHOD.format(method="x", choices="a")
    assert message == "unknown method 'x'; choose one of: a"
    assert METHODS == ("vanilla", "fr", "gr", "hybrid", "cmac")


# ---------------------------------------------------------------------------------------------
# vectorisation


def test_large_batch_many_groups_is_fast_and_agrees_with_pairwise_loop():
    gen = torch.Generator().manual_seed(0)
    n, n_groups = 4096, 50
    logits = torch.randn(n, 2, generator=gen, requires_grad=True)
    labels = torch.randint(0, 2, (n,), generator=gen)
    groups = torch.randint(0, n_groups, (n,), generator=gen)
    weights = group_weights(torch.bincount(groups, minlength=n_groups), w_max=10)
    start = time.perf_counter()
    for method in METHODS:
        parts = compute_loss(method, logits, labels, groups, group_weight=weights)
        parts.total.backward()
        assert torch.isfinite(parts.total)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"five objectives on 4096 samples took {elapsed:.1f}s"
    assert torch.isfinite(logits.grad).all()

    # Cross-check cmac_mmd's index_add path with a loop over the 1225 pairs of mmd_rbf.
    margins = certainty_margin(logits.detach().double(), labels)
    per_group = [margins[groups == s] for s in range(n_groups)]
    pairwise = [mmd_rbf(a, b, 1.0) for a, b in itertools.combinations(per_group, 2)]
    want = torch.stack(pairwise).mean().item()
    assert cmac_mmd(margins, groups, 1.0).item() == pytest.approx(want, abs=TOL)
