"""Texture, shading and blending of a rasterised mask into the photo, inside the mask's window only.

Order of work (all in the window): a numba kernel turns the z-buffer (face proxy + mask + loops) into an
albedo image and a visibility map; the face's own low-pass luminance (normalised convolution over skin and
mask pixels) divided by its mean under the mask gives the shading ratio, so the mask picks up the light
falloff of the skin it covers; exposure and white balance come from the face colour; the colour and the
visibility are blurred together (premultiplied) with the image's estimated blur, which also anti-aliases
the edge without a halo; noise of the image's estimated level is added; then alpha blending. No seamless
cloning: it would drag the skin colour into the mask.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from numba import njit

from .styles import PATTERN_CODES, Style

# parameter vector layout for the kernel
P_CODE, P_RGB, P_RGB2, P_LOOP, P_PLEATS, P_PERIOD, P_ANGLE, P_VALVE, P_SEED, P_PX, P_W, P_H = (
    0, 1, 4, 7, 10, 11, 12, 13, 14, 15, 16, 17)
N_PARAMS = 18

# a fixed noise tile: per-face noise is a seeded window into it (drawing fresh normals per pixel costs more
# than the whole rest of the composite)
_NOISE = np.random.default_rng(20240).standard_normal((256, 256)).astype(np.float32)


def pack(style: Style, px_per_unit: float, width: float, height: float) -> np.ndarray:
    """Kernel parameters of a style; width/height are the mask's surface extent in face-scale units."""
    p = np.zeros(N_PARAMS)
    p[P_CODE] = PATTERN_CODES[style.pattern]
    p[P_RGB:P_RGB + 3], p[P_RGB2:P_RGB2 + 3], p[P_LOOP:P_LOOP + 3] = style.rgb, style.rgb2, style.loop_rgb
    p[P_PLEATS], p[P_PERIOD], p[P_ANGLE] = style.pleats, style.period, style.angle
    p[P_VALVE], p[P_SEED] = style.valve_side, style.seed % 100003
    p[P_PX], p[P_W], p[P_H] = px_per_unit, width, height
    return p


@njit(cache=True, fastmath=True)
def _hash(ix, iy, seed):
    h = (ix * 374761393 + iy * 668265263 + seed * 1442695041) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFFFF) / 16777216.0


