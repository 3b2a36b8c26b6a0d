"""Head geometry of the synthetic world: row-wise elliptic solids, yaw projection, 68 landmarks, the FFHQ quad."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from gie_cli.synth.params import FaceParams

__all__ = [
    "EYE_HALF_W",
    "EYE_X",
    "MOUTH_HALF_W",
    "MOUTH_Y",
    "NEUTRAL",
    "EyeShape",
    "HeadModel",
    "Lut",
    "MouthShape",
    "SolidHit",
    "brow_center_y",
    "clamp",
    "eye_shape",
    "ffhq_quad",
    "lid_profile",
    "mouth_shape",
    "points5_from_68",
    "solid_hit",
]

EYE_X = 0.5  # eye centres (landmark means) at x = -EYE_X, +EYE_X, y = 0
MOUTH_Y = 1.055  # mouth corners (48, 54) at y = MOUTH_Y: eye-to-mouth / eye-to-eye as gie_cli.alignment's template
MOUTH_HALF_W = 0.36  # neutral half width of the mouth
EYE_HALF_W = 0.23  # half width of the eye opening
NEUTRAL = {"smile": 0.0, "mouth_open": 0.0, "eye_open": 0.7}  # expression used to place the aligned crop


def clamp(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` without its Python overhead (hot path on small arrays)."""
    return np.minimum(np.maximum(x, lo), hi)


class Lut:
    """Table of per-row quantities on a fine uniform y grid, read by nearest row (zero-padded ends)."""

    def __init__(self, y0: float, y1: float, vals: np.ndarray) -> None:
        """Args: y0, y1: grid ends; vals: ``[n, k]`` samples at ``linspace(y0, y1, n)``."""
        self.y0 = float(y0)
        self.n = vals.shape[0]
        self.scale = (self.n - 1) / (y1 - y0)
        self.vals = np.ascontiguousarray(vals, np.float32)
        self.cols = [np.ascontiguousarray(vals[:, k], np.float32) for k in range(vals.shape[1])]

    def index(self, y: np.ndarray) -> np.ndarray:
        """Nearest row indices of ``y`` (any shape)."""
        f = (np.asarray(y, np.float32) - np.float32(self.y0)) * np.float32(self.scale) + np.float32(0.5)
        np.clip(f, 0.0, self.n - 1.0, out=f)
        return f.astype(np.int32)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """Values at ``y`` (any shape ``S``) -> ``[*S, k]``."""
        return self.vals[self.index(y)]


@dataclass
class SolidHit:
    """A camera-ray intersection with a row-wise elliptic solid, per pixel (arrays broadcast to the pixel shape).

    Attributes:
        alpha: Antialiased silhouette coverage in [0, 1].
        depth: Depth Z of the intersection (larger = nearer the camera).
        x, z: Head coordinates of the intersection (its y is the ray's Y).
        nx, ny, nz: Unit normal in screen coordinates (X right, Y down, Z towards the camera).
    """

    alpha: np.ndarray
    depth: np.ndarray
    x: np.ndarray
    z: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray


def _row_table(prof: np.ndarray, ys: np.ndarray, cs: float, sn: float) -> np.ndarray:
    """Per-row table [a, c, x0, z0, da, dc, dz0, xc, hw, dxc, dhw] from profile samples ``[n, 4]`` (a, c, x0, z0)."""
    a, c, x0, z0 = prof.T
    dy = ys[1] - ys[0]
    da, dc, dz0 = (np.gradient(v, dy) for v in (a, c, z0))
    xc = x0 * cs + z0 * sn
    hw = np.sqrt(np.maximum(a * a * cs * cs + c * c * sn * sn, 0.0))
    dxc = np.gradient(xc, dy)
    dhw = np.gradient(hw, dy)
    return np.stack([a, c, x0, z0, da, dc, dz0, xc, hw, dxc, dhw], axis=1)


