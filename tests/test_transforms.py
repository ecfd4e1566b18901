"""Label transforms of conventions §2 checked against closed forms, OpenCV and the pixels themselves."""
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpe_data import landmarks as L
from hpe_data import pose, transforms

FAST = settings(max_examples=50, deadline=None)  # per test: no global profile leaks into other files

W, H = 200, 160


def make_row(yaw=0.0, pitch=0.0, roll=0.0, seed=0, width=W, height=H, **extra):
    """A face row with 68 random landmarks well inside a width x height image."""
    rng = np.random.default_rng(seed)
    lm = np.stack([rng.uniform(0.3, 0.7, 68) * width, rng.uniform(0.3, 0.7, 68) * height], 1)
    lm3 = np.concatenate([lm, rng.uniform(-40, 40, (68, 1))], 1)
    R = pose.to_matrix(pitch, yaw, roll)
    row = dict(sample_id=f"f{seed}", image_path="x.jpg", dataset="t", subject=None, width=width, height=height,
               bbox=L.bbox(lm), landmarks=lm.reshape(-1), landmarks_3d=lm3.reshape(-1),
               landmark_visible=rng.random(68) > 0.2, occluded=rng.random(68) > 0.7, yaw=yaw, pitch=pitch,
               roll=roll, rotation=R.reshape(-1), in_range=True, translation=None, camera=None)
    row.update(extra)
    return row


# ---------------------------------------------------------------- rotation labels


def closed_form(yaw, theta):
    """Angles of a head at yaw only after a counter-clockwise image rotation by theta, by hand:
    R' = Rz(-t) Ry(y) gives R'[1,2] = -sin t sin y, R'[2,2] = cos y, R'[0,2] = cos t sin y,
    R'[0,1] = sin t, R'[0,0] = cos t cos y; conventions §1 decomposition on M = R'^T."""
    y, t = math.radians(yaw), math.radians(theta)
    pitch = math.atan2(-math.sin(t) * math.sin(y), math.cos(y))
    yaw2 = math.asin(math.cos(t) * math.sin(y))
    roll = -math.atan2(math.sin(t), math.cos(t) * math.cos(y))
    return tuple(math.degrees(v) for v in (pitch, yaw2, roll))


def test_yaw60_rotated_by_30_matches_the_documented_label():
    expected = closed_form(60.0, 30.0)
    assert np.allclose(expected, (-40.9, 48.6, -49.1), atol=0.05)  # the values quoted in conventions §2
    r = transforms.rotate_row(make_row(yaw=60.0), 30.0, ((W - 1) / 2, (H - 1) / 2))
    assert abs(r["pitch"] - expected[0]) <= 0.01
    assert abs(r["yaw"] - expected[1]) <= 0.01
    assert abs(r["roll"] - expected[2]) <= 0.01
    assert abs(r["roll"] - 30.0) > 60  # nowhere near the naive roll + theta


@FAST
@given(st.floats(-80, 80), st.floats(-89, 89))
def test_rotation_of_a_turned_head_matches_closed_form(yaw, theta):
    r = transforms.rotate_row(make_row(yaw=yaw), theta, (10.0, 20.0))
    assert np.allclose((r["pitch"], r["yaw"], r["roll"]), closed_form(yaw, theta), atol=1e-6)
    assert r["in_range"] == bool(pose.in_range(r["pitch"], r["yaw"], r["roll"]))
    assert np.allclose(np.reshape(r["rotation"], (3, 3)),
                       pose.to_matrix(r["pitch"], r["yaw"], r["roll"]), atol=1e-9)


def test_frontal_head_only_changes_roll():
    r = transforms.rotate_row(make_row(roll=5.0), 30.0, (0.0, 0.0))
    assert np.allclose((r["pitch"], r["yaw"], r["roll"]), (0.0, 0.0, 5.0 - 30.0), atol=1e-9)  # CCW: top moves left


def test_range_flag_is_reapplied():
    r = transforms.rotate_row(make_row(roll=80.0), -45.0, (100.0, 80.0))
    assert r["roll"] > 99 and r["in_range"] is False


