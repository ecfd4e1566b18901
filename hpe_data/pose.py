"""The one pose convention of the toolkit (docs: shared/docs/conventions.md §1-2).

Every Euler <-> matrix conversion in the project lives here; nothing else builds a rotation from angles.

Angles are degrees in the 300W-LP/AFLW2000 label convention: +pitch looks up, +yaw turns the nose to
image-left, +roll tilts the top of the head to image-right. The stored matrix is the head-to-camera
rotation in the OpenCV camera frame (x right, y down, z away from the viewer):

    R_cv(pitch, yaw, roll) = Rx(-pitch) @ Ry(yaw) @ Rz(roll)

Functions accept numpy arrays or torch tensors (any leading batch shape) and return the same kind, so the
network, the ONNX graph and the data stages share one implementation.
"""
from __future__ import annotations

import math

import numpy as np

RANGE_LIMIT = 99.0  # the usual AFLW2000 test filter keeps |angle| <= 99 degrees (inclusive)
FLIP_X = np.diag([-1.0, 1.0, 1.0])


def _xp(x):
    if type(x).__module__.split(".")[0] == "torch":
        import torch

        return torch
    return np


def _asarray(x, like=None):
    if like is not None and _xp(like) is not np:
        return like.new_tensor(x) if not _is_tensor(x) else x
    return x if _is_tensor(x) else np.asarray(x, dtype=np.float64)