def solid_hit(
    X: np.ndarray,
    Y: np.ndarray,
    lut: Lut,
    cs: float,
    sn: float,
    px: float,
    sides: tuple[str, ...] = ("front",),
    rows: np.ndarray | None = None,
) -> list[SolidHit]:
    """Intersects orthographic camera rays at head-screen ``(X, Y)`` with a solid tabulated in ``lut``.

    Args:
        X, Y: Head-screen coordinates (broadcastable to the pixel shape ``S``).
        lut: Table from `HeadModel` (`_row_table` layout).
        cs, sn: cos and sin of the yaw.
        px: Size of one (supersampled) pixel in head units (antialiasing width).
        sides: ``"front"`` (near intersection) and/or ``"back"`` (far intersection), one hit each, in order.
        rows: Optional cheaper stand-in for ``Y`` in the table lookup (``Y[:, :1]`` when Y is constant per row).

    Returns:
        The hits; pixels off the solid have ``alpha == 0`` (their other fields are silhouette values).
    """
    i = lut.index(Y if rows is None else rows)
    a, c, x0, z0, da, dc, dz0, xc, hw, dxc, dhw = (np.take(col, i) for col in lut.cols)
    valid = a > 1e-4
    a = np.maximum(a, np.float32(1e-4))
    c = np.maximum(c, np.float32(1e-4))
    ia2 = 1.0 / (a * a)
    ic2 = 1.0 / (c * c)
    cs32, sn32 = np.float32(cs), np.float32(sn)
    p = X * cs32 - x0
    q = X * sn32 - z0
    qa2 = 2.0 * (sn32 * sn32 * ia2 + cs32 * cs32 * ic2)
    qb = 2.0 * (q * (cs32 * ic2) - p * (sn32 * ia2))
    qc = p * p * ia2 + q * q * ic2 - 1.0
    disc = qb * qb - 2.0 * qa2 * qc
    np.maximum(disc, 0.0, out=disc)
    sq = np.sqrt(disc)
    dxs = X - xc
    slope = dxc + np.copysign(dhw, dxs)
    sdf = (np.abs(dxs) - hw) / np.sqrt(1.0 + np.minimum(slope * slope, 16.0))
    alpha = clamp(0.5 - sdf * np.float32(1.0 / px), 0.0, 1.0) * valid
    out = []
    for side in sides:
        s = (sq - qb if side == "front" else -qb - sq) / qa2
        x = X * cs32 - s * sn32
        z = X * sn32 + s * cs32
        dx = x - x0
        dz = z - z0
        gx = dx * ia2
        gz = dz * ic2
        gy = clamp(-(dx * dx) * (ia2 * da / a) - (dz * dz) * (ic2 * dc / c) - dz * (ic2 * dz0), -50.0, 50.0)
        nx = gx * cs32 + gz * sn32
        nz = gz * cs32 - gx * sn32
        inv = 1.0 / np.maximum(np.sqrt(nx * nx + gy * gy + nz * nz), 1e-6)
        if side == "back":
            inv = -inv
        out.append(SolidHit(alpha.astype(np.float32), s, x, z, nx * inv, gy * inv, nz * inv))
    return out


def _superellipse_taper(t: np.ndarray, n: float) -> np.ndarray:
    return clamp(1.0 - clamp(t, 0.0, 1.0) ** n, 0.0, 1.0) ** (1.0 / n)


