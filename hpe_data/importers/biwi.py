"""BIWI Kinect Head Pose importer (conventions §4): pose files in the depth camera frame -> rows in the RGB frame.

Layout: `root/NN/` or `root/hpdb/NN/` sequence folders with `rgb.cal`, `frame_XXXXX_rgb.png` and
`frame_XXXXX_pose.txt`; synthetic sets may add extra heads on the same frame as `frame_XXXXX_pose_1.txt`,
`_pose_2.txt`, ... (rows `biwi/NN/XXXXX#1`, ...). One item per frame.

- `pose.txt`: 12 numbers (3x3 rotation R_file by rows, then the head centre t in mm, depth camera frame),
  parsed by tokens, so blank lines and trailing spaces do not matter.
- `rgb.cal`: 27 numbers (K 3x3, 4 distortion values, R_ext 3x3, T_ext mm, `W H`). Distortion is not applied
  (BIWI's are zero); the row's `camera` is (fx, fy, cx, cy) of K.
- Depth -> RGB direction of (R_ext, T_ext) is documented nowhere: a setting (`depth_to_rgb`), recorded per row.
  `R*p+T`: p_rgb = R_ext p + T_ext, so R_rgb = R_ext R_file and t_rgb = R_ext t + T_ext.
  `R^T*(p-T)`: p_rgb = R_ext^T (p - T_ext), so R_rgb = R_ext^T R_file and t_rgb = R_ext^T (t - T_ext).
  Angles are `pose.to_euler(R_rgb)` (the decomposition HopeNet/FSA-Net apply to R_file; on the file's R alone
  they give the usual depth-frame BIWI labels).
- Box (`box="head"`, default): the head centre projected through K with a nominal head size (`head_size_mm`,
  default 200 mm, a square in the head-centre plane), intersected with the frame. That is a head box, not the
  landmark box of the .mat datasets (the template's chin lies ~100 mm below the head centre, at the box's
  edge); `box="landmarks"` uses `transforms.face_box` of the projected landmarks instead, like AFLW2000.
- Landmarks (`landmarks="projected"`): `hpe_data.head.TEMPLATE_68` (mm, origin at the head centre) posed with
  R_rgb at t_rgb and projected through K; visible = inside the frame and not hidden by the template head's own
  surface (`head.self_occluded`, an orthographic z-buffer, evaluated for the rotation seen along the ray to
  the head centre so that perspective is accounted for). A generic head: a few mm off on a real person.
  With `landmarks="face-alignment"` the detected face whose centre lies inside a head's box (nearest to the
  projected centre) gives that head's landmarks; a head without a match keeps the projected ones
  (`landmarks_source` says which). `landmarks_3d` is null.
- `subject`: the person of the sequence (24 sequences of 20 people, conventions §4); sequences outside
  01-24 (synthetic sets) get `biwi-NN`.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import pose
from ..runner import Context, Item, StageError
from ..transforms import face_box, in_frame
from . import image_size, relative

DIRECTIONS = ("R*p+T", "R^T*(p-T)")
SEQUENCE_SUBJECT = {
    **{i: f"F{i:02d}" for i in range(1, 7)},
    **{i: f"M{i - 6:02d}" for i in range(7, 15)},
    15: "F03", 16: "M09", 17: "M10", 18: "F05", 19: "M11", 20: "M12", 21: "F02", 22: "M01", 23: "M13", 24: "M14",
}
_POSE = re.compile(r"^frame_(\d+)_pose(?:_(\d+))?\.txt$")
_ROT_TOL = 1e-3


@dataclass(frozen=True)
class Calibration:
    K: np.ndarray  # (3, 3)
    dist: np.ndarray  # (4,)
    R: np.ndarray  # (3, 3)
    T: np.ndarray  # (3,) mm
    size: tuple[int, int]  # (width, height)

    @property
    def camera(self) -> np.ndarray:
        return np.array([self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]])


# ---------------------------------------------------------------- parsing


def _numbers(path, count: int, what: str) -> np.ndarray:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise StageError(path, f"{what} file missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StageError(path, f"{what} file unreadable ({e})") from None
    tokens = text.split()
    if len(tokens) != count:
        raise StageError(path, f"{what}: expected {count} numbers, found {len(tokens)}")
    try:
        v = np.array([float(t) for t in tokens])
    except ValueError as e:
        raise StageError(path, f"{what}: not a number ({e})") from None
    if not np.isfinite(v).all():
        raise StageError(path, f"{what}: non-finite value(s) at token(s) {np.flatnonzero(~np.isfinite(v)).tolist()}")
    return v


def _rotation(M: np.ndarray, path, what: str) -> np.ndarray:
    """The nearest exact rotation of a printed one (6 significant digits); StageError if it is no rotation."""
    err = np.abs(M @ M.T - np.eye(3)).max()
    if err > _ROT_TOL or np.linalg.det(M) <= 0:
        raise StageError(path, f"{what} is not a rotation matrix (|R R^T - I| = {err:.2g}, det {np.linalg.det(M):.3g})")
    U, _, Vt = np.linalg.svd(M)
    return U @ Vt


def read_pose(path) -> tuple[np.ndarray, np.ndarray]:
    """(R_file (3, 3), head centre t (3,) mm) from a BIWI `frame_XXXXX_pose.txt`."""
    v = _numbers(path, 12, "pose")
    return _rotation(v[:9].reshape(3, 3), path, "pose rotation"), v[9:]


def read_cal(path) -> Calibration:
    """A BIWI `.cal` file: K (9), distortion (4), R (9), T (3), `width height` (2) = 27 numbers."""
    v = _numbers(path, 27, "calibration")
    K = v[:9].reshape(3, 3)
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], [0, 0, 1]) and K[1, 0] == 0):
        raise StageError(path, f"calibration: first 9 numbers are not an intrinsic matrix: {K.tolist()}")
    w, h = v[25], v[26]
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise StageError(path, f"calibration: image size {w} x {h} is not two positive integers")
    return Calibration(K, v[9:13], _rotation(v[13:22].reshape(3, 3), path, "extrinsic rotation"), v[22:25],
                       (int(w), int(h)))


_CAL_CACHE: dict[str, tuple[float, object]] = {}


def _cal(path: str) -> Calibration:
    """read_cal cached per process (one file per sequence, hundreds of frames)."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = -1.0
    hit = _CAL_CACHE.get(path)
    if hit is None or hit[0] != mtime:
        try:
            hit = (mtime, read_cal(path))
        except StageError as e:
            hit = (mtime, e)
        _CAL_CACHE[path] = hit
    if isinstance(hit[1], StageError):
        raise StageError(hit[1].path, hit[1].reason)
    return hit[1]


