"""Drawing, shading and blending of a mask into the photo, inside the mask's window only.

Order of work, in the window and mostly in numba kernels (a face's window is ~20k pixels: every full pass
over it counts, and so does every Python-level call):
1. one kernel z-buffers the mask (body and ear loops) and textures each pixel it wins (albedo x geometric
   shade, coverage 1), then lets the face proxy hide what it covers in front;
2. image statistics on a block grid (blocks of half the light's sigma): the colour at each
   block centre, and whether the mask or skin (the proxy alone, drawn at the block centres) is there. From
   them: the face's low-pass luminance (a normalised convolution over skin and mask blocks, so the
   background does not leak in) divided by its mean under the mask = the shading ratio, so the mask picks
   up the light falloff of the skin it covers; exposure and white balance from the face colour; a grey or
   toned photo (little chroma spread) gets a grey or toned mask; the image's noise under the mask and its
   blur (from its Laplacian);
3. one Gaussian blur of the drawn mask (premultiplied colour and coverage) with the image's blur, which
   also anti-aliases the edge without a halo;
4. one kernel lights (ratio, bilinear between blocks, x gains: smooth, so they can follow the blur), adds
   noise of the image's level and alpha-blends in place. No seamless cloning: it would drag the skin colour
   into the mask.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from numba import njit

from .. import render
from .styles import PATTERN_CODES, Style

# parameter vector layout for the kernel
P_CODE, P_RGB, P_RGB2, P_LOOP, P_PLEATS, P_PERIOD, P_ANGLE, P_VALVE, P_SEED, P_PX, P_W, P_H = (
    0, 1, 4, 7, 10, 11, 12, 13, 14, 15, 16, 17)
N_PARAMS = 18

# a fixed noise tile: per-face noise is a seeded window into it (drawing fresh normals per pixel costs more
# than the whole rest of the composite)
_NOISE = np.random.default_rng(20240).standard_normal((256, 256)).astype(np.float32)
_NO_BARY = np.zeros((1, 1, 3), np.float32)  # render's z-buffer kernel without barycentrics


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
def _sin(x):
    """sin to ~1e-3 (a weave's shading needs no more, at a fraction of math.sin's cost)."""
    x -= 2.0 * math.pi * math.floor(x / (2.0 * math.pi) + 0.5)  # -> [-pi, pi)
    y = 4.0 / math.pi * x - 4.0 / (math.pi * math.pi) * x * abs(x)
    return 0.225 * (y * abs(y) - y) + y


@njit(cache=True, fastmath=True)
def _bell(x):
    """exp(-x^2) to ~2 % (the reciprocal of its Taylor series to x^6): shading profiles need no more."""
    x2 = x * x
    return 1.0 / (1.0 + x2 * (1.0 + x2 * (0.5 + x2 * (1.0 / 6.0))))


@njit(cache=True, fastmath=True, inline="always")
def _texture(u, v, code, r, g, b, r2, g2, b2, pleats, ip, ca, sa, valve, seed, px, W, H):
    """(r, g, b) albedo and a shading factor at mask coordinates u, v in [0, 1]; the rest is the style
    (see pack: colour, second colour, pleat count, 1 / print period, cos and sin of the print direction,
    valve side, noise seed, pixels per face unit, surface width and height in face units). Scalars only:
    no array reference counting per pixel in this non-inlined call."""
    tu, tv = u * W, v * H  # face-scale units along the surface
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
                s *= 1.0 - 0.18 * _bell((d + 1.0) / 0.8)
        else:
            n = pleats
            band = (1 - 2 * hem) / (n + 1)
            t = (v - hem) / band
            k = math.floor(t)
            s *= 1.05 - 0.1 * (t - k)  # each panel tilts away from the light downwards
            j = math.floor(t + 0.5)  # nearest crease: a shadow just below it, a highlight above
            if 1 <= j <= n:
                dv = (t - j) * band * H * px  # px below crease j
                if dv > -8.0 and dv < 5.0:
                    s *= 1.0 - 0.3 * _bell((dv - 0.8) / 1.1)
                    s *= 1.0 + 0.08 * _bell((dv + 2.5) / 2.0)
        if min(u, 1 - u) * W * px < 3.0:  # bonded side strips
            s *= 0.93
    elif code == 2:  # cup with exhalation valve
        u0, v0, rad = 0.5 + 0.2 * valve, 0.6, 0.17
        d = math.sqrt(((u - u0) * W) ** 2 + ((v - v0) * H) ** 2)
        m = _step(rad - d, 1.0 / px)
        if m > 0:
            rim = _bell(((rad - d) * px - 1.5) / 1.2)
            vent = 0.85 + 0.15 * _sin(2 * math.pi * ((v - v0) * H) / 0.06 + 0.5 * math.pi) if d < 0.7 * rad else 1.0
            r = r + (r2 - r) * m
            g = g + (g2 - g) * m
            b = b + (b2 - b) * m
            s *= 1.0 - m * (0.4 * rim + (1 - vent))
        if edge_px < 4.0:
            s *= 0.92
    elif code == 3:  # folded KN95: vertical seam, welded border with dots
        du = abs(u - 0.5) * W * px
        s *= 1.0 - 0.35 * _bell(du)
        if edge_px < 5.0:
            s *= 0.93
            dots = 0.5 + 0.5 * _sin(2 * math.pi * (tu + tv) * px / 4.0 + 0.5 * math.pi)
            s *= 1.0 - 0.12 * dots
    elif code == 0:
        if edge_px < 2.5:
            s *= 0.9
    else:  # cloth prints; ip = 1 / print period (face units), (ca, sa) = print direction
        aa = ip / px  # one pixel in pattern periods
        m = 0.0
        if code == 4:  # stripes
            q = (tu * ca + tv * sa) * ip
            f = q - math.floor(q)
            m = _step(0.5 - abs(f - 0.5) - 0.25, aa)
        elif code == 5:  # dots on a staggered grid
            qy = tv * ip
            row = math.floor(qy)
            qx = tu * ip + 0.5 * (row % 2)
            dx, dy = qx - math.floor(qx) - 0.5, qy - row - 0.5
            m = _step(0.22 - math.sqrt(dx * dx + dy * dy), aa)
        elif code == 6:  # gingham checks
            qa, qb = tu * ip, tv * ip
            ma = _step(0.25 - abs(qa - math.floor(qa) - 0.5), aa)
            mb = _step(0.25 - abs(qb - math.floor(qb) - 0.5), aa)
            m = 0.5 * (ma + mb)
        elif code == 7:  # camouflage blobs
            nz = 0.65 * _noise(0.5 * tu * ip, 0.5 * tv * ip, seed + 7) + 0.35 * _noise(tu * ip, tv * ip, seed + 11)
            m = _step(nz - 0.5, 0.04)
            dark = _step(nz - 0.68, 0.04)
            r, g, b = r * (1 - 0.45 * dark), g * (1 - 0.45 * dark), b * (1 - 0.45 * dark)
        r = r + (r2 - r) * m
        g = g + (g2 - g) * m
        b = b + (b2 - b) * m
        s *= 0.98 + 0.04 * _sin(tu * px * 2.1) * _sin(tv * px * 2.1)  # weave
        if edge_px < 2.0:
            s *= 0.88  # stitched border
    return r, g, b, s


# --------------------------------------------------------------------------------------------- image statistics

LIGHT_SIGMA = 0.25  # low-pass of the face's light, face-scale units
BLOCK_PER_SIGMA = 2.0  # statistics blocks per light sigma: the light is smooth at this scale


def block_size(face_px: float, h: int, w: int) -> int:
    """Side (px) of the statistics blocks for a face of scale face_px in an h x w window."""
    return int(max(1, min(max(2, round(LIGHT_SIGMA * face_px / BLOCK_PER_SIGMA)), h, w)))


@njit(cache=True)
def _blocks(patch, block, face_id, gate, proxy_id, skin, lw, vis):
    """Per block of the window: its colour (the mean of the 2 x 2 pixels at its centre: the light is smoothed
    over many blocks after this) and its class: vis = 1 where the mask (faces < gate in the full z-buffer
    face_id) is in front at the block's centre pixel; weight = 1 there or where a skin face of the proxy is
    in front at the block centre (proxy_id: z-buffer of the proxy alone on the block grid, skin: per proxy
    face). Writes lw[..., 0] = luma x weight, lw[..., 1] = weight, vis.

    Returns the mean R, G, B over the weighted blocks (zeros if none) and the chroma spread of the window:
    the mean absolute deviation of pixel chroma (rgb / mean) over lit pixels, max over channels, on the
    2 x 2 centre pixels of each block (a grey or toned photo has almost none; 1 when too few are lit)."""
    sh, sw = vis.shape
    h, w = patch.shape[0], patch.shape[1]
    c = (block - 1) // 2
    sr, sg, sb, n = 0.0, 0.0, 0.0, 0.0
    chroma = np.empty((4 * sh * sw, 3))
    nc = 0
    for i in range(sh):
        ya, yb = min(i * block + c, h - 1), min(i * block + c + 1, h - 1)
        for j in range(sw):
            xa, xb = min(j * block + c, w - 1), min(j * block + c + 1, w - 1)
            for yy, xx in ((ya, xa), (ya, xb), (yb, xa), (yb, xb)):
                lit = (float(patch[yy, xx, 0]) + patch[yy, xx, 1] + patch[yy, xx, 2]) / 3.0
                if lit > 40.0:  # chroma of dark pixels is mostly noise
                    chroma[nc, 0] = patch[yy, xx, 0] / lit
                    chroma[nc, 1] = patch[yy, xx, 1] / lit
                    chroma[nc, 2] = patch[yy, xx, 2] / lit
                    nc += 1
            f = face_id[ya, xa]
            m = 0 <= f < gate
            vis[i, j] = 1.0 if m else 0.0
            k = proxy_id[i, j]
            if not (m or (k >= 0 and skin[k])):
                lw[i, j, 0] = lw[i, j, 1] = 0.0
                continue
            r = 0.25 * (float(patch[ya, xa, 0]) + patch[ya, xb, 0] + patch[yb, xa, 0] + patch[yb, xb, 0])
            g = 0.25 * (float(patch[ya, xa, 1]) + patch[ya, xb, 1] + patch[yb, xa, 1] + patch[yb, xb, 1])
            b = 0.25 * (float(patch[ya, xa, 2]) + patch[ya, xb, 2] + patch[yb, xa, 2] + patch[yb, xb, 2])
            lw[i, j, 0] = 0.299 * r + 0.587 * g + 0.114 * b
            lw[i, j, 1] = 1.0
            sr, sg, sb, n = sr + r, sg + g, sb + b, n + 1.0
    spread = 0.0 if nc == 0 else 1.0
    if nc >= 16:
        spread = 0.0
        for k in range(3):
            m = chroma[:nc, k].mean()
            spread = max(spread, np.abs(chroma[:nc, k] - m).mean())
    if n == 0:
        return 0.0, 0.0, 0.0, spread
    return sr / n, sg / n, sb / n, spread


MONO_SPREAD = 0.04  # chroma spread below which a photo is grey or toned


@njit(cache=True)
def _to_blocks(verts, x0, y0, block):
    """Screen vertices in block-grid coordinates (block centres at integers)."""
    out = verts.copy()
    c = 0.5 * (block - 1)
    for i in range(out.shape[0]):
        out[i, 0] = (verts[i, 0] - x0 - c) / block
        out[i, 1] = (verts[i, 1] - y0 - c) / block
    return out


@njit(cache=True)
def _ratio(lw, vis, ratio):
    """ratio = the low-pass luminance (blurred luma x weight / blurred weight: a normalised convolution, so
    the background does not leak in) over its mean under the mask, clipped and compressed (^0.85). Returns
    that mean (the face's exposure)."""
    sh, sw = vis.shape
    sy, swt = 0.0, 0.0
    for i in range(sh):
        for j in range(sw):
            sy += lw[i, j, 0]
            swt += lw[i, j, 1]
    fallback = sy / max(swt, 1e-6)
    lv, nv = 0.0, 0.0
    for i in range(sh):
        for j in range(sw):
            wb = lw[i, j, 1]
            low = lw[i, j, 0] / wb if wb > 1e-3 else fallback
            ratio[i, j] = low
            lv += low * vis[i, j]
            nv += vis[i, j]
    ref = max(lv / nv if nv > 0 else fallback, 1.0)
    for i in range(sh):
        for j in range(sw):
            ratio[i, j] = min(max(ratio[i, j] / ref, 0.3), 1.8) ** 0.85
    return ref


BLUR_CROP = 64  # the blur is measured on at most this central square of the window


def estimate_blur(patch: np.ndarray) -> float:
    """Gaussian sigma (px) the image already has, from how little one more sigma-1 blur changes the
    Laplacian of the luma: r = |L(G*Y)| / |L(Y)| = s^2 / (s^2 + 1) for an edge blurred by s. Measured on the
    central BLUR_CROP square of the patch (uint8 RGB) at most: the nose and mouth, edges enough."""
    h, w = patch.shape[:2]
    if min(h, w) < 8:
        return 1.0
    cy, cx = max((h - BLUR_CROP) // 2, 0), max((w - BLUR_CROP) // 2, 0)
    Y = cv2.cvtColor(patch[cy:cy + BLUR_CROP, cx:cx + BLUR_CROP], cv2.COLOR_RGB2GRAY).astype(np.float32)
    l0 = cv2.norm(cv2.Laplacian(Y, cv2.CV_32F), cv2.NORM_L1)
    l1 = cv2.norm(cv2.Laplacian(cv2.GaussianBlur(Y, (0, 0), 1.0), cv2.CV_32F), cv2.NORM_L1)
    if l0 <= 1e-6 * Y.size:
        return 1.0
    r = min(max(l1 / l0, 0.05), 0.9)
    return float(min(max(math.sqrt(r / (1 - r)), 0.5), 2.5))


SKIN_CHROMA = (1.2, 0.95, 0.85)  # typical skin RGB / its mean (R > G > B)
GREY = (0.299, 0.587, 0.114)


def gains(mean_rgb, ref: float, mono: bool) -> np.ndarray:
    """Per-channel gain of the mask's colour, in 0..255 units: exposure (from the face's mean luminance
    ref) x white balance (from its mean colour, pulled towards typical skin); a grey or toned photo's tone
    replaces the white balance. (Plain floats: three numbers.)"""
    m = max(sum(mean_rgb) / 3.0, 1e-6)
    chroma = [v / m for v in mean_rgb]
    if mono:  # the photo's tone, at the mask's luminance
        lum = sum(c * k for c, k in zip(chroma, GREY))
        gain = [c / lum for c in chroma]
    else:
        gain = [min(max(math.sqrt(c / k), 0.85), 1.18) for c, k in zip(chroma, SKIN_CHROMA)]
        mg = sum(gain) / 3.0
        gain = [g / mg for g in gain]
    exposure = min(max((ref / 160.0) ** 0.6, 0.3), 1.25) * 255.0
    return np.array([g * exposure for g in gain])


def gauss_radius(sigma: float) -> int:
    """Half width of the blur window: 2 sigma, at least 1 px (the tails beyond hold 5 % of the weight;
    cv2's default window for float images is 4 sigma, a 2-3x larger cost for no visible change)."""
    return max(1, int(2 * sigma + 0.5))


def gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur truncated at gauss_radius (reflected borders)."""
    k = 2 * gauss_radius(sigma) + 1
    return cv2.GaussianBlur(img, (k, k), sigma)


# --------------------------------------------------------------------------------------------- the kernels


@njit(cache=True, inline="always")
def _luma(patch, y, x):
    return 0.299 * patch[y, x, 0] + 0.587 * patch[y, x, 1] + 0.114 * patch[y, x, 2]


@njit(cache=True, fastmath=True)
def _draw(verts, faces, gate, n_body, x0, y0, planes, p, face_id, depth, buf):
    """The mask into the window in one pass: z-buffer its faces (faces[:gate]: the body, then the ear
    loops) and texture every pixel a face wins: buf = (albedo x shade, 1) (planes: (u, v, shade) of each face
    as screen planes, p: pack()). Then the face proxy (faces[gate:]) is tested only where the mask is and
    clears what it hides. The same rasterisation rules as render.zbuffer (watertight edges, row spans with
    the exact edge test at their ends, depth from each face's plane).

    Returns the number of mask pixels left visible and the box of the drawn pixels (y0, y1, x0, x1, ends
    exclusive)."""
    h, w = face_id.shape
    lo = np.full(h, w, np.int64)  # the span of mask pixels, per row: the proxy is tested there only
    hi = np.full(h, -1, np.int64)
    code, seed, pleats = int(p[P_CODE]), int(p[P_SEED]), int(p[P_PLEATS])
    r1, g1, b1, r2, g2, b2 = p[P_RGB], p[P_RGB + 1], p[P_RGB + 2], p[P_RGB2], p[P_RGB2 + 1], p[P_RGB2 + 2]
    lr, lg, lb = p[P_LOOP], p[P_LOOP + 1], p[P_LOOP + 2]
    valve, upx, W, H = p[P_VALVE], p[P_PX], p[P_W], p[P_H]
    ip = 1.0 / max(p[P_PERIOD], 3.0 / upx)  # prints: at least 3 px per period
    ca, sa = math.cos(p[P_ANGLE]), math.sin(p[P_ANGLE])
    visible = 0
    for f in range(faces.shape[0]):
        occluder = f >= gate
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        ax, ay, bx, by, cx, cy = verts[a, 0], verts[a, 1], verts[b, 0], verts[b, 1], verts[c, 0], verts[c, 1]
        area = render._orient(ax, ay, bx, by, cx, cy)
        if not (area == area) or area == 0.0:
            continue
        lo_x = max(int(np.ceil(min(ax, bx, cx))), x0)
        hi_x = min(int(np.floor(max(ax, bx, cx))), x0 + w - 1)
        lo_y = max(int(np.ceil(min(ay, by, cy))), y0)
        hi_y = min(int(np.floor(max(ay, by, cy))), y0 + h - 1)
        if lo_x > hi_x or lo_y > hi_y:
            continue
        s = 1.0 if area > 0.0 else -1.0
        X0, Y0, A0, B0 = render._edge_coeffs(verts, b, c, s)
        X1, Y1, A1, B1 = render._edge_coeffs(verts, c, a, s)
        X2, Y2, A2, B2 = render._edge_coeffs(verts, a, b, s)
        i0 = 1.0 / B0 if B0 != 0.0 else 0.0
        i1 = 1.0 / B1 if B1 != 0.0 else 0.0
        i2 = 1.0 / B2 if B2 != 0.0 else 0.0
        az, bz, cz = verts[a, 2], verts[b, 2], verts[c, 2]
        zx = ((by - cy) * az + (cy - ay) * bz + (ay - by) * cz) / area
        zy = ((cx - bx) * az + (ax - cx) * bz + (bx - ax) * cz) / area
        z0 = az - zx * ax - zy * ay
        flo, fhi = lo_x - 2.0, hi_x + 2.0
        eps = 1e-6 * (1.0 + max(abs(flo), abs(fhi)))
        for py in range(lo_y, hi_y + 1):
            r = py - y0
            xa, xb = lo_x, hi_x
            if occluder:
                xa, xb = max(xa, lo[r] + x0), min(xb, hi[r] + x0)
                if xa > xb:
                    continue
            C0, C1, C2 = A0 * (py - Y0), A1 * (py - Y1), A2 * (py - Y2)
            xa, xb = render._span(xa, xb, X0, C0, B0, i0, flo, fhi, eps)
            xa, xb = render._span(xa, xb, X1, C1, B1, i1, flo, fhi, eps)
            xa, xb = render._span(xa, xb, X2, C2, B2, i2, flo, fhi, eps)
            zr = zy * py + z0
            for px in range(xa, xb + 1):
                q = px - x0
                fq = face_id[r, q]
                if occluder and fq < 0:
                    continue
                if C0 - B0 * (px - X0) < 0.0 or C1 - B1 * (px - X1) < 0.0 or C2 - B2 * (px - X2) < 0.0:
                    continue
                z = zx * px + zr
                if z >= depth[r, q]:
                    continue
                depth[r, q] = z
                face_id[r, q] = f
                if occluder:  # the face hides the mask here
                    if fq < gate:
                        visible -= 1
                    buf[r, q, 0] = buf[r, q, 1] = buf[r, q, 2] = buf[r, q, 3] = 0.0
                    continue
                if fq < 0:
                    visible += 1
                lo[r], hi[r] = min(lo[r], q), max(hi[r], q)
                P = planes[f]
                sh = P[2, 0] * px + P[2, 1] * py + P[2, 2]
                if f >= n_body:  # ear loop
                    cr, cg, cb = lr * sh, lg * sh, lb * sh
                else:
                    u = P[0, 0] * px + P[0, 1] * py + P[0, 2]
                    v = P[1, 0] * px + P[1, 1] * py + P[1, 2]
                    cr, cg, cb, t = _texture(min(max(u, 0.0), 1.0), min(max(v, 0.0), 1.0), code, r1, g1, b1,
                                             r2, g2, b2, pleats, ip, ca, sa, valve, seed, upx, W, H)
                    cr, cg, cb = cr * t * sh, cg * t * sh, cb * t * sh
                buf[r, q, 0], buf[r, q, 1], buf[r, q, 2], buf[r, q, 3] = cr, cg, cb, 1.0
    y_lo, y_hi, x_lo, x_hi = h, 0, w, 0
    for r in range(h):
        if hi[r] >= 0:
            y_lo, y_hi = min(y_lo, r), r + 1
            x_lo, x_hi = min(x_lo, lo[r]), max(x_hi, hi[r] + 1)
    return visible, y_lo, y_hi, x_lo, x_hi


@njit(cache=True)
def _noise_sigma(patch, face_id, gate, y_lo, y_hi, x_lo, x_hi, step):
    """The image's noise sigma where the mask goes: Immerkaer's estimator on the luma of the patch at the
    mask pixels of a step x step grid (thousands of samples at most)."""
    h, w = face_id.shape
    e, n = 0.0, 0.0
    for y in range(max(y_lo - y_lo % step, step), min(y_hi, h - 1), step):
        for x in range(max(x_lo - x_lo % step, step), min(x_hi, w - 1), step):
            f = face_id[y, x]
            if f < 0 or f >= gate:
                continue
            d = (_luma(patch, y - 1, x - 1) + _luma(patch, y - 1, x + 1) + _luma(patch, y + 1, x - 1)
                 + _luma(patch, y + 1, x + 1) + 4.0 * _luma(patch, y, x)
                 - 2.0 * (_luma(patch, y - 1, x) + _luma(patch, y + 1, x) + _luma(patch, y, x - 1)
                          + _luma(patch, y, x + 1)))
            e += abs(d)
            n += 1.0
    return math.sqrt(math.pi / 2) / 6 * e / n if n > 0 else 0.0


@njit(cache=True, fastmath=True)
def _blend(patch, buf, sy, sx, ratio, block, gain, mono, noise_tile, oy, ox, sigma_n):
    """Light and blend the blurred mask buf (albedo x shade premultiplied by coverage a, a) into patch, in
    place, where a > 0 (other pixels stay bit-identical): colour = albedo x gain x ratio (bilinear between
    block centres, as cv2.resize INTER_LINEAR, clamped at the ends; a grey photo's mask takes the albedo's
    luma), img = img (1 - a) + colour a + noise a. Light is smooth, so it can follow the blur. (sy, sx):
    position of patch[0, 0] in the window's block grid coordinates; the noise tile is 256 x 256."""
    h, w = patch.shape[0], patch.shape[1]
    sh, sw = ratio.shape
    inv = 1.0 / block
    g0, g1, g2 = gain[0], gain[1], gain[2]
    for y in range(h):
        row = noise_tile[(oy + y) & 255]
        fy = min(max((sy + y + 0.5) * inv - 0.5, 0.0), sh - 1.0)
        i0 = min(int(fy), sh - 1)
        i1 = min(i0 + 1, sh - 1)
        ty = fy - i0
        for x in range(w):
            a = buf[y, x, 3]
            if a <= 0.0:
                continue
            fx = min(max((sx + x + 0.5) * inv - 0.5, 0.0), sw - 1.0)
            j0 = min(int(fx), sw - 1)
            j1 = min(j0 + 1, sw - 1)
            tx = fx - j0
            k = ((ratio[i0, j0] * (1 - tx) + ratio[i0, j1] * tx) * (1 - ty)
                 + (ratio[i1, j0] * (1 - tx) + ratio[i1, j1] * tx) * ty)
            cr, cg, cb = buf[y, x, 0], buf[y, x, 1], buf[y, x, 2]
            if mono:
                cr = cg = cb = 0.299 * cr + 0.587 * cg + 0.114 * cb
            n = sigma_n * row[(ox + x) & 255] * a + 0.5
            m = 1.0 - a
            v0 = patch[y, x, 0] * m + cr * g0 * k + n
            v1 = patch[y, x, 1] * m + cg * g1 * k + n
            v2 = patch[y, x, 2] * m + cb * g2 * k + n
            patch[y, x, 0] = 0 if v0 < 0 else (255 if v0 > 255 else int(v0))
            patch[y, x, 1] = 0 if v1 < 0 else (255 if v1 > 255 else int(v1))
            patch[y, x, 2] = 0 if v2 < 0 else (255 if v2 > 255 else int(v2))


def composite(img: np.ndarray, window, verts: np.ndarray, faces: np.ndarray, attr: np.ndarray, n_body: int,
              gate: int, skin: np.ndarray, params: np.ndarray, face_px: float, rng: np.random.Generator):
    """Draw, light, blur, add noise and alpha-blend the mask into img (in place) inside window.

    verts (image px, depth), faces: the scene (geometry.Scene): faces[:n_body] the mask body,
    faces[n_body:gate] the ear loops, faces[gate:] the face proxy; attr: (u, v, shade) of the mask's
    vertices; skin: (len(faces) - gate,) proxy faces on the skin (light and colour samples); params: pack();
    face_px: face scale in pixels (geometry.scale_of).

    Returns (alpha, face_id, depth) over the window (alpha (h, w) float32; the z-buffer's face ids, -1 where
    nothing is drawn, and depths), or None (image untouched) when no pixel of the mask is in front.
    """
    x0, y0, x1, y1 = window
    h, w = y1 - y0, x1 - x0
    patch = img[y0:y1, x0:x1]
    face_id = np.full((h, w), -1, np.int32)
    depth = np.full((h, w), np.inf, np.float32)
    buf = np.zeros((h, w, 4), np.float32)
    planes = render.attribute_planes(verts, faces, attr, gate)
    visible, by0, by1, bx0, bx1 = _draw(verts, faces, gate, n_body, x0, y0, planes, params, face_id, depth, buf)
    if visible == 0:
        return None  # no pixel of the mask is in front: the image is left as it was

    # the light and the face colour on a block grid: the z-buffer says where the mask is, the proxy alone
    # drawn at the block centres where skin is (the last < block rows and columns clamp to the last block)
    block = block_size(face_px, h, w)
    sh, sw = h // block, w // block
    pid = np.full((sh, sw), -1, np.int32)
    render._zbuffer_kernel(_to_blocks(verts, x0, y0, block), faces[gate:], 0, 0, False, len(faces) - gate, pid,
                           np.full((sh, sw), np.inf, np.float32), _NO_BARY, False)
    lw, vis, ratio = np.empty((sh, sw, 2), np.float32), np.empty((sh, sw), np.float32), np.empty((sh, sw), np.float32)
    mr, mg, mb, spread = _blocks(patch, block, face_id, gate, pid, skin, lw, vis)
    lw = gaussian(lw, max(LIGHT_SIGMA * face_px / block, 0.5))
    ref = _ratio(lw.reshape(sh, sw, 2), vis, ratio)
    mono = spread < MONO_SPREAD
    gain = gains((mr, mg, mb), ref, mono)
    step = 2 if visible < 4000 else (3 if visible < 9000 else 4)  # ~1000 noise samples or more
    noise = _noise_sigma(patch, face_id, gate, by0, by1, bx0, bx1, step)

    # blur and blend the drawn pixels' box grown by the blur's reach (the rest of the window stays zero: a
    # mask partly hidden behind the head leaves much of it empty)
    sigma = max(estimate_blur(patch), 0.6)
    k = gauss_radius(sigma) + 1
    sub = (slice(max(by0 - k, 0), min(by1 + k, h)), slice(max(bx0 - k, 0), min(bx1 + k, w)))
    blurred = gaussian(buf[sub], sigma)
    u = rng.random(2)
    sy, sx = sub[0].start, sub[1].start
    _blend(patch[sub], blurred, sy, sx, ratio, block, gain, mono, _NOISE, int(u[0] * 256) + sy,
           int(u[1] * 256) + sx, 0.8 * min(noise, 8.0) if noise > 0.3 else 0.0)
    alpha = np.zeros((h, w), np.float32)
    alpha[sub] = blurred[..., 3]
    return alpha, face_id, depth