class HeadModel:
    """Geometry of one face: solid profiles, hair region, yaw projection and 3D landmark positions.

    Head units: interocular distance 1 (eye centres at x = -0.5 and +0.5), eye line at y = 0, y grows downwards, z
    points out of the face towards the camera, the yaw axis is x = z = 0. A head point (x, y, z) is seen by an
    orthographic camera at head-screen coordinates X = x cos(yaw) + z sin(yaw), Y = y (depth
    Z = -x sin(yaw) + z cos(yaw), larger is nearer). Every solid (head, hair shell, nose, ears) has horizontal
    elliptic cross-sections whose radii depend on y only, so camera rays (fixed X, Y) meet them in closed form.

    Args:
        p: Face parameters (already clipped to their ranges).
    """

    def __init__(self, p: FaceParams) -> None:
        self.p = p
        th = math.radians(p.yaw)
        self.cs, self.sn = math.cos(th), math.sin(th)
        self.A = 1.06 * p.face_width  # max half width of the head (cheekbones)
        self.C = 1.12  # half depth of the head
        self.yc = -0.2  # y of the widest row
        self.B_top = 1.7  # crown at yc - B_top = -1.9
        self.B_low = 2.1
        self.yj = 0.3 + 0.3 * p.jaw_width  # where the jaw taper starts
        self.y_chin = 1.72 * p.face_length
        self.jaw_n = 2.0 + 3.0 * p.jaw_width
        hl = p.hair_length
        self.t_side = 0.05 + 0.2 * hl  # hair volume (shell thickness) at the sides and on top
        self.t_top = 0.08 + 0.22 * hl
        # Shift the lower face in depth so that the mouth corners are exactly as deep as the mean of the eye
        # landmarks (neutral expression): then the FFHQ recipe's crop has no roll at any yaw.
        self.kappa = 0.0
        e = eye_shape(NEUTRAL["eye_open"])
        ex = np.array([-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3]) * EYE_HALF_W + EYE_X
        ey = np.array([e.yc, e.y_up3, e.y_up3, e.yc, e.y_lo3, e.y_lo3])
        z_eye = float(self.head_front_z(ex, ey).mean())
        z_mouth = float(self.head_front_z(np.array([MOUTH_HALF_W]), np.array([MOUTH_Y]))[0])
        self.kappa = z_eye - z_mouth
        y_lo, y_hi = -2.4, self.y_chin + 0.05
        ys = np.linspace(y_lo, y_hi, 6000)
        self.head_lut = Lut(y_lo, y_hi, _row_table(self.head_profile(ys), ys, self.cs, self.sn))
        self.shell_lut = Lut(y_lo, y_hi, _row_table(self.head_profile(ys, shell=True), ys, self.cs, self.sn))
        yn = np.linspace(-0.05, 0.75, 1600)
        self.nose_lut = Lut(-0.05, 0.75, _row_table(self.nose_profile(yn), yn, self.cs, self.sn))
        ye = np.linspace(-0.2, 0.65, 1200)
        self.ear_luts = [Lut(-0.2, 0.65, _row_table(self.ear_profile(ye, s), ye, self.cs, self.sn)) for s in (-1, 1)]
        # nose tip: the most protruding point of the nose ridge
        prot = self.nose_prot(yn)
        k = int(np.argmax(prot))
        self.nose_tip = np.array([0.0, yn[k], self.front_z(np.zeros(1), yn[k : k + 1])[0] + prot[k]])

    # ---------------------------------------------------------------- profiles
    def head_profile(self, y: np.ndarray, shell: bool = False) -> np.ndarray:
        """``[n, 4]`` (a, c, x0, z0) of the head (or the hair shell around it) at rows ``y``."""
        A, C, B_top = self.A, self.C, self.B_top
        if shell:
            A, C, B_top = A + self.t_side, C + self.t_side, B_top + self.t_top
        e = np.where(y < self.yc, (y - self.yc) / B_top, (y - self.yc) / self.B_low)
        base = np.sqrt(clamp(1.0 - e * e, 0.0, 1.0))
        t = clamp((y - self.yj) / (self.y_chin - self.yj), 0.0, 1.0)
        g = _superellipse_taper(t, self.jaw_n)
        if shell:
            g = np.maximum(g, 0.6 * (1 - t * t))
        a = A * base * g
        c = C * base * np.sqrt(g) * (1.0 - 0.25 * t)
        z0 = 0.3 * t**1.5 + self.kappa * _smooth(0.15, 0.9, y)
        return np.stack([a, c, np.zeros_like(a), z0], axis=1)

    def head_front_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the head's front surface at head (x, y) (clamped at the silhouette)."""
        pr = self.head_profile(np.asarray(y, np.float64).reshape(-1))
        a, c, _, z0 = pr.T
        xx = np.asarray(x, np.float64).reshape(-1)
        return z0 + c * np.sqrt(clamp(1.0 - (xx / np.maximum(a, 1e-6)) ** 2, 0.0, 1.0))

    def nose_prot(self, y: np.ndarray) -> np.ndarray:
        """Protrusion of the nose ridge beyond the head surface at rows ``y``."""
        t = (np.asarray(y, np.float64) - 0.0) / 0.68
        env = clamp(1.0 - np.abs(2.0 * clamp(t, 0, 1) - 1.0) ** 6, 0.0, 1.0) ** (1 / 6) * ((t > 0) & (t < 1))
        return (0.05 + 0.2 * clamp(t, 0, 1) ** 1.6) * env

    def nose_profile(self, y: np.ndarray) -> np.ndarray:
        """``[n, 4]`` (a, c, x0, z0) of the nose at rows ``y``: a ridge from between the eyes to the nostrils."""
        t = clamp(y / 0.68, 0.0, 1.0)
        env = clamp(1.0 - np.abs(2.0 * t - 1.0) ** 6, 0.0, 1.0) ** (1 / 6) * ((y > 0) & (y < 0.68))
        a = (0.095 + 0.13 * t**3) * env
        prot = self.nose_prot(y)
        c = prot / 0.6
        z0 = self.head_front_z(np.zeros_like(y), y) - 0.4 * c
        return np.stack([a, c, np.zeros_like(a), z0], axis=1)

    def ear_profile(self, y: np.ndarray, side: int) -> np.ndarray:
        """``[n, 4]`` (a, c, x0, z0) of the ear on ``side`` (-1 = image left when frontal) at rows ``y``."""
        yc, hh = 0.2, 0.34
        env = np.sqrt(clamp(1.0 - ((y - yc) / hh) ** 2, 0.0, 1.0))
        a_head = self.head_profile(np.array([yc]))[0, 0]
        a = 0.12 * env
        c = 0.2 * env
        x0 = np.full_like(y, side * (a_head + 0.02))
        z0 = np.full_like(y, -0.12)
        return np.stack([a, c, x0, z0], axis=1)

    def front_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the visible front surface (head, or the nose where it protrudes) at head (x, y)."""
        x = np.asarray(x, np.float64).reshape(-1)
        y = np.asarray(y, np.float64).reshape(-1)
        z = self.head_front_z(x, y)
        pr = self.nose_profile(y)
        a, c, _, z0 = pr.T
        inside = a > 1e-6
        zn = z0 + c * np.sqrt(clamp(1.0 - (x / np.maximum(a, 1e-6)) ** 2, 0.0, 1.0))
        return np.where(inside & (np.abs(x) < a), np.maximum(z, zn), z)

    # ---------------------------------------------------------------- hair region
    def hairline(self, phi: np.ndarray) -> np.ndarray:
        """Lowest y covered by hair at azimuth ``phi`` (0 = front, +-pi = back of the head)."""
        hl = self.p.hair_length
        ap = np.abs(phi)
        y_fore = -0.98 + 0.3 * _smooth(0.45, 1.0, hl)  # long hair gets a light fringe
        y_side = -0.25 + 1.15 * hl
        y_back = 0.45 + 1.0 * hl
        return y_fore + (y_side - y_fore) * _smooth(0.6, 1.5, ap) + (y_back - y_side) * _smooth(1.6, 2.8, ap)

    # ---------------------------------------------------------------- projection / landmarks
    def project(self, pts: np.ndarray) -> np.ndarray:
        """Head points ``[n, 3]`` -> head-screen ``[n, 2]``."""
        pts = np.asarray(pts, np.float64)
        return np.stack([pts[:, 0] * self.cs + pts[:, 2] * self.sn, pts[:, 1]], axis=1)

    def surface_points(self, xy: np.ndarray) -> np.ndarray:
        """Head (x, y) on the front surface ``[n, 2]`` -> ``[n, 3]`` with the surface z."""
        xy = np.asarray(xy, np.float64)
        return np.concatenate([xy, self.front_z(xy[:, 0], xy[:, 1])[:, None]], axis=1)

    def silhouette(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head-screen left and right X of the head outline at rows ``y``."""
        t = self.head_lut(np.asarray(y, np.float32))
        return t[..., 7] - t[..., 8], t[..., 7] + t[..., 8]

    def landmarks(self, p: FaceParams) -> np.ndarray:
        """The 68 iBUG landmarks of face ``p`` (same geometry as ``self``) in head-screen coordinates ``[68, 2]``.

        Order: jaw 0-16 (image left -> chin -> image right, on the head outline), brows 17-21 / 22-26, nose bridge
        27-30 (30 = tip), nostril base 31-35, eyes 36-41 (image-left eye) / 42-47, outer lips 48-59, inner 60-67.
        """
        out = np.zeros((68, 2))
        # jaw: arc-length resampling of the outline from ear level down to the chin and back up
        ys = np.linspace(0.02, self.y_chin - 1e-3, 200)
        xl, xr = self.silhouette(ys)
        poly = np.concatenate([np.stack([xl, ys], 1), np.stack([xr, ys], 1)[::-1]])
        seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        tgt = np.linspace(0.0, cum[-1], 17)
        out[0:17, 0] = np.interp(tgt, cum, poly[:, 0])
        out[0:17, 1] = np.interp(tgt, cum, poly[:, 1])
        pts: list[tuple[float, float]] = []
        # brows 17-21: image-left brow from its outer end to its inner end; 22-26 mirrored
        for s in (-1, 1):
            dxo = np.linspace(0.3, -0.26, 5) if s < 0 else np.linspace(-0.26, 0.3, 5)
            for d in dxo:
                pts.append((s * EYE_X + s * d, float(brow_center_y(np.array(d)))))
        bridge = [(0.0, 0.06), (0.0, 0.22), (0.0, 0.38)]
        nostrils = [(-0.17, 0.66), (-0.09, 0.69), (0.0, 0.7), (0.09, 0.69), (0.17, 0.66)]
        xy = np.array(pts + bridge + nostrils)
        p3 = self.surface_points(xy)
        out[17:30] = self.project(p3[:13])
        out[30] = self.project(self.nose_tip[None])[0]
        out[31:36] = self.project(p3[13:])
        # eyes
        e = eye_shape(p.eye_open)
        eye_pts = []
        for s in (-1, 1):
            cx = s * EYE_X
            corner_l, corner_r = (cx - EYE_HALF_W, e.yc), (cx + EYE_HALF_W, e.yc)
            up_l, up_r = (cx - EYE_HALF_W / 3, e.y_up3), (cx + EYE_HALF_W / 3, e.y_up3)
            lo_l, lo_r = (cx - EYE_HALF_W / 3, e.y_lo3), (cx + EYE_HALF_W / 3, e.y_lo3)
            eye_pts += [corner_l, up_l, up_r, corner_r, lo_r, lo_l]
        out[36:48] = self.project(self.surface_points(np.array(eye_pts)))
        # mouth
        m = mouth_shape(p.smile, p.mouth_open)
        w = m.half_w
        outer_dx = np.array([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0, -1 / 3, -2 / 3]) * w
        outer_y = [m.y_mid(outer_dx[0])] + [m.y_top(d) for d in outer_dx[1:6]] + [m.y_mid(outer_dx[6])]
        outer_y += [m.y_bot(d) for d in outer_dx[7:]]
        inner_dx = np.array([-0.85, -1 / 3, 0, 1 / 3, 0.85, 1 / 3, 0, -1 / 3]) * w
        inner_y = [m.y_mid(d) for d in inner_dx[:5]] + [m.y_open(d) for d in inner_dx[5:]]
        mxy = np.concatenate([np.stack([outer_dx, outer_y], 1), np.stack([inner_dx, inner_y], 1)])
        out[48:68] = self.project(self.surface_points(mxy))
        return out

    def anchor_landmarks(self) -> np.ndarray:
        """Landmarks ``[68, 2]`` with the neutral expression (``NEUTRAL``): they define the aligned crop of `render`."""
        return self.landmarks(dataclasses.replace(self.p, **NEUTRAL))

    @functools.cached_property
    def crop_u2h(self) -> np.ndarray:
        """``[2, 3]`` map from crop coordinates (u, v) in [0, 1]^2 (edges of the aligned crop) to head-screen ones.

        The crop is the FFHQ quad of `anchor_landmarks`.
        """
        quad = ffhq_quad(self.anchor_landmarks())
        tl, bl, tr = quad[0], quad[1], quad[3]
        return np.stack([tr - tl, bl - tl, tl], axis=1)


