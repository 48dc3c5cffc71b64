"""Loss values against hand computations and brute-force python loops; Criterion term names and weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anet.config import LossCfg
from anet.errors import UserError
from anet.losses import (
    Criterion,
    ac_id,
    ac_tri,
    attribute_ce,
    attribute_triplet,
    cross_entropy_ls,
    cross_entropy_ls_per_sample,
    triplet_hard,
)
from anet.model import ANetOutput

pytestmark = pytest.mark.usefixtures("one_thread")


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _ref_mine(feats: list[list[float]], labels: list) -> list[tuple[int, int, int]]:
    """Brute force batch-hard: (anchor, farthest other positive, closest negative) for valid anchors."""
    out = []
    for i, li in enumerate(labels):
        pos = [j for j, lj in enumerate(labels) if lj == li and j != i]
        neg = [j for j, lj in enumerate(labels) if lj != li]
        if pos and neg:
            p = max(pos, key=lambda j: _dist(feats[i], feats[j]))
            n = min(neg, key=lambda j: _dist(feats[i], feats[j]))
            out.append((i, p, n))
    return out


def _ref_triplet(feats: list[list[float]], labels: list, margin: float, soft: bool) -> float:
    losses = []
    for i, p, n in _ref_mine(feats, labels):
        diff = _dist(feats[i], feats[p]) - _dist(feats[i], feats[n])
        losses.append(math.log1p(math.exp(diff)) if soft else max(0.0, diff + margin))
    return sum(losses) / len(losses)


FEATS = [[0.0, 0.0], [1.0, 0.5], [3.0, 1.0], [0.2, 2.0], [2.5, 2.5], [-1.0, 0.7], [4.0, -1.0]]
IDS = [0, 0, 0, 1, 1, 2, 2]


def test_label_smoothing_hand_checked() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    z = math.exp(2) + 2
    nll = [-(2 - math.log(z)), math.log(z), math.log(z)]  # -log p_k
    eps = 0.1
    expected = (1 - eps) * nll[0] + eps / 3 * sum(nll)  # = 0.9 * 0.2395 + 0.1 * 1.5728 = 0.3728
    got = cross_entropy_ls(logits, torch.tensor([0]), eps)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert got.item() == pytest.approx(0.37283, abs=1e-4)
    assert cross_entropy_ls(logits, torch.tensor([0]), 0.0).item() == pytest.approx(nll[0], abs=1e-6)
    batch, target = torch.randn(5, 7), torch.randint(0, 7, (5,))
    torch.testing.assert_close(cross_entropy_ls(batch, target, 0.2),
                               F.cross_entropy(batch, target, label_smoothing=0.2))
    assert cross_entropy_ls_per_sample(batch, target, 0.2).shape == (5,)


@pytest.mark.parametrize(("margin", "soft"), [(0.3, False), (5.0, False), (0.0, True)])
def test_triplet_matches_brute_force(margin: float, soft: bool) -> None:
    got = triplet_hard(torch.tensor(FEATS), torch.tensor(IDS), margin, soft)
    assert got.item() == pytest.approx(_ref_triplet(FEATS, IDS, margin, soft), abs=1e-5)


def test_triplet_skips_anchors_without_positive() -> None:
    ids = [0, 0, 1, 1, 3]  # id 3 has a single image: not an anchor, still a negative for the others
    feats = FEATS[:5]
    got = triplet_hard(torch.tensor(feats), torch.tensor(ids), 0.3)
    assert got.item() == pytest.approx(_ref_triplet(feats, ids, 0.3, False), abs=1e-5)
    lonely = torch.tensor(feats, requires_grad=True)
    zero = triplet_hard(lonely, torch.tensor([0, 1, 2, 3, 4]), 0.3)
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(lonely.grad) == 0


def test_attribute_triplet_matches_brute_force() -> None:
    color = [0, 0, 1, 1, 0, -1, 1]
    vtype = [1, 1, 0, 0, 1, 0, 1]
    keep = [i for i in range(7) if color[i] >= 0 and vtype[i] >= 0]
    ref = _ref_triplet([FEATS[i] for i in keep], [(color[i], vtype[i]) for i in keep], 0.3, False)
    g_vec = torch.tensor(FEATS, requires_grad=True)
    got = attribute_triplet(g_vec, {"color": torch.tensor(color), "type": torch.tensor(vtype)}, 0.3)
    assert got.item() == pytest.approx(ref, abs=1e-5)
    got.backward()
    assert torch.count_nonzero(g_vec.grad[5]) == 0  # the sample without colour takes no part


def test_attribute_triplet_with_nothing_labelled_is_zero() -> None:
    g_vec = torch.randn(4, 3, requires_grad=True)
    loss = attribute_triplet(g_vec, {"color": torch.full((4,), -1)}, 0.3)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(g_vec.grad) == 0


def test_attribute_ce_ignores_missing_labels() -> None:
    logits = torch.randn(5, 4, requires_grad=True)
    target = torch.tensor([2, -1, 0, -1, 3])
    loss = attribute_ce(logits, target)
    ref = sum(-F.log_softmax(logits[i], 0)[target[i]].item() for i in (0, 2, 4)) / 3
    assert loss.item() == pytest.approx(ref, abs=1e-6)
    loss.backward()
    assert torch.count_nonzero(logits.grad[[1, 3]]) == 0 and torch.count_nonzero(logits.grad[[0, 2, 4]]) > 0
    none = torch.randn(3, 4, requires_grad=True)
    zero = attribute_ce(none, torch.full((3,), -1))
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(none.grad) == 0


def _ref_ce_ls(row: list[float], y: int, eps: float) -> float:
    log_z = math.log(sum(math.exp(v) for v in row))
    nll = [log_z - v for v in row]
    return (1 - eps) * nll[y] + eps * sum(nll) / len(row)


def test_ac_id_matches_brute_force() -> None:
    torch.manual_seed(0)
    f_logits, j_logits, ids = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 3, 3])
    ref = sum(
        math.log1p(math.exp(_ref_ce_ls(j_logits[i].tolist(), int(ids[i]), 0.1)
                            - _ref_ce_ls(f_logits[i].tolist(), int(ids[i]), 0.1)))
        for i in range(6)
    ) / 6
    assert ac_id(f_logits, j_logits, ids, 0.1).item() == pytest.approx(ref, abs=1e-5)


def test_ac_tri_matches_brute_force_with_pairs_mined_in_f_space() -> None:
    torch.manual_seed(0)
    f_vec, j_vec = torch.randn(7, 3), torch.randn(7, 3)
    f, j = f_vec.tolist(), j_vec.tolist()
    terms = []
    for i, p, n in _ref_mine(f, IDS):  # I+ / I- from the f space, the same pair used in both spaces
        terms.append(math.log1p(math.exp(_dist(j[i], j[p]) - _dist(f[i], f[p])))
                     + math.log1p(math.exp(_dist(f[i], f[n]) - _dist(j[i], j[n]))))
    got = ac_tri(f_vec, j_vec, torch.tensor(IDS))
    assert got.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)


def _fake_output(joint: bool, attrs: bool, b: int = 6) -> ANetOutput:
    torch.manual_seed(0)
    a_names = ("color", "type") if attrs else ()
    return ANetOutput(
        f_vec=torch.randn(b, 8), f_logits=torch.randn(b, 3),
        a_vecs={n: torch.randn(b, 4) for n in a_names}, a_logits={n: torch.randn(b, 3) for n in a_names},
        g_vec=torch.randn(b, 5) if joint else None, j_vec=torch.randn(b, 8) if joint else None,
        j_logits=torch.randn(b, 3) if joint else None,
    )


IDS6 = torch.tensor([0, 0, 1, 1, 2, 2])
ATTRS6 = {"color": torch.tensor([0, 0, 1, 1, 2, -1]), "type": torch.tensor([1, 1, 0, 0, 1, 1])}
CFG = LossCfg(label_smoothing=0.1, triplet_margin=0.3, lambda_a=2.0, lambda_g=3.0, lambda_van=5.0)


def test_criterion_terms_and_weights_stage_one() -> None:
    out = _fake_output(joint=True, attrs=True)
    terms = Criterion(CFG, amelioration=False)(out, IDS6, ATTRS6)
    assert set(terms) == {"tri_f", "id_f", "att/color", "att/type", "tri_j", "id_j", "tri_g"}
    assert terms["tri_f"].item() == pytest.approx(5 * triplet_hard(out.f_vec, IDS6, 0.3).item(), rel=1e-6)
    assert terms["id_f"].item() == pytest.approx(5 * cross_entropy_ls(out.f_logits, IDS6, 0.1).item(), rel=1e-6)
    att = attribute_ce(out.a_logits["color"], ATTRS6["color"]).item()
    assert terms["att/color"].item() == pytest.approx(5 * 2 * att, rel=1e-6)
    assert terms["tri_g"].item() == pytest.approx(3 * attribute_triplet(out.g_vec, ATTRS6, 0.3).item(), rel=1e-6)
    assert terms["id_j"].item() == pytest.approx(cross_entropy_ls(out.j_logits, IDS6, 0.1).item(), rel=1e-6)


def test_raw_terms_do_not_depend_on_the_lambdas() -> None:
    """``train/raw/<term>`` is comparable across sweep trials: same batch, other lambdas, same raw values."""
    out = _fake_output(joint=True, attrs=True)
    a = Criterion(CFG)(out, IDS6, ATTRS6)
    b = Criterion(LossCfg(label_smoothing=0.1, triplet_margin=0.3, lambda_a=0.1, lambda_g=0.0, lambda_van=7.0))(
        out, IDS6, ATTRS6)
    assert set(a.raw) == set(a) and all(torch.equal(a.raw[k], b.raw[k]) for k in a.raw)
    assert b["tri_g"].item() == 0.0 and a.raw["tri_g"].item() > 0.0
    assert a["att/type"].item() == pytest.approx(5 * 2 * a.raw["att/type"].item(), rel=1e-6)


def test_criterion_stage_two_drops_f_terms_and_adds_ac() -> None:
    out = _fake_output(joint=True, attrs=True)
    terms = Criterion(CFG, amelioration=True)(out, IDS6, ATTRS6)
    assert set(terms) == {"att/color", "att/type", "tri_j", "id_j", "tri_g", "ac_tri", "ac_id"}
    assert terms["ac_id"].item() == pytest.approx(ac_id(out.f_logits, out.j_logits, IDS6, 0.1).item())
    assert terms["ac_tri"].item() == pytest.approx(ac_tri(out.f_vec, out.j_vec, IDS6).item())


def test_criterion_baseline_and_van_terms() -> None:
    base = Criterion(CFG)(_fake_output(joint=False, attrs=False), IDS6, {})
    assert set(base) == {"tri_f", "id_f"}
    out = _fake_output(joint=False, attrs=True)
    van = Criterion(CFG)(out, IDS6, ATTRS6)
    assert set(van) == {"tri_f", "id_f", "att/color", "att/type"}
    # no joint module: the loss is L_VAN itself (eq. 4), lambda_van has nothing to balance
    assert van["id_f"].item() == pytest.approx(cross_entropy_ls(out.f_logits, IDS6, 0.1).item(), rel=1e-6)
    with pytest.raises(UserError, match="amelioration"):
        Criterion(CFG, amelioration=True)(out, IDS6, ATTRS6)
    with pytest.raises(UserError, match="type"):
        Criterion(CFG)(out, IDS6, {"color": ATTRS6["color"]})