def _is_tensor(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _mat(rows, shape, xp):
    """Stack 9 same-shaped arrays (row-major) into (..., 3, 3)."""
    return xp.stack(rows, -1).reshape(tuple(shape) + (3, 3))


def rx(a):
    """Rotation about x by `a` radians (right-handed)."""
    a = _asarray(a)
    xp = _xp(a)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _mat([o, z, z, z, c, -s, z, s, c], a.shape, xp)


def ry(a):
    """Rotation about y by `a` radians (right-handed)."""
    a = _asarray(a)
    xp = _xp(a)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _mat([c, z, s, z, o, z, -s, z, c], a.shape, xp)


def rz(a):
    """Rotation about z by `a` radians (right-handed)."""
    a = _asarray(a)
    xp = _xp(a)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _mat([c, -s, z, s, c, z, z, z, o], a.shape, xp)


def to_matrix(pitch, yaw, roll):
    """Euler angles in degrees -> R_cv (..., 3, 3)."""
    pitch, yaw, roll = (_asarray(v) for v in (pitch, yaw, roll))
    xp = _xp(pitch)
    d = math.pi / 180.0
    return rx(-pitch * d) @ ry(yaw * d) @ rz(roll * d)


def to_euler(R):
    """R_cv (..., 3, 3) -> (pitch, yaw, roll) in degrees, the inverse of `to_matrix`.

    Written on M = R.T, the same formula HopeNet/FSA-Net apply to BIWI matrices. Near yaw = +-90 degrees
    pitch and roll share one degree of freedom; the matrix round trip stays exact.
    """
    R = _asarray(R)
    xp = _xp(R)
    atan2 = xp.arctan2 if xp is np else xp.atan2
    m21, m22, m20 = R[..., 1, 2], R[..., 2, 2], R[..., 0, 2]  # M = R.T
    m10, m00 = R[..., 0, 1], R[..., 0, 0]
    d = 180.0 / math.pi
    cy = xp.hypot(m21, m22)
    pitch = atan2(m21, m22) * d
    yaw = -atan2(-m20, cy) * d
    roll = -atan2(m10, m00) * d
    # Exactly at yaw = +-90 both atan2 above see (0, 0): only roll - pitch (or roll + pitch) is defined, and it
    # lives in the second row. Report it as roll with pitch 0 so the matrix round trip stays exact.
    lock = cy < 1e-9
    if bool(lock.any()) if hasattr(lock, "any") else lock:
        pitch = xp.where(lock, xp.zeros_like(pitch), pitch)
        roll = xp.where(lock, atan2(R[..., 1, 0], R[..., 1, 1]) * d, roll)
    return pitch, yaw, roll


def in_range(pitch, yaw, roll, limit: float = RANGE_LIMIT):
    """True where all three angles lie within +-limit degrees (inclusive)."""
    xp = _xp(_asarray(pitch))
    return (xp.abs(_asarray(pitch)) <= limit) & (xp.abs(_asarray(yaw)) <= limit) & (xp.abs(_asarray(roll)) <= limit)


def flip(R):
    """Pose of the horizontally mirrored image: F @ R @ F with F = diag(-1, 1, 1).

    Equivalent to pitch' = pitch, yaw' = -yaw, roll' = -roll. Landmarks must be re-indexed too
    (`hpe_data.landmarks.FLIP_PERM`).
    """
    R = _asarray(R)
    F = _asarray(FLIP_X, like=R)
    if _is_tensor(R):
        F = F.to(R.dtype)
    return F @ R @ F


def rotate_inplane(R, theta):
    """Pose after rotating the image `theta` degrees counter-clockwise on screen: Rz(-theta) @ R.

    This is a roll of the camera about its optical axis; `roll += theta` is only right at yaw = pitch = 0.
    """
    R = _asarray(R)
    Rz = rz(-_asarray(theta, like=R) * (math.pi / 180.0))
    if _is_tensor(R):
        Rz = Rz.to(R.dtype)
    return Rz @ R


def inplane_affine(theta: float, center) -> np.ndarray:
    """2x3 pixel map of a counter-clockwise on-screen rotation by `theta` degrees about `center`.

    Same matrix as cv2.getRotationMatrix2D(center, theta, 1) in y-down pixel coordinates.
    """
    t = math.radians(theta)
    c, s = math.cos(t), math.sin(t)
    cx, cy = float(center[0]), float(center[1])
    A = np.array([[c, s], [-s, c]])
    off = np.array([cx, cy]) - A @ np.array([cx, cy])
    return np.hstack([A, off[:, None]])


def from_rotvec(rv) -> np.ndarray:
    """Rotation matrices (N, 3, 3) from rotation vectors (N, 3) (axis * angle in radians), by Rodrigues."""
    rv = np.asarray(rv, dtype=np.float64).reshape(-1, 3)
    th = np.linalg.norm(rv, axis=1)
    k = rv / np.maximum(th, 1e-12)[:, None]
    K = np.zeros((len(rv), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 0] = -k[:, 2], k[:, 1], k[:, 2]
    K[:, 1, 2], K[:, 2, 0], K[:, 2, 1] = -k[:, 0], -k[:, 1], k[:, 0]
    s, c = np.sin(th)[:, None, None], np.cos(th)[:, None, None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def geodesic(R1, R2, eps: float = 1e-7):
    """Angle of R1 @ R2.T in radians, the geodesic distance on SO(3) (clamped so its gradient stays finite)."""
    R1, R2 = _asarray(R1), _asarray(R2)
    xp = _xp(R1)
    tr = (R1 * R2).sum(-1).sum(-1)  # trace(R1 @ R2.T)
    cos = (tr - 1.0) / 2.0
    cos = xp.clip(cos, -1.0 + eps, 1.0 - eps) if xp is np else cos.clamp(-1.0 + eps, 1.0 - eps)
    return xp.arccos(cos) if xp is np else xp.acos(cos)


def geodesic_deg(R1, R2):
    return geodesic(R1, R2, eps=0.0) * (180.0 / math.pi)


def rot6d_to_matrix(x):
    """6 numbers (two columns) -> rotation matrix by Gram-Schmidt; the third column is their cross product."""
    x = _asarray(x)
    xp = _xp(x)
    a1, a2 = x[..., 0:3], x[..., 3:6]

    def unit(v):
        n = (v * v).sum(-1, keepdims=True) ** 0.5
        return v / (n + 1e-8)

    b1 = unit(a1)
    b2 = unit(a2 - (b1 * a2).sum(-1, keepdims=True) * b1)
    b3 = xp.cross(b1, b2, axis=-1) if xp is np else xp.linalg.cross(b1, b2, dim=-1)
    return xp.stack([b1, b2, b3], -1)


def matrix_to_rot6d(R):
    """The first two columns of R, the regression target of the 6D pose head."""
    R = _asarray(R)
    xp = _xp(R)
    return xp.concatenate([R[..., :, 0], R[..., :, 1]], -1) if xp is np else xp.cat([R[..., :, 0], R[..., :, 1]], -1)


def is_rotation(R, tol: float = 1e-4) -> bool:
    """Orthonormal with determinant +1 (numpy only; used to validate rows)."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    eye = np.broadcast_to(np.eye(3), R.shape)
    return bool(np.all(np.abs(R @ np.swapaxes(R, -1, -2) - eye) < tol) and np.all(np.abs(np.linalg.det(R) - 1) < tol))
