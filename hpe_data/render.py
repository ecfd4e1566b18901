"""A small z-buffer triangle rasteriser shared by the synthetic heads and the synthetic face masks.

Screen convention: vertex x, y are 0-based pixel coordinates with pixel centres at integer values, the third
coordinate is depth (smaller = nearer). Barycentrics are linear in screen space (no perspective correction:
the triangles drawn here span a few pixels, where the difference is far below a pixel).

Edges are evaluated watertight: an edge shared by two triangles is always computed from its lower-index
vertex to its higher-index one, so a pixel on it is owned by one of them (or both when exactly on it), never
by neither. Hot loops are numba kernels; `rasterize_reference` is a plain numpy version for cross-checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit


@dataclass
class Raster:
    """Rasterised window (x0, y0) .. (x0 + w, y0 + h) of an image; all arrays are (h, w)."""

    face_id: np.ndarray  # int32, -1 where empty
    bary: np.ndarray  # float32 (h, w, 3), zeros where empty
    depth: np.ndarray  # float32, inf where empty
    faces: np.ndarray  # (F, 3) the faces the ids refer to
    x0: int = 0
    y0: int = 0

    @property
    def window(self) -> tuple[int, int, int, int]:
        h, w = self.face_id.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0


def _check(verts, faces):
    verts = np.ascontiguousarray(verts, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must be (V, 3) x, y, depth; got shape {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3) vertex indices; got shape {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"faces index vertices outside 0..{len(verts) - 1}")
    return verts, faces


def _window(window, height, width):
    """Clip (x0, y0, x1, y1) (x1, y1 exclusive) to the image; None means the whole image."""
    if window is None:
        return 0, 0, int(width), int(height)
    x0, y0, x1, y1 = (int(v) for v in window)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, int(width)), min(y1, int(height))
    return x0, y0, max(x1, x0), max(y1, y0)


@njit(cache=True)
def _orient(ax, ay, bx, by, px, py):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


@njit(cache=True)
def _edge(verts, i, j, px, py):
    """Watertight edge value of (i -> j) at p: always evaluated low -> high index, sign fixed after."""
    if i < j:
        return _orient(verts[i, 0], verts[i, 1], verts[j, 0], verts[j, 1], px, py)
    return -_orient(verts[j, 0], verts[j, 1], verts[i, 0], verts[i, 1], px, py)


@njit(cache=True)
def _edge_coeffs(verts, i, j, s):
    """Edge (i -> j) of a face with orientation sign s as (X, Y, A, B): the edge value at p is
    A * (py - Y) - B * (px - X), the arithmetic of _edge (from the lower-index vertex) with the sign folded
    into A and B (exact: the sign is +-1)."""
    if i > j:
        i, j = j, i
        s = -s
    X, Y = verts[i, 0], verts[i, 1]
    return X, Y, s * (verts[j, 0] - X), s * (verts[j, 1] - Y)


@njit(cache=True)
def _span(xa, xb, X, C, B, iB, flo, fhi, eps):
    """Narrow the pixel range [xa, xb] of a row to where one edge can be >= 0 (C = A * (py - Y)), with a
    margin eps far above rounding: the exact edge test decides the pixels at the ends. xa > xb: empty."""
    if B == 0.0:
        return (xa, xb) if C >= 0.0 else (1, 0)
    xs = min(max(X + C * iB, flo), fhi)
    if B < 0.0:  # the edge value grows with x
        return max(xa, int(math.ceil(xs - eps))), xb
    return xa, min(xb, int(math.floor(xs + eps)))


@njit(cache=True)
def _zbuffer_kernel(verts, faces, x0, y0, cull, gate, face_id, depth, bary, with_bary):
    """Z-buffer of faces into the window at (x0, y0); faces from index `gate` on are occluders: they are
    only tested at pixels an earlier face covers (within each row's covered span).

    Per row, each edge bounds the pixel range analytically (with a margin); every pixel in the range is
    then decided by the exact watertight edge values, so the result is that of a full box scan."""
    h, w = face_id.shape
    lo = np.full(h, w, np.int64)  # the span of pixels drawn by faces[:gate], per row
    hi = np.full(h, -1, np.int64)
    for f in range(faces.shape[0]):
        gated = f >= gate
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay, bx, by, cx, cy = verts[a, 0], verts[a, 1], verts[b, 0], verts[b, 1], verts[c, 0], verts[c, 1]
        area = _orient(ax, ay, bx, by, cx, cy)
        if not (area == area) or area == 0.0:  # NaN or degenerate
            continue
        if cull and area > 0.0:  # outward-wound face seen from behind (see rasterize)
            continue
        lo_x = max(int(np.ceil(min(ax, bx, cx))), x0)
        hi_x = min(int(np.floor(max(ax, bx, cx))), x0 + w - 1)
        lo_y = max(int(np.ceil(min(ay, by, cy))), y0)
        hi_y = min(int(np.floor(max(ay, by, cy))), y0 + h - 1)
        if lo_x > hi_x or lo_y > hi_y:  # no pixel centre in its box (most faces of a coarse grid)
            continue
        s = 1.0 if area > 0.0 else -1.0
        # edge k is opposite vertex k: its value is vertex k's barycentric weight (times the area)
        X0, Y0, A0, B0 = _edge_coeffs(verts, b, c, s)
        X1, Y1, A1, B1 = _edge_coeffs(verts, c, a, s)
        X2, Y2, A2, B2 = _edge_coeffs(verts, a, b, s)
        i0 = 1.0 / B0 if B0 != 0.0 else 0.0
        i1 = 1.0 / B1 if B1 != 0.0 else 0.0
        i2 = 1.0 / B2 if B2 != 0.0 else 0.0
        az, bz, cz = verts[a, 2], verts[b, 2], verts[c, 2]
        # without barycentrics, depth is the face's plane z = zx px + zy py + z0 (no division per pixel)
        zx = ((by - cy) * az + (cy - ay) * bz + (ay - by) * cz) / area
        zy = ((cx - bx) * az + (ax - cx) * bz + (bx - ax) * cz) / area
        z0 = az - zx * ax - zy * ay
        flo, fhi = lo_x - 2.0, hi_x + 2.0
        eps = 1e-6 * (1.0 + max(abs(flo), abs(fhi)))
        for py in range(lo_y, hi_y + 1):
            r = py - y0
            xa, xb = lo_x, hi_x
            if gated:
                xa, xb = max(xa, lo[r] + x0), min(xb, hi[r] + x0)
                if xa > xb:
                    continue
            C0, C1, C2 = A0 * (py - Y0), A1 * (py - Y1), A2 * (py - Y2)
            xa, xb = _span(xa, xb, X0, C0, B0, i0, flo, fhi, eps)
            xa, xb = _span(xa, xb, X1, C1, B1, i1, flo, fhi, eps)
            xa, xb = _span(xa, xb, X2, C2, B2, i2, flo, fhi, eps)
            zr = zy * py + z0
            for px in range(xa, xb + 1):
                q = px - x0
                if gated and face_id[r, q] < 0:
                    continue
                e0 = C0 - B0 * (px - X0)
                if e0 < 0.0:
                    continue
                e1 = C1 - B1 * (px - X1)
                if e1 < 0.0:
                    continue
                e2 = C2 - B2 * (px - X2)
                if e2 < 0.0:
                    continue
                if with_bary:  # the reference's arithmetic, for identical winners and weights
                    tot = e0 + e1 + e2
                    w0, w1 = e0 / tot, e1 / tot
                    w2 = e2 / tot
                    z = w0 * az + w1 * bz + w2 * cz
                else:
                    z = zx * px + zr
                if z < depth[r, q]:
                    depth[r, q] = z
                    face_id[r, q] = f
                    if with_bary:
                        bary[r, q, 0] = w0
                        bary[r, q, 1] = w1
                        bary[r, q, 2] = w2
                    if not gated:
                        lo[r] = min(lo[r], q)
                        hi[r] = max(hi[r], q)


@njit(cache=True)
def attribute_planes(verts, faces, attr, count):
    """Per-vertex attributes (V, k) of faces[:count] as screen planes: out[f, j] = (gx, gy, g0) with
    attribute j = gx x + gy y + g0 inside face f (linear barycentric interpolation without a division per
    pixel). Degenerate faces get zeros (they never win a z-buffer)."""
    k = attr.shape[1]
    out = np.zeros((count, k, 3))
    for f in range(count):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay, bx, by, cx, cy = verts[a, 0], verts[a, 1], verts[b, 0], verts[b, 1], verts[c, 0], verts[c, 1]
        area = _orient(ax, ay, bx, by, cx, cy)
        if not (area == area) or area == 0.0:
            continue
        for j in range(k):
            ga, gb, gc = attr[a, j], attr[b, j], attr[c, j]
            gx = ((by - cy) * ga + (cy - ay) * gb + (ay - by) * gc) / area
            gy = ((cx - bx) * ga + (ax - cx) * gb + (bx - ax) * gc) / area
            out[f, j, 0], out[f, j, 1], out[f, j, 2] = gx, gy, ga - gx * ax - gy * ay
    return out


def rasterize(verts, faces, height: int, width: int, window=None, cull: bool = False) -> Raster:
    """Z-buffer raster of a triangle mesh in the image window (x0, y0, x1, y1) (exclusive ends, clipped).

    cull=True skips back faces of an outward-wound mesh: faces whose normal (v1 - v0) x (v2 - v0) in the
    x-right, y-down, z-away camera frame points away from the viewer, i.e. positive screen area.
    """
    verts, faces = _check(verts, faces)
    x0, y0, x1, y1 = _window(window, height, width)
    h, w = y1 - y0, x1 - x0
    face_id = np.full((h, w), -1, np.int32)
    bary = np.zeros((h, w, 3), np.float32)
    depth = np.full((h, w), np.inf, np.float64)  # float64 while testing: the same winners as the reference
    if h and w and len(faces):
        _zbuffer_kernel(verts, faces, x0, y0, bool(cull), len(faces), face_id, depth, bary, True)
    return Raster(face_id, bary, depth.astype(np.float32), faces, x0, y0)


def zbuffer(verts, faces, height: int, width: int, window=None, gate: int | None = None):
    """Face ids (int32, -1 = empty) and depth (float32, inf = empty) of the window, without barycentrics.

    gate: faces[gate:] are occluders only: they are tested only where faces[:gate] drew something (a mask
    in front of a face: the face matters only where it may hide the mask), which saves scanning them
    elsewhere. The same pixels as `rasterize`; depth comes from each face's plane (not the reference's
    barycentric sum) and is kept in float32, so near-ties between faces may resolve differently.
    """
    verts, faces = _check(verts, faces)
    x0, y0, x1, y1 = _window(window, height, width)
    h, w = y1 - y0, x1 - x0
    face_id = np.full((h, w), -1, np.int32)
    depth = np.full((h, w), np.inf, np.float32)
    gate = len(faces) if gate is None else int(gate)
    if not 0 <= gate <= len(faces):
        raise ValueError(f"gate must be in 0..{len(faces)}, got {gate}")
    if h and w and len(faces):
        _zbuffer_kernel(verts, faces, x0, y0, False, gate, face_id, depth, np.zeros((1, 1, 3), np.float32), False)
    return face_id, depth


def rasterize_reference(verts, faces, height: int, width: int, window=None, cull: bool = False) -> Raster:
    """Plain numpy version of `rasterize` (same arithmetic, one face at a time), for tests."""
    verts, faces = _check(verts, faces)
    x0, y0, x1, y1 = _window(window, height, width)
    h, w = y1 - y0, x1 - x0
    face_id = np.full((h, w), -1, np.int32)
    bary = np.zeros((h, w, 3))
    depth = np.full((h, w), np.inf)

    def edge(i, j, px, py):
        lo, hi, sg = (i, j, 1.0) if i < j else (j, i, -1.0)
        (ax, ay), (bx, by) = verts[lo, :2], verts[hi, :2]
        return sg * ((bx - ax) * (py - ay) - (by - ay) * (px - ax))

    for f, (a, b, c) in enumerate(faces):
        (ax, ay, az), (bx, by, bz), (cx, cy, cz) = verts[a], verts[b], verts[c]
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if not np.isfinite(area) or area == 0 or (cull and area > 0):
            continue
        xs = np.arange(max(int(np.ceil(min(ax, bx, cx))), x0), min(int(np.floor(max(ax, bx, cx))), x1 - 1) + 1)
        ys = np.arange(max(int(np.ceil(min(ay, by, cy))), y0), min(int(np.floor(max(ay, by, cy))), y1 - 1) + 1)
        if not len(xs) or not len(ys):
            continue
        px, py = np.meshgrid(xs.astype(np.float64), ys.astype(np.float64))
        s = 1.0 if area > 0 else -1.0
        e = np.stack([s * edge(b, c, px, py), s * edge(c, a, px, py), s * edge(a, b, px, py)], -1)
        inside = (e >= 0).all(-1)
        wts = e / e.sum(-1, keepdims=True)
        z = wts[..., 0] * az + wts[..., 1] * bz + wts[..., 2] * cz
        rows, cols = py.astype(int) - y0, px.astype(int) - x0
        win = inside & (z < depth[rows, cols])
        r, q = rows[win], cols[win]
        depth[r, q] = z[win]
        face_id[r, q] = f
        bary[r, q] = wts[win]
    return Raster(face_id, bary.astype(np.float32), depth.astype(np.float32), faces, x0, y0)


@njit(cache=True)
def _interp_kernel(face_id, bary, faces, attr, out):
    h, w = face_id.shape
    k = attr.shape[1]
    for r in range(h):
        for q in range(w):
            f = face_id[r, q]
            if f < 0:
                continue
            a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
            w0, w1, w2 = bary[r, q, 0], bary[r, q, 1], bary[r, q, 2]
            for j in range(k):
                out[r, q, j] = w0 * attr[a, j] + w1 * attr[b, j] + w2 * attr[c, j]


def interpolate(raster: Raster, vertex_attr) -> np.ndarray:
    """Per-pixel barycentric mix of a per-vertex attribute (V, k) -> (h, w, k) float32; zeros where empty."""
    attr = np.asarray(vertex_attr)
    squeeze = attr.ndim == 1
    attr = np.ascontiguousarray(attr.reshape(len(attr), -1), dtype=np.float32)
    h, w = raster.face_id.shape
    out = np.zeros((h, w, attr.shape[1]), np.float32)
    if h and w:
        _interp_kernel(raster.face_id, raster.bary, np.ascontiguousarray(raster.faces, dtype=np.int64), attr, out)
    return out[..., 0] if squeeze else out


@njit(cache=True)
def _cover_kernel(verts, faces, x0, y0, cov):
    h, w = cov.shape
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay, bx, by, cx, cy = verts[a, 0], verts[a, 1], verts[b, 0], verts[b, 1], verts[c, 0], verts[c, 1]
        area = _orient(ax, ay, bx, by, cx, cy)
        if not (area == area) or area == 0.0:
            continue
        lo_x = max(int(np.ceil(min(ax, bx, cx))), x0)
        hi_x = min(int(np.floor(max(ax, bx, cx))), x0 + w - 1)
        lo_y = max(int(np.ceil(min(ay, by, cy))), y0)
        hi_y = min(int(np.floor(max(ay, by, cy))), y0 + h - 1)
        s = 1.0 if area > 0.0 else -1.0
        for py in range(lo_y, hi_y + 1):
            for px in range(lo_x, hi_x + 1):
                if cov[py - y0, px - x0]:
                    continue
                if s * _edge(verts, b, c, px, py) < 0.0:
                    continue
                if s * _edge(verts, c, a, px, py) < 0.0:
                    continue
                if s * _edge(verts, a, b, px, py) < 0.0:
                    continue
                cov[py - y0, px - x0] = 1


def coverage_full(verts, faces, height: int, width: int, window=None, supersample: int = 4) -> np.ndarray:
    """Soft alpha by brute force: rasterise s x s samples per pixel everywhere and average (see `coverage`)."""
    verts, faces = _check(verts, faces)
    s = _supersample(supersample)
    x0, y0, x1, y1 = _window(window, height, width)
    h, w = y1 - y0, x1 - x0
    # pixel p's sample i lands on the integer s*p + i of the fine grid
    fine = verts.copy()
    fine[:, :2] = (verts[:, :2] + 0.5) * s - 0.5
    cov = np.zeros((h * s, w * s), np.uint8)
    if h and w and len(faces):
        _cover_kernel(fine, faces, x0 * s, y0 * s, cov)
    return cov.reshape(h, s, w, s).mean(axis=(1, 3), dtype=np.float32)


def _supersample(s):
    s = int(s)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {s}")
    return s


def coverage(verts, faces, height: int, width: int, window=None, supersample: int = 4) -> np.ndarray:
    """Soft (anti-aliased) alpha in [0, 1] of the union of the triangles over the window: (h, w) float32.

    A pixel's alpha is the share of its s x s samples (at p - 1/2 + (i + 1/2)/s) inside the mesh, so edge
    pixels are fractional and there is no binary halo. Only the band of pixels where the one-sample cover
    changes within 3x3 is supersampled; elsewhere the pixel is wholly in or out (features thinner than a
    pixel aside, this equals `coverage_full`). Depth is ignored.
    """
    verts, faces = _check(verts, faces)
    s = _supersample(supersample)
    x0, y0, x1, y1 = _window(window, height, width)
    h, w = y1 - y0, x1 - x0
    one = np.zeros((h, w), np.uint8)
    if not (h and w and len(faces)):
        return one.astype(np.float32)
    _cover_kernel(verts, faces, x0, y0, one)
    if s == 1:
        return one.astype(np.float32)
    k3 = np.ones((3, 3), np.uint8)
    band = cv2.dilate(one, k3) != cv2.erode(one, k3)  # the 3x3 neighbourhood is mixed
    alpha = one.astype(np.float32)
    if band.any():
        if s > 8:  # the per-pixel sample mask below is a 64-bit word
            return coverage_full(verts, faces, height, width, window, s)
        by, bx = np.nonzero(band)
        index = np.full((h, w), -1, np.int64)
        index[by, bx] = np.arange(len(by))
        bits = np.zeros(len(by), np.uint64)
        _cover_band_kernel(verts, faces, x0, y0, index, s, bits)
        alpha[by, bx] = _popcount(bits) / np.float32(s * s)
    return alpha


def _popcount(bits):
    b = bits.view(np.uint8).reshape(len(bits), 8)
    return np.unpackbits(b, axis=1).sum(1).astype(np.float32)


@njit(cache=True)
def _cover_band_kernel(verts, faces, x0, y0, index, s, bits):
    """For the listed pixels, set bit (i * s + j) when sample (j, i) lies in some triangle."""
    h, w = index.shape
    full = np.uint64(0)
    for k in range(s * s):
        full |= np.uint64(1) << np.uint64(k)
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay, bx, by, cx, cy = verts[a, 0], verts[a, 1], verts[b, 0], verts[b, 1], verts[c, 0], verts[c, 1]
        area = _orient(ax, ay, bx, by, cx, cy)
        if not (area == area) or area == 0.0:
            continue
        # pixels whose sample square (p +- 1/2) meets the triangle's box
        lo_x = max(int(np.floor(min(ax, bx, cx) + 0.5)), x0)
        hi_x = min(int(np.ceil(max(ax, bx, cx) - 0.5)), x0 + w - 1)
        lo_y = max(int(np.floor(min(ay, by, cy) + 0.5)), y0)
        hi_y = min(int(np.ceil(max(ay, by, cy) - 0.5)), y0 + h - 1)
        sg = 1.0 if area > 0.0 else -1.0
        for py in range(lo_y, hi_y + 1):
            for px in range(lo_x, hi_x + 1):
                k = index[py - y0, px - x0]
                if k < 0 or bits[k] == full:
                    continue
                word = bits[k]
                for i in range(s):
                    qy = py - 0.5 + (i + 0.5) / s
                    for j in range(s):
                        bit = np.uint64(1) << np.uint64(i * s + j)
                        if word & bit:
                            continue
                        qx = px - 0.5 + (j + 0.5) / s
                        if sg * _edge(verts, b, c, qx, qy) < 0.0:
                            continue
                        if sg * _edge(verts, c, a, qx, qy) < 0.0:
                            continue
                        if sg * _edge(verts, a, b, qx, qy) < 0.0:
                            continue
                        word |= bit
                bits[k] = word


@njit(cache=True)
def _samples_kernel(verts, faces, sx, sy, start, items, gx0, gy0, cs, gw, gh, cull, out):
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay, bx, by, cx, cy = verts[a, 0], verts[a, 1], verts[b, 0], verts[b, 1], verts[c, 0], verts[c, 1]
        area = _orient(ax, ay, bx, by, cx, cy)
        if not (area == area) or area == 0.0 or (cull and area > 0.0):
            continue
        i0 = max(int(np.floor((min(ax, bx, cx) - gx0) / cs)), 0)
        i1 = min(int(np.floor((max(ax, bx, cx) - gx0) / cs)), gw - 1)
        j0 = max(int(np.floor((min(ay, by, cy) - gy0) / cs)), 0)
        j1 = min(int(np.floor((max(ay, by, cy) - gy0) / cs)), gh - 1)
        if i0 > i1 or j0 > j1:
            continue
        s = 1.0 if area > 0.0 else -1.0
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                cell = j * gw + i
                for t in range(start[cell], start[cell + 1]):
                    k = items[t]
                    px, py = sx[k], sy[k]
                    e0 = s * _edge(verts, b, c, px, py)
                    e1 = s * _edge(verts, c, a, px, py)
                    e2 = s * _edge(verts, a, b, px, py)
                    if e0 < 0.0 or e1 < 0.0 or e2 < 0.0:
                        continue
                    tot = e0 + e1 + e2
                    z = (e0 * verts[a, 2] + e1 * verts[b, 2] + e2 * verts[c, 2]) / tot
                    if z < out[k]:
                        out[k] = z


def depth_at(verts, faces, points_xy, cull: bool = False) -> np.ndarray:
    """Nearest surface depth along the view ray through each screen point (x, y): (N,) float64, inf = none.

    The z-buffer sampled at arbitrary sub-pixel positions (same edge and depth rules as `rasterize`), without
    drawing an image: for visibility tests at a resolution that does not depend on the picture.
    """
    verts, faces = _check(verts, faces)
    p = np.ascontiguousarray(points_xy, dtype=np.float64).reshape(-1, 2)
    out = np.full(len(p), np.inf)
    ok = np.isfinite(p).all(1)
    if not ok.any() or not len(faces):
        return out
    q = p[ok]
    lo, hi = q.min(0), q.max(0)
    cs = max(float((hi - lo).max()) / 32.0, 1.0)
    gw, gh = int((hi[0] - lo[0]) // cs) + 1, int((hi[1] - lo[1]) // cs) + 1
    cell = ((q[:, 1] - lo[1]) // cs).astype(np.int64) * gw + ((q[:, 0] - lo[0]) // cs).astype(np.int64)
    order = np.argsort(cell, kind="stable")
    start = np.searchsorted(cell[order], np.arange(gw * gh + 1)).astype(np.int64)
    res = np.full(len(q), np.inf)
    _samples_kernel(verts, faces, q[:, 0].copy(), q[:, 1].copy(), start, order.astype(np.int64), float(lo[0]),
                    float(lo[1]), cs, gw, gh, bool(cull), res)
    out[ok] = res
    return out


@njit(cache=True)
def _composite_kernel(img, x0, y0, mask, rgb, k1):
    h, w = mask.shape
    H, W = img.shape[0], img.shape[1]
    for r in range(h):
        for q in range(w):
            alpha = 0.0
            acc0 = acc1 = acc2 = 0.0
            n = 0.0
            for dr in range(-1, 2):
                rr = min(max(r + dr, 0), h - 1)
                for dq in range(-1, 2):
                    qq = min(max(q + dq, 0), w - 1)
                    if mask[rr, qq]:
                        alpha += k1[dr + 1] * k1[dq + 1]
                        acc0 += rgb[rr, qq, 0]
                        acc1 += rgb[rr, qq, 1]
                        acc2 += rgb[rr, qq, 2]
                        n += 1.0
            if alpha <= 0.0:
                continue
            Y, X = r + y0, q + x0
            if Y < 0 or Y >= H or X < 0 or X >= W:
                continue
            if mask[r, q]:
                c0, c1, c2 = rgb[r, q, 0], rgb[r, q, 1], rgb[r, q, 2]
            else:  # just outside the silhouette: the mean colour of the covered neighbours
                c0, c1, c2 = acc0 / n, acc1 / n, acc2 / n
            img[Y, X, 0] += (c0 - img[Y, X, 0]) * alpha
            img[Y, X, 1] += (c1 - img[Y, X, 1]) * alpha
            img[Y, X, 2] += (c2 - img[Y, X, 2]) * alpha


def composite_soft(img, mask, rgb, x0: int = 0, y0: int = 0, sigma: float = 0.6) -> None:
    """Blend a drawn layer into `img` (H, W, 3 float32, in place) with a feathered silhouette.

    mask (h, w) bool and rgb (h, w, 3) cover the window at (x0, y0). Alpha is the mask blurred by a 3x3
    Gaussian, so the edge is soft on both sides; pixels just outside take their covered neighbours' colour.
    """
    k1 = np.exp(-np.arange(-1, 2) ** 2 / (2 * sigma**2))
    k1 = k1 / k1.sum()
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    _composite_kernel(img, int(x0), int(y0), np.ascontiguousarray(mask), rgb, k1)


def lambert(normals, light, ambient: float = 0.0) -> np.ndarray:
    """Diffuse shade ambient + (1 - ambient) * max(n . l, 0) per normal; `light` points towards the light."""
    n = np.asarray(normals, dtype=np.float64)
    l = np.asarray(light, dtype=np.float64)
    l = l / np.linalg.norm(l)
    return ambient + (1.0 - ambient) * np.clip(n @ l, 0.0, None)


@njit(cache=True)
def _normals_kernel(v, f, n):
    for t in range(f.shape[0]):
        a, b, c = f[t, 0], f[t, 1], f[t, 2]
        e1x, e1y, e1z = v[b, 0] - v[a, 0], v[b, 1] - v[a, 1], v[b, 2] - v[a, 2]
        e2x, e2y, e2z = v[c, 0] - v[a, 0], v[c, 1] - v[a, 1], v[c, 2] - v[a, 2]
        nx, ny, nz = e1y * e2z - e1z * e2y, e1z * e2x - e1x * e2z, e1x * e2y - e1y * e2x
        for k in (a, b, c):
            n[k, 0] += nx
            n[k, 1] += ny
            n[k, 2] += nz


def vertex_normals(verts, faces) -> np.ndarray:
    """Area-weighted unit vertex normals of an outward-wound mesh, (V, 3)."""
    v, f = _check(verts, faces)
    n = np.zeros_like(v)
    _normals_kernel(v, f, n)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