@njit(cache=True, fastmath=True)
def _noise(x, y, seed):
    """Smooth value noise in [0, 1) with unit period."""
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = int(ix), int(iy)
    a, b = _hash(ix, iy, seed), _hash(ix + 1, iy, seed)
    c, d = _hash(ix, iy + 1, seed), _hash(ix + 1, iy + 1, seed)
    return (a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy


@njit(cache=True, fastmath=True)
def _step(e, width):
    """Anti-aliased step: 0 for e << 0, 1 for e >> 0, linear over `width`."""
    t = e / width + 0.5
    return 0.0 if t < 0 else (1.0 if t > 1 else t)


@njit(cache=True, fastmath=True)
def _texture(u, v, p, out):
    """Albedo (out[0:3]) and a shading factor (return) at mask coordinates u, v in [0, 1]."""
    code = int(p[0])
    px, W, H = p[15], p[16], p[17]
    tu, tv = u * W, v * H  # face-scale units along the surface
    seed = int(p[14])
    r, g, b = p[1], p[2], p[3]
    s = 1.0
    # nonwoven / fabric grain: white noise on ~2 px cells (one hash, no interpolation: it is below the blur)
    s *= 0.97 + 0.06 * _hash(int(tu * px * 0.5 + 1e4), int(tv * px * 0.5 + 1e4), seed)
    edge_px = min(min(u, 1 - u) * W, min(v, 1 - v) * H) * px
    if code == 1:  # pleated surgical mask: hems, folds with a shadow under each crease
        hem = 0.09
        if v < hem or v > 1 - hem:
            s *= 0.95
            d = (v - hem) * H * px if v < 0.5 else (1 - hem - v) * H * px
            if d > -4.0:
                s *= 1.0 - 0.18 * math.exp(-((d + 1.0) / 0.8) ** 2)
        else:
            n = int(p[10])
            band = (1 - 2 * hem) / (n + 1)
            t = (v - hem) / band
            k = math.floor(t)
            s *= 1.05 - 0.1 * (t - k)  # each panel tilts away from the light downwards
            j = math.floor(t + 0.5)  # nearest crease: a shadow just below it, a highlight above
            if 1 <= j <= n:
                dv = (t - j) * band * H * px  # px below crease j
                if dv > -8.0 and dv < 5.0:
                    s *= 1.0 - 0.3 * math.exp(-((dv - 0.8) / 1.1) ** 2)
                    s *= 1.0 + 0.08 * math.exp(-((dv + 2.5) / 2.0) ** 2)
        if min(u, 1 - u) * W * px < 3.0:  # bonded side strips
            s *= 0.93
    elif code == 2:  # cup with exhalation valve
        u0, v0, rad = 0.5 + 0.2 * p[13], 0.6, 0.17
        d = math.sqrt(((u - u0) * W) ** 2 + ((v - v0) * H) ** 2)
        m = _step(rad - d, 1.0 / px)
        if m > 0:
            rim = math.exp(-(((rad - d) * px - 1.5) / 1.2) ** 2)
            vent = 0.85 + 0.15 * math.cos(2 * math.pi * ((v - v0) * H) / 0.06) if d < 0.7 * rad else 1.0
            r = r + (p[4] - r) * m
            g = g + (p[5] - g) * m
            b = b + (p[6] - b) * m
            s *= 1.0 - m * (0.4 * rim + (1 - vent))
        if edge_px < 4.0:
            s *= 0.92
    elif code == 3:  # folded KN95: vertical seam, welded border with dots
        du = abs(u - 0.5) * W * px
        s *= 1.0 - 0.35 * math.exp(-(du / 1.0) ** 2)
        if edge_px < 5.0:
            s *= 0.93
            dots = 0.5 + 0.5 * math.cos(2 * math.pi * (tu + tv) * px / 4.0)
            s *= 1.0 - 0.12 * dots
    elif code == 0:
        if edge_px < 2.5:
            s *= 0.9
    else:  # cloth prints
        per = max(p[11], 3.0 / px)
        ca, sa = math.cos(p[12]), math.sin(p[12])
        aa = 1.0 / (per * px)  # one pixel in pattern periods
        m = 0.0
        if code == 4:  # stripes
            q = (tu * ca + tv * sa) / per
            f = q - math.floor(q)
            m = _step(0.5 - abs(f - 0.5) - 0.25, aa)
        elif code == 5:  # dots on a staggered grid
            qy = tv / per
            row = math.floor(qy)
            qx = tu / per + 0.5 * (row % 2)
            dx, dy = qx - math.floor(qx) - 0.5, qy - row - 0.5
            m = _step(0.22 - math.sqrt(dx * dx + dy * dy), aa)
        elif code == 6:  # gingham checks
            qa, qb = tu / per, tv / per
            ma = _step(0.25 - abs(qa - math.floor(qa) - 0.5), aa)
            mb = _step(0.25 - abs(qb - math.floor(qb) - 0.5), aa)
            m = 0.5 * (ma + mb)
        elif code == 7:  # camouflage blobs
            nz = 0.65 * _noise(tu / (2 * per), tv / (2 * per), seed + 7) + 0.35 * _noise(tu / per, tv / per, seed + 11)
            m = _step(nz - 0.5, 0.04)
            dark = _step(nz - 0.68, 0.04)
            r, g, b = r * (1 - 0.45 * dark), g * (1 - 0.45 * dark), b * (1 - 0.45 * dark)
        r = r + (p[4] - r) * m
        g = g + (p[5] - g) * m
        b = b + (p[6] - b) * m
        s *= 0.98 + 0.04 * math.sin(tu * px * 2.1) * math.sin(tv * px * 2.1)  # weave
        if edge_px < 2.0:
            s *= 0.88  # stitched border
    out[0], out[1], out[2] = r, g, b
    return s


@njit(cache=True, fastmath=True)
def _shade_kernel(face_id, bary, tris, attr, n_proxy, n_body, p, col, vis):
    h, w = face_id.shape
    rgb = np.empty(3)
    for y in range(h):
        for x in range(w):
            f = face_id[y, x]
            if f < n_proxy:
                continue
            a, b, c = tris[f, 0], tris[f, 1], tris[f, 2]
            w0, w1, w2 = bary[y, x, 0], bary[y, x, 1], bary[y, x, 2]
            sh = w0 * attr[a, 2] + w1 * attr[b, 2] + w2 * attr[c, 2]
            if f >= n_proxy + n_body:  # ear loop
                rgb[0], rgb[1], rgb[2] = p[7], p[8], p[9]
                s = sh
            else:
                u = w0 * attr[a, 0] + w1 * attr[b, 0] + w2 * attr[c, 0]
                v = w0 * attr[a, 1] + w1 * attr[b, 1] + w2 * attr[c, 1]
                s = sh * _texture(min(max(u, 0.0), 1.0), min(max(v, 0.0), 1.0), p, rgb)
            col[y, x, 0] = rgb[0] * s
            col[y, x, 1] = rgb[1] * s
            col[y, x, 2] = rgb[2] * s
            vis[y, x] = 1.0


def albedo(raster, tris, attr, n_proxy: int, n_body: int, params) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) mask colour in [0, 1] before lighting and (h, w) visibility (1 where the mask is in front)."""
    h, w = raster.face_id.shape
    col = np.zeros((h, w, 3), np.float32)
    vis = np.zeros((h, w), np.float32)
    _shade_kernel(raster.face_id, raster.bary, tris, np.ascontiguousarray(attr, dtype=np.float64), n_proxy,
                  n_body, params, col, vis)
    return col, vis


# --------------------------------------------------------------------------------------------- image statistics


def shading_ratio(Y: np.ndarray, skin: np.ndarray, vis: np.ndarray, sigma: float) -> tuple[np.ndarray, float]:
    """The face's light on the mask: low-pass luminance of the face (a normalised convolution over skin
    and mask pixels, so the background does not leak in) divided by its mean under the mask, compressed
    (^0.85) and clipped. Computed at 1/4 resolution (it is smooth at this scale). Returns (ratio, mean)."""
    h, w = Y.shape
    f = 4 if min(h, w) >= 16 else 1
    size = (max(w // f, 1), max(h // f, 1))
    weight = np.maximum(skin, vis)
    ws = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
    ys = cv2.resize(Y * weight, size, interpolation=cv2.INTER_AREA)
    vs = cv2.resize(vis, size, interpolation=cv2.INTER_AREA)
    s = max(sigma / f, 0.5)
    ys, wb = cv2.GaussianBlur(ys, (0, 0), s), cv2.GaussianBlur(ws, (0, 0), s)
    fallback = float(ys.sum() / max(float(wb.sum()), 1e-6))
    low = np.where(wb > 1e-3, ys / np.maximum(wb, 1e-3), fallback)
    ref = float((low * vs).sum() / vs.sum()) if vs.sum() > 0 else fallback
    ref = max(ref, 1.0)
    ratio = (np.clip(low / ref, 0.3, 1.8) ** 0.85).astype(np.float32)
    return cv2.resize(ratio, (w, h), interpolation=cv2.INTER_LINEAR), ref


def estimate_blur(Y: np.ndarray) -> float:
    """Gaussian sigma (px) the image already has, from how little one more sigma-1 blur changes the
    Laplacian: r = |L(G*Y)| / |L(Y)| = s^2 / (s^2 + 1) for an edge blurred by s."""
    if min(Y.shape) < 8:
        return 1.0
    l0 = float(cv2.mean(np.abs(cv2.Laplacian(Y, cv2.CV_32F)))[0])
    l1 = float(cv2.mean(np.abs(cv2.Laplacian(cv2.GaussianBlur(Y, (0, 0), 1.0), cv2.CV_32F)))[0])
    if l0 <= 1e-6:
        return 1.0
    r = min(max(l1 / l0, 0.05), 0.9)
    return float(min(max(math.sqrt(r / (1 - r)), 0.5), 2.5))


@njit(cache=True)
def _face_stats(patch, Y, vis, weight):
    """One pass over the window: mean face colour over the weighted pixels (white balance) and Immerkaer's
    noise estimate over the mask's pixels."""
    h, w = Y.shape
    mr, mg, mb, wsum = 0.0, 0.0, 0.0, 0.0
    e, ne = 0.0, 0.0
    for y in range(h):
        for x in range(w):
            wt = weight[y, x]
            if wt > 0:
                mr += wt * patch[y, x, 0]
                mg += wt * patch[y, x, 1]
                mb += wt * patch[y, x, 2]
                wsum += wt
            if vis[y, x] > 0.5 and 0 < y < h - 1 and 0 < x < w - 1 and (x + y) % 2 == 0:
                v = (Y[y - 1, x - 1] + Y[y - 1, x + 1] + Y[y + 1, x - 1] + Y[y + 1, x + 1]
                     - 2.0 * (Y[y - 1, x] + Y[y + 1, x] + Y[y, x - 1] + Y[y, x + 1]) + 4.0 * Y[y, x])
                e += abs(v)
                ne += 1.0
    noise = math.sqrt(math.pi / 2) / 6 * e / ne if ne > 0 else 0.0
    if wsum > 0:
        mr, mg, mb = mr / wsum, mg / wsum, mb / wsum
    return noise, mr, mg, mb


