"""gie_cli.metrics: LPIPS parity with the lpips package, SSIM/MS-SSIM/PSNR/MSE against independent references."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_torchvision

from gie_cli.errors import GieError, StateDictMismatchError, UsageError, WeightsUnavailableError
from gie_cli.metrics import (
    LPIPS,
    MetricStatus,
    lpips_available,
    metric_status,
    metrics_status,
    ms_ssim,
    mse,
    psnr,
    ssim,
)
from gie_cli.metrics import lpips as glp
from gie_cli.metrics.ssim import MS_SSIM_WEIGHTS, ms_ssim_scales

NETS = ("vgg", "alex")


# ----------------------------------------------------------------------------------------------- helpers


def _import_lpips_with_shim():
    """Imports the real ``lpips`` package (torchvision through the shim of ``conftest.import_torchvision``)."""
    import_torchvision()
    import lpips

    return lpips


@pytest.fixture(scope="module")
def lpips_pkg():
    try:
        return _import_lpips_with_shim()
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot compare here"
        pytest.skip(f"lpips package not importable even with the torchvision shim: {type(e).__name__}: {e}")


def _images(b: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(b, 3, size, size, generator=g)).clamp(-1, 1)
    return x, y


def _torchvision_checkpoint(features: dict[str, torch.Tensor], path: Path) -> Path:
    """Writes a file laid out like torchvision's ImageNet checkpoints: ``features.*`` plus ``classifier.*`` keys."""
    sd = {f"features.{k}": v.clone() for k, v in features.items()}
    sd["classifier.1.weight"] = torch.zeros(4, 4)  # stands in for the classifier, which LPIPS must ignore
    sd["classifier.1.bias"] = torch.zeros(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def _random_features(net: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return LPIPS(net, pretrained_backbone=False).net.features.state_dict()


# ----------------------------------------------------------------------------------------------- LPIPS


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")
@pytest.mark.parametrize("net", NETS)
def test_lpips_parity_with_lpips_package(net, lpips_pkg, tmp_path):
    torch.manual_seed(0)
    ref = lpips_pkg.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    # lpips's net.sliceK.N modules are torchvision's features.N
    features = {k.split(".", 1)[1]: v for k, v in ref.net.state_dict().items()}
    ckpt = _torchvision_checkpoint(features, tmp_path / glp.BACKBONE_FILES[net])
    ours = LPIPS(net, backbone_weights=ckpt)
    assert sorted(ours.net.features.state_dict()) == sorted(features)
    for k in range(5):  # heads read from the wheel without importing lpips equal lpips's own
        assert torch.equal(ours.lins[k].model[1].weight, getattr(ref, f"lin{k}").model[1].weight)

    x, y = _images(3)
    xr, yr = x.clone().requires_grad_(True), y.clone()
    xo = x.clone().requires_grad_(True)
    d_ref = ref(xr, yr)
    d_ours = ours(xo, y)
    assert d_ref.shape == (3, 1, 1, 1) and d_ours.shape == (3,)
    assert (d_ours.detach() - d_ref.detach().flatten()).abs().max().item() <= 1e-5
    d_ref.sum().backward()
    d_ours.sum().backward()
    gmax = xr.grad.abs().max().item()
    assert gmax > 0 and (xo.grad - xr.grad).abs().max().item() <= 1e-4 * gmax
    assert ours(x, x).abs().max().item() <= 1e-7


@pytest.mark.parametrize("net", NETS)
def test_lpips_frozen_but_differentiable(net):
    m = LPIPS(net, pretrained_backbone=False)
    assert not any(p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training and not any(mod.training for mod in m.modules())
    x, y = _images(2)
    x.requires_grad_(True)
    d = m(x, y)
    assert d.shape == (2,) and torch.all(d > 0)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert m(y, y).abs().max().item() <= 1e-7
    with pytest.raises(ValueError):
        m(x, y[:, :, :32])
    with pytest.raises(ValueError):
        m(x[:, :1], y[:, :1])


def test_lpips_unknown_net():
    with pytest.raises(ValueError, match="squeeze"):
        LPIPS("squeeze", pretrained_backbone=False)
    assert lpips_available("squeeze")[0] is False


def _isolate_lookup(monkeypatch, tmp_path: Path) -> tuple[Path, Path]:
    """Points the hub dir and GIE_CACHE_DIR into ``tmp_path``; returns ``(gie_torch_dir, hub_checkpoints)``."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "gie"))
    return tmp_path / "gie" / "torch", hub / "checkpoints"


def test_lpips_weight_lookup_order(monkeypatch, tmp_path):
    gie_dir, hub_dir = _isolate_lookup(monkeypatch, tmp_path)
    name = glp.BACKBONE_FILES["alex"]
    feats = {tag: _random_features("alex", seed) for seed, tag in enumerate(("explicit", "gie", "hub"))}
    explicit = _torchvision_checkpoint(feats["explicit"], tmp_path / "mine" / "alex.pth")
    _torchvision_checkpoint(feats["hub"], hub_dir / name)

    def conv0(m: LPIPS) -> torch.Tensor:
        return m.net.features[0].weight

    assert torch.equal(conv0(LPIPS("alex")), feats["hub"]["0.weight"])  # no GIE cache file yet: hub dir
    _torchvision_checkpoint(feats["gie"], gie_dir / name)
    assert glp.find_backbone_weights("alex") == gie_dir / name
    assert torch.equal(conv0(LPIPS("alex")), feats["gie"]["0.weight"])  # $GIE_CACHE_DIR/torch wins over the hub
    assert torch.equal(conv0(LPIPS("alex", backbone_weights=explicit)), feats["explicit"]["0.weight"])
    # a folder holding the canonical file name also works
    assert glp.find_backbone_weights("alex", gie_dir) == gie_dir / name
    assert lpips_available("alex") == (True, "")
    assert metric_status("lpips-alex") == MetricStatus("lpips-alex", True, None)


def test_lpips_missing_weights(monkeypatch, tmp_path):
    gie_dir, hub_dir = _isolate_lookup(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailableError) as ei:
        LPIPS("vgg")
    e = ei.value
    name = "vgg16-397923af.pth"
    assert isinstance(e, GieError) and e.name == name
    assert e.path == str(gie_dir / name)
    assert e.checked == [str(gie_dir / name), str(hub_dir / name)]
    assert e.urls == ["https://download.pytorch.org/models/vgg16-397923af.pth"]
    for part in (name, str(gie_dir / name), str(hub_dir / name), e.urls[0]):
        assert part in str(e)

    # an explicit path is the only place looked at: no fallback to the cache folders
    _torchvision_checkpoint(_random_features("vgg", 0), hub_dir / name)
    with pytest.raises(WeightsUnavailableError) as ei:
        LPIPS("vgg", backbone_weights=tmp_path / "nope.pth")
    assert ei.value.checked == [str(tmp_path / "nope.pth")]

    # missing AlexNet never falls back to VGG
    ok, reason = lpips_available("alex")
    assert not ok and "alexnet-owt-7be5be79.pth" in reason and "download.pytorch.org" in reason
    assert lpips_available("vgg") == (True, "")
    statuses = {s.name: s for s in metrics_status()}
    assert statuses["lpips-alex"].available is False and statuses["lpips-alex"].reason == reason
    assert statuses["lpips-vgg"] == MetricStatus("lpips-vgg", True, None)
    assert all(statuses[n].available for n in ("mse", "psnr", "ssim", "ms-ssim"))
    with pytest.raises(UsageError):
        metric_status("lpips-squeeze")


def test_lpips_heads_need_the_lpips_wheel(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(WeightsUnavailableError, match="lpips/weights/v0.1/alex.pth"):
        LPIPS("alex", pretrained_backbone=False)
    ok, reason = lpips_available("alex")
    assert not ok and "PerceptualSimilarity" in reason


def test_lpips_wrong_checkpoint(tmp_path):
    bad = _torchvision_checkpoint(_random_features("alex", 0), tmp_path / "alex_as_vgg.pth")
    with pytest.raises(StateDictMismatchError):
        LPIPS("vgg", backbone_weights=bad)


def test_weights_error_pickles():
    import pickle

    e = WeightsUnavailableError("a.pth", "/x/a.pth", ["https://example.org/a.pth"], ["/x/a.pth", "/y/a.pth"])
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.checked == e.checked and e2.urls == e.urls


def test_import_does_not_pull_torchvision_or_lpips():
    code = (
        "import sys, gie_cli.metrics, gie_cli.metrics.lpips, gie_cli.metrics.ssim, gie_cli.metrics.availability; "
        "bad = [m for m in ('torchvision', 'lpips') if m in sys.modules]; assert not bad, bad; "
        "gie_cli.metrics.lpips.head_weights_path('vgg'); assert 'lpips' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]


# ----------------------------------------------------------------------------------------------- SSIM family


def _noisy_pair(b: int, c: int, h: int, w: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, c, h // 8 + 1, w // 8 + 1, generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)  # some structure
    x = (0.7 * x + 0.3 * torch.rand(b, c, h, w, generator=g)).double()
    y = (x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize(("c", "h", "w", "data_range"), [(3, 64, 64, 1.0), (1, 48, 80, 1.0), (3, 40, 52, 255.0)])
def test_ssim_psnr_match_skimage(c, h, w, data_range):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y = _noisy_pair(3, c, h, w, 0.1)
    x, y = x * data_range, y * data_range
    ours_s = ssim(x.float(), y.float(), data_range=data_range)
    ours_p = psnr(x.float(), y.float(), data_range=data_range)
    assert ours_s.shape == (3,) and ours_p.shape == (3,)
    for i in range(3):
        a, b = x[i].numpy(), y[i].numpy()
        kw = {"channel_axis": 0} if c > 1 else {}
        if c == 1:
            a, b = a[0], b[0]
        ref_s = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, **kw
        )
        ref_p = peak_signal_noise_ratio(a, b, data_range=data_range)
        assert abs(ours_s[i].item() - ref_s) <= 1e-4, (ours_s[i].item(), ref_s)
        assert abs(ours_p[i].item() - ref_p) <= 1e-4, (ours_p[i].item(), ref_p)


def test_mse_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(2, 1, 2, 2).clone()
    y[1] *= 0.5
    assert torch.allclose(mse(x, y), torch.tensor([30 / 4, 7.5 / 4]))
    assert torch.allclose(psnr(x, y / 10, data_range=1.0), 10 * torch.log10(1 / torch.tensor([0.075, 0.01875])))
    assert torch.isinf(psnr(y, y)).all()
    with pytest.raises(ValueError):
        mse(x, y[:, :, :1])


def _np_ms_ssim(x: np.ndarray, y: np.ndarray, weights: list[float]) -> float:
    """Independent float64 MS-SSIM of one [C,H,W] pair: scipy Gaussian filter (reflect, then crop) + 2x2 means."""
    from scipy.ndimage import gaussian_filter

    def stats(a, b):
        f = lambda v: np.stack([gaussian_filter(ch, 1.5, truncate=3.5, mode="reflect") for ch in v])[:, 5:-5, 5:-5]  # noqa: E731
        mx, my = f(a), f(b)
        vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        cs = (2 * cxy + c2) / (vx + vy + c2)
        return (((2 * mx * my + c1) / (mx**2 + my**2 + c1)) * cs).mean(), cs.mean()

    def pool(a):
        h, w = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
        return a[:, :h, :w].reshape(a.shape[0], h // 2, 2, w // 2, 2).mean(axis=(2, 4))

    out = 1.0
    for i, wt in enumerate(weights):
        if i:
            x, y = pool(x), pool(y)
        s, cs = stats(x, y)
        out *= (s if i == len(weights) - 1 else cs) ** wt
    return float(out)


@pytest.mark.parametrize("size", [192, 64])
def test_ms_ssim_matches_numpy_reference(size):
    x, y = _noisy_pair(2, 3, size, size, 0.08)
    n = ms_ssim_scales(size, size)
    weights = list(MS_SSIM_WEIGHTS[:n])
    if n < 5:  # documented small-image rule: fewer scales, weights rescaled to the full sum
        weights = [v * sum(MS_SSIM_WEIGHTS) / sum(weights) for v in weights]
    ours = ms_ssim(x.float(), y.float())
    for i in range(2):
        assert abs(ours[i].item() - _np_ms_ssim(x[i].numpy(), y[i].numpy(), weights)) <= 1e-4


def test_ms_ssim_small_images():
    assert ms_ssim_scales(176, 176) == 5 and ms_ssim_scales(175, 300) == 4
    assert ms_ssim_scales(64, 64) == 3 and ms_ssim_scales(11, 11) == 1 and ms_ssim_scales(10, 64) == 0
    x, y = _noisy_pair(1, 3, 64, 64, 0.1)
    v = ms_ssim(x, y)
    assert torch.isfinite(v).all() and 0 < v.item() < 1
    # 11x11: a single scale, i.e. plain SSIM (the lone weight is raised to the full sum, ~1.0001)
    x11, y11 = x[..., :11, :11], y[..., :11, :11]
    assert torch.allclose(ms_ssim(x11, y11), ssim(x11, y11).pow(sum(MS_SSIM_WEIGHTS)))
    with pytest.raises(ValueError, match="smaller than"):
        ms_ssim(x[..., :10, :], y[..., :10, :])
    with pytest.raises(ValueError, match="smaller than"):
        ssim(x[..., :10, :], y[..., :10, :])


@pytest.mark.parametrize("size", [64, 192])
def test_identity_and_monotonic_in_noise(size):
    x, _ = _noisy_pair(2, 3, size, size, 0.0)
    x = x.float()
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    levels = [0.02, 0.05, 0.1, 0.2, 0.4]
    vals = {f: [] for f in ("ssim", "ms_ssim", "psnr", "mse")}
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    for s in levels:
        y = (x + s * noise).clamp(0, 1)
        vals["ssim"].append(ssim(x, y))
        vals["ms_ssim"].append(ms_ssim(x, y))
        vals["psnr"].append(psnr(x, y))
        vals["mse"].append(mse(x, y))
    for f, v in vals.items():
        steps = torch.diff(torch.stack(v), dim=0)
        assert (steps > 0).all() if f == "mse" else (steps < 0).all(), f


def test_ssim_family_is_differentiable():
    x, y = _noisy_pair(2, 3, 64, 64, 0.1)
    for fn in (ssim, ms_ssim, psnr, mse):
        xg = x.float().requires_grad_(True)
        fn(xg, y.float()).sum().backward()
        assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0, fn.__name__
    # anti-correlated images: cs/ssim means are negative; the clamp keeps value and gradient finite
    xg = x.float().requires_grad_(True)
    v = ms_ssim(xg, 1 - x.float())
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(xg.grad).all()
    # float64 stays float64
    assert ssim(x, y).dtype == torch.float64
