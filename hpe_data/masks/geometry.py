"""Mask surfaces built from a face's own 68 3D landmarks (no face model, no detector).

Frames. `landmarks_3d` holds x, y in image pixels and z TOWARDS the viewer. The camera frame of the pose
convention is x right, y down, z away, so a landmark is P = (x, y, -z) there, and the head frame (the face
seen from the front, conventions section 1) is S = R.T @ (P - c) with c the landmarks' centroid. Everything
is designed in the head frame, in pixel units, and mapped back with P = R @ S + c: screen x, y = P[:2] and
depth = P[2] (weak perspective; smaller = nearer), which is what `hpe_data.render.rasterize` expects.

The face proxy is the 68 landmarks plus 20 cheek points (an elliptic cross-section between the nose/mouth
and the jaw contour: the bare landmark triangulation would make the cheeks flat and far too deep), a skirt
outside the jaw contour that turns back towards the ears and neck, and a band above the brows. One fixed
triangulation (a Delaunay of the mean de-rotated AFLW2000 layout, below) serves every face.

The mask is a (nv, nu) grid: a Coons patch in the frontal (x, y) plane bounded by the top edge (side anchor
on the jaw -> nose bridge -> other side, kept below the eyes), the jaw contour pushed out on both sides and
under the chin; its depth is a membrane stretched over the face proxy (z <= face - standoff), which gives a
flat tent over nose, lips and chin for a surgical mask, a dome with pressure for a cup, and follows the face
with little tension for cloth.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

# --------------------------------------------------------------------------------------------- face proxy

# cheek rows: (jaw index on the subject's right, base point on the right, base point on the left)
CHEEK_ROWS = ((1, 40, 47), (2, 31, 35), (3, 49, 53), (4, 59, 55), (5, 58, 56))
CHEEK_F = (0.4, 0.72)  # fractions of the way from the base point to the jaw
N_PROXY = 68 + 4 * len(CHEEK_ROWS) + 17 + 10
PROXY_TRIS = np.array([
    0,1,89, 0,68,69, 0,89,88, 1,0,69, 1,69,73, 1,73,2, 3,4,91, 3,73,77, 3,90,2, 3,91,90, 4,3,77, 4,5,92, 4,81,5,
    5,93,92, 6,7,94, 6,85,84, 6,93,5, 7,6,84, 7,95,94, 8,57,56, 8,58,57, 8,95,7, 8,97,96, 9,8,56, 10,11,99, 10,87,11,
    10,98,9, 10,99,98, 11,12,100, 11,87,83, 12,11,83, 12,13,101, 12,101,100, 13,75,14, 13,79,75, 15,16,103, 15,71,16,
    15,102,14, 16,26,104, 17,0,88, 18,17,105, 18,36,17, 19,18,105, 19,105,106, 20,37,19, 20,108,109, 20,109,21,
    22,27,21, 22,109,110, 23,22,110, 23,43,22, 23,44,43, 23,111,24, 24,112,113, 25,24,114, 25,44,24, 26,25,114,
    26,114,104, 27,28,39, 27,39,21, 28,42,29, 29,35,30, 31,29,30, 31,40,29, 31,49,72, 31,50,49, 32,31,30, 32,33,50,
    32,50,31, 33,32,30, 33,52,51, 34,33,30, 34,52,33, 35,34,30, 35,47,74, 36,0,17, 37,18,19, 37,36,18, 37,41,36,
    38,20,21, 38,37,20, 38,39,40, 39,28,29, 39,38,21, 40,31,72, 40,39,29, 41,37,38, 41,38,40, 41,68,36, 42,27,22,
    42,28,27, 42,47,29, 43,42,22, 43,44,46, 44,23,24, 44,45,46, 45,25,26, 45,26,16, 45,44,25, 45,70,46, 47,35,29,
    47,42,43, 47,43,46, 48,80,76, 49,76,72, 50,33,51, 50,61,49, 52,34,35, 52,35,53, 52,63,51, 53,35,74, 54,64,78,
    55,54,82, 55,63,53, 55,64,54, 55,86,56, 57,65,56, 58,7,84, 58,8,7, 58,66,57, 59,58,84, 59,60,49, 59,67,58,
    59,80,48, 60,48,76, 60,59,48, 60,76,49, 61,66,67, 61,67,49, 62,50,51, 62,61,50, 62,63,65, 62,66,61, 63,52,53,
    63,55,65, 63,62,51, 64,55,53, 65,55,56, 66,62,65, 66,65,57, 67,59,49, 67,66,58, 68,0,36, 68,40,72, 68,41,40,
    69,68,73, 70,45,16, 70,47,46, 71,70,16, 71,74,70, 71,75,74, 73,3,2, 73,68,72, 73,76,77, 74,47,70, 75,15,14,
    75,71,15, 75,78,74, 76,73,72, 76,80,81, 76,81,77, 78,53,74, 78,64,53, 78,79,83, 79,12,83, 79,13,12, 79,78,75,
    80,59,84, 80,85,81, 81,4,77, 81,85,5, 82,54,78, 82,78,83, 85,6,5, 85,80,84, 86,9,56, 86,10,9, 86,55,82, 86,87,10,
    87,82,83, 87,86,82, 89,1,90, 90,1,2, 91,4,92, 93,6,94, 95,8,96, 97,8,9, 98,97,9, 99,11,100, 101,13,102,
    102,13,14, 102,15,103, 103,16,104, 105,17,88, 107,19,106, 107,108,19, 108,20,19, 108,107,112, 108,111,109,
    109,22,21, 109,111,110, 111,23,110, 111,108,112, 111,112,24, 114,24,113,
], dtype=np.int64).reshape(-1, 3)

# midline, chin upwards: the coverage height scale runs from 8 (0) to 27 (1)
MIDLINE = (8, 57, 66, 62, 51, 33, 30, 29, 28, 27)
EYE_LOWER = ((36, 41, 40, 39), (42, 47, 46, 45))  # lower lids, outer -> inner / inner -> outer
NORMAL_TOP = 0.85  # coverage of a mask worn as intended (top edge between the bridge points 29 and 28)
N_SKIN = 68 + 4 * len(CHEEK_ROWS)  # proxy vertices on the face itself (landmarks and cheeks, not the skirt)


def head_frame(l3: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(68, 3) landmarks_3d (x, y px, z towards the viewer) -> (head-frame points S, centroid c)."""
    P = np.asarray(l3, dtype=np.float64) * np.array([1.0, 1.0, -1.0])
    c = P.mean(0)
    return (P - c) @ R, c