@FAST
@given(st.floats(-180, 180), st.floats(0, W - 1), st.floats(0, H - 1))
def test_landmarks_follow_cv2_rotation_matrix(theta, cx, cy):
    row = make_row()
    r = transforms.rotate_row(row, theta, (cx, cy))
    M = cv2.getRotationMatrix2D((cx, cy), theta, 1.0)
    ref = cv2.transform(np.reshape(row["landmarks"], (1, 68, 2)), M)[0]
    # OpenCV rounds its sin/cos (about 1e-8 relative): agreement to 1e-4 px is far below anything visible
    assert np.allclose(np.reshape(r["landmarks"], (68, 2)), ref, atol=1e-4)
    lm3 = np.reshape(r["landmarks_3d"], (68, 3))
    ref3 = cv2.transform(np.reshape(row["landmarks_3d"], (68, 3))[None, :, :2].copy(), M)[0]
    assert np.allclose(lm3[:, :2], ref3, atol=1e-4)
    assert np.array_equal(lm3[:, 2], np.reshape(row["landmarks_3d"], (68, 3))[:, 2])  # depth unchanged
    assert np.array_equal(r["occluded"], row["occluded"])  # mask occlusion does not move


def test_rotated_image_and_landmarks_agree_pixelwise():
    """A bright dot at a landmark ends up where the rotated landmark says (image and labels share one map)."""
    row = make_row(seed=3)
    pts = np.reshape(row["landmarks"], (68, 2))
    centre = transforms.rotation_center([row])
    for k in (8, 30, 45):
        img = np.zeros((H, W), np.float32)
        x, y = np.round(pts[k]).astype(int)
        img[y - 1: y + 2, x - 1: x + 2] = 1.0
        p = np.array([x, y], float)
        rot = transforms.rotate_image(img, 37.0, centre, "constant")
        yy, xx = np.mgrid[:H, :W]
        found = np.array([(rot * xx).sum(), (rot * yy).sum()]) / rot.sum()
        r = transforms.rotate_row({**row, "landmarks": np.tile(p, 68)}, 37.0, centre)
        assert np.allclose(found, np.reshape(r["landmarks"], (68, 2))[0], atol=0.05)


def test_box_is_recomputed_from_rotated_landmarks_not_from_corners():
    row = make_row(seed=1)
    c = ((W - 1) / 2, (H - 1) / 2)
    r = transforms.rotate_row(row, 45.0, c)
    pts = cv2.transform(np.reshape(row["landmarks"], (1, 68, 2)), cv2.getRotationMatrix2D(c, 45.0, 1))[0]
    assert np.allclose(r["bbox"], [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], atol=1e-4)
    x1, y1, x2, y2 = row["bbox"]
    corners = cv2.transform(np.array([[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]], float),
                            cv2.getRotationMatrix2D(c, 45.0, 1))[0]
    inflated = np.ptp(corners[:, 0]) * np.ptp(corners[:, 1])
    tight = (r["bbox"][2] - r["bbox"][0]) * (r["bbox"][3] - r["bbox"][1])
    assert tight < 0.8 * inflated


def test_points_leaving_the_frame_become_invisible_and_the_box_stays_inside():
    row = make_row(seed=2)
    lm = np.reshape(row["landmarks"], (68, 2)).copy()
    lm[:10] = [[2.0, 2.0]] * 10  # near a corner: a 45 degree turn about the centre pushes them out
    row.update(landmarks=lm.reshape(-1), landmark_visible=np.ones(68, bool), bbox=L.bbox(lm))
    r = transforms.rotate_row(row, 45.0, ((W - 1) / 2, (H - 1) / 2))
    out = np.reshape(r["landmarks"], (68, 2))
    outside = (out[:, 0] < -0.5) | (out[:, 1] < -0.5) | (out[:, 0] > W - 0.5) | (out[:, 1] > H - 0.5)
    assert outside[:10].all() and not outside[10:].any()
    assert np.array_equal(r["landmark_visible"], ~outside)
    assert r["bbox"][0] >= 0 and r["bbox"][1] >= 0 and r["bbox"][2] <= W - 1 and r["bbox"][3] <= H - 1