def _smooth(e0: float, e1: float, x: np.ndarray | float) -> np.ndarray:
    t = clamp((np.asarray(x) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def brow_center_y(dxo: np.ndarray) -> np.ndarray:
    """y of the brow centre line at ``dxo`` (x offset from the eye centre, + towards the outer end)."""
    return -0.31 - 0.07 * clamp(1.0 - ((dxo - 0.04) / 0.34) ** 2, 0.0, 1.0)


@dataclass(frozen=True)
class EyeShape:
    """Lid curves of an eye: ``y_up(t)``/``y_lo(t)`` with t = x offset / EYE_HALF_W; landmark means stay at y = 0."""

    U: float
    L: float
    yc: float

    @property
    def y_up3(self) -> float:
        return self.yc - self.U * _LID_F3

    @property
    def y_lo3(self) -> float:
        return self.yc + self.L * _LID_F3


_LID_F3 = (1.0 - 1.0 / 9.0) ** 0.75


def lid_profile(t: np.ndarray) -> np.ndarray:
    """Lid opening profile over t = x offset / EYE_HALF_W in [-1, 1]."""
    return clamp(1.0 - t * t, 0.0, 1.0) ** 0.75


def eye_shape(eye_open: float) -> EyeShape:
    """Lid amplitudes for ``eye_open`` in [0, 1] (never fully zero: a closed eye is a thin slit)."""
    eo = 0.04 + 0.96 * float(eye_open)
    U, L = 0.11 * eo, 0.075 * eo
    return EyeShape(U, L, (U - L) * _LID_F3 / 3.0)


@dataclass(frozen=True)
class MouthShape:
    """Lip curves (head coordinates, relative x ``d`` from the mouth centre); corners at (+-half_w, MOUTH_Y)."""

    half_w: float
    smile: float
    open_: float

    def _f(self, d: np.ndarray | float, pw: float) -> np.ndarray:
        return clamp(1.0 - (np.asarray(d) / self.half_w) ** 2, 0.0, 1.0) ** pw

    def y_mid(self, d: np.ndarray | float) -> np.ndarray:
        """Line where the lips meet (lower edge of the upper lip); the smile bends it, corners stay fixed."""
        return MOUTH_Y + 0.085 * self.smile * self._f(d, 1.0)

    def y_top(self, d: np.ndarray | float) -> np.ndarray:
        """Upper edge of the upper lip (with a cupid's bow)."""
        h = (0.075 - 0.02 * max(self.smile, 0.0)) * self._f(d, 0.6) - 0.018 * np.exp(-((np.asarray(d) / 0.05) ** 2))
        return self.y_mid(d) - h

    def y_open(self, d: np.ndarray | float) -> np.ndarray:
        """Upper edge of the lower lip (= y_mid when closed)."""
        return self.y_mid(d) + 0.22 * self.open_ * self._f(d, 0.7)

    def y_bot(self, d: np.ndarray | float) -> np.ndarray:
        """Lower edge of the lower lip."""
        return self.y_open(d) + (0.095 - 0.015 * max(self.smile, 0.0)) * self._f(d, 0.5)


def mouth_shape(smile: float, mouth_open: float) -> MouthShape:
    """Mouth curves for ``smile`` in [-1, 1] and ``mouth_open`` in [0, 1]."""
    return MouthShape(MOUTH_HALF_W * (1.0 + 0.12 * float(smile)), float(smile), float(mouth_open))


def points5_from_68(lm: np.ndarray) -> np.ndarray:
    """Five points ``[5, 2]``: left eye centre (mean 36-41), right eye centre (mean 42-47), nose tip 30, mouth corners
    48 and 54 ("left" = image left)."""
    lm = np.asarray(lm, np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def ffhq_quad(lm: np.ndarray) -> np.ndarray:
    """The FFHQ crop quad of a face from its 68 landmarks (the recipe of the FFHQ dataset's alignment script).

    Eye centres are the means of 36-41 and 42-47, the mouth centre the mean of 48 and 54; the square is centred at
    eye_avg + 0.1 * eye_to_mouth, oriented by eye_to_eye minus eye_to_mouth turned by 90 degrees, with half side
    max(2 |eye_to_eye|, 1.8 |eye_to_mouth|).

    Args:
        lm: ``[68, 2]`` landmarks (any pixel convention; the quad uses the same one).

    Returns:
        ``[4, 2]`` corners: top-left, bottom-left, bottom-right, top-right of the aligned image.
    """
    lm = np.asarray(lm, np.float64)
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = 0.5 * (eye_l + eye_r)
    e2e = eye_r - eye_l
    e2m = 0.5 * (lm[48] + lm[54]) - eye_avg
    xv = e2e - np.array([-e2m[1], e2m[0]])
    xv = xv / np.hypot(*xv) * max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
    yv = np.array([-xv[1], xv[0]])
    c = eye_avg + e2m * 0.1
    return np.stack([c - xv - yv, c - xv + yv, c + xv + yv, c + xv - yv])