def to_image(X: np.ndarray, R: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Head-frame points -> (x px, y px, depth) screen vertices."""
    return X @ R.T + c


def scale_of(S: np.ndarray) -> float:
    """RMS distance of the 68 points from their centroid: the length unit of every design constant."""
    return float(np.sqrt((S ** 2).sum(1).mean()))


def fit_template(lm2d: np.ndarray, R: np.ndarray, template: np.ndarray, valid: np.ndarray,
                 max_residual: float = 0.35) -> np.ndarray:
    """landmarks_3d for a face with 2D landmarks only: the 3D template posed with the row's rotation and
    fitted to the valid 2D points by scale + translation (a similarity whose rotation is the known pose).

    x, y keep the measured position of each valid point: the template supplies the depth (on each point's
    viewing ray, the depth closest to the posed template, so the de-rotated shape stays near the template)
    and the missing points. A point further than max_residual x face scale from the fit is pulled back to
    that distance (a stray annotation must not tear the mask). Raises ValueError when fewer than 6 points
    are usable or the fit has no positive scale.
    """
    T = np.asarray(template, dtype=np.float64) @ np.asarray(R).T  # posed, camera frame (x, y, z away)
    valid = np.asarray(valid, dtype=bool)
    if valid.sum() < 6:
        raise ValueError(f"only {int(valid.sum())} usable landmark(s), need 6 to fit the 3D template")
    q, p = T[valid, :2], np.asarray(lm2d, dtype=np.float64)[valid]
    qm, pm = q.mean(0), p.mean(0)
    den = ((q - qm) ** 2).sum()
    s = ((q - qm) * (p - pm)).sum() / den if den > 0 else 0.0
    if not s > 0:
        raise ValueError("the 3D template does not fit the landmarks (no positive scale)")
    fit = s * (T[:, :2] - qm) + pm
    out = np.empty((len(T), 3))
    out[:, :2] = fit
    out[:, 2] = -s * (T[:, 2] - T[:, 2].mean())  # towards the viewer
    res = p - fit[valid]
    lim = max_residual * s * math.sqrt(((T - T.mean(0)) ** 2).sum(1).mean())
    n = np.linalg.norm(res, axis=1, keepdims=True)
    out[valid, :2] = fit[valid] + res * np.minimum(1.0, lim / np.maximum(n, 1e-9))
    return out


def proxy_points(S: np.ndarray) -> np.ndarray:
    """(N_PROXY, 3) head-frame vertices of the face proxy (index order matches PROXY_TRIS)."""
    r = scale_of(S)
    k, bl, br = (np.array(v) for v in zip(*CHEEK_ROWS))
    jaw_i = np.stack([k, 16 - k], 1).reshape(-1)  # right, left per row
    base_i = np.stack([bl, br], 1).reshape(-1)
    J, B = S[jaw_i][:, None], S[base_i][:, None]  # (10, 1, 3)
    f = np.array(CHEEK_F)[None, :, None]
    cheek = B + f * (J - B)
    bulge = 1.0 - np.sqrt(1.0 - np.array(CHEEK_F) ** 2)
    cheek[..., 2] = B[..., 2] + (J[..., 2] - B[..., 2]) * bulge[None, :]
    jaw = S[:17]
    d = jaw[:, :2] - S[30, :2]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    ring = jaw + np.concatenate([0.3 * r * d, np.full((17, 1), 0.5 * r)], 1)
    brow = S[17:27] + np.array([0.0, -0.45 * r, 0.12 * r])
    return np.concatenate([S, cheek.reshape(-1, 3), ring, brow])


@njit(cache=True)
def _surface_z(qx, qy, V, T, out):
    """Depth (head-frame z) of the proxy seen from the front at (qx, qy): the nearest covering triangle;
    outside every triangle, the depth of the nearest vertex. Triangles are binned on a coarse grid first."""
    nt, nb = T.shape[0], 16
    x0, x1, y0, y1 = V[:, 0].min(), V[:, 0].max(), V[:, 1].min(), V[:, 1].max()
    sx, sy = nb / max(x1 - x0, 1e-9), nb / max(y1 - y0, 1e-9)
    box = np.empty((nt, 4), np.int64)
    count = np.zeros(nb * nb + 1, np.int64)
    for t in range(nt):
        a, b, c = T[t, 0], T[t, 1], T[t, 2]
        box[t, 0] = min(int((min(V[a, 0], V[b, 0], V[c, 0]) - x0) * sx), nb - 1)
        box[t, 1] = min(int((max(V[a, 0], V[b, 0], V[c, 0]) - x0) * sx), nb - 1)
        box[t, 2] = min(int((min(V[a, 1], V[b, 1], V[c, 1]) - y0) * sy), nb - 1)
        box[t, 3] = min(int((max(V[a, 1], V[b, 1], V[c, 1]) - y0) * sy), nb - 1)
        for i in range(box[t, 2], box[t, 3] + 1):
            for j in range(box[t, 0], box[t, 1] + 1):
                count[i * nb + j + 1] += 1
    start = np.cumsum(count)
    fill = start.copy()
    cell = np.empty(start[-1], np.int64)
    for t in range(nt):
        for i in range(box[t, 2], box[t, 3] + 1):
            for j in range(box[t, 0], box[t, 1] + 1):
                k = i * nb + j
                cell[fill[k]] = t
                fill[k] += 1
    for q in range(qx.shape[0]):
        px, py = qx[q], qy[q]
        best = np.inf
        i, j = int((py - y0) * sy), int((px - x0) * sx)
        if 0 <= i < nb and 0 <= j < nb:
            k = i * nb + j
            for n in range(start[k], start[k + 1]):
                t = cell[n]
                a, b, c = T[t, 0], T[t, 1], T[t, 2]
                ax, ay, bx, by, cx, cy = V[a, 0], V[a, 1], V[b, 0], V[b, 1], V[c, 0], V[c, 1]
                den = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
                if den == 0.0:
                    continue
                w1 = ((px - ax) * (cy - ay) - (py - ay) * (cx - ax)) / den
                w2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / den
                w0 = 1.0 - w1 - w2
                if w0 < -1e-9 or w1 < -1e-9 or w2 < -1e-9:
                    continue
                z = w0 * V[a, 2] + w1 * V[b, 2] + w2 * V[c, 2]
                if z < best:
                    best = z
        if best == np.inf:
            dmin = np.inf
            for v in range(V.shape[0]):
                d = (V[v, 0] - px) ** 2 + (V[v, 1] - py) ** 2
                if d < dmin:
                    dmin, best = d, V[v, 2]
        out[q] = best


def surface_z(V: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Front depth of the proxy V (head frame) at frontal positions xy (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    flat = xy.reshape(-1, 2)
    out = np.empty(len(flat))
    _surface_z(np.ascontiguousarray(flat[:, 0]), np.ascontiguousarray(flat[:, 1]), V, PROXY_TRIS, out)
    return out.reshape(xy.shape[:-1])


@njit(cache=True)
def _front_depth(qx, qy, V, T, out):
    """Nearest screen depth of the mesh (V screen vertices) under each query point (inf if none)."""
    for i in range(qx.shape[0]):
        px, py = qx[i], qy[i]
        best = np.inf
        for t in range(T.shape[0]):
            a, b, c = T[t, 0], T[t, 1], T[t, 2]
            ax, ay, bx, by, cx, cy = V[a, 0], V[a, 1], V[b, 0], V[b, 1], V[c, 0], V[c, 1]
            if px < min(ax, bx, cx) or px > max(ax, bx, cx) or py < min(ay, by, cy) or py > max(ay, by, cy):
                continue
            den = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            if den == 0.0:
                continue
            w1 = ((px - ax) * (cy - ay) - (py - ay) * (cx - ax)) / den
            w2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / den
            w0 = 1.0 - w1 - w2
            if w0 < -1e-9 or w1 < -1e-9 or w2 < -1e-9:
                continue
            z = w0 * V[a, 2] + w1 * V[b, 2] + w2 * V[c, 2]
            if z < best:
                best = z
        out[i] = best


def self_occluded(l3_screen: np.ndarray, proxy_screen: np.ndarray, tol: float) -> np.ndarray:
    """(68,) True where the face proxy itself hides the landmark (nearer by more than tol px of depth)."""
    p = np.asarray(l3_screen, dtype=np.float64)
    out = np.empty(len(p))
    _front_depth(np.ascontiguousarray(p[:, 0]), np.ascontiguousarray(p[:, 1]),
                 np.ascontiguousarray(proxy_screen, dtype=np.float64), PROXY_TRIS, out)
    return out < p[:, 2] - tol


# --------------------------------------------------------------------------------------------- coverage


def midline_heights(S: np.ndarray) -> dict[int, float]:
    """Coverage value of each midline landmark: (y8 - y) / (y8 - y27) along the head's own vertical axis."""
    y8, y27 = S[8, 1], S[27, 1]
    H = y8 - y27
    if not H > 0:
        raise ValueError("chin (8) is not below the nose root (27) in the head frame")
    return {i: float((y8 - S[i, 1]) / H) for i in MIDLINE}


def coverage_mode(S: np.ndarray, coverage: float) -> str:
    """Name of a numeric coverage on this face: 'normal' (top edge at or above the nose base 33, so part
    of the nose is covered), 'below-nose' (nose free, top edge above the upper lip 51: the mouth is covered),
    'chin' (top edge below the upper lip: the mouth is at least partly free)."""
    h = midline_heights(S)
    if coverage >= h[33]:
        return "normal"
    return "below-nose" if coverage >= h[51] else "chin"


# --------------------------------------------------------------------------------------------- the mask grid


def _resample(P: np.ndarray, n: int) -> np.ndarray:
    """n points evenly spaced by arc length along the polyline P (m, k)."""
    seg = np.linalg.norm(np.diff(P, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, P[:, k]) for k in range(P.shape[1])], 1)


