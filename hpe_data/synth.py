"""Synthetic head datasets written in the exact on-disk formats of 300W-LP, AFLW2000 and BIWI.

Conventions: shared/docs/conventions.md §1 (pose), §3 (.mat layouts), §4 (BIWI). Every face is the procedural
head of `hpe_data.head`, posed with `pose.to_matrix` and projected exactly, so the labels are exact:

- 300W-LP / AFLW2000: 450x450 RGB JPEG, weak perspective (orthographic x scale), pixel = s * X_cam[:2] + c.
  `.mat` coordinates are 1-based MATLAB pixels (0-based + 1). Pose_Para = [pitch, yaw, roll (rad), tx, ty,
  tz, scale] with the 3DDFA meaning: tx = cx + 1, ty = 450 - cy (y-up, 451 - y flip), tz = 0, scale = s / 1000
  (pixels per micrometre, the BFM unit). AFLW2000 pt3d_68 = (x, y 1-based, -s * Z_cam), i.e. z towards the
  viewer, scaled like x, y. 300W-LP `landmarks/<subset>/<name>_pts.mat` holds pts_2d = pts_3d = the projected
  68 points (1-based; the real files' pts_2d follow the visible contour, ours are exact 3D projections).
- BIWI: 640x480 PNG, perspective with the RGB camera of `rgb.cal` read as p_rgb = R p + T. The pose file holds
  R_file = R_cv in the depth frame and the head centre in the depth frame (mm). Several heads may share a frame:
  the first in frame_XXXXX_pose.txt, the others in frame_XXXXX_pose_1.txt, _pose_2.txt (a synthetic extension).
  No depth.bin is written.

Determinism: each sample draws from its own RNG seeded by (seed, format, index); BIWI people and cameras from
(seed, format, person / sequence). Output bytes do not depend on `workers`. Files are written atomically.
"""
from __future__ import annotations

import functools
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from tqdm import tqdm

from . import head as headmod
from . import landmarks as lmk
from . import pose, render
from .imageio import write_atomic

FORMATS = ("300w-lp", "aflw2000", "biwi")
_FMT_KEY = {"300w-lp": 1, "aflw2000": 2, "biwi": 3}
SIZE = 450
SUBSETS = ("AFW", "HELEN", "IBUG", "LFPW")
BIWI_W, BIWI_H = 640, 480
BIWI_DIRECTION = "R*p+T"
# BIWI sequence -> person (conventions §4); sequences of one person share a synthetic identity
BIWI_PERSON = {1: "F01", 2: "F02", 3: "F03", 4: "F04", 5: "F05", 6: "F06", 7: "M01", 8: "M02", 9: "M03", 10: "M04",
               11: "M05", 12: "M06", 13: "M07", 14: "M08", 15: "F03", 16: "M09", 17: "M10", 18: "F05", 19: "M11",
               20: "M12", 21: "F02", 22: "M01", 23: "M13", 24: "M14"}
SENTINEL = (-1.0, 452.0)  # AFLW2000 pt2d value of an invisible point
FACE_MM = 141.0  # jaw 0 to jaw 16 of the default head: "face width" for the size distribution
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: hpe_data.synth, Created on: synthetic".ljust(116, b" ")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


@functools.lru_cache(maxsize=1)
def _noise_field() -> np.ndarray:
    """A fixed field of unit Gaussian noise; samples take random crops of it (drawing fresh noise is slow)."""
    return np.random.default_rng(12345).standard_normal((1024, 1024, 3), dtype=np.float32)