# ---------------------------------------------------------------- geometry


def biwi_pose(R_file, t, R_ext, T, direction: str = "R*p+T") -> tuple[np.ndarray, np.ndarray]:
    """Head rotation and centre in the RGB camera frame from the depth-frame pose and the `rgb.cal` extrinsics."""
    R_file, t, R_ext, T = (np.asarray(a, dtype=np.float64) for a in (R_file, t, R_ext, T))
    if direction == "R*p+T":
        return R_ext @ R_file, R_ext @ t + T
    if direction == "R^T*(p-T)":
        return R_ext.T @ R_file, R_ext.T @ (t - T)
    raise ValueError(f"depth_to_rgb must be one of {DIRECTIONS}, got {direction!r}")


def project(K: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points -> (N, 2) pixels (pinhole, no distortion)."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    z = p[:, 2:3]
    return np.hstack([K[0, 0] * p[:, :1] / z + K[0, 2], K[1, 1] * p[:, 1:2] / z + K[1, 2]])


def head_box(K: np.ndarray, t: np.ndarray, size_mm: float, width: int, height: int) -> np.ndarray | None:
    """Square of `size_mm` around the head centre, projected, intersected with the frame; None if outside."""
    (u, v), = project(K, t)
    hx, hy = K[0, 0] * size_mm / 2 / t[2], K[1, 1] * size_mm / 2 / t[2]
    x1, y1 = max(u - hx, 0.0), max(v - hy, 0.0)
    x2, y2 = min(u + hx, width - 1.0), min(v + hy, height - 1.0)
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([x1, y1, x2, y2])


def _ray_frame(t: np.ndarray) -> np.ndarray:
    """Rotation whose third column is the unit ray to `t` (a camera turned to look straight at the head)."""
    d = t / np.linalg.norm(t)
    a = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(a, d)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(d, x), d], 1)


def projected_landmarks(R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int):
    """TEMPLATE_68 posed at (R, t) -> ((68, 2) pixels, (68,) visible)."""
    from .. import head

    X = np.asarray(head.TEMPLATE_68, dtype=np.float64) @ R.T + t
    if (X[:, 2] <= 0).any():
        return None, None
    uv = project(K, X)
    Q = _ray_frame(t)
    vis = ~head.self_occluded(Q.T @ R) & in_frame(uv, width, height)
    return uv, vis


# ---------------------------------------------------------------- items and rows