def _jaw_at(O: np.ndarray, t) -> np.ndarray:
    """Outline point(s) at fractional jaw index t (0..16)."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    i = np.clip(np.floor(t).astype(int), 0, 15)
    f = (t - i)[:, None]
    return O[i] * (1 - f) + O[i + 1] * f


@njit(cache=True)
def _membrane(z, limit, pressure, iters):
    """Relax the interior of z (nv, nu) towards the mean of its 4 neighbours minus `pressure` (outwards),
    never behind `limit` (the face minus the standoff); the border stays where it is."""
    nv, nu = z.shape
    tmp = z.copy()
    for _ in range(iters):
        for i in range(1, nv - 1):
            for j in range(1, nu - 1):
                m = 0.25 * (z[i - 1, j] + z[i + 1, j] + z[i, j - 1] + z[i, j + 1]) - pressure[i, j]
                tmp[i, j] = min(m, limit[i, j])
        for i in range(1, nv - 1):
            for j in range(1, nu - 1):
                z[i, j] = tmp[i, j]


@functools.lru_cache(maxsize=8)
def grid_tris(nv: int, nu: int) -> np.ndarray:
    """Two triangles per cell of an (nv, nu) vertex grid, wound to face the viewer in the head frame."""
    i, j = np.meshgrid(np.arange(nv - 1), np.arange(nu - 1), indexing="ij")
    a = (i * nu + j).ravel()
    b, c, d = a + 1, a + nu, a + nu + 1
    t = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)]).astype(np.int64)
    t.flags.writeable = False  # shared between calls
    return t


@functools.lru_cache(maxsize=8)
def grid_uv(nv: int, nu: int):
    """(nv, nu) grids of u, v in [0, 1] and the bump sin(pi u) sin(pi v), shared read-only."""
    uu, vv = np.meshgrid(np.linspace(0, 1, nu), np.linspace(0, 1, nv))
    out = uu, vv, np.sin(np.pi * uu) * np.sin(np.pi * vv)
    for a in out:
        a.flags.writeable = False  # shared between calls
    return out


class MaskGeometry:
    """The mask of one face in the head frame: grid vertices (nv, nu, 3), the outline data the texture
    needs (mask width and height along the surface) and the ear-loop anchor points."""

    def __init__(self, grid, width, height, corners, ears):
        self.grid, self.width, self.height = grid, width, height
        self.corners, self.ears = corners, ears

    @property
    def verts(self) -> np.ndarray:
        return self.grid.reshape(-1, 3)


def mask_surface(S: np.ndarray, proxy: np.ndarray, profile, coverage: float, nu: int = 23, nv: int = 13,
                 jitter: np.ndarray | None = None) -> MaskGeometry:
    """Mask grid for the head-frame landmarks S, its face proxy and a type profile (see styles.Profile).

    coverage: height of the top edge's centre, 0 = chin (8) .. 1 = nose root (27) along the head's vertical.
    nu must be odd: the middle column runs down the nose ridge and the chin.
    jitter: 4 numbers in [-1, 1] that vary sides, bottom, arch and standoff a little from face to face.
    """
    if nu % 2 == 0 or nu < 5 or nv < 3:
        raise ValueError(f"mask grid needs an odd nu >= 5 and nv >= 3, got nu={nu}, nv={nv}")
    jit = np.zeros(4) if jitter is None else np.asarray(jitter, dtype=np.float64)
    r = scale_of(S)
    y8, y27 = S[8, 1], S[27, 1]
    H = y8 - y27
    y_top = y8 - coverage * H

    # outline: the jaw contour pushed out in the frontal plane, more under the chin
    d = S[:17, :2] - S[30, :2]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    # a mask worn lower is the same piece of fabric: what no longer covers the nose hangs under the chin
    sag = 0.5 * max(0.0, NORMAL_TOP - coverage) * H / r
    w = (1.0 - np.abs(np.arange(17) - 8) / 8.0) ** 2
    push = (profile.out_side + (profile.out_chin * (1 + 0.3 * jit[1]) + sag - profile.out_side) * w) * r
    O = S[:17, :2] + d * push[:, None]

    # side anchors: where the outline reaches the top edge's height plus the drop towards the ears
    y_side = y_top + profile.drop * H
    yl = np.maximum.accumulate(O[:9, 1])
    yr = np.maximum.accumulate(O[16:7:-1, 1])
    tl = float(np.interp(y_side, yl, np.arange(9.0))) + profile.side + 0.3 * jit[0]
    tr = 16.0 - float(np.interp(y_side, yr, np.arange(9.0))) - profile.side - 0.3 * jit[0]
    tl, tr = min(max(tl, 0.3), 6.2), max(min(tr, 15.7), 9.8)
    tl_lo, tr_lo = tl + profile.side_len * (8 - tl), tr - profile.side_len * (tr - 8)

    # top edge: side -> bridge -> side, arched, kept below the lower eyelids
    bridge_x = float(np.interp(y_top, S[27:31, 1], S[27:31, 0]))
    a, b = _jaw_at(O, tl)[0], _jaw_at(O, tr)[0]
    s = np.linspace(-1.0, 1.0, 41)
    x = np.where(s < 0, bridge_x + (bridge_x - a[0]) * s, bridge_x + (b[0] - bridge_x) * s)
    ys = np.where(s < 0, a[1], b[1])
    y = y_top + (ys - y_top) * np.abs(s) ** (profile.arch * (1 + 0.15 * jit[2]))
    for lid in EYE_LOWER:
        e = S[list(lid)]
        order = np.argsort(e[:, 0])
        ex, ey = e[order, 0], e[order, 1]
        inside = (x >= ex[0]) & (x <= ex[-1])
        y = np.where(inside, np.maximum(y, np.interp(x, ex, ey) + 0.12 * r), y)
    top = np.stack([x, y], 1)
    bottom = _jaw_at(O, np.concatenate([np.linspace(tl_lo, 8.0, 25), np.linspace(8.0, tr_lo, 25)[1:]]))
    left = _jaw_at(O, np.linspace(tl, tl_lo, 13))
    right = _jaw_at(O, np.linspace(tr, tr_lo, 13))

    # the boundary curves on the face surface (one depth query for all), resampled by arc length; the top and
    # bottom in two halves so that the middle column runs down the midline (nose ridge, chin): the mesh
    # folds there. The patch is evaluated at twice the grid resolution: the face is sampled between the
    # vertices too, so that the flat triangles clear a sharp nose tip or chin, not only the vertices do.
    curves = [top, bottom, left, right]
    z = np.split(surface_z(proxy, np.concatenate(curves)), np.cumsum([len(c) for c in curves])[:-1])
    top, bottom, left, right = (np.concatenate([c, zc[:, None]], 1) for c, zc in zip(curves, z))

    def halves(P, n):
        m, h = len(P) // 2, n // 2 + 1
        return np.concatenate([_resample(P[:m + 1], h), _resample(P[m:], h)[1:]])

    fu, fv = 2 * nu - 1, 2 * nv - 1
    T, B = halves(top, fu), halves(bottom, fu)
    L, Rt = _resample(left, fv), _resample(right, fv)
    T[0], T[-1], B[0], B[-1] = L[0], Rt[0], L[-1], Rt[-1]
    u, v = (a[..., None] for a in grid_uv(fv, fu)[:2])
    fine = ((1 - v) * T[None, :, :2] + v * B[None, :, :2] + (1 - u) * L[:, None, :2] + u * Rt[:, None, :2]
            - ((1 - u) * (1 - v) * T[0, :2] + u * (1 - v) * T[-1, :2] + (1 - u) * v * B[0, :2] + u * v * B[-1, :2]))
    zf = surface_z(proxy, fine)
    pad = np.pad(zf, 1, mode="edge")
    near = np.min([pad[i:i + fv, j:j + fu] for i in range(3) for j in range(3)], axis=0)  # 3x3 nearest
    xy, zf, near = fine[::2, ::2], zf[::2, ::2], near[::2, ::2]
    uu, vv, bump = grid_uv(nv, nu)
    off = profile.standoff * (1 + 0.25 * jit[3]) * r
    z = zf - profile.edge_standoff * r
    limit = near - off
    pressure = profile.pressure * r * bump
    _membrane(z, limit, pressure, int(profile.tension))
    if profile.ridge:  # folded KN95: the two panels meet in a seam standing off the face
        z -= profile.ridge * r * np.maximum(0.0, 1 - np.abs(2 * uu - 1) / 0.5) ** 1.5 * np.sin(np.pi * vv) ** 0.6
    grid = np.concatenate([xy, z[..., None]], 2)

    width = float(np.linalg.norm(np.diff(grid[nv // 2], axis=0), axis=1).sum())
    height = float(np.linalg.norm(np.diff(grid[:, nu // 2], axis=0), axis=1).sum())
    corners = np.stack([grid[0, 0], grid[-1, 0], grid[0, -1], grid[-1, -1]])
    ears = np.stack([0.5 * (S[0] + S[1]), 0.5 * (S[16] + S[15])]) + np.array([[-0.1 * r, 0.0, 0.45 * r],
                                                                          [0.1 * r, 0.0, 0.45 * r]])
    return MaskGeometry(grid, width, height, corners, ears)


@njit(cache=True)
def _inside(px, py, poly):
    """Even-odd point-in-polygon test of each point against a closed polygon (n, 2)."""
    out = np.zeros(px.shape[0], np.bool_)
    n = poly.shape[0]
    for q in range(px.shape[0]):
        x, y, c = px[q], py[q], False
        j = n - 1
        for i in range(n):
            yi, yj = poly[i, 1], poly[j, 1]
            if (yi > y) != (yj > y):
                xc = poly[i, 0] + (y - yi) * (poly[j, 0] - poly[i, 0]) / (yj - yi)
                if x < xc:
                    c = not c
            j = i
        out[q] = c
    return out


def covered_tris(m: MaskGeometry, proxy: np.ndarray) -> np.ndarray:
    """(len(PROXY_TRIS),) True for proxy triangles lying wholly under the mask (inside its frontal outline):
    the mask is in front of them along any view that sees it, so they can be left out of the depth test."""
    g = m.grid
    outline = np.concatenate([g[0, :, :2], g[1:, -1, :2], g[-1, -2::-1, :2], g[-2:0:-1, 0, :2]])
    inside = _inside(np.ascontiguousarray(proxy[:, 0]), np.ascontiguousarray(proxy[:, 1]), outline)
    return inside[PROXY_TRIS].all(1)


def loop_polylines(m: MaskGeometry, r: float, n: int = 10) -> list[tuple[int, np.ndarray]]:
    """Ear loops as head-frame polylines: (side, (n, 3)) with side 0 = subject's right (-x), 1 = left.

    Each side has an upper strand (top corner -> above the ear) and a lower one (bottom corner -> below the
    ear), quadratic curves bowed away from the cheek so they ride on it instead of cutting through.
    """
    out = []
    t = np.linspace(0, 1, n)[:, None]
    for side, (top, bot) in enumerate(((0, 1), (2, 3))):
        sx = -1.0 if side == 0 else 1.0
        ear = m.ears[side]
        for corner, dy in ((m.corners[top], -0.12), (m.corners[bot], 0.15)):
            end = ear + np.array([0.0, dy * r, 0.0])
            mid = 0.5 * (corner + end) + np.array([0.12 * sx * r, 0.0, -0.05 * r])
            out.append((side, (1 - t) ** 2 * corner + 2 * (1 - t) * t * mid + t ** 2 * end))
    return out


def ribbon(poly_screen: np.ndarray, width_px: float) -> tuple[np.ndarray, np.ndarray]:
    """A screen-space strip of width_px around a projected polyline: (2n, 3) vertices, (2n - 2, 3) faces."""
    p = poly_screen
    tang = np.gradient(p[:, :2], axis=0)
    tang /= np.maximum(np.linalg.norm(tang, axis=1, keepdims=True), 1e-9)
    nrm = np.stack([-tang[:, 1], tang[:, 0]], 1) * (0.5 * width_px)
    v = np.empty((2 * len(p), 3))
    v[0::2, :2], v[1::2, :2] = p[:, :2] + nrm, p[:, :2] - nrm
    v[0::2, 2] = v[1::2, 2] = p[:, 2]
    k = np.arange(len(p) - 1) * 2
    f = np.concatenate([np.stack([k, k + 1, k + 2], 1), np.stack([k + 1, k + 3, k + 2], 1)])
    return v, f.astype(np.int64)
