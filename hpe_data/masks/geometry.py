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



# The hot paths below are numba kernels working on small arrays: a face's geometry is a few hundred points,
# where numpy's per-call overhead, not arithmetic, would dominate.

_CHEEK = np.array(CHEEK_ROWS, dtype=np.int64)
_CHEEK_F = np.array(CHEEK_F)
_EYE_LOWER = np.array(EYE_LOWER, dtype=np.int64)


@njit(cache=True)
def _scale(S):
    c0, c1, c2 = 0.0, 0.0, 0.0
    n = S.shape[0]
    for i in range(n):
        c0 += S[i, 0]
        c1 += S[i, 1]
        c2 += S[i, 2]
    c0, c1, c2 = c0 / n, c1 / n, c2 / n
    acc = 0.0
    for i in range(n):
        acc += (S[i, 0] - c0) ** 2 + (S[i, 1] - c1) ** 2 + (S[i, 2] - c2) ** 2
    return math.sqrt(acc / n)


@njit(cache=True)
def _proxy_points(S):
    r = _scale(S)
    out = np.empty((N_PROXY, 3))
    for i in range(68):
        out[i, 0], out[i, 1], out[i, 2] = S[i, 0], S[i, 1], S[i, 2]
    k = 68
    for row in range(_CHEEK.shape[0]):
        for side in range(2):  # subject's right, then left
            jaw = _CHEEK[row, 0] if side == 0 else 16 - _CHEEK[row, 0]
            base = _CHEEK[row, 1 + side]
            for fi in range(_CHEEK_F.shape[0]):
                f = _CHEEK_F[fi]
                bulge = 1.0 - math.sqrt(1.0 - f * f)  # elliptic cross-section: depth lags behind x, y
                out[k, 0] = S[base, 0] + f * (S[jaw, 0] - S[base, 0])
                out[k, 1] = S[base, 1] + f * (S[jaw, 1] - S[base, 1])
                out[k, 2] = S[base, 2] + bulge * (S[jaw, 2] - S[base, 2])
                k += 1
    for j in range(17):  # skirt: the jaw pushed outwards and back
        dx, dy = S[j, 0] - S[30, 0], S[j, 1] - S[30, 1]
        n = max(math.sqrt(dx * dx + dy * dy), 1e-9)
        out[k, 0] = S[j, 0] + 0.3 * r * dx / n
        out[k, 1] = S[j, 1] + 0.3 * r * dy / n
        out[k, 2] = S[j, 2] + 0.5 * r
        k += 1
    for j in range(17, 27):  # band above the brows
        out[k, 0] = S[j, 0]
        out[k, 1] = S[j, 1] - 0.45 * r
        out[k, 2] = S[j, 2] + 0.12 * r
        k += 1
    return out


def proxy_points(S: np.ndarray) -> np.ndarray:
    """(N_PROXY, 3) head-frame vertices of the face proxy (index order matches PROXY_TRIS)."""
    return _proxy_points(np.ascontiguousarray(S, dtype=np.float64))


@njit(cache=True)
def _bins(V, T, nb):
    """Point-query tables of a mesh seen from the front: triangles binned on an nb x nb grid over its box,
    and per triangle the barycentrics w1, w2 and the depth as planes in (x, y) (no division per query;
    a degenerate triangle gets w1 = -1 everywhere)."""
    nt = T.shape[0]
    x0 = x1 = V[0, 0]
    y0 = y1 = V[0, 1]
    for i in range(1, V.shape[0]):
        x0, x1, y0, y1 = min(x0, V[i, 0]), max(x1, V[i, 0]), min(y0, V[i, 1]), max(y1, V[i, 1])
    sx, sy = nb / max(x1 - x0, 1e-9), nb / max(y1 - y0, 1e-9)
    box = np.empty((nt, 4), np.int64)
    plane = np.zeros((nt, 9))
    count = np.zeros(nb * nb + 1, np.int64)
    for t in range(nt):
        a, b, c = T[t, 0], T[t, 1], T[t, 2]
        ax, ay, bx, by, cx, cy = V[a, 0], V[a, 1], V[b, 0], V[b, 1], V[c, 0], V[c, 1]
        den = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if den == 0.0:
            plane[t, 2] = -1.0
        else:
            p1, q1 = (cy - ay) / den, -(cx - ax) / den  # w1 = p1 x + q1 y + r1
            p2, q2 = -(by - ay) / den, (bx - ax) / den
            za, dzb, dzc = V[a, 2], V[b, 2] - V[a, 2], V[c, 2] - V[a, 2]
            plane[t, 0], plane[t, 1], plane[t, 2] = p1, q1, -(p1 * ax + q1 * ay)
            plane[t, 3], plane[t, 4], plane[t, 5] = p2, q2, -(p2 * ax + q2 * ay)
            pz, qz = p1 * dzb + p2 * dzc, q1 * dzb + q2 * dzc
            plane[t, 6], plane[t, 7], plane[t, 8] = pz, qz, za - pz * ax - qz * ay
        box[t, 0] = min(int((min(ax, bx, cx) - x0) * sx), nb - 1)
        box[t, 1] = min(int((max(ax, bx, cx) - x0) * sx), nb - 1)
        box[t, 2] = min(int((min(ay, by, cy) - y0) * sy), nb - 1)
        box[t, 3] = min(int((max(ay, by, cy) - y0) * sy), nb - 1)
        for i in range(box[t, 2], box[t, 3] + 1):
            for j in range(box[t, 0], box[t, 1] + 1):
                count[i * nb + j + 1] += 1
    start = np.empty(nb * nb + 1, np.int64)
    fill = np.empty(nb * nb + 1, np.int64)
    acc = 0
    for k in range(nb * nb + 1):
        acc += count[k]
        start[k] = fill[k] = acc
    cell = np.empty(start[-1], np.int64)
    for t in range(nt):
        for i in range(box[t, 2], box[t, 3] + 1):
            for j in range(box[t, 0], box[t, 1] + 1):
                k = i * nb + j
                cell[fill[k]] = t
                fill[k] += 1
    return x0, y0, sx, sy, start, cell, plane