def _sequences(root: Path) -> list[Path]:
    def digit_dirs(p: Path):
        try:
            return sorted(d for d in p.iterdir() if d.is_dir() and d.name.isdigit())
        except OSError:
            return []

    seqs = digit_dirs(root)
    if not seqs and (root / "hpdb").is_dir():
        seqs = digit_dirs(root / "hpdb")
    return seqs


def items(root) -> list[Item]:
    """One item per frame with at least one pose file, in every sequence folder under `root` (or `root/hpdb`)."""
    root = Path(root).absolute()
    out = []
    for seq in _sequences(root):
        frames: dict[int, list] = {}
        for name in sorted(os.listdir(seq)):
            m = _POSE.match(name)
            if m:
                frames.setdefault(int(m.group(1)), []).append((int(m.group(2) or 0), str(seq / name)))
        for f, heads in sorted(frames.items()):
            out.append(Item(f"biwi/{seq.name}/{f:05d}", (
                str(seq), seq.name, f, sorted(heads), str(seq / f"frame_{f:05d}_rgb.png"), str(seq / "rgb.cal"))))
    return out


def stage(item: Item, ctx: Context) -> list[dict]:
    seq_dir, seq, frame, heads, rgb, cal_path = item.payload
    o = ctx.options
    direction = o.get("depth_to_rgb", "R*p+T")
    size_mm = float(o.get("head_size_mm", 200.0))
    box_kind = o.get("box", "head")
    cal = _cal(cal_path)
    w, h = image_size(rgb, o.get("full_decode", False))
    if (w, h) != cal.size:
        raise StageError(rgb, f"image is {w}x{h} but {Path(cal_path).name} is for {cal.size[0]}x{cal.size[1]}")
    K = cal.K
    try:
        num = int(seq)
    except ValueError:
        num = -1
    subject = SEQUENCE_SUBJECT.get(num, f"biwi-{seq}")
    faces = None
    rows = []
    for idx, pose_path in heads:
        try:
            R_file, t = read_pose(pose_path)
            R, t_rgb = biwi_pose(R_file, t, cal.R, cal.T, direction)
            if t_rgb[2] <= 0:
                raise StageError(pose_path, f"head centre is behind the RGB camera (z = {t_rgb[2]:.1f} mm)")
            box = head_box(K, t_rgb, size_mm, w, h)
            if box is None:
                raise StageError(pose_path, "head box lies outside the image")
        except StageError as e:
            ctx.report(e.path, e.reason)  # other heads of the frame are still imported
            continue
        pitch, yaw, roll = (float(a) for a in pose.to_euler(R))
        lm, vis = projected_landmarks(R, t_rgb, K, w, h)
        source = "projected" if lm is not None else None
        if o.get("landmarks") == "face-alignment":
            if faces is None:
                faces = _detect(rgb)
            got = _match(faces, K, t_rgb, box)
            if got is not None:
                lm, vis, source = got, in_frame(got, w, h), "face-alignment"
        if box_kind == "landmarks" and lm is not None and vis.any():
            box = face_box(lm, w, h)
        rows.append(dict(
            sample_id=item.key if idx == 0 else f"{item.key}#{idx}",
            image_path=relative(rgb, ctx), dataset=o.get("dataset_name", "biwi"), subject=subject,
            width=w, height=h, bbox=box, landmarks=None if lm is None else lm.reshape(-1), landmarks_3d=None,
            landmark_visible=vis, landmarks_source=source, yaw=yaw, pitch=pitch, roll=roll,
            rotation=R.reshape(9), in_range=bool(pose.in_range(pitch, yaw, roll)), translation=t_rgb,
            camera=cal.camera, parent_id=None, augment=None, depth_to_rgb=direction, sequence=seq, frame=int(frame),
        ))
    return rows


def _detect(rgb: str):
    from ..imageio import ImageError, read_rgb
    from . import landmarkers

    try:
        img = read_rgb(rgb)
    except ImageError as e:
        raise StageError(rgb, str(e).split(": ", 1)[-1]) from None
    return landmarkers.get("face-alignment").detect(img)


def _match(faces, K, t, box) -> np.ndarray | None:
    """Landmarks of the detected face whose box centre lies in the head box, nearest the projected centre."""
    (u, v), = project(K, t)
    best, dist = None, math.inf
    for f in faces:
        cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        if box[0] <= cx <= box[2] and box[1] <= cy <= box[3]:
            d = math.hypot(cx - u, cy - v)
            if d < dist:
                best, dist = f.landmarks, d
    return best
