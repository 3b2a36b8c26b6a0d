"""ArcFace identity, FID, region errors and their availability: official layouts, independent reference values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import import_torchvision

from gie_cli.errors import StateDictMismatchError, UsageError, WeightsUnavailableError
from gie_cli.metrics import MetricStatus, metric_status, metrics_status
from gie_cli.metrics.fid import (
    FIDInceptionV3,
    feature_statistics,
    fid_available,
    fid_from_features,
    frechet_distance,
    load_fid_inception,
)
from gie_cli.metrics.identity import (
    IdentityNet,
    face_crop,
    identity_available,
    identity_similarity,
    load_identity_net,
)
from gie_cli.metrics.regions import masked_mse
from gie_cli.models.encoders.ir_se import IRSEBackbone

# ----------------------------------------------------------------------------------------------- helpers


def _randomize_bn(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random BatchNorm affine parameters and running statistics (so eval-mode BN is not the identity)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        v = v.clone()
        if k.endswith("running_var"):
            v = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("running_mean"):
            v = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("num_batches_tracked"):
            v = torch.tensor(7)
        out[k] = v
    return out


def _isolate(monkeypatch, tmp_path):
    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------------------------- FID math


def test_frechet_distance_gaussians_by_hand():
    # diagonal: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (1 - 2)^2 + (2 - 3)^2 = 7
    d = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert d == pytest.approx(7.0, abs=1e-9)
    # commuting, non-diagonal: a shared rotation leaves the value unchanged
    c, s = np.cos(0.7), np.sin(0.7)
    r = np.array([[c, -s], [s, c]])
    s1, s2 = r @ np.diag([1.0, 4.0]) @ r.T, r @ np.diag([4.0, 9.0]) @ r.T
    d = frechet_distance(np.zeros(2), s1, np.array([1.0, 2.0]), s2)
    assert d == pytest.approx(7.0, abs=1e-9)
    # identical Gaussians: 0; only the mean differs: squared distance of the means
    sig = np.array([[2.0, 0.3], [0.3, 1.0]])
    assert frechet_distance(np.ones(2), sig, np.ones(2), sig) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(np.zeros(2), sig, np.array([3.0, 4.0]), sig) == pytest.approx(25.0, abs=1e-9)
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2 for standard deviations s
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + 1.0, abs=1e-12)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(3))


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T  # non-commuting covariances
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("n1", "n2", "d"), [(10, 14, 40), (60, 50, 8)])
def test_fid_from_features(n1, n2, d):
    rng = np.random.default_rng(1)
    fa = rng.normal(size=(n1, d))
    fb = rng.normal(size=(n2, d)) * 1.5 + 0.3
    mu1, s1 = feature_statistics(fa)
    assert np.allclose(mu1, fa.mean(0)) and np.allclose(s1, np.cov(fa, rowvar=False))  # unbiased (N - 1)
    direct = frechet_distance(mu1, s1, *feature_statistics(fb))  # the D x D form
    # N < D: the D x D form takes square roots of eigenvalues that are 0 up to round-off (~1e-8 each), hence rel 1e-6
    assert fid_from_features(fa, fb) == pytest.approx(direct, rel=1e-6)
    assert fid_from_features(torch.from_numpy(fa), torch.from_numpy(fb)) == pytest.approx(direct, rel=1e-6)
    # a set with itself: 0 (both forms)
    assert abs(fid_from_features(fa, fa)) < 1e-9 * max(1.0, float(np.trace(s1)))
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-7 * float(np.trace(s1))
    with pytest.raises(ValueError):
        fid_from_features(fa[:1], fb)


# ----------------------------------------------------------------------------------------------- FID network


_FID_TENSORS = 566  # torchvision Inception3(num_classes=1008, aux_logits=False): state-dict entries
_FID_PARAMS = 23_850_960  # its learnable parameters


def _fid_reference_model():
    """pytorch-fid's ``fid_inception_v3()`` architecture from torchvision's blocks with its FID patches."""
    tv = import_torchvision()
    from torchvision.models import inception as tvi

    def pool_avg(x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class A(tvi.InceptionA):
        def forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(pool_avg(x))], 1)

    class C(tvi.InceptionC):
        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = self.branch7x7dbl_1(x)
            for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                d = m(d)
            return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(pool_avg(x))], 1)

    class E(tvi.InceptionE):
        def __init__(self, c, use_max):
            super().__init__(c)
            self.use_max = use_max

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            p = F.max_pool2d(x, 3, 1, 1) if self.use_max else pool_avg(x)
            return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(p)], 1)

    torch.manual_seed(0)
    m = tv.models.inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    m.Mixed_5b, m.Mixed_5c, m.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    m.Mixed_6b, m.Mixed_6c, m.Mixed_6d, m.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
    m.Mixed_7b, m.Mixed_7c = E(1280, False), E(2048, True)
    return m.eval()


def _pool3(ref, x01: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's InceptionV3 forward to block 3: resize [0, 1] images to 299, map to [-1, 1], pool3."""
    x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
        x = getattr(ref, name)(x)
    x = F.max_pool2d(x, 3, 2)
    x = ref.Conv2d_4a_3x3(ref.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, 2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
        x = getattr(ref, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def test_fid_inception_layout_and_parity(tmp_path):
    ours = FIDInceptionV3()
    sd = ours.state_dict()
    assert len(sd) == _FID_TENSORS and sum(p.numel() for p in ours.parameters()) == _FID_PARAMS
    assert tuple(sd["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["Mixed_7c.branch_pool.conv.weight"].shape) == (192, 2048, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048)
    try:
        ref = _fid_reference_model()
    except Exception as e:  # noqa: BLE001 - without torchvision there is no reference to compare with
        pytest.skip(f"torchvision not importable even with the shim: {type(e).__name__}: {e}")
    official = _randomize_bn(ref.state_dict(), 1)
    assert {k: tuple(v.shape) for k, v in official.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    ref.load_state_dict(official)
    # a file like pytorch-fid's (old torch: no num_batches_tracked) loads strictly through the file lookup
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}, path)
    net = load_fid_inception(path)
    g = torch.Generator().manual_seed(2)
    x01 = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        want = _pool3(ref, x01)
        got = net(x01 * 2 - 1)
    assert got.shape == (1, 2048) and want.abs().max() > 0
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_fid_inception_rejects_wrong_layout(tmp_path):
    sd = FIDInceptionV3().state_dict()
    bad = {k.replace("Mixed_7c", "Mixed_7d"): v for k, v in sd.items()}
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(StateDictMismatchError, match="Mixed_7d"):
        load_fid_inception(path)


# ----------------------------------------------------------------------------------------------- identity


def _official_arcface_keys() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of pSp's ``Backbone(112, 50, "ir_se")`` = ``model_ir_se50.pth`` (anchors.md 3.1 + the head)."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{s}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["input_layer.0.weight"] = (64, 3, 3, 3)
    bn("input_layer.1", 64)
    keys["input_layer.2.weight"] = (64,)
    units = [(64, 64)] * 3 + [(64, 128)] + [(128, 128)] * 3 + [(128, 256)] + [(256, 256)] * 13
    units += [(256, 512)] + [(512, 512)] * 2
    assert len(units) == 24
    for i, (cin, d) in enumerate(units):
        p = f"body.{i}"
        if cin != d:
            keys[f"{p}.shortcut_layer.0.weight"] = (d, cin, 1, 1)
            bn(f"{p}.shortcut_layer.1", d)
        bn(f"{p}.res_layer.0", cin)
        keys[f"{p}.res_layer.1.weight"] = (d, cin, 3, 3)
        keys[f"{p}.res_layer.2.weight"] = (d,)
        keys[f"{p}.res_layer.3.weight"] = (d, d, 3, 3)
        bn(f"{p}.res_layer.4", d)
        keys[f"{p}.res_layer.5.fc1.weight"] = (d // 16, d, 1, 1)
        keys[f"{p}.res_layer.5.fc2.weight"] = (d, d // 16, 1, 1)
    bn("output_layer.0", 512)
    keys["output_layer.3.weight"] = (512, 512 * 7 * 7)
    keys["output_layer.3.bias"] = (512,)
    bn("output_layer.4", 512)
    return keys


def _bn_eval(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.batch_norm(
        x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5
    )


def test_identity_net_official_layout_and_head(tmp_path):
    net = IdentityNet()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == _official_arcface_keys()
    torch.manual_seed(3)
    official = _randomize_bn(net.state_dict(), 4)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(official, path)
    net = load_identity_net(path)
    assert not net.training and not any(p.requires_grad for p in net.parameters())

    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    # reference: pSp's crop + pool, then backbone -> BN2d -> flatten -> linear -> BN1d -> l2-normalise
    with torch.device("meta"):
        backbone = IRSEBackbone(50, "ir_se")
    backbone.load_state_dict({k: v for k, v in official.items() if not k.startswith("output_layer.")}, assign=True)
    backbone.eval()

    def ref_embed(img):
        crop = F.adaptive_avg_pool2d(img[:, :, 35:223, 32:220], (112, 112))
        f = _bn_eval(backbone(crop), official, "output_layer.0").flatten(1)
        f = F.linear(f, official["output_layer.3.weight"], official["output_layer.3.bias"])
        f = _bn_eval(f, official, "output_layer.4")
        return f / f.norm(dim=1, keepdim=True)

    with torch.no_grad():
        want = ref_embed(torch.cat([x, y]))
        emb = net.embed(torch.cat([x, y]))
        assert emb.shape == (2, 512) and torch.allclose(emb, want, atol=1e-5)
        assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
        sim = identity_similarity(net, torch.cat([x, y]), torch.cat([y, y]))
        assert torch.allclose(sim, torch.stack([(want[0] * want[1]).sum(), torch.tensor(1.0)]), atol=1e-5)
    with pytest.raises(ValueError):
        identity_similarity(net, x, y[:, :, :128])


def test_face_crop_sizes():
    g = torch.Generator().manual_seed(6)
    x256 = torch.rand(1, 3, 256, 256, generator=g)
    assert torch.equal(face_crop(x256), F.adaptive_avg_pool2d(x256[:, :, 35:223, 32:220], (112, 112)))
    x1024 = torch.rand(1, 3, 1024, 1024, generator=g)
    pooled = x1024.reshape(1, 3, 256, 4, 256, 4).mean(dim=(3, 5))  # e4e/HFGI AdaptiveAvgPool2d(256): 4x4 means
    assert torch.allclose(face_crop(x1024), face_crop(pooled), atol=1e-6)
    x64 = torch.rand(1, 3, 64, 64, generator=g)
    up = F.interpolate(x64, size=(256, 256), mode="bilinear", align_corners=False)
    assert torch.allclose(face_crop(x64), face_crop(up))
    assert face_crop(x64).shape == (1, 3, 112, 112)


def test_identity_net_loads_old_checkpoints_and_rejects_others(tmp_path):
    small = {"unit_counts": (1, 1, 1, 1), "widths": (8, 16, 16, 32)}
    sd = IdentityNet(**small).state_dict()
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, path)
    net = load_identity_net(path, **small)
    assert net.embed(torch.zeros(1, 3, 64, 64)).shape == (1, 32)
    torch.save({k: v for k, v in sd.items() if not k.startswith("output_layer.3.")}, path)
    with pytest.raises(StateDictMismatchError, match=r"output_layer\.3\.weight"):
        load_identity_net(path, **small)


# ----------------------------------------------------------------------------------------------- availability


def test_identity_and_fid_availability(monkeypatch, tmp_path):
    cache = _isolate(monkeypatch, tmp_path)
    ok, reason = identity_available()
    want = cache / "arcface.ir_se50" / "model_ir_se50.pth"
    assert not ok and str(want) in reason and "1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn" in reason
    assert "gie weights download arcface.ir_se50" in reason
    with pytest.raises(WeightsUnavailableError):
        load_identity_net()
    ok, reason = fid_available()
    fid_file = "pt_inception-2015-12-05-6726825d.pth"
    assert not ok and str(cache / "fid.inception" / fid_file) in reason
    assert str(tmp_path / "hub" / "checkpoints" / fid_file) in reason and "mseitzer/pytorch-fid" in reason
    statuses = {s.name: s for s in metrics_status()}
    assert statuses["identity"] == MetricStatus("identity", False, identity_available()[1])
    assert statuses["fid"].available is False and statuses["mse"].available
    # an explicit path is the only place looked at
    st = metric_status("identity", tmp_path / "nope.pth")
    assert not st.available and str(tmp_path / "nope.pth") in st.reason and str(want) not in st.reason
    # files in place (existence only is checked): available; pytorch-fid's torch-hub copy counts too
    want.parent.mkdir(parents=True)
    want.write_bytes(b"x")
    hub = tmp_path / "hub" / "checkpoints" / fid_file
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"x")
    assert metric_status("identity") == MetricStatus("identity", True, None)
    assert metric_status("fid") == MetricStatus("fid", True, None)
    with pytest.raises(UsageError):
        metric_status("arcface")


# ----------------------------------------------------------------------------------------------- regions


def test_masked_mse_by_hand():
    x = torch.zeros(2, 3, 2, 2)
    y = torch.zeros(2, 3, 2, 2)
    y[0, :, 0, 0] = 1.0  # inside the mask of image 0
    y[0, :, 1, 1] = 0.5  # outside
    y[1] = 0.2
    mask = torch.tensor([[[True, False], [False, False]], [[False, False], [False, False]]])
    inside, outside = masked_mse(x, y, mask)
    assert inside[0].item() == pytest.approx(1.0) and outside[0].item() == pytest.approx(0.25 / 3)
    assert torch.isnan(inside[1]) and outside[1].item() == pytest.approx(0.04)
    with pytest.raises(ValueError):
        masked_mse(x, y[:, :, :1], mask)