@njit(cache=True)
def _query_z(P, V, bins, nearest, out):
    """out[q] = depth of the nearest triangle covering the point (P[q, 0], P[q, 1]) seen from the front
    (bins from _bins); outside every triangle: the depth of the nearest vertex if `nearest`, else inf. One
    call per batch of points: a call per point would pay array reference counting."""
    x0, y0, sx, sy, start, cell, plane = bins
    nb = int(math.sqrt(start.shape[0] - 1))
    for q in range(P.shape[0]):
        px, py = P[q, 0], P[q, 1]
        best = np.inf
        i, j = int(math.floor((py - y0) * sy)), int(math.floor((px - x0) * sx))
        if 0 <= i < nb and 0 <= j < nb:
            k = i * nb + j
            for n in range(start[k], start[k + 1]):
                t = cell[n]
                w1 = plane[t, 0] * px + plane[t, 1] * py + plane[t, 2]
                w2 = plane[t, 3] * px + plane[t, 4] * py + plane[t, 5]
                if w1 < -1e-9 or w2 < -1e-9 or 1.0 - w1 - w2 < -1e-9:
                    continue
                z = plane[t, 6] * px + plane[t, 7] * py + plane[t, 8]
                if z < best:
                    best = z
        if best == np.inf and nearest:
            dmin = np.inf
            for v in range(V.shape[0]):
                d = (V[v, 0] - px) ** 2 + (V[v, 1] - py) ** 2
                if d < dmin:
                    dmin, best = d, V[v, 2]
        out[q] = best