def test_perspective_row_rotates_about_the_principal_point():
    """With fx = fy, rotating the pixels about (cx, cy) equals rolling the camera: the head centre's projection
    moves exactly like a pixel."""
    f, cx, cy = 500.0, 90.0, 70.0
    t = np.array([40.0, -25.0, 900.0])
    row = make_row(yaw=30.0, pitch=10.0, camera=np.array([f, f, cx, cy]), translation=t)
    assert transforms.rotation_center([make_row(), row]) == (cx, cy)
    r = transforms.rotate_row(row, 25.0, (cx, cy))
    proj = lambda p: np.array([f * p[0] / p[2] + cx, f * p[1] / p[2] + cy])  # noqa: E731
    M = cv2.getRotationMatrix2D((cx, cy), 25.0, 1)
    assert np.allclose(proj(r["translation"]), M[:, :2] @ proj(t) + M[:, 2], atol=1e-9)
    assert abs(np.linalg.norm(r["translation"]) - np.linalg.norm(t)) < 1e-9
    with pytest.raises(ValueError, match="principal point"):
        transforms.rotate_row(row, 25.0, ((W - 1) / 2, (H - 1) / 2))


def test_valid_fraction_matches_warped_coverage():
    """Share of real pixels in a box = mean of a warped all-ones image there (border 0)."""
    c = ((W - 1) / 2, (H - 1) / 2)
    ones = np.ones((H, W), np.float32)
    for box, theta in (([5, 5, 60, 50], 40.0), ([60, 40, 140, 120], 45.0), ([0, 0, W - 1, H - 1], 30.0)):
        warped = transforms.rotate_image(ones, theta, c, "constant")
        x1, y1, x2, y2 = box
        expected = warped[y1: y2 + 1, x1: x2 + 1].mean()
        assert abs(transforms.valid_fraction(box, theta, c, W, H) - expected) < 0.06
    assert transforms.valid_fraction([60, 40, 140, 120], 0.0, c, W, H) == 1.0


def test_lineage_is_appended():
    row = make_row(augment='[{"op": "flip"}]')
    assert transforms.append_augment(row, "rotate", theta=3.5) == '[{"op": "flip"}, {"op": "rotate", "theta": 3.5}]'
    r = transforms.rotate_row(transforms.rotate_row(row, 10.0, (0, 0)), 5.0, (0, 0))
    assert r["rotate_deg"] == 15.0


# ---------------------------------------------------------------- flip


def test_flip_twice_is_identity():
    row = make_row(yaw=35.0, pitch=-10.0, roll=12.0, camera=np.array([500.0, 500.0, 90.0, 70.0]),
                   translation=np.array([10.0, 5.0, 800.0]))
    back = transforms.flip_row(transforms.flip_row(row))
    for k in ("landmarks", "landmarks_3d", "bbox", "rotation", "translation", "camera"):
        assert np.allclose(back[k], row[k], atol=1e-9), k
    for k in ("landmark_visible", "occluded"):
        assert np.array_equal(back[k], row[k]), k
    assert np.allclose((back["pitch"], back["yaw"], back["roll"]), (-10.0, 35.0, 12.0), atol=1e-9)
    assert back["flipped"] is False


def test_flip_labels():
    row = make_row(yaw=35.0, pitch=-10.0, roll=12.0)
    f = transforms.flip_row(row)
    assert np.allclose((f["pitch"], f["yaw"], f["roll"]), (-10.0, -35.0, -12.0), atol=1e-9)
    lm, flm = np.reshape(row["landmarks"], (68, 2)), np.reshape(f["landmarks"], (68, 2))
    # the subject's right eye outer corner (36) becomes the left eye outer corner (45), mirrored in x
    assert np.allclose(flm[45], [W - 1 - lm[36, 0], lm[36, 1]])
    assert np.allclose(flm[8], [W - 1 - lm[8, 0], lm[8, 1]])  # the chin stays the chin
    assert f["landmark_visible"][45] == row["landmark_visible"][36]
    assert np.allclose(f["bbox"], [W - 1 - row["bbox"][2], row["bbox"][1], W - 1 - row["bbox"][0], row["bbox"][3]])
    assert f["flipped"] is True


def test_flipped_image_and_landmarks_agree_pixelwise():
    row = make_row(seed=4)
    lm = np.reshape(row["landmarks"], (68, 2))
    img = np.zeros((H, W, 3), np.uint8)
    x, y = np.round(lm[36]).astype(int)
    img[y, x] = 255
    f = transforms.flip_row({**row, "landmarks": np.tile([x, y], 68).astype(float)})
    ys, xs = np.nonzero(transforms.flip_image(img)[..., 0])
    assert (xs[0], ys[0]) == tuple(np.reshape(f["landmarks"], (68, 2))[45].astype(int))
