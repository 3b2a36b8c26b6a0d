"""Renderer of the synthetic face world: antialiased numpy compositing of a yawed head, features, hair, objects."""

from __future__ import annotations

import colorsys
import ctypes
import ctypes.util
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gie_cli.synth.detail import DetailMaps, detail_maps, sample_periodic, sample_skin
from gie_cli.synth.geometry import (
    EYE_HALF_W,
    EYE_X,
    MOUTH_Y,
    EyeShape,
    HeadModel,
    SolidHit,
    brow_center_y,
    clamp,
    eye_shape,
    lid_profile,
    mouth_shape,
    solid_hit,
)
from gie_cli.synth.params import FaceParams, clip_params

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["RenderResult", "render", "default_supersample"]

F32 = np.float32


# ------------------------------------------------------------------------------------------------ colours
def _hsl(h: float, s: float, lum: float) -> np.ndarray:
    r, g, b = colorsys.hls_to_rgb(h % 1.0, lum, s)
    return np.array([r, g, b], F32)


_SKIN = np.array(
    [(0.98, 0.84, 0.74), (0.93, 0.74, 0.6), (0.8, 0.58, 0.42), (0.62, 0.41, 0.28), (0.42, 0.27, 0.18),
     (0.27, 0.17, 0.12)], F32)  # fmt: skip
_IRIS = np.array(
    [(0.22, 0.12, 0.06), (0.42, 0.25, 0.12), (0.45, 0.4, 0.2), (0.3, 0.48, 0.3), (0.42, 0.55, 0.62),
     (0.25, 0.45, 0.78)], F32)  # fmt: skip


def _palette(pal: np.ndarray, t: float) -> np.ndarray:
    f = float(clamp(t, 0, 1)) * (len(pal) - 1)
    i = min(int(f), len(pal) - 2)
    return (pal[i] * (1 - (f - i)) + pal[i + 1] * (f - i)).astype(F32)


def skin_rgb(t: float) -> np.ndarray:
    """Skin albedo for ``skin_tone`` t in [0, 1]."""
    return _palette(_SKIN, t)


def hair_rgb(hue: float, lightness: float) -> np.ndarray:
    """Hair albedo: hue from red (0) to golden (1), lightness from black (0) to platinum (1)."""
    lum = 0.07 + 0.75 * lightness
    sat = (0.56 - 0.4 * lightness) * (1.0 + 0.25 * (1.0 - hue))
    return _hsl((14.0 + 28.0 * hue + 8.0 * lightness) / 360.0, float(clamp(sat, 0.08, 0.75)), lum)


def _soft(sdf: np.ndarray, px: float) -> np.ndarray:
    """Coverage of a signed distance (negative inside) with a one-sample wide ramp."""
    return clamp(0.5 - sdf * (1.0 / px), 0.0, 1.0).astype(F32)