def surface_z(V: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Front depth of the proxy V (head frame) at frontal positions xy (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    flat = np.ascontiguousarray(xy.reshape(-1, 2))
    V = np.ascontiguousarray(V, dtype=np.float64)
    out = np.empty(len(flat))
    _query_z(flat, V, _bins(V, PROXY_TRIS, 32), True, out)
    return out.reshape(xy.shape[:-1])


def self_occluded(l3_screen: np.ndarray, proxy_screen: np.ndarray, tol: float) -> np.ndarray:
    """(68,) True where the face proxy itself hides the landmark (nearer by more than tol px of depth)."""
    return _self_occluded(np.ascontiguousarray(l3_screen, dtype=np.float64),
                          np.ascontiguousarray(proxy_screen, dtype=np.float64), float(tol))


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


@njit(cache=True)
def _interp(x, xp, fp):
    """np.interp for one x over an ascending xp (also for strided xp, fp)."""
    n = xp.shape[0]
    if x <= xp[0]:
        return fp[0]
    if x >= xp[n - 1]:
        return fp[n - 1]
    j = 0
    while xp[j + 1] <= x:  # the last j with xp[j] <= x
        j += 1
    if xp[j] == x:
        return fp[j]
    return fp[j] + (fp[j + 1] - fp[j]) * (x - xp[j]) / (xp[j + 1] - xp[j])


@njit(cache=True)
def _lin(a, b, n, i):
    """Element i of np.linspace(a, b, n)."""
    return b if i == n - 1 else a + i * ((b - a) / (n - 1))


@njit(cache=True)
def _jaw_at(O, t, out, k):
    """out[k, :2] = outline point at fractional jaw index t (0..16, extrapolated past the ends)."""
    i = min(max(int(math.floor(t)), 0), 15)
    f = t - i
    out[k, 0] = O[i, 0] * (1 - f) + O[i + 1, 0] * f
    out[k, 1] = O[i, 1] * (1 - f) + O[i + 1, 1] * f


@njit(cache=True)
def _resample(P, lo, hi, n, out, k0):
    """out[k0:k0+n] = n points evenly spaced by arc length along the polyline P[lo:hi] (3D)."""
    m = hi - lo
    s = np.empty(m)
    s[0] = 0.0
    for i in range(1, m):
        a, b = P[lo + i - 1], P[lo + i]
        s[i] = s[i - 1] + math.sqrt((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2 + (b[2] - a[2]) ** 2)
    j = 0
    for q in range(n):
        t = _lin(0.0, s[m - 1], n, q)
        while j < m - 2 and s[j + 1] <= t:
            j += 1
        d = s[j + 1] - s[j]
        f = 0.0 if d <= 0.0 else min(max((t - s[j]) / d, 0.0), 1.0)
        for c in range(3):
            out[k0 + q, c] = P[lo + j, c] + f * (P[lo + j + 1, c] - P[lo + j, c])


@njit(cache=True)
def _halves(P, n, out):
    """Resample P to n points in two halves, so that the middle output point is P's middle point."""
    m, h = P.shape[0] // 2, n // 2 + 1
    _resample(P, 0, m + 1, h, out, 0)
    _resample(P, m, P.shape[0], h, out, h - 1)  # its first point is the same middle point


@njit(cache=True)
def _membrane(z, limit, pressure, iters):
    """Relax the interior of z (nv, nu) towards the mean of its 4 neighbours minus `pressure` (outwards),
    never behind `limit` (the face minus the standoff); the border stays where it is. Jacobi steps
    (the iteration count sets how taut the mask is), ping-ponging between two buffers."""
    nv, nu = z.shape
    a, b = z, z.copy()
    for _ in range(iters):
        for i in range(1, nv - 1):
            for j in range(1, nu - 1):
                m = 0.25 * (a[i - 1, j] + a[i + 1, j] + a[i, j - 1] + a[i, j + 1]) - pressure[i, j]
                b[i, j] = min(m, limit[i, j])
        a, b = b, a
    if iters % 2:
        z[:] = a


class MaskGeometry:
    """The mask of one face in the head frame: grid vertices (nv, nu, 3), the outline data the texture
    needs (mask width and height along the surface) and the ear-loop anchor points."""

    def __init__(self, grid, width, height, corners, ears):
        self.grid, self.width, self.height = grid, width, height
        self.corners, self.ears = corners, ears

    @property
    def verts(self) -> np.ndarray:
        return self.grid.reshape(-1, 3)


def profile_vector(profile) -> np.ndarray:
    """styles.Profile -> the float vector the grid kernel reads (field order of Profile)."""
    return np.array([profile.out_side, profile.out_chin, profile.drop, profile.side, profile.side_len,
                     profile.arch, profile.standoff, profile.edge_standoff, profile.tension, profile.pressure,
                     profile.ridge], dtype=np.float64)


@njit(cache=True)
def _mask_grid(S, proxy, prof, coverage, jit, nv, nu):
    out_side, out_chin, drop, side, side_len, arch = prof[0], prof[1], prof[2], prof[3], prof[4], prof[5]
    standoff, edge_standoff, tension, pressure, ridge = prof[6], prof[7], int(prof[8]), prof[9], prof[10]
    r = _scale(S)
    y8, y27 = S[8, 1], S[27, 1]
    H = y8 - y27
    y_top = y8 - coverage * H

    # outline: the jaw contour pushed out in the frontal plane, more under the chin; a mask worn lower is the
    # same piece of fabric: what no longer covers the nose hangs under the chin
    sag = 0.5 * max(0.0, NORMAL_TOP - coverage) * H / r
    O = np.empty((17, 2))
    for k in range(17):
        dx, dy = S[k, 0] - S[30, 0], S[k, 1] - S[30, 1]
        n = max(math.sqrt(dx * dx + dy * dy), 1e-9)
        w = (1.0 - abs(k - 8) / 8.0) ** 2
        push = (out_side + (out_chin * (1 + 0.3 * jit[1]) + sag - out_side) * w) * r
        O[k, 0] = S[k, 0] + dx / n * push
        O[k, 1] = S[k, 1] + dy / n * push

    # side anchors: where the outline reaches the top edge's height plus the drop towards the ears
    y_side = y_top + drop * H
    yl, yr, idx = np.empty(9), np.empty(9), np.arange(9.0)
    ml = mr = -np.inf
    for k in range(9):
        ml, mr = max(ml, O[k, 1]), max(mr, O[16 - k, 1])
        yl[k], yr[k] = ml, mr
    tl = _interp(y_side, yl, idx) + side + 0.3 * jit[0]
    tr = 16.0 - _interp(y_side, yr, idx) - side - 0.3 * jit[0]
    tl, tr = min(max(tl, 0.3), 6.2), max(min(tr, 15.7), 9.8)
    tl_lo, tr_lo = tl + side_len * (8 - tl), tr - side_len * (tr - 8)

    # the four boundary curves, x, y in the frontal plane (z filled in from the face below)
    nt, nb, ns = 41, 49, 13
    curves = np.empty((nt + nb + 2 * ns, 3))
    ends = np.empty((2, 2))
    _jaw_at(O, tl, ends, 0)
    _jaw_at(O, tr, ends, 1)
    # top edge: side -> bridge -> side, arched, kept below the lower eyelids
    bridge_x = _interp(y_top, S[27:31, 1], S[27:31, 0])
    expo = arch * (1 + 0.15 * jit[2])
    lids = np.empty((2, 2, 4))  # lower lids sorted by x: (lid, x|y, point)
    for lid in range(2):
        for k in range(4):  # insertion sort of 4 points
            x, y = S[_EYE_LOWER[lid, k], 0], S[_EYE_LOWER[lid, k], 1]
            m = k
            while m > 0 and lids[lid, 0, m - 1] > x:
                lids[lid, 0, m], lids[lid, 1, m] = lids[lid, 0, m - 1], lids[lid, 1, m - 1]
                m -= 1
            lids[lid, 0, m], lids[lid, 1, m] = x, y
    for i in range(nt):
        s = _lin(-1.0, 1.0, nt, i)
        if s < 0:
            x, ys = bridge_x + (bridge_x - ends[0, 0]) * s, ends[0, 1]
        else:
            x, ys = bridge_x + (ends[1, 0] - bridge_x) * s, ends[1, 1]
        y = y_top + (ys - y_top) * abs(s) ** expo
        for lid in range(2):
            if lids[lid, 0, 0] <= x <= lids[lid, 0, 3]:
                y = max(y, _interp(x, lids[lid, 0], lids[lid, 1]) + 0.12 * r)
        curves[i, 0], curves[i, 1] = x, y
    for i in range(nb):  # bottom: side -> chin -> side along the outline
        t = _lin(tl_lo, 8.0, 25, i) if i < 25 else _lin(8.0, tr_lo, 25, i - 24)
        _jaw_at(O, t, curves, nt + i)
    for i in range(ns):
        _jaw_at(O, _lin(tl, tl_lo, ns, i), curves, nt + nb + i)
        _jaw_at(O, _lin(tr, tr_lo, ns, i), curves, nt + nb + ns + i)

    # the boundary curves on the face surface, resampled by arc length; the top and bottom in two halves so
    # that the middle column runs down the midline (nose ridge, chin): the mesh folds there. The patch is
    # evaluated at twice the grid resolution: the face is sampled between the vertices too, so that the flat
    # triangles clear a sharp nose tip or chin, not only the vertices do.
    bins = _bins(proxy, PROXY_TRIS, 32)
    cz = np.empty(curves.shape[0])
    _query_z(curves, proxy, bins, True, cz)
    for i in range(curves.shape[0]):
        curves[i, 2] = cz[i]
    fu, fv = 2 * nu - 1, 2 * nv - 1
    T, B, L, Rt = np.empty((fu, 3)), np.empty((fu, 3)), np.empty((fv, 3)), np.empty((fv, 3))
    _halves(curves[:nt], fu, T)
    _halves(curves[nt:nt + nb], fu, B)
    _resample(curves, nt + nb, nt + nb + ns, fv, L, 0)
    _resample(curves, nt + nb + ns, nt + nb + 2 * ns, fv, Rt, 0)
    T[0], T[fu - 1], B[0], B[fu - 1] = L[0], Rt[0], L[fv - 1], Rt[fv - 1]
    fine = np.empty((fv * fu, 2))  # Coons patch in x, y (row-major (fv, fu)); fz = the face's depth there
    for i in range(fv):
        v = _lin(0.0, 1.0, fv, i)
        for j in range(fu):
            u = _lin(0.0, 1.0, fu, j)
            for k in range(2):
                fine[i * fu + j, k] = ((1 - v) * T[j, k] + v * B[j, k] + (1 - u) * L[i, k] + u * Rt[i, k]
                                       - ((1 - u) * (1 - v) * T[0, k] + u * (1 - v) * T[fu - 1, k]
                                          + (1 - u) * v * B[0, k] + u * v * B[fu - 1, k]))
    fz = np.empty(fv * fu)
    _query_z(fine, proxy, bins, True, fz)

    # the membrane: stretched over the face at the vertices and at the fine samples around them
    grid = np.empty((nv, nu, 3))
    z, limit, pres = np.empty((nv, nu)), np.empty((nv, nu)), np.empty((nv, nu))
    off = standoff * (1 + 0.25 * jit[3]) * r
    for i in range(nv):
        v = _lin(0.0, 1.0, nv, i)
        for j in range(nu):
            u = _lin(0.0, 1.0, nu, j)
            near = np.inf
            for a in range(max(2 * i - 1, 0), min(2 * i + 2, fv)):
                for b in range(max(2 * j - 1, 0), min(2 * j + 2, fu)):
                    near = min(near, fz[a * fu + b])
            k = 2 * i * fu + 2 * j
            grid[i, j, 0], grid[i, j, 1] = fine[k, 0], fine[k, 1]
            z[i, j] = fz[k] - edge_standoff * r
            limit[i, j] = near - off
            pres[i, j] = pressure * r * math.sin(math.pi * u) * math.sin(math.pi * v)
    _membrane(z, limit, pres, tension)
    for i in range(nv):
        v = _lin(0.0, 1.0, nv, i)
        for j in range(nu):
            zz = z[i, j]
            if ridge:  # folded KN95: the two panels meet in a seam standing off the face
                u = _lin(0.0, 1.0, nu, j)
                zz -= ridge * r * max(0.0, 1 - abs(2 * u - 1) / 0.5) ** 1.5 * math.sin(math.pi * v) ** 0.6
            grid[i, j, 2] = zz

    width = height = 0.0
    for j in range(nu - 1):
        a, b = grid[nv // 2, j], grid[nv // 2, j + 1]
        width += math.sqrt((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2 + (b[2] - a[2]) ** 2)
    for i in range(nv - 1):
        a, b = grid[i, nu // 2], grid[i + 1, nu // 2]
        height += math.sqrt((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2 + (b[2] - a[2]) ** 2)
    corners = np.empty((4, 3))
    corners[0], corners[1], corners[2], corners[3] = grid[0, 0], grid[nv - 1, 0], grid[0, nu - 1], grid[nv - 1, nu - 1]
    ears = np.empty((2, 3))
    for k in range(3):
        ears[0, k] = 0.5 * (S[0, k] + S[1, k])
        ears[1, k] = 0.5 * (S[16, k] + S[15, k])
    ears[0, 0] -= 0.1 * r
    ears[1, 0] += 0.1 * r
    ears[0, 2] += 0.45 * r
    ears[1, 2] += 0.45 * r
    return grid, width, height, corners, ears


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
    prof = profile if isinstance(profile, np.ndarray) else profile_vector(profile)
    grid, width, height, corners, ears = _mask_grid(np.ascontiguousarray(S, dtype=np.float64),
                                                    np.ascontiguousarray(proxy, dtype=np.float64), prof,
                                                    float(coverage), jit, int(nv), int(nu))
    return MaskGeometry(grid, width, height, corners, ears)


@njit(cache=True)
def _covered(grid, proxy, T):
    """Proxy triangles whose three vertices lie inside the grid's frontal outline (even-odd test)."""
    nv, nu = grid.shape[0], grid.shape[1]
    n = 2 * (nu - 1) + 2 * (nv - 1)
    poly = np.empty((n, 2))
    k = 0
    for j in range(nu - 1):  # top, left to right
        poly[k] = grid[0, j, :2]
        k += 1
    for i in range(nv - 1):  # right side down
        poly[k] = grid[i, nu - 1, :2]
        k += 1
    for j in range(nu - 1, 0, -1):  # bottom, right to left
        poly[k] = grid[nv - 1, j, :2]
        k += 1
    for i in range(nv - 1, 0, -1):  # left side up
        poly[k] = grid[i, 0, :2]
        k += 1
    inside = np.zeros(proxy.shape[0], np.bool_)
    lx, hx, ly, hy = poly[:, 0].min(), poly[:, 0].max(), poly[:, 1].min(), poly[:, 1].max()
    for q in range(proxy.shape[0]):
        x, y, c = proxy[q, 0], proxy[q, 1], False
        if x < lx or x > hx or y < ly or y > hy:
            continue
        j = n - 1
        for i in range(n):
            yi, yj = poly[i, 1], poly[j, 1]
            if (yi > y) != (yj > y):
                xc = poly[i, 0] + (y - yi) * (poly[j, 0] - poly[i, 0]) / (yj - yi)
                if x < xc:
                    c = not c
            j = i
        inside[q] = c
    out = np.empty(T.shape[0], np.bool_)
    for t in range(T.shape[0]):
        out[t] = inside[T[t, 0]] and inside[T[t, 1]] and inside[T[t, 2]]
    return out


def covered_tris(m: MaskGeometry, proxy: np.ndarray) -> np.ndarray:
    """(len(PROXY_TRIS),) True for proxy triangles lying wholly under the mask (inside its frontal outline):
    the mask is in front of them along any view that sees it, so they can be left out of the depth test."""
    return _covered(m.grid, np.ascontiguousarray(proxy, dtype=np.float64), PROXY_TRIS)


@njit(cache=True)
def _grid_shade(grid, R):
    """Per-vertex geometric shade of the mask: brighter where it faces the camera and faces up."""
    nv, nu = grid.shape[0], grid.shape[1]
    out = np.empty(nv * nu)
    for i in range(nv):
        i0, i1 = max(i - 1, 0), min(i + 1, nv - 1)
        for j in range(nu):
            j0, j1 = max(j - 1, 0), min(j + 1, nu - 1)
            # np.gradient: central differences inside, one-sided at the ends
            fu, fv = 1.0 / (j1 - j0), 1.0 / (i1 - i0)
            u0, u1, u2 = ((grid[i, j1, 0] - grid[i, j0, 0]) * fu, (grid[i, j1, 1] - grid[i, j0, 1]) * fu,
                          (grid[i, j1, 2] - grid[i, j0, 2]) * fu)
            v0, v1, v2 = ((grid[i1, j, 0] - grid[i0, j, 0]) * fv, (grid[i1, j, 1] - grid[i0, j, 1]) * fv,
                          (grid[i1, j, 2] - grid[i0, j, 2]) * fv)
            n0 = v1 * u2 - v2 * u1  # dv x du: towards the viewer in the head frame
            n1 = v2 * u0 - v0 * u2
            n2 = v0 * u1 - v1 * u0
            nn = max(math.sqrt(n0 * n0 + n1 * n1 + n2 * n2), 1e-9)
            c1 = (R[1, 0] * n0 + R[1, 1] * n1 + R[1, 2] * n2) / nn
            c2 = (R[2, 0] * n0 + R[2, 1] * n1 + R[2, 2] * n2) / nn
            out[i * nu + j] = min(max(0.62 + 0.38 * max(-c2, 0.0) - 0.15 * c1, 0.45), 1.05)
    return out


def grid_shade(grid: np.ndarray, R: np.ndarray) -> np.ndarray:
    """(nv * nu,) shade of each grid vertex under a light from the camera, a little from above."""
    return _grid_shade(grid, np.ascontiguousarray(R, dtype=np.float64))


@njit(cache=True)
def _loops(corners, ears, r, R, c, width_px, n):
    """Ear loops as screen-space ribbons: per visible side an upper strand (top corner -> above the ear)
    and a lower one (bottom corner -> below the ear), quadratic curves bowed away from the cheek so they ride
    on it instead of cutting through. A side whose head axis faces away (the loop is behind the head) is
    left out. Returns (V (k, 3) screen x, y, depth; F (m, 3))."""
    sides = 0
    for side in range(2):
        if R[2, 0] * (-1.0 if side == 0 else 1.0) <= 0.3:
            sides += 1
    V = np.empty((sides * 2 * 2 * n, 3))
    F = np.empty((sides * 2 * 2 * (n - 1), 3), np.int64)
    P = np.empty((n, 3))
    nv = nf = 0
    for side in range(2):
        sx = -1.0 if side == 0 else 1.0
        if R[2, 0] * sx > 0.3:
            continue
        for strand in range(2):
            corner = corners[2 * side + strand]
            dy = -0.12 if strand == 0 else 0.15
            e0, e1, e2 = ears[side, 0], ears[side, 1] + dy * r, ears[side, 2]
            m0 = 0.5 * (corner[0] + e0) + 0.12 * sx * r
            m1 = 0.5 * (corner[1] + e1)
            m2 = 0.5 * (corner[2] + e2) - 0.05 * r
            for q in range(n):
                t = _lin(0.0, 1.0, n, q)
                a, b, cc = (1 - t) ** 2, 2 * (1 - t) * t, t * t
                h0 = a * corner[0] + b * m0 + cc * e0
                h1 = a * corner[1] + b * m1 + cc * e1
                h2 = a * corner[2] + b * m2 + cc * e2
                for k in range(3):
                    P[q, k] = R[k, 0] * h0 + R[k, 1] * h1 + R[k, 2] * h2 + c[k]
            for q in range(n):  # the strip: +- half the width along the screen normal
                q0, q1 = max(q - 1, 0), min(q + 1, n - 1)
                tx, ty = (P[q1, 0] - P[q0, 0]) / (q1 - q0), (P[q1, 1] - P[q0, 1]) / (q1 - q0)
                tn = max(math.sqrt(tx * tx + ty * ty), 1e-9)
                nx, ny = -ty / tn * 0.5 * width_px, tx / tn * 0.5 * width_px
                V[nv + 2 * q, 0], V[nv + 2 * q, 1], V[nv + 2 * q, 2] = P[q, 0] + nx, P[q, 1] + ny, P[q, 2]
                V[nv + 2 * q + 1, 0], V[nv + 2 * q + 1, 1], V[nv + 2 * q + 1, 2] = P[q, 0] - nx, P[q, 1] - ny, P[q, 2]
            for q in range(n - 1):
                k = nv + 2 * q
                F[nf, 0], F[nf, 1], F[nf, 2] = k, k + 1, k + 2
                F[nf + 1, 0], F[nf + 1, 1], F[nf + 1, 2] = k + 1, k + 3, k + 2
                nf += 2
            nv += 2 * n
    return V, F


def loop_mesh(m: MaskGeometry, r: float, R: np.ndarray, c: np.ndarray, width_px: float, n: int = 10):
    """Screen-space ear-loop ribbons of the mask m on a face with pose R, centre c: (V (k, 3), F (m, 3))."""
    return _loops(m.corners, m.ears, float(r), np.ascontiguousarray(R, dtype=np.float64),
                  np.asarray(c, dtype=np.float64), float(width_px), int(n))


# --------------------------------------------------------------------------------------------- one face's scene


@njit(cache=True)
def _frame(l3, R):
    """landmarks_3d (68, 3) and R -> (head-frame points S, centroid c in the camera frame, scale r)."""
    c = np.zeros(3)
    n = l3.shape[0]
    for i in range(n):
        c[0] += l3[i, 0]
        c[1] += l3[i, 1]
        c[2] -= l3[i, 2]  # z towards the viewer -> z away
    c /= n
    S = np.empty((n, 3))
    for i in range(n):
        p0, p1, p2 = l3[i, 0] - c[0], l3[i, 1] - c[1], -l3[i, 2] - c[2]
        for k in range(3):  # (P - c) @ R
            S[i, k] = p0 * R[0, k] + p1 * R[1, k] + p2 * R[2, k]
    return S, c, _scale(S)


def frame(l3: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """head_frame and scale_of in one call: (S, c, r)."""
    return _frame(np.ascontiguousarray(l3, dtype=np.float64), np.ascontiguousarray(R, dtype=np.float64))


@njit(cache=True)
def _to_image(X, R, c, out, k0):
    """out[k0:k0+len(X)] = X @ R.T + c."""
    for i in range(X.shape[0]):
        for k in range(3):
            out[k0 + i, k] = R[k, 0] * X[i, 0] + R[k, 1] * X[i, 1] + R[k, 2] * X[i, 2] + c[k]


@njit(cache=True)
def _scene(S, R, c, prof, coverage, jit, nv, nu, width, height, loops, bias):
    r = _scale(S)
    proxy = _proxy_points(S)
    grid, mw, mh, corners, ears = _mask_grid(S, proxy, prof, coverage, jit, nv, nu)
    nm = nv * nu
    if loops:
        Vl, Tl = _loops(corners, ears, r, R, c, max(1.2, 0.035 * r), 10)
    else:
        Vl, Tl = np.empty((0, 3)), np.empty((0, 3), np.int64)
    nl = Vl.shape[0]
    covered = _covered(grid, proxy, PROXY_TRIS)
    nk = 0
    for t in range(covered.shape[0]):
        nk += 0 if covered[t] else 1
    n_body = 2 * (nv - 1) * (nu - 1)
    gate = n_body + Tl.shape[0]

    V = np.empty((nm + nl + N_PROXY, 3))
    for i in range(nv):
        for j in range(nu):
            g = grid[i, j]
            for k in range(3):
                V[i * nu + j, k] = R[k, 0] * g[0] + R[k, 1] * g[1] + R[k, 2] * g[2] + c[k]
    for i in range(nl):
        V[nm + i, 0], V[nm + i, 1], V[nm + i, 2] = Vl[i, 0], Vl[i, 1], Vl[i, 2]
    Vp = np.empty((N_PROXY, 3))  # the proxy on screen (self-occlusion); in V pushed back by the bias
    _to_image(proxy, R, c, Vp, 0)
    for i in range(N_PROXY):
        V[nm + nl + i, 0], V[nm + nl + i, 1], V[nm + nl + i, 2] = Vp[i, 0], Vp[i, 1], Vp[i, 2] + bias * r
    inside = 0
    for i in range(nm):
        if 0 <= V[i, 0] <= width - 1 and 0 <= V[i, 1] <= height - 1:
            inside += 1

    T = np.empty((gate + nk, 3), np.int64)
    k = 0
    for i in range(nv - 1):  # two triangles per cell, wound to face the viewer in the head frame
        for j in range(nu - 1):
            a = i * nu + j
            T[k, 0], T[k, 1], T[k, 2] = a, a + nu, a + 1
            k += 1
    for i in range(nv - 1):
        for j in range(nu - 1):
            a = i * nu + j
            T[k, 0], T[k, 1], T[k, 2] = a + 1, a + nu, a + nu + 1
            k += 1
    for t in range(Tl.shape[0]):
        for q in range(3):
            T[k, q] = Tl[t, q] + nm
        k += 1
    skin = np.empty(nk, np.bool_)
    for t in range(PROXY_TRIS.shape[0]):
        if covered[t]:
            continue
        on_skin = True
        for q in range(3):
            T[k, q] = PROXY_TRIS[t, q] + nm + nl
            on_skin = on_skin and PROXY_TRIS[t, q] < N_SKIN
        skin[k - gate] = on_skin
        k += 1

    attr = np.empty((nm + nl, 3))
    shade = _grid_shade(grid, R)
    for i in range(nv):
        for j in range(nu):
            attr[i * nu + j, 0] = _lin(0.0, 1.0, nu, j)
            attr[i * nu + j, 1] = _lin(0.0, 1.0, nv, i)
            attr[i * nu + j, 2] = shade[i * nu + j]
    for i in range(nm, nm + nl):  # ear loops: no texture coordinates, a fixed shade
        attr[i, 0], attr[i, 1], attr[i, 2] = 0.0, 0.0, 0.9
    box = np.empty(4)
    box[0], box[1], box[2], box[3] = V[0, 0], V[0, 1], V[0, 0], V[0, 1]
    for i in range(1, nm + nl):
        box[0], box[1] = min(box[0], V[i, 0]), min(box[1], V[i, 1])
        box[2], box[3] = max(box[2], V[i, 0]), max(box[3], V[i, 1])
    return V, T, attr, n_body, gate, skin, Vp, r, mw, mh, inside / nm, box


class Scene:
    """One face's mask scene on screen, in drawing order: faces[:n_body] the mask body, faces[n_body:gate]
    the ear loops, faces[gate:] the face proxy as an occluder (the triangles wholly under the mask left
    out: they cannot hide it), pushed back by `bias` x scale (a coarse stand-in for the face: the mask,
    in front by its standoff, must not lose to it where chords of the two meshes cross).

    verts (n, 3) x, y px and depth; attr (u, v, shade) of the mask and loop vertices; skin: which occluder
    faces are on the face itself (light samples); proxy: the proxy's screen vertices without the bias;
    r: face scale px; width, height: the mask's extent along its surface (face units x r);
    inside: share of the mask vertices inside the image; box: x0, y0, x1, y1 of the mask and loops."""

    def __init__(self, verts, faces, attr, n_body, gate, skin, proxy, r, width, height, inside, box):
        self.verts, self.faces, self.attr, self.n_body, self.gate = verts, faces, attr, n_body, gate
        self.skin, self.proxy, self.r, self.width, self.height = skin, proxy, r, width, height
        self.inside, self.box = inside, box


def mask_scene(S: np.ndarray, R: np.ndarray, c: np.ndarray, profile, coverage: float, jitter, width: int,
               height: int, loops: bool = True, bias: float = 0.1, nu: int = 23, nv: int = 13) -> Scene:
    """The screen-space scene of a face's mask (see Scene): proxy_points, mask_surface, covered_tris,
    grid_shade and loop_mesh in one compiled call. S, c: head frame of the face (frame); R: its pose;
    profile: styles.Profile or profile_vector; width, height: the image size."""
    if nu % 2 == 0 or nu < 5 or nv < 3:
        raise ValueError(f"mask grid needs an odd nu >= 5 and nv >= 3, got nu={nu}, nv={nv}")
    prof = profile if isinstance(profile, np.ndarray) else profile_vector(profile)
    jit = np.zeros(4) if jitter is None else np.asarray(jitter, dtype=np.float64)
    return Scene(*_scene(S, np.ascontiguousarray(R, dtype=np.float64), c, prof, float(coverage), jit, nv, nu,
                         int(width), int(height), bool(loops), float(bias)))


@njit(cache=True)
def _self_occluded(L, proxy, tol):
    """(68,) the proxy's surface (screen vertices) is nearer than L's depth - tol at L's screen position."""
    d = np.empty(L.shape[0])
    _query_z(L, proxy, _bins(proxy, PROXY_TRIS, 8), False, d)
    out = np.empty(L.shape[0], np.bool_)
    for i in range(L.shape[0]):
        out[i] = d[i] < L[i, 2] - tol
    return out
