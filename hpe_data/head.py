"""A procedural 3D head (closed triangle mesh, no model files) and its 68 iBUG landmarks.

HEAD FRAME = the OpenCV camera frame at identity pose: x to image-right, y down, z away from the viewer; the
face looks towards -z (the nose tip has the most negative z). Units are millimetres, origin at the head
centre; the head is about 150 mm wide. A posed head is X_cam = R_cv @ X_head + t with
R_cv = pose.to_matrix(pitch, yaw, roll).

Construction: every surface point is F(u) for a direction u on the unit sphere: a superquadric skull with a
tapering jaw ("canonical" coordinates), then face relief pushed along -z (brow, eye sockets, nose, cheeks,
lips, chin), ears pushed sideways and hair pushed outward. The relief, the texture and the landmarks are all
written in the canonical coordinates of the DEFAULT head, so they stay attached to each other when the shape
parameters change. A landmark is a fixed direction u_k, so `landmarks(params)` = F(u_k) lies exactly on that
head's continuous surface (the mesh is within a fraction of a millimetre of it).

Subject's right = image-left on a frontal face = negative x.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from . import render

# ---------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class HeadParams:
    """Shape and appearance of one head. Colours are RGB in [0, 1]."""

    skin: tuple = (0.86, 0.66, 0.55)
    hair: tuple = (0.20, 0.13, 0.08)
    iris: tuple = (0.35, 0.22, 0.12)
    lips: tuple = (0.72, 0.38, 0.36)
    hair_amount: float = 1.0  # 0 = bald, 1 = full
    hairline: float = 0.0  # degrees the front hairline is raised (+) or lowered (-)
    size: float = 1.0  # overall scale
    width: float = 1.0  # skull width factor
    height: float = 1.0  # skull height factor
    jaw: float = 1.0  # lower-face width factor
    nose: float = 1.0  # nose protrusion factor
    brow: float = 1.0  # eyebrow darkness / thickness
    hair_thickness: float = 8.0  # mm the hair stands off the skull

    @staticmethod
    def random(rng: np.random.Generator) -> "HeadParams":
        """A varied head: any skin tone, hair colour/amount, eye colour, mild shape changes."""
        tone = rng.uniform(0.0, 1.0)
        hair_pick = rng.integers(0, 6)
        hair = [(0.05, 0.04, 0.035), (0.20, 0.12, 0.07), (0.40, 0.26, 0.14), (0.75, 0.60, 0.36),
                (0.55, 0.53, 0.50), (0.45, 0.17, 0.07)][hair_pick]
        hair = np.clip(np.array(hair) * rng.uniform(0.8, 1.2), 0, 1)
        iris = [(0.30, 0.18, 0.09), (0.12, 0.08, 0.05), (0.30, 0.45, 0.62), (0.35, 0.45, 0.30)][rng.integers(0, 4)]
        sk = skin_tone(tone, rng.uniform(-1, 1))
        lips = np.clip(sk * np.array([0.95, 0.62, 0.62]) + np.array([0.08, 0.0, 0.02]), 0, 1)
        return HeadParams(
            skin=tuple(float(v) for v in sk),
            hair=tuple(float(v) for v in hair),
            iris=tuple(float(v) for v in iris),
            lips=tuple(float(v) for v in lips),
            hair_amount=float(rng.choice([0.0, 0.5, 1.0, 1.0, 1.0, 1.0])),
            hairline=float(rng.uniform(-6, 10)),
            size=float(rng.uniform(0.92, 1.08)),
            width=float(rng.uniform(0.95, 1.05)),
            height=float(rng.uniform(0.96, 1.04)),
            jaw=float(rng.uniform(0.94, 1.06)),
            nose=float(rng.uniform(0.85, 1.15)),
            brow=float(rng.uniform(0.6, 1.2)),
            hair_thickness=float(rng.uniform(4, 14)),
        )


def skin_tone(t: float, hue: float = 0.0) -> np.ndarray:
    """Skin RGB for a tone t in [0 (light), 1 (dark)]; hue in [-1, 1] shifts towards pink (-) or yellow (+)."""
    light, mid, dark = np.array([0.96, 0.80, 0.70]), np.array([0.78, 0.57, 0.42]), np.array([0.36, 0.23, 0.16])
    c = light + (mid - light) * t * 2 if t < 0.5 else mid + (dark - mid) * (t - 0.5) * 2
    return np.clip(c + hue * np.array([-0.02, 0.01, -0.03]), 0, 1)


DEFAULT = HeadParams()

# ------------------------------------------------------------------------------------- landmark layout (mm)
# Canonical front coordinates (x, y) of the default head. Right side (negative x) listed, left mirrored.
_EYE_C, _EYE_Y, _EYE_W, _LID_UP, _LID_LO = 32.0, -8.0, 14.0, 4.6, 3.4
_JAW = [(-70.5, -6), (-69.5, 11), (-67.5, 28), (-64.5, 45), (-59, 61), (-51, 75), (-40, 87), (-22, 97), (0, 101)]
_BROW = [(-55, -26.5), (-46, -33), (-35, -36), (-24, -35.5), (-14, -32)]  # 17..21, outer to inner
_BROW_T = [2.0, 3.2, 4.2, 4.8, 5.0]  # half-thickness along the brow (mm)
_NOSE_BRIDGE = [(0, -17), (0, -3), (0, 12), (0, 33)]  # 27..30 (30 = tip)
_NOSE_LOW = [(-13, 41), (-7, 44), (0, 46)]  # 31, 32, 33
_MOUTH_Y = 64.0
_UP_LIP = [(-25, 64), (-16, 59), (-6.5, 56.2), (0, 57.4)]  # 48..51
_LO_LIP = [(-16, 70), (-7, 73), (0, 73.6)]  # 59, 58, 57
_IN_LIP = [(-21, 64), (-8, 63.4), (0, 63.6)]  # 60, 61, 62
_IN_LIP_LO = [(-8, 64.6), (0, 64.4)]  # 67, 66


def _lid(ex, up):
    """Upper (up=True) or lower eyelid y at eye-local x offset ex."""
    k = 1.0 - (np.asarray(ex) / _EYE_W) ** 2
    return _EYE_Y - _LID_UP * k if up else _EYE_Y + _LID_LO * k


def _mirror(pts):
    return [(-x, y) for x, y in pts]


def _targets_68() -> np.ndarray:
    jaw = _JAW + _mirror(_JAW[-2::-1])
    brows = _BROW + _mirror(_BROW[::-1])
    nose = _NOSE_BRIDGE + _NOSE_LOW + _mirror(_NOSE_LOW[1::-1])
    cx = -_EYE_C
    r_eye = [(cx - _EYE_W, _EYE_Y), (cx - 5, _lid(-5, True)), (cx + 5, _lid(5, True)), (cx + _EYE_W, _EYE_Y),
             (cx + 5, _lid(5, False)), (cx - 5, _lid(-5, False))]
    l_eye = [(-x, y) for x, y in [r_eye[3], r_eye[2], r_eye[1], r_eye[0], r_eye[5], r_eye[4]]]
    # outer: 48..54 upper from right corner to left corner, then 55..59 lower from left back to right
    outer = _UP_LIP + _mirror(_UP_LIP[-2::-1]) + _mirror(_LO_LIP[:2]) + [_LO_LIP[2]] + _LO_LIP[1::-1]
    inner = _IN_LIP + _mirror(_IN_LIP[-2::-1]) + _mirror(_IN_LIP_LO[:1]) + [_IN_LIP_LO[1]] + _IN_LIP_LO[:1]
    pts = jaw + brows + nose + r_eye + l_eye + outer + inner
    assert len(pts) == 68, len(pts)
    return np.array(pts, dtype=np.float64)


TARGETS_68 = _targets_68()

# AFLW 21-point annotation, image-left first on a frontal face; ear lobes are given in (y, z) on the side.
_EAR_LOBE_YZ = (41.0, 9.0)
AFLW21_NAMES = (
    "brow_r_outer", "brow_r_centre", "brow_r_inner", "brow_l_inner", "brow_l_centre", "brow_l_outer",
    "eye_r_outer", "eye_r_centre", "eye_r_inner", "eye_l_inner", "eye_l_centre", "eye_l_outer",
    "ear_r_lobe", "nose_r", "nose_tip", "nose_l", "ear_l_lobe", "mouth_r", "mouth_centre", "mouth_l", "chin",
)

# ----------------------------------------------------------------------------------------- smooth helpers


def _ss(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _g(x, c, s):
    return np.exp(-(((x - c) / s) ** 2))


def _dir(a, e):
    """Unit direction for azimuth a (0 = towards the viewer, + = image-right) and elevation e (+ = up)."""
    ce = np.cos(e)
    return np.stack([np.sin(a) * ce, -np.sin(e), -np.cos(a) * ce], -1)


# -------------------------------------------------------------------------------------------------- shape


def _canon(u, p: HeadParams):
    """Skull + jaw: a superquadric ray function, then a taper of x towards the chin. (N, 3) mm."""
    ux, uy, uz = np.abs(u[:, 0]) + 1e-12, u[:, 1], u[:, 2]
    ax = 76.0 * p.width
    ay = np.where(uy < 0, 118.0, 112.0) * p.height
    az = np.where(uz < 0, 90.0, 102.0)
    # vertical profile: round cranium, square chin (front-bottom), rounder nape
    fb = _ss((uy + 0.05) / 0.45) * _ss((-uz + 0.05) / 0.5)
    e1 = 1.0 - 0.6 * fb - 0.15 * _ss(uy / 0.6) * (1 - fb)
    e2 = 0.88  # horizontal cross-section a little flatter than an ellipse
    hx = (ux / ax) ** (2 / e2) + (np.abs(uz) / az) ** (2 / e2)
    f = hx ** (e2 / e1) + (np.abs(uy) / ay) ** (2 / e1)
    r = f ** (-e1 / 2)
    P = u * r[:, None]
    y = P[:, 1]
    taper = (1 - 0.10 * _ss((y - 5) / 60)) * (1 - 0.45 * p.jaw ** -1.5 * _ss((y - 60) / 55))
    P[:, 0] *= taper
    return P


def _relief_fields(c):
    """Face relief towards the viewer (mm) at canonical front coordinates c: (fixed part, nose part)."""
    x, y = c[:, 0], c[:, 1]
    ax = np.abs(x)
    h = 5.5 * _g(y, -29, 6.5) * np.exp(-((x / 52) ** 4))  # brow ridge
    h += -9.0 * _g(ax, _EYE_C - 1, 16) * _g(y, _EYE_Y - 1, 11.5)  # eye sockets
    h += 6.5 * _g(ax, _EYE_C, 11.0) * _g(y, _EYE_Y, 6.0)  # eyeballs under the lids
    # nose: a ridge rising from the nasion to the tip, then a steep underside
    t = np.clip((y + 22) / 55.0, 0, 1)
    prof = (3.0 + 21.0 * t**1.6) / (1 + np.exp(-(40.5 - y) / 2.2)) * _ss((y + 32) / 12)
    width = 6.0 + 6.0 * t**2
    nose = prof * np.exp(-((x / width) ** 2))
    nose += 7.0 * _g(ax, 13.0, 5.5) * _g(y, 38.5, 5.5)  # alae
    h += 6.0 * _g(ax, 44, 17) * _g(y, 17, 17)  # cheeks
    h += 3.0 * _g(ax, 54, 9) * _g(y, 2, 10)  # cheekbones
    h += 7.0 * _g(x, 0, 30) * _g(y, 60, 24)  # muzzle
    h += 4.0 * np.exp(-((x / 22) ** 4)) * _g(y, 59.5, 4.0)  # upper lip
    h += 3.5 * np.exp(-((x / 19) ** 4)) * _g(y, 69.5, 4.5)  # lower lip
    h += -2.0 * np.exp(-((x / 24) ** 4)) * _g(y, _MOUTH_Y, 1.4)  # mouth line
    h += -2.5 * _g(x, 0, 22) * _g(y, 81, 5.5)  # groove under the lower lip
    h += 6.0 * _g(x, 0, 17) * _g(y, 94, 10)  # chin
    h += -3.0 * _g(ax, 62, 10) * _g(y, -32, 14)  # temples
    return h, nose


def _ear(c):
    """Sideways ear displacement (mm) at canonical side coordinates (y, z): a shell attached at its front
    edge and standing off at the back, with a raised rim, a hollow concha and a narrower lobe."""
    y, z = c[:, 1], c[:, 2]
    ey = (y - 16.0) / 32.0
    ez = (z - 9.0) / (15.0 * (1 - 0.3 * np.clip(ey, 0, 1)))
    rho = np.sqrt(ey**2 + ez**2)
    inside = _ss((1.0 - rho) / 0.3)  # a soft rim: the side of the grid is ~3 mm coarse
    shell = 4.0 + 8.0 * _ss((ez + 1.0) / 1.7)
    rim = 2.0 * np.exp(-(((rho - 0.86) / 0.1) ** 2))
    concha = 6.5 * np.exp(-(((y - 24) / 10) ** 2 + ((z - 7) / 6.5) ** 2))
    return np.maximum(inside * (shell + rim - concha), 0.0)


def _angles(c):
    r = np.linalg.norm(c, axis=1) + 1e-12
    e = np.degrees(np.arcsin(np.clip(-c[:, 1] / r, -1, 1)))
    a = np.degrees(np.arctan2(c[:, 0], -c[:, 2]))
    return a, e


def _hairline(a, p: HeadParams):
    """Elevation (degrees) above which the scalp is hair, per azimuth (degrees)."""
    aa = np.abs(a)
    eb = np.interp(aa, [0, 30, 60, 78, 92, 106, 140, 180], [36, 35, 29, 17, 12, 9, -20, -30])
    front = _ss(1 - aa / 70)
    return eb + p.hairline * front + 1.5 * np.sin(np.radians(a) * 9)


def _hair_mask(c, p: HeadParams, soft=4.0, angles=None):
    if p.hair_amount <= 0:
        return np.zeros(len(c))
    a, e = _angles(c) if angles is None else angles
    eb = _hairline(a, p)
    if p.hair_amount < 1:  # receding: a bald crown from the front
        eb = eb + (1 - p.hair_amount) * 45 * _ss(1 - np.abs(a) / 120)
    return _ss((e - eb) / soft + 0.5)


def _fixed_fields(u, c0):
    """The parameter-free parts of F: front weight x relief, front weight x nose, signed side weight x ear."""
    front = _ss((-u[:, 2] - 0.15) / 0.45)
    rel, nose = _relief_fields(c0)
    side = np.sign(u[:, 0]) * _ss((np.abs(u[:, 0]) - 0.55) / 0.3)
    return front * rel, front * nose, side * _ear(c0)


def _surface(u, c0, p: HeadParams, fields=None):
    """F(u): the head surface point for directions u (canonical default coordinates c0 of the same u)."""
    rel, nose, ear = _fixed_fields(u, c0) if fields is None else fields
    P = _canon(u, p)
    P[:, 2] -= rel + p.nose * nose
    P[:, 0] += ear
    hair = _hair_mask(c0, p, soft=12.0)
    P += u * (hair * p.hair_thickness)[:, None]
    return P * p.size


# ------------------------------------------------------------------------------------------------- mesh


@dataclass
class Mesh:
    verts: np.ndarray  # (V, 3) mm, head frame
    faces: np.ndarray  # (F, 3) outward-wound
    colors: np.ndarray  # (V, 3) float32 RGB in [0, 1] (per-vertex texture; renderers may texture per pixel)
    normals: np.ndarray  # (V, 3) unit, outward
    canon: np.ndarray = field(repr=False, default=None)  # (V, 3) texture coordinates (default-head canonical)
    params: HeadParams = DEFAULT
    follow: np.ndarray = field(repr=False, default=None)  # (V,) 1 = rigid with the head; neck blends to 0 (body)


N_LON, N_LAT = 176, 132
NECK_PIVOT = np.array([0.0, 140.0, 25.0])  # head-frame point (x size) about which a body turns the head


def _warp(t, k):
    """Map t in [-1, 1] to [-1, 1], denser near 0 (where the face is)."""
    return t - k * np.sin(np.pi * t) / np.pi


@functools.lru_cache(maxsize=None)
def _grid():
    """Unit directions, faces and default canonical coordinates of the skull grid, and the neck mesh."""
    j = np.arange(N_LON)
    a = np.pi * _warp(-1 + 2 * j / N_LON, 0.45)
    i = np.arange(N_LAT)
    e = 0.5 * np.pi * _warp(1 - 2 * (i + 1) / (N_LAT + 1), 0.35)
    ee, aa = np.meshgrid(e, a, indexing="ij")
    u = np.concatenate([[[0, -1, 0]], _dir(aa.ravel(), ee.ravel()), [[0, 1, 0]]]).astype(np.float64)
    idx = 1 + np.arange(N_LAT * N_LON).reshape(N_LAT, N_LON)
    nxt = np.roll(idx, -1, axis=1)
    quads_a, quads_b = idx[:-1], nxt[:-1]
    quads_c, quads_d = idx[1:], nxt[1:]
    tris = [np.stack([quads_a, quads_b, quads_d], -1).reshape(-1, 3),
            np.stack([quads_a, quads_d, quads_c], -1).reshape(-1, 3)]
    top = np.stack([np.zeros(N_LON, int), nxt[0], idx[0]], -1)
    bot_i = len(u) - 1
    bot = np.stack([np.full(N_LON, bot_i), idx[-1], nxt[-1]], -1)
    faces = np.concatenate(tris + [top, bot]).astype(np.int64)
    c0 = _canon(u, DEFAULT)
    if _signed_volume(c0, faces) < 0:
        faces = faces[:, ::-1].copy()
    # neck: an elliptic tube from inside the head down below the chin, capped
    n_ring, levels = 48, np.linspace(30.0, 240.0, 14)
    t = 2 * np.pi * np.arange(n_ring) / n_ring
    ring = np.stack([np.sin(t) * 55.0, np.zeros_like(t), 20.0 - np.cos(t) * 50.0], -1)
    nv = [ring + [0, yv, 0] for yv in levels]
    neck = np.concatenate(nv + [[[0, levels[0], 20.0]], [[0, levels[-1], 20.0]]])
    rid = np.arange(len(levels) * n_ring).reshape(len(levels), n_ring)
    rn = np.roll(rid, -1, axis=1)
    nf = [np.stack([rid[:-1], rn[:-1], rn[1:]], -1).reshape(-1, 3),
          np.stack([rid[:-1], rn[1:], rid[1:]], -1).reshape(-1, 3)]
    ct, cb = len(neck) - 2, len(neck) - 1
    nf += [np.stack([np.full(n_ring, ct), rn[0], rid[0]], -1), np.stack([np.full(n_ring, cb), rid[-1], rn[-1]], -1)]
    neck_faces = np.concatenate(nf).astype(np.int64)
    if _signed_volume(neck, neck_faces) < 0:
        neck_faces = neck_faces[:, ::-1].copy()
    return u, faces, c0, neck, neck_faces, _fixed_fields(u, c0)


def _signed_volume(v, f):
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0)


def head_mesh(params: HeadParams = DEFAULT, colors: bool = True) -> Mesh:
    """The closed head mesh (skull + neck, two closed components) for `params`, in the head frame (mm).

    colors=False leaves `colors` empty for renderers that texture per pixel from `canon` (saves ~5 ms).
    """
    u, faces, c0, neck, neck_faces, fields = _grid()
    v = _surface(u, c0, params, fields)
    nk = neck.copy()
    nk[:, 0] *= params.width * params.jaw**0.5
    nk *= params.size
    verts = np.concatenate([v, nk])
    all_faces = np.concatenate([faces, neck_faces + len(v)])
    canon = np.concatenate([c0, neck]).astype(np.float32)
    normals = render.vertex_normals(verts, all_faces)
    colors = texture(canon, params).astype(np.float32) if colors else np.zeros((0, 3), np.float32)
    follow = np.concatenate([np.ones(len(v)), 1 - _ss((neck[:, 1] - NECK_PIVOT[1]) / 100.0)])
    return Mesh(verts, all_faces, colors, normals, canon, params, follow)


# ---------------------------------------------------------------------------------------------- landmarks


def _solve_dirs(targets, coords, a0, e0, iters=30):
    """Directions u whose default canonical point has the given 2 coordinates (Gauss-Newton on a, e)."""
    a, e = np.asarray(a0, float).copy(), np.asarray(e0, float).copy()
    targets = np.asarray(targets, float)
    h = 1e-6
    for _ in range(iters):
        f = _canon(_dir(a, e), DEFAULT)[:, coords] - targets
        fa = (_canon(_dir(a + h, e), DEFAULT)[:, coords] - targets - f) / h
        fe = (_canon(_dir(a, e + h), DEFAULT)[:, coords] - targets - f) / h
        J = np.stack([fa, fe], -1)  # (N, 2, 2)
        step = np.linalg.solve(J, -f[..., None])[..., 0]
        step = np.clip(step, -0.2, 0.2)
        a, e = a + step[:, 0], e + step[:, 1]
    res = np.abs(_canon(_dir(a, e), DEFAULT)[:, coords] - targets).max()
    if res > 1e-6:
        raise RuntimeError(f"landmark placement did not converge (residual {res:.3g} mm); a target is off the head")
    return _dir(a, e)


@functools.lru_cache(maxsize=None)
def _landmark_dirs():
    t = TARGETS_68
    u68 = _solve_dirs(t, [0, 1], np.arctan2(t[:, 0], 80.0), -np.arctan2(t[:, 1], 100.0))
    # AFLW-21: brows/eyes/nose/mouth/chin from the 68 layout, eye centres on the pupils, ear lobes on the side
    front = np.array([
        t[17], t[19], t[21], t[22], t[24], t[26], t[36], (-_EYE_C, _EYE_Y), t[39], t[42], (_EYE_C, _EYE_Y), t[45],
        (-15.5, 40.0), t[30], (15.5, 40.0), t[48], (0.0, _MOUTH_Y), t[54], t[8],
    ])
    uf = _solve_dirs(front, [0, 1], np.arctan2(front[:, 0], 80.0), -np.arctan2(front[:, 1], 100.0))
    lobe_t = np.array([_EAR_LOBE_YZ, _EAR_LOBE_YZ])
    ul = _solve_dirs(lobe_t, [1, 2], np.radians([-95.0, 95.0]), np.radians([-25.0, -25.0]))
    u21 = np.concatenate([uf[:12], ul[:1], uf[12:15], ul[1:], uf[15:]])
    return u68, u21


def _points(u, params: HeadParams):
    return _surface(u, _canon(u, DEFAULT), params)


def landmarks(params: HeadParams = DEFAULT) -> np.ndarray:
    """(68, 3) iBUG landmarks on the surface of the head `params`, head frame (mm)."""
    return _points(_landmark_dirs()[0], params)


def landmarks21(params: HeadParams = DEFAULT) -> np.ndarray:
    """(21, 3) AFLW 21-point annotation (order AFLW21_NAMES) on the head surface, head frame (mm)."""
    return _points(_landmark_dirs()[1], params)


TEMPLATE_68 = landmarks(DEFAULT)
TEMPLATE_68.setflags(write=False)

# ---------------------------------------------------------------------------------------------- texture


def texture(c, params: HeadParams = DEFAULT) -> np.ndarray:
    """RGB in [0, 1] at canonical coordinates c (N, 3): skin, hair, brows, eyes, lips, nostrils."""
    c = np.asarray(c, dtype=np.float64)
    return detail_color(c, base_color(c, params), params)


def _base_fields(c):
    """Parameter-free parts of base_color: angles, additive blush, ear shade factor, hair streaks."""
    x, y, z = c[:, 0], c[:, 1], c[:, 2]
    ax = np.abs(x)
    blush = 0.08 * (_g(ax, 42, 14) * _g(y, 22, 14) + _g(x, 0, 9) * _g(y, 34, 8)) * (z < -35.0)
    ear = 1 - 0.18 * np.exp(-(((y - 22) / 10) ** 2 + ((z - 6) / 7) ** 2)) * ((ax > 60) & (z > -15) & (z < 35))
    a, e = ang = _angles(c)
    ar, er = np.radians(a), np.radians(e)
    streak = 0.82 + 0.12 * np.sin(ar * 70 + 3 * np.sin(er * 11)) + 0.06 * np.sin(er * 40)
    return ang, blush[:, None] * np.array([0.5, -0.25, -0.2]), ear, streak


def base_color(c, params: HeadParams = DEFAULT, fields=None) -> np.ndarray:
    """The smooth part of the texture (skin, blush, hair, ear shading): fine to sample per vertex.

    `fields` = _base_fields(c) may be passed when c is fixed (a mesh's canon) to skip the trigonometry.
    """
    c = np.asarray(c, dtype=np.float64)
    ang, blush, ear, streak = _base_fields(c) if fields is None else fields
    col = (np.asarray(params.skin, float) + blush) * ear[:, None]
    if params.hair_amount > 0:
        hm = _hair_mask(c, params, angles=ang)[:, None]
        col = col * (1 - hm) + np.asarray(params.hair, float) * (streak[:, None] * hm)
    return np.clip(col, 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _mesh_fields():
    u, faces, c0, neck, *_ = _grid()
    return _base_fields(np.concatenate([c0, neck]))


def mesh_base_color(mesh: Mesh) -> np.ndarray:
    """base_color at the vertices of a `head_mesh` (cached parameter-free fields), (V, 3)."""
    return base_color(mesh.canon, mesh.params, fields=_mesh_fields())


DETAIL_BOX = (-62.0, -46.0, 62.0, 80.0)  # canonical x0, y0, x1, y1 outside which detail_color changes nothing


def detail_color(c, col, params: HeadParams = DEFAULT) -> np.ndarray:
    """Add the sharp features (brows, eyes, lips, nostrils) to base colours `col` at canonical points c."""
    c = np.asarray(c, dtype=np.float64)
    col = np.array(col, dtype=np.float64)
    x, y, z = c[:, 0], c[:, 1], c[:, 2]
    ax = np.abs(x)
    face = z < -35.0
    # brows: a band along the brow landmarks, thicker at the inner end
    m = face & (ax > 8) & (ax < 60) & (y > -44) & (y < -20)
    if m.any():
        bx = np.array([p[0] for p in _BROW])  # outer (-55) to inner (-14), increasing
        by = np.array([p[1] for p in _BROW])
        bt = np.array(_BROW_T) * (0.7 + 0.3 * params.brow)
        xm = -ax[m]
        yc, th = np.interp(xm, bx, by), np.interp(xm, bx, bt)
        ends = _ss((xm - bx[0] + 2.5) / 3) * _ss((bx[-1] + 1.5 - xm) / 3)
        inside = _ss((th - np.abs(y[m] - yc)) / 1.2 + 0.5) * ends
        alpha = (0.85 * min(params.brow, 1.0) * inside)[:, None]
        col[m] = col[m] * (1 - alpha) + np.asarray(params.hair, float) * 0.7 * alpha
    # eyes: white between the lids, iris, pupil, a highlight and the lash line
    m = face & (np.abs(ax - _EYE_C) < _EYE_W + 2) & (np.abs(y - _EYE_Y) < 9)
    if m.any():
        ex, ey = ax[m] - _EYE_C, y[m]
        yu, yl = _lid(ex, True), _lid(ex, False)
        opening = _ss((ey - yu) / 0.6) * _ss((yl - ey) / 0.6) * (np.abs(ex) < _EYE_W)
        r = np.hypot(np.sign(x[m]) * ex, ey - _EYE_Y)
        white = np.array([0.88, 0.86, 0.82])
        iris = np.asarray(params.iris, float)
        eye = np.where((r < 5.6)[:, None], iris * (0.7 + 0.3 * (r / 5.6))[:, None], white)
        eye = np.where((r < 2.3)[:, None], np.array([0.03, 0.03, 0.03]), eye)
        hl = np.hypot(np.sign(x[m]) * ex - 1.6, ey - _EYE_Y + 1.6) < 0.9
        eye = np.where(hl[:, None], np.array([0.97, 0.97, 0.97]), eye)
        cm = col[m] * (1 - opening[:, None]) + eye * opening[:, None]
        lash = _ss(1 - np.abs(ey - yu + 0.3) / 1.1) * (np.abs(ex) < _EYE_W + 0.5)
        lid_shade = 0.25 * _g(ey, yu - 2.5, 2.0) * (np.abs(ex) < _EYE_W)
        cm = cm * (1 - 0.85 * lash)[:, None] * (1 - lid_shade)[:, None] + 0.02 * lash[:, None]
        col[m] = cm
    # lips between the outer contour and the mouth line, the mouth line itself
    m = face & (ax < 28) & (y > 52) & (y < 78)
    if m.any():
        ux = np.array([p[0] for p in _UP_LIP] + [-p[0] for p in _UP_LIP[-2::-1]])
        uy = np.array([p[1] for p in _UP_LIP] + [p[1] for p in _UP_LIP[-2::-1]])
        lx = np.array([-25.0] + [p[0] for p in _LO_LIP] + [-p[0] for p in _LO_LIP[-2::-1]] + [25.0])
        ly = np.array([_MOUTH_Y] + [p[1] for p in _LO_LIP] + [p[1] for p in _LO_LIP[-2::-1]] + [_MOUTH_Y])
        xm, ym = x[m], y[m]
        top, bottom = np.interp(xm, ux, uy), np.interp(xm, lx, ly)
        lip = _ss((ym - top) / 0.7 + 0.5) * _ss((bottom - ym) / 0.7 + 0.5) * (np.abs(xm) < 25)
        lc = np.asarray(params.lips, float) * (1 - 0.12 * (ym < _MOUTH_Y))[:, None]
        cm = col[m] * (1 - lip[:, None]) + lc * lip[:, None]
        line = _ss(1 - np.abs(ym - _MOUTH_Y) / 0.8) * (np.abs(xm) < 24.5)
        col[m] = cm * (1 - 0.75 * line)[:, None]
    # nostrils
    m = face & (ax < 12) & (np.abs(y - 44.5) < 3)
    if m.any():
        d = ((ax[m] - 6.5) / 3.6) ** 2 + ((y[m] - 44.3) / 2.0) ** 2
        dark = 0.75 * _ss((1 - d) / 0.3)
        col[m] = col[m] * (1 - dark)[:, None]
    return np.clip(col, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ visibility


def visible_points(points_px, depth, raster: render.Raster, tol: float = 4.0, ignore_faces=None) -> np.ndarray:
    """True where a point (x, y pixels; depth in the raster's units) is not hidden by the rasterised surface.

    The point is compared with the z-buffer at the 2x2 pixel centres around it (the farthest of them, so a
    point next to an occluding edge counts as seen when any neighbouring sample sees that far); `tol` absorbs
    the mesh's chord error. Points outside the raster window count as visible (nothing drawn hides them).
    ignore_faces=(lo, hi) treats pixels drawn by faces lo..hi-1 as empty (e.g. the point's own head).
    """
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    dep = np.asarray(depth, dtype=np.float64).reshape(-1)
    h, w = raster.depth.shape
    x0s = np.floor(pts[:, 0]).astype(int) - raster.x0
    y0s = np.floor(pts[:, 1]).astype(int) - raster.y0
    far = np.full(len(pts), -np.inf)
    for dy in (0, 1):
        for dx in (0, 1):
            xs, ys = x0s + dx, y0s + dy
            inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
            zb = np.full(len(pts), np.inf)
            zb[inside] = raster.depth[ys[inside], xs[inside]]
            if ignore_faces is not None:
                fid = np.full(len(pts), -1)
                fid[inside] = raster.face_id[ys[inside], xs[inside]]
                zb[(fid >= ignore_faces[0]) & (fid < ignore_faces[1])] = np.inf
            far = np.maximum(far, zb)
    return dep <= far + tol


SELF_TOL_MM = 3.0  # slack for grazing points: the mesh chord may pass this far in front of the true surface


def visible_on_mesh(scr_verts, faces, scr_points, tol: float = SELF_TOL_MM) -> np.ndarray:
    """Points not hidden by a mesh, both in screen form (x px, y px, depth): (N,) bool.

    Casts the view ray through each point (`render.depth_at`, back faces culled): the point is seen when no
    surface lies more than `tol` (depth units) in front of it. No image resolution is involved.
    """
    sp = np.asarray(scr_points, dtype=np.float64).reshape(-1, 3)
    return sp[:, 2] <= render.depth_at(scr_verts, faces, sp[:, :2], cull=True) + tol


def self_occluded(R, params: HeadParams = DEFAULT, tol: float = SELF_TOL_MM, points=None) -> np.ndarray:
    """Which landmarks (default: the 68) of the head posed by R_cv are hidden by the head's own surface
    (orthographic view along the camera z axis, the neck rigid with the head)."""
    mesh = head_mesh(params, colors=False)
    pts = landmarks(params) if points is None else np.asarray(points, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    return ~visible_on_mesh(mesh.verts @ R.T, mesh.faces, pts @ R.T, tol)


def posed_landmarks(R, t=(0.0, 0.0, 0.0), params: HeadParams = DEFAULT) -> np.ndarray:
    """(68, 3) landmarks in the camera frame: R @ X + t."""
    return landmarks(params) @ np.asarray(R, float).T + np.asarray(t, float)


__all__ = [
    "HeadParams", "Mesh", "DEFAULT", "TEMPLATE_68", "TARGETS_68", "AFLW21_NAMES", "NECK_PIVOT", "head_mesh",
    "landmarks", "landmarks21", "texture", "base_color", "mesh_base_color", "detail_color", "skin_tone",
    "visible_points", "visible_on_mesh", "self_occluded", "posed_landmarks",
]