def grain(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """(h, w, channels) unit Gaussian noise: a random crop of the fixed field."""
    f = _noise_field()
    if h > f.shape[0] or w > f.shape[1]:
        return rng.standard_normal((h, w, channels), dtype=np.float32)
    y, x = int(rng.integers(0, f.shape[0] - h + 1)), int(rng.integers(0, f.shape[1] - w + 1))
    c = int(rng.integers(0, 3))
    return f[y:y + h, x:x + w, c:c + 1] if channels == 1 else f[y:y + h, x:x + w, :channels]


# ------------------------------------------------------------------------------------------------- files


def mat_bytes(d: dict) -> bytes:
    """MATLAB v5 bytes via scipy.io.savemat, with a fixed header text (savemat stamps the time)."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, d, format="5", oned_as="row")
    b = bytearray(buf.getvalue())
    b[:116] = _MAT_HEADER
    return bytes(b)


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return enc.tobytes()


def _png(rgb: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return enc.tobytes()


# -------------------------------------------------------------------------------------------- background


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A never-constant backdrop in [0, 1] (float32): a gradient, low-frequency colour noise, shapes, grain.

    Drawn at half resolution and upsampled (a slightly soft, out-of-focus look, and half the cost); the grain
    is added at full resolution.
    """
    H, W = h, w
    h, w = max(h // 2, 1), max(w // 2, 1)
    grey = rng.uniform(0.1, 0.9)
    sat = rng.uniform(0.1, 0.8)

    def colour():
        return grey + sat * (rng.uniform(0, 1, 3) - 0.5) + rng.uniform(-0.3, 0.3)

    c0, c1 = colour(), colour()
    ang = rng.uniform(0, 2 * np.pi)
    gx = np.arange(w, dtype=np.float32) * np.float32(np.cos(ang))
    gy = np.arange(h, dtype=np.float32) * np.float32(np.sin(ang))
    t = gx[None, :] + gy[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = (c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]).astype(np.float32)
    gh, gw = rng.integers(2, 9, 2)
    low = cv2.resize(rng.standard_normal((gh, gw, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img += low * np.float32(rng.uniform(0.03, 0.15))
    glass = img.copy()  # translucent shapes go on this layer, blended once
    n_glass = 0
    for _ in range(int(rng.integers(2, 14))):
        opaque = rng.uniform() < 0.6
        layer = img if opaque else glass
        n_glass += not opaque
        col = tuple(float(v) for v in colour())
        kind = rng.integers(0, 4)
        cx, cy = int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4))
        sz = int(rng.integers(8, max(w, h) // 2))
        if kind == 0:
            cv2.circle(layer, (cx, cy), sz, col, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(layer, (cx, cy), (cx + int(rng.integers(8, w)), cy + int(rng.integers(8, h))), col, -1)
        elif kind == 2:
            pts = (np.array([cx, cy]) + rng.integers(-sz, sz, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(layer, [pts], col, cv2.LINE_AA)
        else:
            p2 = (cx + int(rng.integers(-w, w)), cy + int(rng.integers(-h, h)))
            cv2.line(layer, (cx, cy), p2, col, int(rng.integers(1, 12)), cv2.LINE_AA)
    if n_glass:
        a = float(rng.uniform(0.3, 0.7))
        img = cv2.addWeighted(glass, a, img, 1 - a, 0.0)
    if rng.uniform() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    img = cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR)
    img += grain(rng, H, W, 1) * np.float32(rng.uniform(0.005, 0.03))
    return np.clip(img, 0, 1, out=img)


# ------------------------------------------------------------------------------------------------- scene


@dataclass
class Camera:
    """Orthographic (pixel = scale * X[:2] + center) when K is None, else pinhole K."""

    K: np.ndarray | None = None
    scale: float = 1.0
    center: tuple = (0.0, 0.0)

    def project(self, X):
        X = np.asarray(X, dtype=np.float64)
        if self.K is None:
            return X[:, :2] * self.scale + np.asarray(self.center), X[:, 2].copy()
        z = X[:, 2]
        uv = np.stack([self.K[0, 0] * X[:, 0] / z + self.K[0, 2], self.K[1, 1] * X[:, 1] / z + self.K[1, 2]], -1)
        return uv, z.copy()

    def view_dirs(self, X):
        """Unit vectors from the points towards the viewer."""
        if self.K is None:
            return np.broadcast_to(np.array([0.0, 0.0, -1.0]), X.shape)
        return -X / np.linalg.norm(X, axis=1, keepdims=True)


@dataclass
class HeadInstance:
    params: headmod.HeadParams
    R: np.ndarray  # head-to-camera rotation in the rendering camera
    t: np.ndarray  # head centre in the rendering camera (mm)
    R_body: np.ndarray  # torso rotation in the rendering camera
    cloth: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.3, 0.35]))


@dataclass
class Light:
    direction: np.ndarray  # towards the light, camera frame
    ambient: float = 0.35
    color: np.ndarray = field(default_factory=lambda: np.ones(3))
    specular: float = 0.12
    shininess: float = 20.0


@functools.lru_cache(maxsize=None)
def _torso():
    """A boxy torso (superquadric) centred at the origin of its frame, top towards -y; outward-wound."""
    n_lon, n_lat = 48, 28
    a = np.linspace(-np.pi, np.pi, n_lon, endpoint=False)
    e = np.linspace(np.pi / 2, -np.pi / 2, n_lat + 2)[1:-1]
    ee, aa = np.meshgrid(e, a, indexing="ij")
    ring = np.stack([np.sin(aa) * np.cos(ee), -np.sin(ee), -np.cos(aa) * np.cos(ee)], -1).reshape(-1, 3)
    u = np.concatenate([[[0, -1, 0]], ring, [[0, 1, 0]]])
    ax, ay, az, e1, e2 = 185.0, 160.0, 105.0, 0.45, 0.75
    hx = (np.abs(u[:, 0]) / ax) ** (2 / e2) + (np.abs(u[:, 2]) / az) ** (2 / e2)
    r = (hx ** (e2 / e1) + (np.abs(u[:, 1]) / ay) ** (2 / e1)) ** (-e1 / 2)
    v = u * r[:, None]
    top = v[:, 1] < 0
    v[top, 1] += 45.0 * (v[top, 0] / ax) ** 2 * (-v[top, 1] / ay)  # sloping shoulders
    idx = 1 + np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    f = [np.stack([idx[:-1], nxt[:-1], nxt[1:]], -1).reshape(-1, 3),
         np.stack([idx[:-1], nxt[1:], idx[1:]], -1).reshape(-1, 3),
         np.stack([np.zeros(n_lon, int), nxt[0], idx[0]], -1),
         np.stack([np.full(n_lon, len(v) - 1), idx[-1], nxt[-1]], -1)]
    faces = np.concatenate(f).astype(np.int64)
    if headmod._signed_volume(v, faces) < 0:
        faces = faces[:, ::-1].copy()
    collar = np.exp(-((v[:, 0] / 60) ** 2 + ((v[:, 1] + ay) / 40) ** 2))
    return v, faces, render.vertex_normals(v, faces), collar


TORSO_OFFSET = np.array([0.0, 325.0, 30.0])  # torso centre below the head centre, body frame (mm)


def _pose_mesh(mesh: headmod.Mesh, inst: HeadInstance):
    """Camera-frame vertices and normals of the head; the neck bends from the head's rotation at the pivot
    under the skull to the torso's rotation at its bottom (X_cam = R_w (X - p) + R p + t)."""
    R, Rb = np.asarray(inst.R, float), np.asarray(inst.R_body, float)
    v = mesh.verts @ R.T
    n = mesh.normals @ R.T
    bend = np.flatnonzero(mesh.follow < 1)
    if len(bend):
        piv = headmod.NECK_PIVOT * inst.params.size
        rel = cv2.Rodrigues(Rb.T @ R)[0].ravel()
        Rw = Rb @ pose.from_rotvec(mesh.follow[bend, None] * rel)  # (N, 3, 3)
        v[bend] = np.einsum("nij,nj->ni", Rw, mesh.verts[bend] - piv) + R @ piv
        n[bend] = np.einsum("nij,nj->ni", Rw, mesh.normals[bend])
    return v + inst.t, n


def _pose_torso(inst: HeadInstance):
    """Torso vertices and normals in the camera frame, hanging from the neck pivot in the body's rotation."""
    tv, tf, tn, collar = _torso()
    s = inst.params.size
    piv = headmod.NECK_PIVOT * s
    Rb = np.asarray(inst.R_body, float)
    local = tv * [s * inst.params.width, s, s] + TORSO_OFFSET * s - piv
    return local @ Rb.T + np.asarray(inst.R, float) @ piv + inst.t, tn @ Rb.T, tf, collar


@dataclass
class FaceRender:
    lm: np.ndarray  # (68, 2) 0-based pixels
    lm_depth: np.ndarray  # (68,) camera z (mm)
    visible: np.ndarray  # (68,) bool
    lm21: np.ndarray  # (21, 2)
    visible21: np.ndarray  # (21,)
    head_box: np.ndarray  # (4,) box of the projected skull


def render_scene(heads, cam: Camera, bg: np.ndarray, light: Light):
    """Draw the heads (with necks and torsos) over `bg` (h, w, 3 float in [0, 1]); returns (image, [FaceRender])."""
    h, w = bg.shape[:2]
    verts, faces, attrs, face_off, vert_off = [], [], [], [0], [0]
    meshes = []
    nv = 0
    L = np.asarray(light.direction, float) / np.linalg.norm(light.direction)
    for k, inst in enumerate(heads):
        mesh = headmod.head_mesh(inst.params, colors=False)
        meshes.append(mesh)
        v, n = _pose_mesh(mesh, inst)
        base = headmod.mesh_base_color(mesh)
        bv, bn, tf, collar = _pose_torso(inst)
        bcol = np.asarray(inst.cloth, float) * (1 - 0.35 * collar)[:, None]
        for vv, ff, nn, col, canon in ((v, mesh.faces, n, base, mesh.canon), (bv, tf, bn, bcol, None)):
            shade = light.ambient + (1 - light.ambient) * np.clip(nn @ L, 0, None)
            hv = cam.view_dirs(vv) + L
            hv /= np.linalg.norm(hv, axis=1, keepdims=True)
            spec = light.specular * np.clip((nn * hv).sum(1), 0, None) ** light.shininess
            cn = np.full((len(vv), 3), 1e4, np.float32) if canon is None else canon
            attrs.append(np.concatenate([col, shade[:, None], spec[:, None], cn], 1))
            verts.append(vv)
            faces.append(ff + nv)
            nv += len(vv)
            face_off.append(face_off[-1] + len(ff))
            vert_off.append(nv)
    V = np.concatenate(verts)
    F = np.concatenate(faces)
    A = np.concatenate(attrs).astype(np.float32)
    xy, z = cam.project(V)
    scr = np.concatenate([xy, z[:, None]], 1)
    lo = np.floor(xy.min(0)).astype(int) - 1
    hi = np.ceil(xy.max(0)).astype(int) + 2
    ras = render.rasterize(scr, F, h, w, window=(lo[0], lo[1], hi[0], hi[1]), cull=True)
    x0, y0, x1, y1 = ras.window
    img = np.array(bg, dtype=np.float32)
    if x1 > x0 and y1 > y0:
        att = render.interpolate(ras, A)
        m = ras.face_id >= 0
        col = att[..., :3]
        c = att[..., 5:8]  # canonical head coordinates (far away on torsos, zero where empty)
        bx0, by0, bx1, by1 = headmod.DETAIL_BOX
        near = (c[..., 2] < -30) & (c[..., 0] > bx0) & (c[..., 0] < bx1) & (c[..., 1] > by0) & (c[..., 1] < by1)
        ys, xs = np.nonzero(near)
        if len(ys):
            obj = np.searchsorted(np.asarray(face_off), ras.face_id[ys, xs], side="right") - 1
            for k in range(len(heads)):
                j = obj == 2 * k
                if j.any():
                    yk, xk = ys[j], xs[j]
                    col[yk, xk] = headmod.detail_color(c[yk, xk], col[yk, xk], heads[k].params)
        col *= att[..., 3:4] * np.asarray(light.color, np.float32)
        col += att[..., 4:5]
        render.composite_soft(img, m, col, x0, y0)  # feathered silhouette
    # other objects (torsos, other heads) occlude through the scene z-buffer; the head's own surface through a
    # fixed-resolution test, so a label does not depend on how large the face is drawn
    # landmark visibility: the view ray through each point against the whole scene (own head, neck, torsos,
    # other heads), independent of how large the face is drawn
    out = []
    for k, inst in enumerate(heads):
        R = np.asarray(inst.R, float)
        p68 = headmod.landmarks(inst.params) @ R.T + inst.t
        p21 = headmod.landmarks21(inst.params) @ R.T + inst.t
        pxy, pz = cam.project(np.r_[p68, p21])
        seen = headmod.visible_on_mesh(scr, F, np.c_[pxy, pz]) & _in_frame(pxy, w, h)
        n_skull = int((meshes[k].follow == 1).sum())
        sxy = xy[vert_off[2 * k]:vert_off[2 * k] + n_skull]
        out.append(FaceRender(pxy[:68], pz[:68], seen[:68], pxy[68:], seen[68:], np.r_[sxy.min(0), sxy.max(0)]))
    return np.clip(img, 0, 1, out=img), out


def _in_frame(xy, w, h):
    return (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera look: white balance, optional blur, sensor noise; float [0, 1] -> uint8."""
    gain = (rng.uniform(0.94, 1.06, 3) * rng.uniform(0.85, 1.15) * 255).astype(np.float32)
    img = img.astype(np.float32) * gain
    if rng.uniform() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    img += grain(rng, img.shape[0], img.shape[1]) * np.float32(rng.uniform(0.8, 5.0))
    img += np.float32(0.5)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


# -------------------------------------------------------------------------------------------- sampling


def _random_pose(rng):
    return rng.uniform(-60, 60), rng.uniform(-90, 90), rng.uniform(-45, 45)


def _random_light(rng) -> Light:
    d = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.4), -rng.uniform(0.4, 1.2)])
    tint = np.clip(1 + rng.normal(0, 0.04, 3), 0.85, 1.15)
    return Light(d, ambient=rng.uniform(0.25, 0.55), color=tint * rng.uniform(0.9, 1.15),
                 specular=rng.uniform(0.03, 0.2), shininess=rng.uniform(8, 30))


def _body(rng, yaw):
    """Torso rotation (turned part of the way with the head) and clothing colour."""
    by = yaw * rng.uniform(0.2, 0.6) + rng.uniform(-10, 10)
    cloth = np.clip(rng.uniform(0.05, 0.8) + rng.uniform(0.0, 0.5) * (rng.uniform(0, 1, 3) - 0.5), 0.02, 0.95)
    return pose.to_matrix(0.0, by, rng.uniform(-5, 5)), cloth


def _ortho_sample(rng):
    """One head, weak perspective, anywhere in a 450x450 frame with its landmarks inside."""
    params = headmod.HeadParams.random(rng)
    p, y, r = _random_pose(rng)
    R = pose.to_matrix(p, y, r)
    face_px = float(np.exp(rng.uniform(np.log(40), np.log(300))))
    s = face_px / (FACE_MM * params.size)
    lm = headmod.landmarks(params) @ R.T * s
    lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
    m = 2.0  # keep every landmark this far inside the frame
    cx, cy = (rng.uniform(m - lo[d], SIZE - 1 - m - hi[d]) if hi[d] - lo[d] < SIZE - 2 * m
              else (SIZE - 1 - lo[d] - hi[d]) / 2 for d in (0, 1))
    Rb, cloth = _body(rng, y)
    inst = HeadInstance(params, R, np.zeros(3), Rb, cloth)
    cam = Camera(None, s, (cx, cy))
    bg = background(rng, SIZE, SIZE)
    img, faces = render_scene([inst], cam, bg, _random_light(rng))
    return _finish(img, rng), inst, cam, faces[0]


def _vec(a):
    return np.asarray(a, dtype=np.float64).tolist()


def _record(rel, sid, dataset, subject, w, h, R, fr: FaceRender, params, **extra):
    p, y, r = (float(v) for v in pose.to_euler(R))
    rec = {
        "sample_id": sid, "image": rel, "dataset": dataset, "subject": subject, "width": w, "height": h,
        "pitch": p, "yaw": y, "roll": r, "rotation": _vec(R),
        "landmarks": _vec(fr.lm), "landmark_visible": [bool(v) for v in fr.visible],
        "bbox": _vec(lmk.bbox(fr.lm)), "head_box": _vec(fr.head_box),
        "head": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()},
    }
    rec.update(extra)
    return rec


def _pose_para(R, cx, cy, s):
    p, y, r = pose.to_euler(R)
    return np.array([[np.radians(p), np.radians(y), np.radians(r), cx + 1.0, SIZE - cy, 0.0, s / 1000.0]], np.float32)


def _mat_common(pose_para, box1):
    return {
        "Pose_Para": pose_para,
        "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1)), "Tex_Para": np.zeros((199, 1)),
        "Color_Para": np.array([[1, 1, 1, 0, 0, 0, 1]], np.float32), "Illum_Para": np.zeros((1, 10)),
        "roi": np.round(box1).astype(np.int16).reshape(1, 4),
    }


def _gen_300w(out: Path, seed: int, i: int):
    rng = _rng(seed, _FMT_KEY["300w-lp"], i)
    img, inst, cam, fr = _ortho_sample(rng)
    q = int(rng.integers(80, 98))
    sub = SUBSETS[i % len(SUBSETS)]
    name = f"{sub}_{i:06d}_0"
    recs = []
    for flip in (False, True):
        R = pose.flip(inst.R) if flip else inst.R
        pic = img[:, ::-1] if flip else img
        lm = lmk.flip_points(fr.lm, SIZE) if flip else fr.lm
        vis = fr.visible[lmk.FLIP_PERM] if flip else fr.visible
        cx = SIZE - 1 - cam.center[0] if flip else cam.center[0]
        folder = f"{sub}_Flip" if flip else sub
        rel = f"300W_LP/{folder}/{name}.jpg"
        d = _mat_common(_pose_para(R, cx, cam.center[1], cam.scale), np.r_[lmk.bbox(lm)] + 1)
        d["pt2d"] = (lm + 1.0).T.astype(np.float64)
        write_atomic(out / rel, _jpeg(pic, q))
        write_atomic(out / f"300W_LP/{folder}/{name}.mat", mat_bytes(d))
        if not flip:
            pts = (lm + 1.0).astype(np.float64)
            write_atomic(out / f"300W_LP/landmarks/{sub}/{name}_pts.mat", mat_bytes({"pts_2d": pts, "pts_3d": pts}))
        x1, y1, x2, y2 = fr.head_box
        hb = np.array([SIZE - 1 - x2, y1, SIZE - 1 - x1, y2]) if flip else fr.head_box
        f2 = FaceRender(lm, fr.lm_depth[lmk.FLIP_PERM] if flip else fr.lm_depth, vis, fr.lm21, fr.visible21, hb)
        recs.append(_record(rel, rel[:-4], "synth-300w-lp", f"synth{i:06d}", SIZE, SIZE, R, f2, inst.params,
                            flipped=flip, index=i, face=0, landmarks_3d=_vec(_lm3d(lm, f2.lm_depth, cam.scale))))
    return recs


def _lm3d(lm, depth, s):
    """x, y pixels and z towards the viewer scaled like x, y (head centre at z = 0)."""
    return np.concatenate([lm, -s * np.asarray(depth)[:, None]], 1)


def _gen_aflw(out: Path, seed: int, i: int):
    rng = _rng(seed, _FMT_KEY["aflw2000"], i)
    img, inst, cam, fr = _ortho_sample(rng)
    q = int(rng.integers(80, 98))
    name = f"image{i:05d}"
    rel = f"AFLW2000/{name}.jpg"
    d = _mat_common(_pose_para(inst.R, cam.center[0], cam.center[1], cam.scale), lmk.bbox(fr.lm) + 1)
    p21 = fr.lm21 + 1.0
    p21[~fr.visible21] = SENTINEL
    d["pt2d"] = p21.T.astype(np.float64)
    d["pt3d_68"] = np.concatenate([fr.lm + 1.0, -cam.scale * fr.lm_depth[:, None]], 1).T.astype(np.float32)
    write_atomic(out / rel, _jpeg(img, q))
    write_atomic(out / f"AFLW2000/{name}.mat", mat_bytes(d))
    rec = _record(rel, rel[:-4], "synth-aflw2000", f"synth{i:06d}", SIZE, SIZE, inst.R, fr, inst.params, index=i,
                  face=0,
                  landmarks_3d=_vec(_lm3d(fr.lm, fr.lm_depth, cam.scale)),
                  pt2d_21=_vec(fr.lm21), visible_21=[bool(v) for v in fr.visible21])
    return [rec]


# ------------------------------------------------------------------------------------------------ BIWI


def biwi_camera(seed: int, seq: int):
    """(K_depth, K_rgb, R_ext, T) of a synthetic sequence; p_rgb = R_ext @ p_depth + T."""
    rng = _rng(seed, _FMT_KEY["biwi"], 10_000 + seq)
    f = round(float(rng.uniform(514, 521)), 3)
    cx, cy = round(float(rng.uniform(317, 323)), 3), round(float(rng.uniform(237, 243)), 3)
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    Kd = np.array([[575.816, 0, 320], [0, 575.816, 240], [0, 0, 1]])
    R_ext = pose.to_matrix(*rng.uniform(-1.2, 1.2, 3))
    T = np.round(np.array([rng.uniform(-27, -23), rng.uniform(-3, 6), rng.uniform(-14, 2)]), 4)
    return Kd, K, R_ext, T


def _cal_text(K, R, T, w=BIWI_W, h=BIWI_H) -> bytes:
    row = lambda v: " ".join(f"{float(x):.9g}" for x in v) + " \n"  # noqa: E731
    lines = [row(K[0]), row(K[1]), row(K[2]), "\n", row([0, 0, 0, 0]), "\n", row(R[0]), row(R[1]), row(R[2]), "\n",
             row(T), "\n", f"{w} {h} \n"]
    return "".join(lines).encode()


def _pose_text(R, t) -> bytes:
    row = lambda v: " ".join(f"{float(x):.9g}" for x in v) + " \n"  # noqa: E731
    return (row(R[0]) + row(R[1]) + row(R[2]) + "\n" + row(t)).encode()


def _biwi_slot(i: int):
    """Sample index -> (sequence 1..24, frame number), round robin so every sequence gets frames."""
    return i % 24 + 1, i // 24 + 1


def _biwi_person(seed: int, name: str) -> headmod.HeadParams:
    key = 20_000 + int(name[1:]) + (500 if name[0] == "M" else 0)
    return headmod.HeadParams.random(_rng(seed, _FMT_KEY["biwi"], key))


def _gen_biwi(out: Path, seed: int, i: int):
    rng = _rng(seed, _FMT_KEY["biwi"], i)
    seq, frame = _biwi_slot(i)
    Kd, K, R_ext, T = biwi_camera(seed, seq)
    n_heads = int(rng.choice([1, 1, 1, 1, 1, 1, 1, 2, 2, 3]))
    cam = Camera(K)
    heads, placed, extras = [], [], []
    for k in range(n_heads):
        params = _biwi_person(seed, BIWI_PERSON[seq]) if k == 0 else headmod.HeadParams.random(rng)
        for _try in range(20):
            z = rng.uniform(600, 1600)
            rad = 0.6 * 125 * params.size * K[0, 0] / z
            u, v = rng.uniform(rad, BIWI_W - rad), rng.uniform(rad, BIWI_H - rad)
            if all(_apart((u, v, rad, z), other) for other in placed):
                break
        else:
            continue
        placed.append((u, v, rad, z))
        t_rgb = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
        t_dep = np.round(R_ext.T @ (t_rgb - T), 4)
        t_rgb = R_ext @ t_dep + T
        p, y, r = _random_pose(rng)
        R_file = pose.to_matrix(p, y, r)
        Rb, cloth = _body(rng, y)
        heads.append(HeadInstance(params, R_ext @ R_file, t_rgb, R_ext @ Rb, cloth))
        extras.append((R_file, t_dep, params))
    bg = background(rng, BIWI_H, BIWI_W)
    img, faces = render_scene(heads, cam, bg, _random_light(rng))
    img = _finish(img, rng)
    folder = f"hpdb/{seq:02d}"
    rel = f"{folder}/frame_{frame:05d}_rgb.png"
    write_atomic(out / rel, _png(img))
    recs = []
    for k, ((R_file, t_dep, params), fr) in enumerate(zip(extras, faces)):
        suffix = "" if k == 0 else f"_{k}"
        write_atomic(out / f"{folder}/frame_{frame:05d}_pose{suffix}.txt", _pose_text(R_file, t_dep))
        subject = BIWI_PERSON[seq] if k == 0 else f"synth-extra-{i}-{k}"
        sid = rel[: -len("_rgb.png")] + (f"_face{k}" if k else "")
        recs.append(_record(rel, sid, "synth-biwi", subject, BIWI_W, BIWI_H, R_file, fr,
                            params, index=i, face=k, sequence=f"{seq:02d}", frame=frame, translation=_vec(t_dep),
                            rotation_rgb=_vec(heads[k].R), translation_rgb=_vec(heads[k].t),
                            camera={"K": _vec(K), "R": _vec(R_ext), "T": _vec(T), "depth_to_rgb": BIWI_DIRECTION}))
    return recs


def _apart(a, b):
    """Two heads (u, v, radius px, depth) neither overlapping nor hidden by the nearer one's torso."""
    (ua, va, ra, za), (ub, vb, rb, zb) = a, b
    if np.hypot(ua - ub, va - vb) < 0.9 * (ra + rb):
        return False
    (un, vn, rn, _), (uf, vf, rf, _) = (a, b) if za < zb else (b, a)
    # the nearer torso spans about 3.2 head radii sideways and starts ~1.2 radii below its head centre
    return abs(uf - un) > 3.2 * rn + rf or vf + rf < vn + 1.2 * rn


def _write_biwi_cals(out: Path, seed: int, count: int):
    for seq in sorted({_biwi_slot(i)[0] for i in range(count)}):
        Kd, K, R_ext, T = biwi_camera(seed, seq)
        write_atomic(out / f"hpdb/{seq:02d}/depth.cal", _cal_text(Kd, np.eye(3), np.zeros(3)))
        write_atomic(out / f"hpdb/{seq:02d}/rgb.cal", _cal_text(K, R_ext, T))


# ---------------------------------------------------------------------------------------------- driver

_GEN = {"300w-lp": _gen_300w, "aflw2000": _gen_aflw, "biwi": _gen_biwi}


def _work(job):
    fmt, out, seed, i = job
    cv2.setNumThreads(1)
    return _GEN[fmt](Path(out), seed, i)


def synth(fmt: str, out_dir, count: int, seed: int = 0, workers: int = 1, progress: bool = True) -> list[dict]:
    """Render `count` samples of format `fmt` into out_dir; returns the truth records (also out_dir/truth.json).

    300w-lp writes each sample twice (plus its _Flip twin), so it yields 2 * count images and records.
    """
    if fmt not in _GEN:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if count < 0 or seed < 0 or workers < 1:
        raise ValueError(f"need count >= 0, seed >= 0, workers >= 1 (got {count}, {seed}, {workers})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "biwi":
        _write_biwi_cals(out, seed, count)
    jobs = [(fmt, str(out), int(seed), i) for i in range(count)]
    records: list[dict] = []
    bar = tqdm(total=count, desc=f"synth {fmt}", unit="img", disable=not progress)
    if workers == 1 or count <= 1:
        for j in jobs:
            records += _work(j)
            bar.update()
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for recs in pool.imap(_work, jobs, chunksize=max(1, min(16, count // (4 * workers)))):
                records += recs
                bar.update()
    bar.close()
    write_atomic(out / "truth.json", json.dumps(records, separators=(",", ":")).encode())
    return records