def _smooth(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = clamp((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _seg_dist(x: np.ndarray, y: np.ndarray, a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Distance from points (x, y) to the segment a-b."""
    ax, ay = float(a[0]), float(a[1])
    dx, dy = float(b[0]) - ax, float(b[1]) - ay
    ll = dx * dx + dy * dy
    t = clamp(((x - ax) * dx + (y - ay) * dy) * (1.0 / max(ll, 1e-12)), 0.0, 1.0)
    return np.hypot(x - ax - t * dx, y - ay - t * dy)


def _lerp(dst: np.ndarray, col: np.ndarray, a: np.ndarray) -> None:
    """In place ``dst = dst * (1 - a) + col * a`` (dst ``[h, w, 3]``, col ``[3]`` or ``[h, w, 3]``, a ``[h, w]``)."""
    dst += (col - dst) * a[..., None]


# ------------------------------------------------------------------------------------------------ canvas
@dataclass
class _Layer:
    name: str
    win: tuple[int, int, int, int]  # r0, r1, c0, c1 in supersampled rows/columns
    alpha: np.ndarray  # [h, w]
    color: np.ndarray  # [h, w, 3] or [3]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-layer sub-coverages (mouth, eyes, face, ...)
    ood_index: int = -1
    face: int = 0


class _Canvas:
    """A supersampled canvas of ``h x w`` output pixels with ``ss x ss`` samples each."""

    def __init__(self, h: int, w: int, ss: int) -> None:
        self.h, self.w, self.ss = h, w, ss
        self.ex = ((np.arange(w * ss) + 0.5) / ss).astype(F32)  # edge coordinates of the sample centres
        self.ey = ((np.arange(h * ss) + 0.5) / ss).astype(F32)
        self.layers: list[_Layer] = []

    def window(self, edge_pts: np.ndarray, margin: int = 2) -> tuple[int, int, int, int] | None:
        """Sample window covering points given in output edge coordinates ``[n, 2]``."""
        k = edge_pts * self.ss - 0.5
        r0 = max(int(math.floor(k[:, 1].min())) - margin, 0)
        r1 = min(int(math.ceil(k[:, 1].max())) + margin + 1, self.h * self.ss)
        c0 = max(int(math.floor(k[:, 0].min())) - margin, 0)
        c1 = min(int(math.ceil(k[:, 0].max())) + margin + 1, self.w * self.ss)
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1


def _intersect(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    r0, r1, c0, c1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _rel(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> tuple[slice, slice]:
    return slice(inner[0] - outer[0], inner[1] - outer[0]), slice(inner[2] - outer[2], inner[3] - outer[2])


class _Frame:
    """Maps output edge coordinates to head-screen coordinates for one face (an affine map)."""

    def __init__(self, e2h: np.ndarray, canvas: _Canvas) -> None:
        self.e2h = np.asarray(e2h, np.float64)  # [2, 3]
        full = np.vstack([self.e2h, [0.0, 0.0, 1.0]])
        self.h2e = np.linalg.inv(full)[:2]
        self.cv = canvas
        self.px = math.sqrt(abs(np.linalg.det(self.e2h[:, :2]))) / canvas.ss  # head units per sample
        self.rows_pure = abs(self.e2h[1, 0]) < 1e-12  # Y constant along sample rows: per-row table lookups

    def to_edge(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, np.float64)
        return pts @ self.h2e[:, :2].T + self.h2e[:, 2]

    def window(self, head_pts: np.ndarray, margin: int = 2) -> tuple[int, int, int, int] | None:
        return self.cv.window(self.to_edge(head_pts), margin)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[int, int, int, int] | None:
        """Window of a head-screen rectangle."""
        return self.window(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))

    def coords(self, win: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Head-screen (X, Y) of the samples of ``win``, each ``[h, w]`` float32."""
        r0, r1, c0, c1 = win
        m = self.e2h.astype(F32)
        ex = self.cv.ex[c0:c1][None, :]
        ey = self.cv.ey[r0:r1][:, None]
        return m[0, 0] * ex + m[0, 1] * ey + m[0, 2], m[1, 0] * ex + m[1, 1] * ey + m[1, 2]


# ------------------------------------------------------------------------------------------------ the face
_GRID_STEP = 0.1
_GRID_X = np.arange(-1.7, 1.7001, _GRID_STEP)  # face-texture grid used to find feature windows
_GRID_Y = np.arange(-1.6, 2.0001, _GRID_STEP)


class _FacePainter:
    """Builds the layers of one face on a canvas."""

    def __init__(self, p: FaceParams, geom: HeadModel, frame: _Frame, detail: DetailMaps) -> None:
        self.p, self.g, self.fr, self.det = p, geom, frame, detail
        self.px = frame.px
        self.cs, self.sn = geom.cs, geom.sn
        self.ds = float(p.detail_strength)
        self.skin = skin_rgb(p.skin_tone)
        self.hair = hair_rgb(p.hair_hue, p.hair_lightness)
        az = math.radians(60.0 * p.light_azimuth)
        el = math.radians(35.0)
        self.light = np.array([math.sin(az) * math.cos(el), -math.sin(el), math.cos(az) * math.cos(el)], F32)
        half = self.light + np.array([0, 0, 1], F32)
        self.half = half / np.linalg.norm(half)
        self._grid: np.ndarray | None = None
        self.kd = 0.2 + 0.55 * p.light_intensity
        self.ka = 1.0 - 0.75 * self.kd

    # ---------------------------------------------------------------- helpers
    def _lambert(self, nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> np.ndarray:
        lx, ly, lz = (np.float32(v) for v in self.light)
        ndl = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
        return (np.float32(self.ka) + np.float32(self.kd) * ndl) * (0.78 + 0.22 * clamp(nz, 0, 1))

    def _spec(self, nx: np.ndarray, ny: np.ndarray, nz: np.ndarray, doublings: int, k: float) -> np.ndarray:
        """Blinn-Phong highlight with exponent ``2 ** doublings``."""
        hx, hy, hz = (np.float32(v) for v in self.half)
        v = np.maximum(nx * hx + ny * hy + nz * hz, 0.0)
        for _ in range(doublings):
            v = v * v
        return np.float32(k * self.p.light_intensity) * v

    def _tex_window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[int, int, int, int] | None:
        """Sample window of a face-texture rectangle (projected through the front surface)."""
        if self._grid is None:
            gx, gy = np.meshgrid(_GRID_X, _GRID_Y)
            pts = self.g.project(self.g.surface_points(np.stack([gx.ravel(), gy.ravel()], 1)))
            self._grid = pts.reshape(len(_GRID_Y), len(_GRID_X), 2)
        i0 = int(np.clip(math.floor((x0 - _GRID_X[0]) / _GRID_STEP), 0, len(_GRID_X) - 1))
        i1 = int(np.clip(math.ceil((x1 - _GRID_X[0]) / _GRID_STEP), 0, len(_GRID_X) - 1))
        j0 = int(np.clip(math.floor((y0 - _GRID_Y[0]) / _GRID_STEP), 0, len(_GRID_Y) - 1))
        j1 = int(np.clip(math.ceil((y1 - _GRID_Y[0]) / _GRID_STEP), 0, len(_GRID_Y) - 1))
        return self.fr.window(self._grid[j0 : j1 + 1, i0 : i1 + 1].reshape(-1, 2), margin=3)

    # ---------------------------------------------------------------- layers
    def body(self) -> list[_Layer]:
        """The shirt: a superellipse for the shoulders continued by a slab downwards."""
        p = self.p
        xb, yb, rx, ry = -0.45 * self.sn, 2.95, 2.3, 1.0
        win = self.fr.box(xb - rx - 0.2, xb + rx + 0.2, yb - ry - 0.1, yb + 60.0)
        if win is None:
            return []
        X, Y = self.fr.coords(win)
        u = (X - xb) * (1.0 / rx)
        v = np.minimum((Y - yb) * (1.0 / ry), 0.0)
        au = np.abs(u)
        f = au**4 + v * v - 1.0
        grad = np.hypot(4.0 * au**3 / rx, 2.0 * v / ry)
        alpha = _soft(f / np.maximum(grad, 0.3), self.px)
        nx, ny = 0.7 * u, 0.8 * v - 0.15
        inv = 1.0 / np.sqrt(nx * nx + ny * ny + 1.0)
        col = _hsl(p.clothes_hue, 0.45, 0.38)
        shade = self._lambert(nx * inv, ny * inv, inv)
        # a soft fold pattern keeps the shirt from being flat
        shade = shade * (1.0 + 0.05 * np.sin(3.0 * X + 1.3 * Y))
        color = col * shade[..., None]
        return [_Layer("body", win, alpha, color.astype(F32))]

    def neck(self) -> list[_Layer]:
        """The neck: a shaded vertical slab from behind the head down to a rounded collar, darker under the chin."""
        g, p = self.g, self.p
        xn = -0.3 * self.sn
        wn = 0.5 + 0.15 * (p.face_width - 1.0)
        win = self.fr.box(xn - wn - 0.1, xn + wn + 0.1, 0.4, 3.1)
        if win is None:
            return []
        X, Y = self.fr.coords(win)
        dx = (X - xn) * (1.0 / wn)
        collar = 2.5 + 0.28 * clamp(1.0 - dx * dx, 0.0, 1.0)
        sdf = np.maximum(np.maximum(np.abs(X - xn) - wn, 0.5 - Y), Y - collar)
        alpha = _soft(sdf, self.px)
        nx = clamp(dx, -1, 1)
        shade = self._lambert(nx, np.full_like(nx, 0.1), np.sqrt(np.maximum(1.0 - nx * nx, 0.0))) * 0.82
        shade = shade * (1.0 - 0.38 * clamp(1.0 - (Y - g.y_chin) / 0.5, 0.0, 1.0))
        color = self.skin * shade[..., None]
        return [_Layer("neck", win, alpha, color.astype(F32))]

    def curtain(self) -> list[_Layer]:
        """Long hair hanging behind the neck and over the shoulders (``hair_length`` > 0.3), with ragged ends."""
        g, p = self.g, self.p
        hl = p.hair_length
        if hl <= 0.3:
            return []
        y_end = 0.55 + 2.65 * (hl - 0.3) / 0.7
        w_out = g.A + g.t_side + 0.02
        xcc = -0.15 * self.sn
        win = self.fr.box(xcc - w_out - 0.5, xcc + w_out + 0.5, -0.3, y_end + 0.35)
        if win is None:
            return []
        X, Y = self.fr.coords(win)
        d = np.abs(X - xcc)
        wc = w_out * (1.0 + 0.06 * clamp(Y * 0.5, 0, 1)) + 0.22 * _smooth(1.4, 2.6, Y)
        w_in = (0.5 + 0.25 * _smooth(1.9, 2.8, Y)) * _smooth(g.y_chin - 0.3, g.y_chin + 0.5, Y)
        ends = y_end + 0.16 * sample_periodic(self.det.curtain_ends, X, -3.0, 3.0) * min(1.0, 0.3 + self.ds)
        sdf = np.maximum(np.maximum(d - wc, w_in - d), np.maximum(Y - ends, -Y))
        alpha = _soft(sdf, self.px)
        rel = clamp((d - w_in) / np.maximum(wc - w_in, 1e-3), 0, 1)
        shade = 0.55 + 0.45 * np.sqrt(np.maximum(np.sin(np.pi * rel), 0.0))
        strands = sample_periodic(self.det.curtain_strands, X, -3.0, 3.0)
        shade = shade * (1.0 + 0.35 * self.ds * strands) * (0.7 + 0.3 * self.kd / 0.75)
        color = self.hair * shade[..., None]
        return [_Layer("hair_curtain", win, alpha, color.astype(F32))]

    def head(self) -> list[_Layer]:
        """Hair behind the head, skin (with features), stickers and hair in front, all on the head window."""
        g, p, px = self.g, self.p, self.px
        t = g.shell_lut.vals
        hw_max = float(np.max(np.abs(t[:, 7]) + t[:, 8])) + 0.3
        win = self.fr.box(-hw_max, hw_max, g.yc - g.B_top - g.t_top - 0.1, g.y_chin + 0.1)
        if win is None:
            return []
        X, Y = self.fr.coords(win)
        rows = Y[:, :1] if self.fr.rows_pure else None
        cs, sn = self.cs, self.sn
        (shell_f,) = solid_hit(X, Y, g.shell_lut, cs, sn, px, ("front",), rows)
        (hh,) = solid_hit(X, Y, g.head_lut, cs, sn, px, ("front",), rows)
        shape = X.shape
        alpha = np.broadcast_to(hh.alpha, shape).copy()
        depth = np.broadcast_to(hh.depth, shape).copy()
        hx = np.broadcast_to(hh.x, shape).copy()
        hz = np.broadcast_to(hh.z, shape).copy()
        hy = np.broadcast_to(Y, shape)
        nrm = [np.broadcast_to(v, shape).copy() for v in (hh.nx, hh.ny, hh.nz)]
        which = np.zeros(shape, np.int8)
        # nose and ears: z-buffered against the head
        parts = [(g.nose_lut, 1, (-0.35, 0.35, -0.1, 0.8))]
        for k, side in enumerate((-1, 1)):
            xe = float(g.ear_profile(np.array([0.2]), side)[0, 2])
            parts.append((g.ear_luts[k], 2, (xe - 0.35, xe + 0.35, -0.25, 0.7)))
        for lut, tag, (x0, x1, y0, y1) in parts:
            corners = [[xx, yy, zz] for xx in (x0, x1) for yy in (y0, y1) for zz in (-1.5, 1.5)]
            sub = self.fr.window(g.project(np.array(corners)))
            sub = _intersect(sub, win) if sub is not None else None
            if sub is None:
                continue
            sl = _rel(sub, win)
            (h2,) = solid_hit(X[sl], Y[sl], lut, cs, sn, px, ("front",), None if rows is None else rows[sl[0]])
            take = (h2.alpha > 0) & ((h2.depth > depth[sl]) | (alpha[sl] <= 0))
            n2 = (h2.nx, h2.ny, h2.nz)
            if tag == 1:  # blend the nose's normals into the face's where it rises from it (a fillet)
                b = clamp((h2.depth - depth[sl]) * np.float32(1.0 / 0.12), 0.0, 1.0)
                n2 = tuple(nh[sl] + (nn - nh[sl]) * b for nh, nn in zip(nrm, n2, strict=True))
                inv = 1.0 / np.maximum(np.sqrt(n2[0] * n2[0] + n2[1] * n2[1] + n2[2] * n2[2]), 1e-6)
                n2 = tuple(v * inv for v in n2)
            for dst, src in zip((depth, hx, hz, *nrm), (h2.depth, h2.x, h2.z, *n2), strict=True):
                dst[sl] = np.where(take, src, dst[sl])
            which[sl] = np.where(take, tag, which[sl])
            alpha[sl] = 1.0 - (1.0 - alpha[sl]) * (1.0 - h2.alpha)
        # hair regions
        inv_soft = np.float32(1.0 / max(1.5 * px, 0.02))
        wave_amp = np.float32(0.04)

        def hair_mask(x: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            phi = np.arctan2(x, z)
            yl = g.hairline(phi) + wave_amp * sample_periodic(self.det.hairline, phi, -math.pi, math.pi)
            return clamp((yl - y) * inv_soft + 0.5, 0.0, 1.0).astype(F32), phi

        m_f, phi_f = hair_mask(shell_f.x, shell_f.z, Y)
        m_s, _ = hair_mask(hx, hz, Y)
        m_s *= which != 1  # the nose is never scalp
        layers: list[_Layer] = []
        # hair behind the head (far side of the shell): only where the shell shows past the skin
        ring = np.flatnonzero((shell_f.alpha > 0) & (alpha < 1))
        if ring.size:
            xr, yr = X.ravel()[ring], np.broadcast_to(Y, shape).ravel()[ring]
            (sb,) = solid_hit(xr, yr, g.shell_lut, cs, sn, px, ("back",))
            m_b, phi_b = hair_mask(sb.x, sb.z, yr)
            a_r = sb.alpha * m_b
            if a_r.any():
                a_back = np.zeros(shape, F32)
                a_back.ravel()[ring] = a_r
                col = np.zeros(shape + (3,), F32)
                col.reshape(-1, 3)[ring] = self._hair_color(sb, phi_b, a_r, back=True)
                layers.append(_Layer("hair_back", win, a_back, col))
        # ---- skin albedo
        alb = np.empty(shape + (3,), F32)
        alb[:] = self.skin
        ear = which == 2
        if ear.any():
            dz = (hz + 0.12) / 0.12
            dy = (hy - 0.2) / 0.22
            inner = clamp(1.0 - (dz * dz + dy * dy), 0.0, 1.0) * ear
            alb *= (1.0 - 0.25 * inner)[..., None]
        self._hx, self._hy = hx, hy
        extra = self._paint_face(alb, win)
        # seed detail: freckles, moles, marks and grain (in face coordinates)
        if self.ds > 0:
            box = self._tex_window(-1.3, 1.3, -1.2, 1.7)
            box = _intersect(box, win) if box is not None else None
            if box is not None:
                sl = _rel(box, win)
                front = ((which[sl] != 2) & (alpha[sl] > 0)).astype(F32) * np.float32(self.ds)
                dm, gr = sample_skin((self.det.skin_dark, self.det.grain), self.det.res, hx[sl], hy[sl])
                dm *= front
                gr *= front
                fcol = np.array([0.42, 0.55, 0.68], F32)
                a = alb[sl]
                a *= 1.0 - dm[..., None] * fcol
                a *= (1.0 + 0.035 * gr)[..., None]
                det = np.zeros(shape, F32)
                det[sl] = np.maximum(dm * 0.5, 0.035 * np.abs(gr))
                extra["detail"] = det
        _lerp(alb, self.hair * 0.72, m_s)
        shade = self._lambert(*nrm)
        spec = self._spec(*nrm, 4, 0.18) * (1.0 - m_s)
        color = alb * shade[..., None] + spec[..., None]
        extra["face"] = ((which != 2) * (1.0 - m_s)).astype(F32)
        extra["scalp"] = m_s
        layers.append(_Layer("skin", win, alpha, color.astype(F32), extra))
        # ---- stickers on the skin
        for i, o in enumerate(p.ood):
            if o.kind == "sticker":
                lay = self._sticker(o.params, win, hx, hy, hz, alpha, which, nrm)
                if lay is not None:
                    lay.ood_index = i
                    layers.append(lay)
        a_front = shell_f.alpha * m_f
        if a_front.any():
            strands = np.abs(sample_periodic(self.det.hair_strands, phi_f, -math.pi, math.pi))
            hl_extra = {"detail": np.float32(0.3 * self.ds) * strands}
            layers.append(_Layer("hair_front", win, a_front, self._hair_color(shell_f, phi_f, a_front), hl_extra))
        return layers

    def _hair_color(self, hit: SolidHit, phi: np.ndarray, alpha: np.ndarray, back: bool = False) -> np.ndarray:
        """Lit hair colour ``[*S, 3]`` for hits of shape ``S``, computed only where ``alpha > 0`` (zero elsewhere)."""
        shape = alpha.shape
        idx = np.flatnonzero(alpha)
        nx, ny, nz, ph = (np.broadcast_to(v, shape).reshape(-1)[idx] for v in (hit.nx, hit.ny, hit.nz, phi))
        strands = sample_periodic(self.det.hair_strands, ph, -math.pi, math.pi)
        shade = 0.45 + 0.75 * (self._lambert(nx, ny, nz) - self.ka * 0.78) + 0.3 * self.ka
        shade = shade * (1.0 + np.float32(0.3 * self.ds) * strands) * np.float32(0.8 if back else 1.0)
        sheen = self._spec(nx, ny, nz, 3, 0.35) * np.float32(0.4 + 0.6 * self.p.hair_lightness)
        out = np.zeros((alpha.size, 3), F32)
        out[idx] = self.hair * shade[:, None] + sheen[:, None] * (self.hair * 1.5)
        return out.reshape(shape + (3,))

    # ---------------------------------------------------------------- face texture
    def _paint_face(self, alb: np.ndarray, win: tuple) -> dict[str, np.ndarray]:
        """Paints eyes, brows, mouth, age lines and shading cues into ``alb`` (in place); returns sub-coverages."""
        p = self.p
        pxt = self.px * 1.15
        eye_cov = np.zeros(alb.shape[:2], F32)
        mouth_cov = np.zeros(alb.shape[:2], F32)
        e = eye_shape(p.eye_open)
        iris_col = _palette(_IRIS, p.eye_color)
        brow_col = self.hair * 0.55 + np.array([0.03, 0.025, 0.02], F32)
        brow_col = np.minimum(brow_col, np.array([0.45, 0.36, 0.28], F32))
        age = p.age
        for s in (-1, 1):
            cx = s * EYE_X
            # eye socket shading and cheek blush
            sub = self._sub(win, cx - 0.55, cx + 0.55, -0.45, 0.75)
            if sub is not None:
                sl, x, y = sub
                g1 = np.exp(-(((x - cx) / 0.32) ** 2) - ((y + 0.06) / 0.17) ** 2)
                g2 = np.exp(-(((x - s * 0.62) / 0.22) ** 2) - ((y - 0.48) / 0.2) ** 2)
                a = alb[sl]
                a *= (1.0 - 0.09 * g1)[..., None]
                a += (np.array([0.05, -0.012, -0.01], F32) * g2[..., None]).astype(F32)
            # eye
            sub = self._sub(win, cx - 0.4, cx + 0.4, -0.26, 0.24)
            if sub is not None:
                sl, x, y = sub
                self._eye(alb[sl], eye_cov[sl], x, y, s, e, iris_col, pxt)
            # brow
            sub = self._sub(win, cx - 0.45, cx + 0.45, -0.52, -0.18)
            if sub is not None:
                sl, x, y = sub
                dxo = (x - cx) * s
                yb = brow_center_y(dxo)
                thick = 0.08 - 0.045 * clamp((dxo + 0.26) / 0.6, 0, 1)
                sdf = np.maximum(np.abs(y - yb) - 0.5 * thick, np.maximum(-0.26 - dxo, dxo - 0.34))
                hairs = 1.0 + 0.12 * np.sin(260.0 * dxo + 40.0 * y)
                _lerp(alb[sl], brow_col, _soft(sdf, pxt) * 0.88 * hairs)
            # age lines around this eye
            if age > 0.005:
                sub = self._sub(win, cx - 0.5, cx + 0.62, -0.2, 0.3)
                if sub is not None:
                    sl, x, y = sub
                    o = (s * (EYE_X + EYE_HALF_W + 0.04), 0.0)
                    lines = np.zeros(x.shape, F32)
                    for ang in (-32.0, 0.0, 30.0):
                        da = math.radians(ang)
                        dv = (s * math.cos(da), math.sin(da))
                        a0 = (o[0] + 0.02 * dv[0], o[1] + 0.02 * dv[1])
                        a1 = (o[0] + 0.15 * dv[0], o[1] + 0.15 * dv[1])
                        lines = np.maximum(lines, _soft(_seg_dist(x, y, a0, a1) - 0.006, pxt))
                    dxo = (x - cx) * s
                    tt = (dxo - 0.01) / 0.2
                    arc = 0.125 + 0.035 * clamp(1 - tt * tt, 0, 1)
                    under = _soft(np.maximum(np.abs(y - arc) - 0.006, np.abs(tt) - 1.0), pxt) * 0.8
                    lines = np.maximum(lines, under)
                    alb[sl] *= 1.0 - 0.42 * age * lines[..., None] * np.array([0.85, 1.0, 1.0], F32)
        # nostrils
        sub = self._sub(win, -0.2, 0.2, 0.55, 0.75)
        if sub is not None:
            sl, x, y = sub
            for s in (-1, 1):
                d = np.hypot((x - s * 0.085) / 0.042, (y - 0.665) / 0.022) - 1.0
                _lerp(alb[sl], self.skin * 0.3, _soft(d * 0.022, pxt) * 0.85)
        # mouth
        sub = self._sub(win, -0.55, 0.55, MOUTH_Y - 0.2, MOUTH_Y + 0.42)
        if sub is not None:
            sl, x, y = sub
            self._mouth(alb[sl], mouth_cov[sl], x, y, pxt)
        # forehead and nasolabial lines
        if age > 0.005:
            sub = self._sub(win, -0.72, 0.72, -1.0, -0.4)
            if sub is not None:
                sl, x, y = sub
                lines = np.zeros(x.shape, F32)
                for k in range(3):
                    hl = 0.62 - 0.1 * k
                    yk = -0.56 - 0.11 * k - 0.05 * clamp(1 - (x / 0.7) ** 2, 0, 1) + 0.012 * np.sin(7 * x + k)
                    fade = clamp(1.0 - (x / hl) ** 2, 0.0, 1.0)
                    lines = np.maximum(lines, _soft(np.abs(y - yk) - 0.007 * (1 + age), pxt) * fade)
                alb[sl] *= 1.0 - 0.4 * age * lines[..., None]
            sub = self._sub(win, -0.62, 0.62, 0.5, 1.2)
            if sub is not None:
                sl, x, y = sub
                lines = np.zeros(x.shape, F32)
                for s in (-1, 1):
                    pa, pb, pc = (s * 0.21, 0.6), (s * 0.41, 0.9), (s * 0.49, 1.22)
                    dd = np.minimum(_seg_dist(x, y, pa, pb), _seg_dist(x, y, pb, pc))
                    lines = np.maximum(lines, _soft(dd - 0.008 * (1 + age), pxt))
                alb[sl] *= 1.0 - 0.38 * age * lines[..., None] * np.array([0.85, 1.0, 1.0], F32)
        return {"eyes": eye_cov, "mouth": mouth_cov}

    def _sub(
        self, win: tuple[int, int, int, int], x0: float, x1: float, y0: float, y1: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """(slices, x, y) of a face-texture rectangle inside the head window (face coordinates ``[h, w]``), or None."""
        w2 = self._tex_window(x0, x1, y0, y1)
        if w2 is None:
            return None
        w2 = _intersect(w2, win)
        if w2 is None:
            return None
        sl = _rel(w2, win)
        return sl, self._hx[sl], self._hy[sl]

    def _eye(
        self,
        alb: np.ndarray,
        cov: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        s: int,
        e: EyeShape,
        iris_col: np.ndarray,
        pxt: float,
    ) -> None:
        """Paints the eye on side ``s`` (-1 image left) into ``alb`` ``[h, w, 3]`` and its opening into ``cov``."""
        cx = s * EYE_X
        dxo = (x - cx) * s
        tt = dxo * (1.0 / EYE_HALF_W)
        f = lid_profile(tt)
        y_up = e.yc - e.U * f
        y_lo = e.yc + e.L * f
        sdf = np.maximum(np.maximum(y_up - y, y - y_lo), np.abs(dxo) - EYE_HALF_W)
        a_eye = _soft(sdf, pxt)
        r = np.hypot(x - cx, y)
        ri, rp = 0.092, 0.04
        ang = np.arctan2(y, (x - cx))
        col = np.empty(x.shape + (3,), F32)
        col[:] = np.array([0.93, 0.91, 0.88], F32)
        col *= (1.0 - 0.28 * clamp(tt * tt, 0, 1))[..., None]
        inoise = sample_periodic(self.det.iris, ang, -math.pi, math.pi) * self.ds
        ic = iris_col * (0.85 + 0.35 * inoise * clamp(r / ri, 0, 1))[..., None]
        ic = ic * (1.0 - 0.5 * _smooth(0.72 * ri, ri, r))[..., None]
        _lerp(col, ic, _soft(r - ri, pxt))
        _lerp(col, np.array([0.03, 0.025, 0.03], F32), _soft(r - rp, pxt))
        cl = np.hypot(x - cx - 0.032 * (1 if self.p.light_azimuth >= 0 else -1), y + 0.032) - 0.017
        _lerp(col, np.array([0.97, 0.97, 0.97], F32), _soft(cl, pxt) * 0.9)
        col *= (1.0 - 0.35 * clamp(1.0 - (y - y_up) / 0.05, 0.0, 1.0))[..., None]  # lid shadow
        _lerp(alb, col, a_eye)
        cov[:] = np.maximum(cov, a_eye)
        # lashes (upper lid line, thicker outwards), lower lash line and lid crease
        ext = _soft(np.abs(dxo) - EYE_HALF_W * 1.06, pxt)
        th = 0.02 + 0.014 * clamp(tt, 0, 1)
        lash = _soft(np.abs(y - (y_up - 0.008)) - th * 0.5, pxt) * ext
        _lerp(alb, np.array([0.07, 0.05, 0.05], F32), lash * 0.92)
        low = _soft(np.abs(y - (y_lo + 0.006)) - 0.005, pxt) * ext
        _lerp(alb, self.skin * 0.45, low * 0.45)
        crease_y = e.yc - (e.U + 0.055) * clamp(1.0 - (dxo / (EYE_HALF_W * 1.1)) ** 2, 0, 1) ** 0.6 - 0.02
        crease = _soft(np.abs(y - crease_y) - 0.007, pxt) * _soft(np.abs(dxo) - EYE_HALF_W, pxt)
        alb *= (1.0 - 0.2 * crease)[..., None]

    def _mouth(self, alb: np.ndarray, cov: np.ndarray, x: np.ndarray, y: np.ndarray, pxt: float) -> None:
        """Paints lips, mouth opening and teeth into ``alb`` ``[h, w, 3]`` and their coverage into ``cov``."""
        p = self.p
        m = mouth_shape(p.smile, p.mouth_open)
        ext = np.abs(x) - m.half_w
        y_top, y_mid, y_open, y_bot = m.y_top(x), m.y_mid(x), m.y_open(x), m.y_bot(x)
        a_up = _soft(np.maximum(np.maximum(y_top - y, y - y_mid), ext), pxt)
        a_lo = _soft(np.maximum(np.maximum(y_open - y, y - y_bot), ext), pxt)
        gap = float(m.y_open(0.0) - m.y_mid(0.0))
        a_in = _soft(np.maximum(np.maximum(y_mid - y, y - y_open), ext), pxt) * min(1.0, gap / (0.6 * pxt))
        lip = self.skin * np.array([0.8, 0.52, 0.52], F32) + np.array([0.1, 0.015, 0.03], F32)
        # a soft vertical gradient gives the lips volume
        lo_shade = 1.0 + 0.12 * clamp((y - y_open) / np.maximum(y_bot - y_open, 1e-3), 0, 1)
        _lerp(alb, lip * 0.88, a_up)
        _lerp(alb, lip[None, None, :] * lo_shade[..., None], a_lo)
        inner = np.empty(x.shape + (3,), F32)
        inner[:] = np.array([0.2, 0.05, 0.06], F32)
        if gap > 1e-3:
            th_up = min(0.05, 0.6 * gap)
            th_lo = min(0.03, 0.3 * gap)
            tx = _soft(np.abs(x) - 0.72 * m.half_w, pxt)
            teeth_up = _soft(np.maximum(y_mid - y, y - (y_mid + th_up)), pxt) * tx
            teeth_lo = _soft(np.maximum((y_open - th_lo) - y, y - y_open), pxt) * tx
            tooth = np.array([0.92, 0.9, 0.84], F32)
            _lerp(inner, tooth, np.maximum(teeth_up, teeth_lo) * (0.9 + 0.1 * np.cos(x * 70.0)))
        _lerp(alb, inner, a_in)
        line = _soft(np.maximum(np.abs(y - y_mid) - 0.007, ext), pxt) * (1.0 - min(1.0, gap / 0.03))
        _lerp(alb, lip * 0.35, line * 0.8)
        cov[:] = np.maximum(cov, np.maximum(np.maximum(a_up, a_lo), a_in))

    def _sticker(
        self,
        prm: dict,
        win: tuple[int, int, int, int],
        hx: np.ndarray,
        hy: np.ndarray,
        hz: np.ndarray,
        alpha: np.ndarray,
        which: np.ndarray,
        nrm: Sequence[np.ndarray],
    ) -> _Layer | None:
        """A sticker on the face surface (face coordinates), or None when it is off the visible face."""
        sx, sy, size = float(prm["x"]), float(prm["y"]), float(prm["size"])
        w2 = self._tex_window(sx - size * 1.2, sx + size * 1.2, sy - size * 1.2, sy + size * 1.2)
        w2 = _intersect(w2, win) if w2 is not None else None
        if w2 is None:
            return None
        sl = _rel(w2, win)
        x, y = hx[sl] - sx, hy[sl] - sy
        ang = math.radians(float(prm.get("angle", 0.0)))
        ca, sa = math.cos(ang), math.sin(ang)
        u, v = ca * x + sa * y, -sa * x + ca * y
        shape = prm.get("shape", "circle")
        if shape == "square":
            q = np.maximum(np.abs(u), np.abs(v)) - 0.8 * size
            sdf = q
        elif shape == "star":
            rr = np.hypot(u, v)
            th = np.arctan2(v, u)
            rad = size * (0.62 + 0.38 * np.cos(5.0 * th))
            sdf = (rr - rad) * 0.6
        else:
            sdf = np.hypot(u, v) - size
        on_face = ((which[sl] != 2) & (hz[sl] > 0.0)).astype(F32)
        a = _soft(sdf, self.px) * alpha[sl] * on_face
        if not a.any():
            return None
        base = _hsl(float(prm.get("hue", 0.0)), 0.85, 0.55)
        border = _soft(-(sdf + 0.025), self.px)
        col = np.empty(x.shape + (3,), F32)
        col[:] = np.array([0.97, 0.97, 0.97], F32)
        _lerp(col, base, 1.0 - border)
        lx, ly, lz = (float(v) for v in self.light)
        ndl = nrm[0][sl] * lx + nrm[1][sl] * ly + nrm[2][sl] * lz
        col *= (0.75 + 0.35 * clamp(ndl, 0, 1))[..., None]
        return _Layer("sticker", w2, a, col.astype(F32))

    # ---------------------------------------------------------------- glasses and objects
    def glasses(self) -> list[_Layer]:
        """Rounded-rectangle frames in front of the eyes (foreshortened with the yaw), bridge, arms and lens tint."""
        g, p = self.g, self.p
        op = p.glasses
        if op <= 0.0:
            return []
        cs_eff = max(self.cs, 0.3)
        th = 0.035
        lens = []
        for s in (-1, 1):
            c3 = np.array([[s * EYE_X, 0.02, float(g.front_z(np.array([s * EYE_X]), np.array([0.02]))[0]) + 0.13]])
            lens.append(g.project(c3)[0])
        rx, ry, rc = 0.27, 0.2, 0.09
        xs = [lens[0][0] - rx - 0.6, lens[1][0] + rx + 0.6]
        win = self.fr.box(min(xs), max(xs), -0.35, 0.35)
        if win is None:
            return []
        X, Y = self.fr.coords(win)
        frame = np.zeros(X.shape, F32)
        lens_a = np.zeros(X.shape, F32)
        for lx0, ly0 in lens:
            lx = (X - float(lx0)) * (1.0 / cs_eff)
            ly = Y - float(ly0)
            qx = np.abs(lx) - (rx - rc)
            qy = np.abs(ly) - (ry - rc)
            sdf = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - rc
            sdf = sdf * cs_eff
            frame = np.maximum(frame, _soft(np.abs(sdf) - th * 0.5, self.px))
            lens_a = np.maximum(lens_a, _soft(sdf, self.px))
        zb = float(g.front_z(np.array([0.0]), np.array([0.0]))[0]) + 0.1
        bridge = g.project(np.array([[-(EYE_X - rx + 0.02), -0.03, zb], [(EYE_X - rx + 0.02), -0.03, zb]]))
        frame = np.maximum(frame, _soft(_seg_dist(X, Y, bridge[0], bridge[1]) - th * 0.45, self.px))
        for s in (-1, 1):
            if s * p.yaw > 8.0:  # this arm goes behind the head
                continue
            z_out = float(g.front_z(np.array([s * (EYE_X + rx)]), np.array([-0.02]))[0]) + 0.1
            a3 = np.array([[s * (EYE_X + rx - 0.02), -0.03, z_out], [s * (g.A + 0.03), -0.06, -0.1]])
            arm = g.project(a3)
            frame = np.maximum(frame, _soft(_seg_dist(X, Y, arm[0], arm[1]) - th * 0.4, self.px))
        streak = clamp(np.sin((X + Y) * 9.0), 0, 1) ** 8
        a_lens = lens_a * (1.0 - frame) * (0.12 + 0.22 * streak)
        alpha = (frame + a_lens) * op
        fc = np.array([0.07, 0.06, 0.07], F32)
        tc = np.array([0.85, 0.9, 0.95], F32)
        w = frame / np.maximum(frame + a_lens, 1e-6)
        color = tc + (fc - tc) * w[..., None]
        return [_Layer("glasses", win, alpha.astype(F32), color.astype(F32))]

    def objects(self) -> list[_Layer]:
        """Earrings, hats and occluders (stickers are drawn with the skin)."""
        layers: list[_Layer] = []
        for kind in ("earring", "hat", "occluder"):
            for i, o in enumerate(self.p.ood):
                if o.kind != kind:
                    continue
                lay = getattr(self, "_" + kind)(o.params)
                if lay is not None:
                    lay.ood_index = i
                    layers.append(lay)
        return layers

    def _earring(self, prm: dict) -> _Layer | None:
        """A ring or drop hanging from an ear lobe, or None when that ear is turned away."""
        g = self.g
        s = int(prm.get("side", 1))
        size = float(prm["size"])
        y_l = 0.5
        a_l = float(g.head_profile(np.array([y_l]))[0, 0])
        lobe3 = np.array([[s * (a_l + 0.05), y_l, -0.1]])
        lobe = g.project(lobe3)[0]
        depth = -lobe3[0, 0] * self.sn + lobe3[0, 2] * self.cs
        (hit,) = solid_hit(np.array([lobe[0]], F32), np.array([lobe[1]], F32), g.head_lut, self.cs, self.sn, self.px)
        if hit.alpha[0] > 0.5 and hit.depth[0] > depth + 0.02:
            return None  # the ear is turned away: the earring is hidden
        lx, ly = float(lobe[0]), float(lobe[1])
        win = self.fr.box(lx - size * 1.6, lx + size * 1.6, ly - 0.06, ly + size * 3.2)
        if win is None:
            return None
        X, Y = self.fr.coords(win)
        if prm.get("style", "ring") == "ring":
            r = np.hypot(X - lx, Y - (ly + size))
            sdf = np.abs(r - size) - 0.12 * size - 0.008
            light = clamp(0.5 - (Y - ly - size) / (2 * size) - 0.3 * (X - lx) / size, 0, 1)
        else:
            stud = np.hypot(X - lx, Y - ly) - 0.03
            chain = _seg_dist(X, Y, (lx, ly), (lx, ly + 1.6 * size)) - 0.01
            drop = np.hypot((X - lx) / 0.65, (Y - ly - 2.1 * size) / 0.9) - size
            sdf = np.minimum(np.minimum(stud, chain), drop * 0.65)
            light = clamp(0.6 - (Y - ly - 2.1 * size) / (2 * size) - 0.4 * (X - lx) / size, 0, 1)
        a = _soft(sdf, self.px)
        if not a.any():
            return None
        base = _hsl(float(prm.get("hue", 0.12)), 0.7, 0.5)
        col = base * (0.6 + 0.6 * light)[..., None] + 0.25 * light[..., None] ** 4
        return _Layer("earring", win, a, col.astype(F32))

    def _hat(self, prm: dict) -> _Layer | None:
        """A crown with a ribbon and a brim sitting on the hair at ``band_y``, tilted by ``tilt`` degrees."""
        g = self.g
        band = float(prm.get("band_y", -1.0))
        height = float(prm.get("height", 0.6))
        brim = float(prm.get("brim", 0.5))
        tilt = math.radians(float(prm.get("tilt", 0.0)))
        t = g.shell_lut(np.array([band], F32))[0]
        xh, wc = float(t[7]), float(t[8]) + 0.07
        top = (g.yc - g.B_top - g.t_top) - band - 0.15 - height
        wb = wc + 0.08 + 0.6 * brim
        hb = 0.06 + 0.07 * brim
        r_all = max(wb, abs(top)) + 0.3
        win = self.fr.box(xh - r_all, xh + r_all, band - r_all, band + r_all)
        if win is None:
            return None
        X, Y = self.fr.coords(win)
        ca, sa = math.cos(tilt), math.sin(tilt)
        u = ca * (X - xh) + sa * (Y - band)
        v = -sa * (X - xh) + ca * (Y - band)
        # crown: a box from top (negative v) to the band, with rounded upper corners
        rc = 0.35 * wc
        cy = 0.5 * top
        qx = np.abs(u) - (wc - rc)
        qy = np.abs(v - cy) - (abs(cy) - rc)
        crown = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - rc
        brim_sdf = (np.hypot(u / wb, (v + 0.01) / hb) - 1.0) * hb
        sdf = np.minimum(crown, brim_sdf)
        a = _soft(sdf, self.px)
        if not a.any():
            return None
        base = _hsl(float(prm.get("hue", 0.0)), 0.45, float(prm.get("lightness", 0.4)))
        shade = 0.75 + 0.3 * np.sqrt(clamp(1.0 - (u / (wb + 1e-3)) ** 2, 0, 1)) - 0.1 * clamp(-v / 2, 0, 1)
        ribbon = _soft(np.maximum(np.abs(v + 0.14) - 0.07, np.abs(u) - wc), self.px)
        shade = shade * (1.0 - 0.35 * ribbon)
        col = base * shade[..., None]
        return _Layer("hat", win, a, col.astype(F32))

    def _occluder(self, prm: dict) -> _Layer | None:
        """A long rounded bar (optionally with a hand-like blob at its tip) reaching the point (x, y)."""
        x0, y0 = float(prm["x"]), float(prm["y"])
        ang = math.radians(float(prm.get("angle", 0.0)))
        wdt = float(prm.get("width", 0.35))
        dv = (math.cos(ang), math.sin(ang))
        far = (x0 + 14.0 * dv[0], y0 + 14.0 * dv[1])
        pts = np.array([[x0, y0], far])
        r = wdt + 0.5
        win = self.fr.box(pts[:, 0].min() - r, pts[:, 0].max() + r, pts[:, 1].min() - r, pts[:, 1].max() + r)
        if win is None:
            return None
        X, Y = self.fr.coords(win)
        d = _seg_dist(X, Y, (x0, y0), far)
        sdf = d - 0.5 * wdt
        across = ((X - x0) * -dv[1] + (Y - y0) * dv[0]) / (0.5 * wdt)
        if prm.get("shape", "bar") == "blob":
            along = (X - x0) * dv[0] + (Y - y0) * dv[1]
            blob = (np.hypot((along - 0.25 * wdt) / (1.0 * wdt), across * 0.5 / 0.75) - 1.0) * 0.75 * wdt
            sdf = np.minimum(sdf, blob)
            across = clamp(across * 0.6, -1, 1)
        a = _soft(sdf, self.px)
        if not a.any():
            return None
        base = _hsl(float(prm.get("hue", 0.0)), 0.4, float(prm.get("lightness", 0.5)))
        shade = 0.55 + 0.45 * np.sqrt(clamp(1.0 - clamp(across, -1, 1) ** 2, 0, 1))
        return _Layer("occluder", win, a, (base * shade[..., None]).astype(F32))


def background_rgb(p: FaceParams, det: DetailMaps, e2u: np.ndarray, h: int, w: int) -> np.ndarray:
    """Background of face ``p`` at the pixel centres of an ``h x w`` image.

    Args:
        p: Face parameters (bg_hue, bg_lightness, bg_pattern).
        det: Detail maps of the face (blob layout and stripes).
        e2u: ``[2, 3]`` map from output edge coordinates to the face's crop coordinates (0..1 over the crop).
        h, w: Output size.

    Returns:
        ``[h, w, 3]`` float32.
    """
    ex = (np.arange(w, dtype=F32) + 0.5)[None, :]
    ey = (np.arange(h, dtype=F32) + 0.5)[:, None]
    m = np.asarray(e2u, F32)
    u = m[0, 0] * ex + m[0, 1] * ey + m[0, 2]
    v = m[1, 0] * ex + m[1, 1] * ey + m[1, 2]
    base = _hsl(p.bg_hue, 0.35, 0.18 + 0.67 * p.bg_lightness)
    img = np.empty((h, w, 3), F32)
    img[:] = base
    img *= (1.08 - 0.16 * v)[..., None]
    if p.bg_pattern > 0:
        a, fq, ph = (float(t) for t in det.bg_wave)
        wave = 0.07 * np.sin(2 * math.pi * fq * (u * math.cos(a) + v * math.sin(a)) + ph)
        pat = [wave.copy(), wave.copy(), wave]
        for b in det.bg_blobs:
            gss = np.exp(((u - b[0]) ** 2 + (v - b[1]) ** 2) * np.float32(-1.0 / (b[2] * b[2])))
            for c in range(3):
                pat[c] += gss * b[3 + c]
        img += np.float32(p.bg_pattern) * np.stack(pat, axis=-1)
    return img


# ------------------------------------------------------------------------------------------------ frames
def _compose(a23: np.ndarray, b23: np.ndarray) -> np.ndarray:
    """Affine ``a`` after ``b`` (both ``[2, 3]``)."""
    a = np.vstack([a23, [0, 0, 1]])
    b = np.vstack([b23, [0, 0, 1]])
    return (a @ b)[:2]


def default_supersample(size: int) -> int:
    """Supersampling factor used for an output of ``size`` pixels (3 up to 96 px, 2 up to 384, else 1)."""
    return 3 if size <= 96 else 2 if size <= 384 else 1


@dataclass
class _FaceJob:
    params: FaceParams
    geom: HeadModel
    e2u: np.ndarray  # [2, 3] output edge coordinates -> crop coordinates


@dataclass
class _SceneOut:
    image: np.ndarray  # [H, W, 3] uint8
    landmarks: list[np.ndarray]
    coverage: list[dict[str, np.ndarray]]
    object_cov: list[list[np.ndarray]]
    detail: list[np.ndarray]


def _shrink(lay: _Layer) -> _Layer | None:
    """The layer cropped to the bounding box of its non-zero alpha (None when empty)."""
    rows = np.flatnonzero(lay.alpha.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(lay.alpha.any(axis=0))
    a0, a1, b0, b1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (a0, a1, b0, b1) == (0, lay.alpha.shape[0], 0, lay.alpha.shape[1]):
        return lay
    r0, c0 = lay.win[0], lay.win[2]
    sl = (slice(a0, a1), slice(b0, b1))
    color = lay.color[sl] if lay.color.ndim == 3 else lay.color
    extra = {k: v[sl] for k, v in lay.extra.items()}
    return _Layer(lay.name, (r0 + a0, r0 + a1, c0 + b0, c0 + b1), lay.alpha[sl], color, extra, lay.ood_index, lay.face)


def _down(a: np.ndarray, ss: int) -> np.ndarray:
    """Box filter of ``ss x ss`` sample blocks: ``[H*ss, W*ss, ...]`` -> ``[H, W, ...]`` float32."""
    if ss == 1:
        return a.astype(F32)
    out = a[0::ss, 0::ss].astype(F32)
    for i in range(ss):
        for j in range(ss):
            if i or j:
                out += a[i::ss, j::ss]
    out *= np.float32(1.0 / (ss * ss))
    return out


def _render_scene(h: int, w: int, ss: int, jobs: list[_FaceJob], bg: np.ndarray) -> _SceneOut:
    """Renders faces (in order, later ones in front) over background ``bg`` ``[h, w, 3]``."""
    cv = _Canvas(h, w, ss)
    img = np.repeat(np.repeat(bg, ss, axis=0), ss, axis=1)
    lms: list[np.ndarray] = []
    for fi, job in enumerate(jobs):
        det = detail_maps(int(job.params.detail_seed), _tex_res(job, ss))
        e2h = _compose(job.geom.crop_u2h, job.e2u)
        frame = _Frame(e2h, cv)
        fp = _FacePainter(job.params, job.geom, frame, det)
        start = len(cv.layers)
        cv.layers += fp.body()
        cv.layers += fp.curtain()
        head_layers = fp.head()
        # hair behind the head goes under the neck, the rest above it
        back = [lay for lay in head_layers if lay.name == "hair_back"]
        rest = [lay for lay in head_layers if lay.name != "hair_back"]
        cv.layers += back
        cv.layers += fp.neck()
        cv.layers += rest
        cv.layers += fp.glasses()
        cv.layers += fp.objects()
        for lay in cv.layers[start:]:
            lay.face = fi
        lm_h = job.geom.landmarks(job.params)
        lms.append(frame.to_edge(lm_h) - 0.5)
    cv.layers = [lay for lay in (_shrink(lay) for lay in cv.layers) if lay is not None]
    for lay in cv.layers:
        r0, r1, c0, c1 = lay.win
        _lerp(img[r0:r1, c0:c1], lay.color, lay.alpha)
    img = _down(img, ss)
    image = clamp(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    # effective weights (coverage after occlusion by every layer above)
    weights = []
    for k, lay in enumerate(cv.layers):
        wk = lay.alpha.copy()
        for above in cv.layers[k + 1 :]:
            inter = _intersect(lay.win, above.win)
            if inter is None:
                continue
            wk[_rel(inter, lay.win)] *= 1.0 - above.alpha[_rel(inter, above.win)]
        weights.append(wk)

    def down(acc: np.ndarray) -> np.ndarray:
        return _down(acc, ss)

    covs, objs, dets = [], [], []
    for fi in range(len(jobs)):
        acc: dict[str, np.ndarray] = {}

        def add(key: str, lay: _Layer, wt: np.ndarray, acc: dict[str, np.ndarray] = acc) -> None:
            arr = acc.setdefault(key, np.zeros((h * ss, w * ss), F32))
            r0, r1, c0, c1 = lay.win
            arr[r0:r1, c0:c1] += wt

        obj_acc = [np.zeros((h * ss, w * ss), F32) for _ in jobs[fi].params.ood]
        for lay, wk in zip(cv.layers, weights, strict=True):
            if lay.face != fi:
                continue
            if lay.name == "skin":
                add("face", lay, wk * lay.extra["face"])
                add("eyes", lay, wk * lay.extra["eyes"])
                add("mouth", lay, wk * lay.extra["mouth"])
                add("hair", lay, wk * lay.extra["scalp"])
                if "detail" in lay.extra:
                    add("detail", lay, wk * lay.extra["detail"])
            elif lay.name == "glasses":
                add("face", lay, wk)
            elif lay.name.startswith("hair"):
                add("hair", lay, wk)
                if "detail" in lay.extra:
                    add("detail", lay, wk * lay.extra["detail"])
            if lay.ood_index >= 0:
                r0, r1, c0, c1 = lay.win
                obj_acc[lay.ood_index][r0:r1, c0:c1] += wk
        cov = {k: clamp(down(v), 0.0, 1.0) for k, v in acc.items()}
        for key in ("face", "eyes", "mouth", "hair"):
            cov.setdefault(key, np.zeros((h, w), F32))
        covs.append(cov)
        objs.append([down(o) for o in obj_acc])
        dets.append(cov.pop("detail", np.zeros((h, w), F32)))
    return _SceneOut(image, lms, covs, objs, dets)


def _tex_res(job: _FaceJob, ss: int) -> float:
    """Skin texture resolution matched to the sampling density of the face (texels per head unit)."""
    crop_units = math.sqrt(abs(np.linalg.det(job.geom.crop_u2h[:, :2])))
    crop_px = 1.0 / math.sqrt(abs(np.linalg.det(np.asarray(job.e2u)[:, :2])))
    return float(clamp(round(crop_px * ss / crop_units / 8.0) * 8.0, 16.0, 160.0))


# ------------------------------------------------------------------------------------------------ public API
@dataclass
class RenderResult:
    """One rendered aligned face.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        landmarks68: ``[68, 2]`` float32 iBUG landmarks in pixel coordinates (pixel centres at integers).
        masks: bool ``[H, W]`` masks: ``"face"`` (visible facial skin with eyes, brows, mouth and nose, plus
            glasses; not ears, scalp or neck; coverage >= 0.5), ``"hair"`` (>= 0.5), ``"eyes"`` (eye openings,
            >= 0.5), ``"mouth"`` (lips and mouth opening, >= 0.25), one entry per OOD kind present in the params
            (union over objects of that kind; exactly the pixels the object contributes to, coverage > 0; all False
            when it is hidden) and ``"ood"`` (union of all objects, or all False).
        coverage: The same keys as float32 coverages in [0, 1] (fraction of each pixel's colour from that part).
        object_masks: Per entry of ``params.ood``, its bool mask (coverage > 0).
        detail_mask: bool ``[H, W]``: pixels whose colour the seed's detail changes noticeably (freckles, moles,
            marks, strong hair strands; detail intensity > 0.04).
        params: The parameters drawn (clipped to the attribute ranges).
        supersample: Samples per pixel side used.
    """

    image: np.ndarray
    landmarks68: np.ndarray
    masks: dict[str, np.ndarray]
    coverage: dict[str, np.ndarray]
    object_masks: list[np.ndarray]
    detail_mask: np.ndarray
    params: FaceParams
    supersample: int

    def to_pil(self) -> Image.Image:
        """The image as a PIL RGB image."""
        from PIL import Image

        return Image.fromarray(self.image, "RGB")

    def to_tensor(self) -> torch.Tensor:
        """The image as a float32 tensor ``[3, H, W]`` in [-1, 1] (the generator's range)."""
        import torch

        return torch.from_numpy(self.image).permute(2, 0, 1).float().div(127.5).sub(1.0)


def masks_from(cov: dict[str, np.ndarray], obj_cov: list[np.ndarray], p: FaceParams) -> tuple[dict, list]:
    """Boolean region masks ``[H, W]`` (face, hair, ...) and one mask per OOD object from a render's coverage maps."""
    masks = {
        "face": cov["face"] >= 0.5,
        "hair": cov["hair"] >= 0.5,
        "eyes": cov["eyes"] >= 0.5,
        "mouth": cov["mouth"] >= 0.25,
    }
    obj_masks = [c > 0 for c in obj_cov]
    shape = cov["face"].shape
    ood_union = np.zeros(shape, bool)
    for o, m in zip(p.ood, obj_masks, strict=True):
        masks[o.kind] = masks.get(o.kind, np.zeros(shape, bool)) | m
        ood_union |= m
    masks["ood"] = ood_union
    return masks, obj_masks


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Keeps freed numpy temporaries in glibc's heap (once per process; no-op elsewhere or if GIE_SYNTH_MALLOPT=0).

    The renderer allocates many ~1 MB temporaries; with glibc's default thresholds they are returned to the OS and
    page-faulted back on every render, which costs about a third of the render time. This raises the trim threshold
    to 256 MB and the mmap threshold to 64 MB for the process.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if os.environ.get("GIE_SYNTH_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def render(params: FaceParams, size: int = 256, *, supersample: int | None = None) -> RenderResult:
    """Renders the aligned face crop of ``params`` (deterministic: same params -> identical bytes).

    Each output pixel is supersampled (``ss x ss`` samples, box-filtered) and every edge is an analytic one-sample
    ramp. Samples are mapped to head-screen coordinates (`gie_cli.synth.geometry`) and the face is composited from
    layers, back to front: background, body, long hair, hair behind the head, neck, skin (head, nose and ears
    ray-cast in closed form, with eyes, brows, mouth, age lines and the seed's detail painted in face coordinates,
    then lit), stickers, hair in front, glasses, earrings, hats, occluders. Masks and coverages are the layers'
    effective weights after occlusion (they add up to at most 1 per pixel).

    Framing: the crop square is the FFHQ recipe's quad of the face's own landmarks with the neutral expression
    (smile 0, mouth closed, eye_open 0.7), so the recipe applied to ``landmarks68`` of a neutral face gives back the
    image square exactly (the lower face's depth is tuned so the crop never rolls); expressions move the landmarks a
    little, the mean eye and mouth-corner positions not at all. Frontal faces have their eye centres at x = 0.375 and
    0.625 of the width and y = 0.474 of the height, mouth corners at y = 0.737 (at 1024 px: eyes (383.5, 484.5) and
    (639.5, 484.5), mouth corners' row 754.6 in pixel-centre coordinates, like ``FFHQ_TEMPLATE_1024`` of
    `gie_cli.alignment.ffhq`); the crop side is 4x the eye distance, or 1.8 / 2 x 4x the eye-to-mouth distance when
    that is larger (turned heads). Landmarks use pixel-centre coordinates: pixel (row i, column j) is at (j, i).

    Args:
        params: Face parameters; attributes are clipped to their ranges.
        size: Output side in pixels (square).
        supersample: Samples per pixel side (default `default_supersample`).

    Returns:
        The image with landmarks, masks and coverages.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    tune_malloc()
    p = clip_params(params)
    ss = int(supersample or default_supersample(size))
    geom = HeadModel(p)
    e2u = np.array([[1.0 / size, 0.0, 0.0], [0.0, 1.0 / size, 0.0]])
    job = _FaceJob(p, geom, e2u)
    det = detail_maps(int(p.detail_seed), _tex_res(job, ss))
    bg = background_rgb(p, det, e2u, size, size)
    out = _render_scene(size, size, ss, [job], bg)
    cov = out.coverage[0]
    masks, obj_masks = masks_from(cov, out.object_cov[0], p)
    for o, c in zip(p.ood, out.object_cov[0], strict=True):
        cov[o.kind] = np.maximum(cov.get(o.kind, np.zeros_like(c)), c)
    return RenderResult(
        image=out.image,
        landmarks68=out.landmarks[0].astype(F32),
        masks=masks,
        coverage=cov,
        object_masks=obj_masks,
        detail_mask=out.detail[0] > 0.04,
        params=p,
        supersample=ss,
    )


def render_faces(
    faces: Sequence[tuple[FaceParams, np.ndarray]],
    width: int,
    height: int,
    background: np.ndarray | Callable[[], np.ndarray],
    supersample: int | None = None,
) -> _SceneOut:
    """Renders several faces placed by ``[2, 3]`` canvas-edge -> crop-coordinate maps over a background (internal)."""
    ss = int(supersample or default_supersample(min(width, height)))
    jobs = [_FaceJob(clip_params(p), HeadModel(clip_params(p)), np.asarray(e2u, np.float64)) for p, e2u in faces]
    bg = background() if callable(background) else background
    return _render_scene(height, width, ss, jobs, np.asarray(bg, F32))