@njit(cache=True, fastmath=True)
def _light(col, vis, ratio, gain, mono, out):
    """Premultiplied lit colour: albedo x shading ratio x exposure x white balance (x visibility)."""
    h, w = vis.shape
    for y in range(h):
        for x in range(w):
            a = vis[y, x]
            if a == 0.0:
                continue
            r, g, b = col[y, x, 0], col[y, x, 1], col[y, x, 2]
            if mono:
                lum = 0.299 * r + 0.587 * g + 0.114 * b
                r = g = b = lum
            k = ratio[y, x] * a
            out[y, x, 0] = r * gain[0] * k
            out[y, x, 1] = g * gain[1] * k
            out[y, x, 2] = b * gain[2] * k


@njit(cache=True)
def _blend(patch, pre, alpha, noise_tile, oy, ox, sigma_n):
    """img = img (1 - a) + (colour + noise) a, only where a > 0 (other pixels stay bit-identical)."""
    h, w = alpha.shape
    for y in range(h):
        ty = (oy + y) % noise_tile.shape[0]
        for x in range(w):
            a = alpha[y, x]
            if a <= 0.0:
                continue
            n = sigma_n * noise_tile[ty, (ox + x) % noise_tile.shape[1]]
            inv = 1.0 / max(a, 1e-4)
            for ch in range(3):
                c = pre[y, x, ch] * inv + n
                v = patch[y, x, ch] * (1.0 - a) + c * a + 0.5
                patch[y, x, ch] = 0 if v < 0 else (255 if v > 255 else int(v))


