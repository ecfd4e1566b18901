"""Property tests of the pose module against closed-form geometry and conventions §1 (not against itself)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpe_data import pose

FAST = settings(max_examples=60, deadline=None)  # per test: no global profile leaks into other files

angle = st.floats(-179.0, 179.0, allow_nan=False)
tame_yaw = st.floats(-85.0, 85.0, allow_nan=False)  # away from gimbal lock (yaw = +-90)
any_yaw = st.one_of(st.floats(-90.0, 90.0, allow_nan=False), st.sampled_from([90.0, -90.0]))


def euler_triplet(yaw=tame_yaw):
    return st.tuples(angle, yaw, angle)


@st.composite
def rotations(draw):
    """A rotation from a random unit quaternion: built without the pose module."""
    q = np.array(draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=4, max_size=4)))
    if np.linalg.norm(q) < 1e-3:
        q = np.array([1.0, 0, 0, 0])
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def wrap(a):
    """Angle difference folded into (-180, 180]."""
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


def Rz(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


# ---------------------------------------------------------------- round trips


@FAST
@given(euler_triplet())
def test_angles_round_trip_away_from_gimbal_lock(pyr):
    p, y, r = pyr
    back = pose.to_euler(pose.to_matrix(p, y, r))
    assert np.allclose(wrap(np.array(back) - np.array([p, y, r])), 0, atol=1e-6)


@FAST
@given(rotations())
def test_matrix_round_trip_everywhere(R):
    if abs(R[0, 2]) > 1 - 1e-12:  # exactly at gimbal lock: see test_matrix_round_trip_exactly_at_gimbal_lock
        R = Rz(1e-3) @ R
    assert np.allclose(pose.to_matrix(*pose.to_euler(R)), R, atol=1e-9)


@pytest.mark.parametrize("R", [
    [[0, 0, 1], [1, 0, 0], [0, 1, 0]],  # yaw +90 with roll - pitch = 90
    [[0, 0, -1], [-0.6, 0.8, 0], [0.8, 0.6, 0]],  # yaw -90
])
def test_matrix_round_trip_exactly_at_gimbal_lock(R):
    R = np.array(R, dtype=np.float64)
    assert pose.is_rotation(R)
    assert np.allclose(pose.to_matrix(*pose.to_euler(R)), R, atol=1e-9)


@FAST
@given(angle, st.sampled_from([90.0, -90.0, 89.9999, -89.9999]), angle)
def test_matrix_round_trip_at_yaw_90(p, y, r):
    R = pose.to_matrix(p, y, r)
    assert np.allclose(pose.to_matrix(*pose.to_euler(R)), R, atol=1e-6)
    assert abs(abs(pose.to_euler(R)[1]) - abs(y)) < 1e-3


@FAST
@given(euler_triplet(any_yaw))
def test_matrices_are_rotations(pyr):
    R = pose.to_matrix(*pyr)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(R) - 1) < 1e-12
    assert pose.is_rotation(R)


def test_batch_shapes():
    p = np.zeros((4, 5))
    R = pose.to_matrix(p, p + 10, p - 5)
    assert R.shape == (4, 5, 3, 3)
    assert all(a.shape == (4, 5) for a in pose.to_euler(R))


def test_documented_formula():
    """R_cv = Rx(-pitch) @ Ry(yaw) @ Rz(roll), elementary matrices typed in from conventions §1."""
    p, y, r = np.radians([20.0, -35.0, 12.0])
    c, s = np.cos, np.sin
    Rx = np.array([[1, 0, 0], [0, c(-p), -s(-p)], [0, s(-p), c(-p)]])
    Ry = np.array([[c(y), 0, s(y)], [0, 1, 0], [-s(y), 0, c(y)]])
    Rzz = np.array([[c(r), -s(r), 0], [s(r), c(r), 0], [0, 0, 1]])
    assert np.allclose(pose.to_matrix(20.0, -35.0, 12.0), Rx @ Ry @ Rzz, atol=1e-12)


# ---------------------------------------------------------------- composition, flip, geodesic


@FAST
@given(rotations(), st.floats(-180, 180), st.floats(-180, 180))
def test_inplane_rotations_compose(R, a, b):
    assert np.allclose(pose.rotate_inplane(pose.rotate_inplane(R, a), b), pose.rotate_inplane(R, a + b), atol=1e-9)


@FAST
@given(rotations(), st.floats(-180, 180))
def test_inplane_rotation_is_camera_roll(R, a):
    assert np.allclose(pose.rotate_inplane(R, a), Rz(-a) @ R, atol=1e-12)


@FAST
@given(rotations())
def test_flip_is_an_involution(R):
    assert np.allclose(pose.flip(pose.flip(R)), R, atol=1e-12)
    assert pose.is_rotation(pose.flip(R))


@FAST
@given(euler_triplet())
def test_flip_negates_yaw_and_roll(pyr):
    p, y, r = pyr
    assert np.allclose(pose.flip(pose.to_matrix(p, y, r)), pose.to_matrix(p, -y, -r), atol=1e-12)
    fp, fy, fr = pose.to_euler(pose.flip(pose.to_matrix(p, y, r)))
    assert np.allclose(wrap(np.array([fp - p, fy + y, fr + r])), 0, atol=1e-6)


@FAST
@given(rotations(), rotations(), rotations())
def test_geodesic_is_metric_like(A, B, C):
    d = pose.geodesic_deg
    assert abs(d(A, B) - d(B, A)) < 1e-6
    assert d(A, A) < 1e-5
    assert 0 <= d(A, B) <= 180 + 1e-9
    assert d(A, C) <= d(A, B) + d(B, C) + 1e-6
    assert pose.geodesic(A, A) < 1e-3  # the clamped (gradient-safe) version is near zero too


@FAST
@given(st.floats(-179.9, 179.9), rotations())
def test_geodesic_of_a_z_rotation_is_its_angle(t, R):
    assert abs(pose.geodesic_deg(Rz(t), np.eye(3)) - abs(t)) < 1e-5
    assert abs(pose.geodesic_deg(Rz(t) @ R, R) - abs(t)) < 1e-5  # left-invariant


@FAST
@given(rotations())
def test_rot6d_round_trip(R):
    assert np.allclose(pose.rot6d_to_matrix(pose.matrix_to_rot6d(R)), R, atol=1e-7)


@FAST
@given(rotations(), st.floats(0.2, 5.0), st.lists(st.floats(-0.05, 0.05), min_size=6, max_size=6))
def test_rot6d_of_noisy_input_is_gram_schmidt(R, scale, noise):
    x = pose.matrix_to_rot6d(R) * scale + np.array(noise)
    M = pose.rot6d_to_matrix(x)
    assert pose.is_rotation(M, tol=1e-6)
    assert np.allclose(M[:, 0], x[:3] / np.linalg.norm(x[:3]), atol=1e-6)  # first column: the first vector
    assert abs(M[:, 1] @ np.cross(x[:3], x[3:])) < 1e-6  # second column: in the plane of the two vectors
    assert M[:, 1] @ x[3:] > 0


# ---------------------------------------------------------------- numpy vs torch


@FAST
@given(euler_triplet(any_yaw), rotations(), st.floats(-90, 90))
def test_numpy_and_torch_agree(pyr, Q, theta):
    p, y, r = pyr
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    Rn = pose.to_matrix(p, y, r)
    Rt = pose.to_matrix(t(p), t(y), t(r))
    assert isinstance(Rt, torch.Tensor)
    assert np.allclose(Rt.numpy(), Rn, atol=1e-12)
    Qt = t(Q)
    assert np.allclose([v.item() for v in pose.to_euler(Qt)], pose.to_euler(Q), atol=1e-9)
    assert np.allclose(pose.flip(Qt).numpy(), pose.flip(Q), atol=1e-12)
    assert np.allclose(pose.rotate_inplane(Qt, t(theta)).numpy(), pose.rotate_inplane(Q, theta), atol=1e-12)
    assert abs(pose.geodesic(Qt, t(Rn)).item() - pose.geodesic(Q, Rn)) < 1e-9
    x = pose.matrix_to_rot6d(Q)
    assert np.allclose(pose.matrix_to_rot6d(Qt).numpy(), x, atol=1e-12)
    assert np.allclose(pose.rot6d_to_matrix(t(x)).numpy(), pose.rot6d_to_matrix(x), atol=1e-9)


def test_rotate_inplane_of_a_tensor_by_a_float():
    R = torch.eye(3, dtype=torch.float64)
    assert np.allclose(pose.rotate_inplane(R, 30.0).numpy(), Rz(-30.0), atol=1e-12)


def test_torch_gradients_are_finite_at_identity():
    x = pose.matrix_to_rot6d(torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    loss = pose.geodesic(pose.rot6d_to_matrix(x), torch.eye(3, dtype=torch.float64))
    loss.backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- sign facts (conventions §1)

FRONT = np.array([0.0, 0.0, -100.0])  # a point in front of the face (the face looks towards -z)
TOP = np.array([0.0, -100.0, 0.0])  # the top of the head (y is down)


@FAST
@given(st.floats(5, 85))
def test_positive_yaw_moves_the_nose_to_image_left(y):
    assert (pose.to_matrix(0, y, 0) @ FRONT)[0] < 0
    assert (pose.to_matrix(0, -y, 0) @ FRONT)[0] > 0


@FAST
@given(st.floats(5, 85))
def test_positive_pitch_looks_up(p):
    assert (pose.to_matrix(p, 0, 0) @ FRONT)[1] < 0  # image y is down: up is negative
    assert (pose.to_matrix(-p, 0, 0) @ FRONT)[1] > 0


@FAST
@given(st.floats(5, 85))
def test_positive_roll_tilts_the_top_of_the_head_to_image_right(r):
    assert (pose.to_matrix(0, 0, r) @ TOP)[0] > 0
    assert (pose.to_matrix(0, 0, -r) @ TOP)[0] < 0


@pytest.mark.parametrize("name, key, sign", [("image00430", "pitch", +1), ("image00475", "yaw", +1),
                                             ("image00050", "roll", +1)])
def test_sign_facts_on_real_samples(refdata, name, key, sign):
    """The named AFLW2000 samples of conventions §1: the fitted 3D landmarks agree with the sign facts."""
    import scipy.io

    m = scipy.io.loadmat(refdata / "aflw2000" / f"{name}.mat")
    p, y, r = np.degrees(m["Pose_Para"][0, :3].astype(float))
    assert np.sign({"pitch": p, "yaw": y, "roll": r}[key]) == sign
    pts = m["pt3d_68"].astype(float)
    cam = np.stack([pts[0], pts[1], -pts[2]], 1)  # z towards the viewer -> camera z (away)
    if key == "yaw":  # nose tip sits image-left of the eye midpoint
        assert cam[30, 0] < cam[36:48, 0].mean()
    elif key == "pitch":  # looking up tips the chin towards the camera: the eyes are farther away than the chin
        eyes, chin = cam[36:48].mean(0), cam[8]
        assert eyes[2] > chin[2]
    else:  # eye line tilted clockwise: the image-right eye is lower on screen (y larger)
        assert cam[42:48, 1].mean() > cam[36:42, 1].mean()


@given(st.floats(-3.1, 3.1), st.sampled_from(["x", "y", "z"]))
def test_rotvec_about_an_axis_is_the_elementary_rotation(a, axis):
    rv = {"x": [a, 0, 0], "y": [0, a, 0], "z": [0, 0, a]}[axis]
    ref = {"x": pose.rx, "y": pose.ry, "z": pose.rz}[axis](a)
    assert np.allclose(pose.from_rotvec(rv)[0], ref, atol=1e-12)
    # the angle of the rotation is the norm of the vector
    assert np.isclose(pose.geodesic_deg(pose.from_rotvec(rv)[0], np.eye(3)), abs(np.degrees(a)), atol=1e-5)
