"""Image-specific fine detail of the synthetic world (freckles, moles, marks, grain, strands), keyed by a seed."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SKIN_TEX_X", "SKIN_TEX_Y", "DetailMaps", "detail_maps", "sample_periodic", "sample_skin"]

SKIN_TEX_X = (-1.6, 1.6)  # extent of the skin detail texture in head x
SKIN_TEX_Y = (-1.5, 1.9)  # ... and head y


@dataclass(frozen=True)
class DetailMaps:
    """Detail textures of one seed (read-only arrays).

    Attributes:
        res: Skin texels per head unit.
        skin_dark: ``[Ht, Wt]`` darkening in [0, 1] over `SKIN_TEX_X` x `SKIN_TEX_Y` (freckles, moles, small marks).
        grain: ``[Ht, Wt]`` zero-mean skin grain with unit standard deviation.
        hair_strands: ``[1024]`` zero-mean strand brightness over the head azimuth [-pi, pi).
        curtain_strands: ``[1024]`` strand brightness of long hair over head-screen X in [-3, 3).
        curtain_ends: ``[256]`` smooth noise in [-1, 1] over X in [-3, 3) (ragged ends of long hair).
        iris: ``[64]`` iris brightness noise over the angle [-pi, pi).
        hairline: ``[256]`` smooth noise in [-1, 1] over the azimuth (hairline waviness).
        bg_blobs: ``[6, 6]`` background blobs: u, v (crop coordinates), radius, RGB offset.
        bg_wave: ``[3]`` background stripes: angle, frequency (cycles per crop), phase.
    """

    res: float
    skin_dark: np.ndarray
    grain: np.ndarray
    hair_strands: np.ndarray
    curtain_strands: np.ndarray
    curtain_ends: np.ndarray
    iris: np.ndarray
    hairline: np.ndarray
    bg_blobs: np.ndarray
    bg_wave: np.ndarray


def _norm(v: np.ndarray) -> np.ndarray:
    v = v - v.mean()
    return v / max(float(np.abs(v).max()), 1e-6)


def _strands(rng: np.random.Generator, n: int, sigma: float, n_bright: int) -> np.ndarray:
    v = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma, mode="wrap")
    v = v / max(float(v.std()), 1e-6)
    for _ in range(n_bright):
        k = int(rng.integers(n))
        v[k] += rng.uniform(1.5, 3.0)
    return np.clip(v, -3, 3).astype(np.float32) / 3.0


def _splat(img: np.ndarray, fx: np.ndarray, fy: np.ndarray, w: np.ndarray) -> None:
    """Bilinear splat of weights ``w`` at texel coordinates (fx, fy) into ``img`` (in place)."""
    h, wd = img.shape
    x0 = np.floor(fx).astype(int)
    y0 = np.floor(fy).astype(int)
    ax = fx - x0
    ay = fy - y0
    for dy, dx, ww in ((0, 0, (1 - ax) * (1 - ay)), (0, 1, ax * (1 - ay)), (1, 0, (1 - ax) * ay), (1, 1, ax * ay)):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
        np.add.at(img, (yy[ok], xx[ok]), (w * ww)[ok])


@functools.lru_cache(maxsize=64)
def detail_maps(seed: int, res: float) -> DetailMaps:
    """Builds (and caches) the detail textures of ``seed`` at ``res`` skin texels per head unit.

    Every component draws from its own generator ``default_rng([seed, k])`` so components are independent.

    Args:
        seed: `FaceParams.detail_seed`.
        res: Skin texture resolution (texels per head unit); small resolutions area-average the spots.

    Returns:
        The maps.
    """
    ht = int(math.ceil((SKIN_TEX_Y[1] - SKIN_TEX_Y[0]) * res)) + 1
    wt = int(math.ceil((SKIN_TEX_X[1] - SKIN_TEX_X[0]) * res)) + 1
    # spots: freckles (clustered on cheeks and nose), moles, small line marks; three size bins
    rng = np.random.default_rng([seed, 1])
    radii = (0.008, 0.013, 0.02, 0.024)
    pts: list[list[np.ndarray]] = [[] for _ in radii]
    n_fr = int(rng.integers(0, 16)) if rng.random() < 0.4 else int(rng.integers(20, 130))
    comp = rng.choice(3, size=n_fr, p=[0.42, 0.42, 0.16])
    cx = np.array([-0.55, 0.55, 0.0])[comp] + rng.normal(0, 1, n_fr) * np.array([0.3, 0.3, 0.13])[comp]
    cy = np.array([0.4, 0.4, 0.38])[comp] + rng.normal(0, 1, n_fr) * np.array([0.2, 0.2, 0.15])[comp]
    bins = rng.choice(3, size=n_fr, p=[0.45, 0.4, 0.15])
    dark = rng.uniform(0.15, 0.5, n_fr)
    for b in range(3):
        sel = bins == b
        pts[b].append(np.stack([cx[sel], cy[sel], dark[sel]], 1))
    n_mole = int(rng.integers(0, 5))
    mx, my = rng.uniform(-0.95, 0.95, n_mole), rng.uniform(-0.9, 1.45, n_mole)
    pts[3].append(np.stack([mx, my, rng.uniform(0.6, 0.9, n_mole)], 1))
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = rng.uniform(-0.9, 0.9), rng.uniform(-0.8, 1.3)
        ang, length = rng.uniform(0, math.pi), rng.uniform(0.08, 0.2)
        t = np.linspace(0, 1, 24)
        d = rng.uniform(0.15, 0.35)
        pts[0].append(np.stack([x0 + t * length * math.cos(ang), y0 + t * length * math.sin(ang), np.full(24, d)], 1))
    skin = np.zeros((ht, wt), np.float64)
    for r, plist in zip(radii, pts, strict=True):
        arr = np.concatenate(plist) if plist else np.zeros((0, 3))
        if not len(arr):
            continue
        acc = np.zeros((ht, wt), np.float64)
        _splat(acc, (arr[:, 0] - SKIN_TEX_X[0]) * res, (arr[:, 1] - SKIN_TEX_Y[0]) * res, arr[:, 2])
        sig = r * res
        skin += ndimage.gaussian_filter(acc, sig, mode="constant", truncate=3.0) * (2 * math.pi * sig * sig)
    skin = np.clip(skin, 0.0, 1.0)
    rng = np.random.default_rng([seed, 2])
    grain = ndimage.gaussian_filter(rng.standard_normal((ht, wt)), max(0.6, 0.004 * res), mode="wrap")
    grain /= max(float(grain.std()), 1e-6)
    rng = np.random.default_rng([seed, 3])
    hair = _strands(rng, 1024, 1.0, 14)
    curtain = _strands(rng, 1024, 1.0, 10)
    ends = _norm(ndimage.gaussian_filter1d(rng.standard_normal(256), 4.0, mode="wrap")).astype(np.float32)
    rng = np.random.default_rng([seed, 4])
    iris = _strands(rng, 64, 0.8, 0)
    hairline = _norm(ndimage.gaussian_filter1d(rng.standard_normal(256), 5.0, mode="wrap")).astype(np.float32)
    rng = np.random.default_rng([seed, 5])
    blobs = np.concatenate(
        [rng.uniform(-0.1, 1.1, (6, 2)), rng.uniform(0.08, 0.35, (6, 1)), rng.normal(0, 0.12, (6, 3))], axis=1
    )
    wave = np.array([rng.uniform(0, math.pi), rng.uniform(2, 6), rng.uniform(0, 2 * math.pi)])
    arrays = [skin, grain, hair, curtain, ends, iris, hairline, blobs, wave]
    arrays = [np.ascontiguousarray(a, np.float32) for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    return DetailMaps(float(res), *arrays)


def sample_skin(texs: tuple[np.ndarray, ...], res: float, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Bilinear lookups of same-shaped skin textures at head coordinates (x, y) (edge texels repeat outside)."""
    ht, wt = texs[0].shape
    fx = (x - np.float32(SKIN_TEX_X[0])) * np.float32(res)
    fy = (y - np.float32(SKIN_TEX_Y[0])) * np.float32(res)
    fx = np.minimum(np.maximum(fx, 0.0), wt - 1.001)
    fy = np.minimum(np.maximum(fy, 0.0), ht - 1.001)
    ix = fx.astype(np.int32)
    iy = fy.astype(np.int32)
    ax = (fx - ix).astype(np.float32)
    ay = (fy - iy).astype(np.float32)
    i00 = iy * wt + ix
    out = []
    for t in texs:
        flat = t.ravel()
        v00, v01 = np.take(flat, i00), np.take(flat, i00 + 1)
        v10, v11 = np.take(flat, i00 + wt), np.take(flat, i00 + wt + 1)
        top = v00 + (v01 - v00) * ax
        bot = v10 + (v11 - v10) * ax
        out.append(top + (bot - top) * ay)
    return out


def sample_periodic(v: np.ndarray, t: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Nearest-sample lookup of a periodic 1D table ``v`` sampled over [t0, t1) at positions ``t``."""
    n = v.shape[0]
    f = (t - np.float32(t0)) * np.float32(n / (t1 - t0)) + np.float32(0.5)
    return np.take(v, np.floor(f).astype(np.int32), mode="wrap")