SKIN_CHROMA = np.array([1.2, 0.95, 0.85])  # typical skin RGB / its mean (R > G > B)
GREY = np.array([0.299, 0.587, 0.114])


@njit(cache=True)
def _chroma_spread(patch, step):
    """Mean absolute deviation of pixel chroma (rgb / mean) over lit pixels, max over channels."""
    h, w = patch.shape[0], patch.shape[1]
    n, m0, m1, m2 = 0, 0.0, 0.0, 0.0
    for y in range(0, h, step):
        for x in range(0, w, step):
            s = (float(patch[y, x, 0]) + patch[y, x, 1] + patch[y, x, 2]) / 3.0
            if s > 40.0:  # chroma of dark pixels is mostly noise
                m0 += patch[y, x, 0] / s
                m1 += patch[y, x, 1] / s
                m2 += patch[y, x, 2] / s
                n += 1
    if n < 16:
        return 0.0 if n == 0 else 1.0
    m0, m1, m2 = m0 / n, m1 / n, m2 / n
    d0, d1, d2 = 0.0, 0.0, 0.0
    for y in range(0, h, step):
        for x in range(0, w, step):
            s = (float(patch[y, x, 0]) + patch[y, x, 1] + patch[y, x, 2]) / 3.0
            if s > 40.0:
                d0 += abs(patch[y, x, 0] / s - m0)
                d1 += abs(patch[y, x, 1] / s - m1)
                d2 += abs(patch[y, x, 2] / s - m2)
    return max(d0, d1, d2) / n


def is_monochrome(patch: np.ndarray) -> bool:
    """Grey or toned (sepia) photo: the chroma of lit pixels barely varies (sampled every 3rd pixel)."""
    return _chroma_spread(patch, 3) < 0.04


def composite(img: np.ndarray, window, col: np.ndarray, vis: np.ndarray, skin: np.ndarray, face_px: float,
              rng: np.random.Generator) -> np.ndarray:
    """Light, blur, add noise and alpha-blend the mask into img (in place) inside window; returns alpha.

    skin: (h, w) weights of face pixels in the window (the inner face proxy; the mask's pixels are added);
    face_px: face scale in pixels (geometry.scale_of).
    """
    x0, y0, x1, y1 = window
    patch = img[y0:y1, x0:x1]
    Y = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).astype(np.float32)
    ratio, ref = shading_ratio(Y, skin, vis, 0.25 * face_px)
    noise, mr, mg, mb = _face_stats(patch, Y, vis, np.maximum(skin, vis))
    mean = np.array([mr, mg, mb])
    chroma = mean / max(float(mean.mean()), 1e-6)
    mono = is_monochrome(patch)
    if mono:
        gain = chroma / (chroma * GREY).sum()  # the photo's tone, at the mask's luminance
    else:
        gain = np.clip(np.sqrt(chroma / SKIN_CHROMA), 0.85, 1.18)
        gain = gain / gain.mean()
    exposure = float(np.clip((ref / 160.0) ** 0.6, 0.3, 1.25)) * 255.0
    pre = np.zeros_like(col)
    _light(col, vis, ratio, (gain * exposure).astype(np.float64), mono, pre)

    sigma = max(estimate_blur(Y), 0.6)
    alpha = cv2.GaussianBlur(vis, (0, 0), sigma)
    pre = cv2.GaussianBlur(pre, (0, 0), sigma)
    oy, ox = (int(v) for v in rng.integers(0, 256, 2))
    _blend(patch, pre, alpha, _NOISE, oy, ox, 0.8 * min(noise, 8.0) if noise > 0.3 else 0.0)
    return alpha
