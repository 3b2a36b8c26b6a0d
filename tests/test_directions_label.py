"""Style Transformer label-based editing: first/second-order paths move a trained latent classifier to the target."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gie_cli.editing import Direction, apply
from gie_cli.editing.fit import label_direction, train_latent_classifier
from gie_cli.editing.label import (
    CELEBA_ATTRIBUTES,
    LatentClassifier,
    classifier_config_from_state_dict,
    label_edit_direction,
    loss_gradient,
)

L, D = 4, 8


@pytest.fixture(scope="module")
def trained():
    """Latents [N, L, D] with two planted attributes, and a latent classifier trained on them in the test."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(600, L, D, generator=gen)
    a = torch.randn(2, L * D, generator=gen)
    labels = (w.reshape(600, -1) @ a.T > 0).float()  # [N, 2]
    clf = train_latent_classifier(w, labels, hidden=(64,), embed_dim=16, steps=80, lr=1e-2, seed=0)
    acc = float(((clf(w) > 0).float() == labels).float().mean())
    assert acc > 0.9
    return w, labels, clf


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("target", [1.0, 0.0])
def test_label_edits_move_the_classifier_toward_the_target(trained, order, target):
    w, labels, clf = trained
    # start from codes that are currently on the other side of attribute 0
    start = w[(labels[:, 0] != target)][:40]
    prob = lambda x: torch.sigmoid(clf(x)[:, 0])  # noqa: E731
    with torch.no_grad():
        p0 = prob(start)
    d = label_edit_direction(clf, start, attribute=0, target=target, order=order, xi=1e-3, seed=1)
    assert torch.allclose(d.norm(dim=-1), torch.ones(len(start), L), atol=1e-5)  # unit rows per W+ layer
    sign = 1.0 if target == 1.0 else -1.0
    with torch.no_grad():
        p1, p3 = prob(start + 1.0 * d), prob(start + 3.0 * d)
    assert bool((sign * (p1 - p0) > 0).float().mean() > 0.9)
    assert float(sign * (p3.mean() - p1.mean())) > 0  # a larger power moves further
    moved = (p3 > 0.5).float() if target == 1.0 else (p3 < 0.5).float()
    assert float(moved.mean()) > 0.5
    # no classifier gradient leaks into the frozen classifier
    assert all(p.grad is None for p in clf.parameters())


def test_second_order_is_seeded_and_differs_from_first_order(trained):
    w, labels, clf = trained
    x = w[labels[:, 0] == 0][:8]  # not yet at the target: the loss gradient is not saturated
    d1 = label_edit_direction(clf, x, 0, 1.0, order=1)
    d2a = label_edit_direction(clf, x, 0, 1.0, order=2, xi=0.5, seed=3)
    d2b = label_edit_direction(clf, x, 0, 1.0, order=2, xi=0.5, seed=3)
    assert torch.equal(d2a, d2b) and not torch.allclose(d1, d2a, atol=1e-3)
    # layers restriction: only the allowed W+ rows move
    dl = label_edit_direction(clf, x, 0, 1.0, layers=[1, 2])
    assert torch.count_nonzero(dl[:, [0, 3]]) == 0 and torch.allclose(dl[:, 1:3].norm(dim=-1), torch.ones(8, 2))


def test_hessian_of_a_piecewise_linear_classifier_is_along_its_gradient(trained):
    """Why second order equals first order for the LCNet layout (issue 18): with (leaky) ReLU layers C is piecewise
    linear, so the BCE's Hessian is ``s(1 - s) grad C grad C^T`` (rank one) and any finite-difference second-order
    term ``(g(w + xi r) - g(w)) / xi`` lies along the first-order gradient wherever no kink is crossed."""
    w, labels, clf = trained
    clf = copy.deepcopy(clf).double()  # float64: the second difference is far below float32's resolution
    x = w[labels[:, 0] == 0][:32].double()
    gen = torch.Generator().manual_seed(5)
    r = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    xi = 1e-4
    g0 = loss_gradient(clf, x, 0, 1.0)
    hv = (loss_gradient(clf, x + xi * r, 0, 1.0) - g0) / xi
    cos = torch.nn.functional.cosine_similarity(hv.flatten(1), g0.flatten(1), dim=1).abs()
    assert float(cos.median()) > 0.999
    # a smooth classifier has curvature of its own: the same probe leaves the gradient's line
    torch.manual_seed(0)
    smooth = nn.Sequential(nn.Flatten(), nn.Linear(L * D, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    gs = loss_gradient(smooth, x, 0, 1.0)
    hs = (loss_gradient(smooth, x + xi * r, 0, 1.0) - gs) / xi
    assert float(torch.nn.functional.cosine_similarity(hs.flatten(1), gs.flatten(1), dim=1).abs().median()) < 0.99


def test_label_direction_file_stores_the_classifier_and_applies_the_same_path(trained, tmp_path):
    w, _, clf = trained
    binding = {"id": "toy", "fingerprint": None, "size": 8, "style_dim": D, "n_latent": L}
    d = label_direction("attr0", clf, 0, binding, {"method": "fit:label"}, target=1.0, order=2, seed=4)
    back = Direction.load(d.save(tmp_path))
    assert back.space == "label" and back.depends_on_latent and back.params["order"] == 2
    x = w[:5]
    e = apply(back, 2.5, x)
    ref = 2.5 * label_edit_direction(clf, x, 0, 1.0, order=2, xi=1e-3, seed=4)
    assert torch.allclose(e.delta, ref, atol=1e-5)
    # the editing path depends on the code: different codes get different offsets
    assert not torch.allclose(e.delta[0], e.delta[1])


def test_official_lcnet40_layout_loads_and_names_celeba_attributes():
    clf = LatentClassifier([L * D, 16], 40, embed_dim=32)
    sd = clf.state_dict()
    assert {"fcs.0.weight", "indep_fcs.39.weight", "output_fcs.39.bias"} <= set(sd)
    cfg = classifier_config_from_state_dict(sd)
    assert cfg == {"fmaps": [L * D, 16], "n_classes": 40, "embed_dim": 32}
    clf2 = LatentClassifier(**cfg)
    clf2.load_state_dict(sd, strict=True)
    assert clf2.attribute_index("smiling") == CELEBA_ATTRIBUTES.index("Smiling") == 31
    assert clf2.attribute_index("20") == 20
    with pytest.raises(ValueError, match="unknown attribute"):
        clf2.attribute_index("Sunglasses")
    assert clf2(torch.zeros(3, L, D)).shape == (3, 40)
