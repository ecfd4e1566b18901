"""Metric and matching functions against hand-computed cases and independent rotation code (scipy)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from hpe_data import pose
from hpe_model.evaluation import metrics
from hpe_model.evaluation.matching import iou_matrix, match


def _rot(axis: str, deg: float) -> np.ndarray:
    """Elementary rotation from scipy (independent of hpe_data.pose)."""
    return Rotation.from_euler(axis, deg, degrees=True).as_matrix()


# ---------------------------------------------------------------- angle errors


def test_wrap_at_180():
    assert metrics.plain_error(179.0, -179.0) == pytest.approx(358.0)
    assert metrics.wrapped_error(179.0, -179.0) == pytest.approx(2.0)
    assert metrics.wrapped_error(-179.0, 179.0) == pytest.approx(2.0)
    assert metrics.wrapped_error(10.0, -10.0) == pytest.approx(20.0)
    assert metrics.wrapped_error(0.0, 180.0) == pytest.approx(180.0)
    assert metrics.wrapped_error(725.0, 0.0) == pytest.approx(5.0)


@given(st.floats(-720, 720), st.floats(-720, 720))
def test_wrapped_error_is_circular_distance(a, b):
    w = float(metrics.wrapped_error(a, b))
    p = float(metrics.plain_error(a, b))
    assert 0.0 <= w <= 180.0 + 1e-9
    assert w <= p + 1e-9
    if p <= 180.0:
        assert w == pytest.approx(p, abs=1e-9)
    # the difference is +-w modulo 360
    d = (a - b) % 360.0
    assert min(abs(d - w), abs(d - (360.0 - w)), abs(d + w - 360.0)) == pytest.approx(0.0, abs=1e-6)


def test_geodesic_of_camera_axis_rotation():
    R_gt = pose.to_matrix(0.0, 0.0, 10.0)
    R_pred = _rot("z", 5.0) @ R_gt  # 5 degrees about the optical axis
    e = metrics.face_errors(R_pred, R_gt)
    assert e["geodesic"][0] == pytest.approx(5.0, abs=1e-6)
    assert (e["err_yaw"][0], e["err_pitch"][0], e["err_roll"][0]) == pytest.approx((0.0, 0.0, 5.0), abs=1e-9)
    assert e["err_mean"][0] == pytest.approx(5.0 / 3)


@settings(max_examples=50, deadline=None)
@given(st.floats(-80, 80), st.floats(-80, 80), st.floats(-80, 80),
       st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1)).filter(lambda v: np.linalg.norm(v) > 0.1),
       st.floats(0.0, 179.0))
def test_geodesic_equals_axis_angle(p, y, r, axis, angle):
    R_gt = pose.to_matrix(p, y, r)
    u = np.asarray(axis) / np.linalg.norm(axis)
    dR = Rotation.from_rotvec(np.radians(angle) * u).as_matrix()
    e = metrics.face_errors(R_gt @ dR, R_gt)
    assert e["geodesic"][0] == pytest.approx(angle, abs=1e-4)
    assert metrics.geodesic_deg(dR @ R_gt, R_gt) == pytest.approx(angle, abs=1e-4)


def test_plain_euler_errors_on_pose_steps():
    # Rx(-8) @ R_cv(10, 20, 30) = R_cv(18, 20, 30): pitch error 8, geodesic 8
    R_gt = pose.to_matrix(10.0, 20.0, 30.0)
    e = metrics.face_errors(_rot("x", -8.0) @ R_gt, R_gt)
    assert (e["err_yaw"][0], e["err_pitch"][0], e["err_roll"][0]) == pytest.approx((0.0, 8.0, 0.0), abs=1e-9)
    assert e["geodesic"][0] == pytest.approx(8.0, abs=1e-6)
    assert (e["gt_yaw"][0], e["gt_pitch"][0], e["gt_roll"][0]) == pytest.approx((20.0, 10.0, 30.0))


def test_roll_across_180_plain_vs_wrapped():
    # true roll 178, predicted roll 182 = -178: plain error 356, wrapped 4, geodesic 4
    R_gt = pose.to_matrix(0.0, 0.0, 178.0)
    e = metrics.face_errors(R_gt @ _rot("z", 4.0), R_gt)
    assert e["pred_roll"][0] == pytest.approx(-178.0)
    assert e["err_roll"][0] == pytest.approx(356.0)
    assert e["err_roll_wrapped"][0] == pytest.approx(4.0)
    assert e["geodesic"][0] == pytest.approx(4.0, abs=1e-6)


def test_misses_as_zero():
    err = np.array([1.0, 2.0, np.nan])
    gt = np.array([10.0, -20.0, -30.0])
    out = metrics.misses_as_zero(err, gt, [True, True, False])
    assert out.tolist() == [1.0, 2.0, 30.0]
    out2 = metrics.misses_as_zero(np.array([[1.0, 2.0], [np.nan, np.nan]]), np.array([[5.0, 6.0], [-7.0, 8.0]]),
                                  [True, False])
    assert out2.tolist() == [[1.0, 2.0], [7.0, 8.0]]


def test_summarize_closed_form():
    # three faces with a pose: two matched, one missed; a fourth face without a pose, matched
    nan = np.nan
    cols = {
        "matched": np.array([True, True, False, True]),
        "has_pose": np.array([True, True, True, False]),
        "err_yaw": np.array([1.0, 3.0, nan, nan]),
        "err_pitch": np.array([2.0, 4.0, nan, nan]),
        "err_roll": np.array([0.0, 6.0, nan, nan]),
        "err_yaw_wrapped": np.array([1.0, 3.0, nan, nan]),
        "err_pitch_wrapped": np.array([2.0, 4.0, nan, nan]),
        "err_roll_wrapped": np.array([0.0, 2.0, nan, nan]),
        "gt_yaw": np.array([10.0, 20.0, -40.0, nan]),
        "gt_pitch": np.array([0.0, 0.0, 10.0, nan]),
        "gt_roll": np.array([0.0, 0.0, -4.0, nan]),
        "geodesic": np.array([2.0, 7.0, nan, nan]),
    }
    s = metrics.summarize(cols)
    assert s["n_faces"] == 4 and s["n_matched"] == 3 and s["detection_rate"] == pytest.approx(0.75)
    assert (s["mae_yaw"], s["mae_pitch"], s["mae_roll"]) == pytest.approx((2.0, 3.0, 3.0))
    assert s["mae"] == pytest.approx(8.0 / 3)
    assert s["mae_wrapped"] == pytest.approx((2.0 + 3.0 + 1.0) / 3)
    assert s["geodesic"] == pytest.approx(4.5)
    # misses as 0: yaw (1 + 3 + 40) / 3, pitch (2 + 4 + 10) / 3, roll (0 + 6 + 4) / 3
    assert s["mae_yaw_misses_as_zero"] == pytest.approx(44.0 / 3)
    assert s["mae_misses_as_zero"] == pytest.approx((44.0 + 16.0 + 10.0) / 9)


def test_summarize_empty_is_none_not_nan():
    cols = {k: np.zeros(0) for k in ("geodesic",) + tuple(
        f"{p}_{a}{s}" for a in metrics.ANGLES for p, s in (("err", ""), ("err", "_wrapped"), ("gt", "")))}
    cols["matched"] = cols["has_pose"] = np.zeros(0, bool)
    s = metrics.summarize(cols)
    assert s["mae"] is None and s["detection_rate"] is None and s["n_faces"] == 0


def test_yaw_bins():
    got = metrics.yaw_bin([0.0, 29.9, 30.0, -45.0, 59.99, 60.0, 90.0, -90.5, 120.0, np.nan]).tolist()
    assert got == ["0-30", "0-30", "30-60", "30-60", "30-60", "60-90", "60-90", ">90", ">90", ""]


def test_cdf():
    assert metrics.cdf([1.0, 2.0, 3.0, 10.0, np.nan], [0.5, 2.0, 5.0, 10.0]).tolist() == [0.0, 0.5, 0.75, 1.0]


# ---------------------------------------------------------------- matching


def test_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 4, 4]])
    assert iou_matrix(a, b)[0] == pytest.approx([50 / 150, 1.0, 0.0, 4 / 100])


def test_iou_threshold_is_inclusive():
    gt = [[0, 0, 10, 10]]
    at = match(gt, [[0, 0, 10, 5]], [0.9])  # IoU exactly 0.5
    assert at.pred.tolist() == [0] and at.iou[0] == 0.5 and at.false_positives.size == 0
    below = match(gt, [[0, 0, 10, 4.9]], [0.9])  # IoU 0.49
    assert below.pred.tolist() == [-1] and np.isnan(below.iou[0]) and below.false_positives.tolist() == [0]


def test_misses_and_false_positives():
    gt = [[0, 0, 10, 10], [100, 100, 120, 120], [200, 0, 240, 40]]
    pred = [[101, 100, 121, 120],   # face 1 (IoU 19*20 / (2*400 - 380) = 380/420)
            [0, 0, 10, 10],         # face 0
            [300, 300, 320, 320],   # nothing: false positive
            [200, 0, 240, 40]]      # face 2 but below the score threshold: ignored, face 2 missed
    m = match(gt, pred, [0.9, 0.8, 0.7, 0.3])
    assert m.pred.tolist() == [1, 0, -1]
    assert m.iou[:2] == pytest.approx([1.0, 380 / 420])
    assert m.false_positives.tolist() == [2]
    assert m.kept.tolist() == [0, 1, 2]
    assert m.matched.tolist() == [True, True, False]


def test_score_threshold_is_inclusive():
    m = match([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.5], score_thresh=0.5)
    assert m.pred.tolist() == [0]
    m = match([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.4999], score_thresh=0.5)
    assert m.pred.tolist() == [-1] and m.false_positives.size == 0


def test_one_to_one_duplicates_and_shared_detection():
    # Two detections of one face: the better-overlapping one matches, the other is a false positive.
    m = match([[0, 0, 10, 10]], [[1, 0, 11, 10], [0, 0, 10, 10]], [0.99, 0.6])
    assert m.pred.tolist() == [1] and m.false_positives.tolist() == [0]
    # One detection between two faces: it goes to the face it overlaps more; the other face is missed.
    m = match([[0, 0, 10, 10], [2, 0, 12, 10]], [[1.5, 0, 11.5, 10]], [0.9])
    assert m.pred.tolist() == [-1, 0]


def test_greedy_by_iou_not_optimal_assignment():
    # IoU: det0-A 0.9, det0-B 7/10.5, det1-A 7/12, det1-B 0.4. Greedy takes the 0.9 pair first, so B is
    # missed and det1 is a false positive, although A<-det1, B<-det0 would match both (documented choice).
    gt = [[0, 0, 10, 10], [2, 0, 10.5, 10]]
    pred = [[0, 0, 9, 10], [-2, 0, 7, 10]]
    iou = iou_matrix(gt, pred)
    assert iou == pytest.approx(np.array([[0.9, 7 / 12], [7 / 10.5, 5 / 12.5]]))
    m = match(gt, pred, [0.9, 0.9])
    assert m.pred.tolist() == [0, -1] and m.false_positives.tolist() == [1]


def test_ties_go_to_score_then_index():
    gt = [[0, 0, 10, 10]]
    same = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    assert match(gt, same, [0.6, 0.9, 0.9]).pred.tolist() == [1]
    assert match(gt, same, [0.9, 0.9, 0.9]).pred.tolist() == [0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(4, 30), st.integers(4, 30)),
                min_size=0, max_size=6),
       st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(4, 30), st.integers(4, 30),
                          st.floats(0, 1)), min_size=0, max_size=8))
def test_matching_properties(gts, preds):
    gt = np.array([[x, y, x + w, y + h] for x, y, w, h in gts], float).reshape(-1, 4)
    pb = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in preds], float).reshape(-1, 4)
    sc = np.array([s for *_, s in preds], float)
    m = match(gt, pb, sc)
    used = m.pred[m.pred >= 0]
    assert len(set(used.tolist())) == len(used)  # one-to-one
    assert (sc[used] >= 0.5).all()
    iou = iou_matrix(gt, pb) if len(pb) else np.zeros((len(gt), 0))
    for g, p in enumerate(m.pred):
        if p >= 0:
            assert iou[g, p] >= 0.5 and m.iou[g] == pytest.approx(iou[g, p])
    # every kept detection is either matched or a false positive, never both, never dropped
    assert sorted(used.tolist() + m.false_positives.tolist()) == m.kept.tolist()
    # greedy: no unmatched face has an unused kept detection at IoU >= 0.5
    free = np.setdiff1d(m.kept, used)
    for g in np.flatnonzero(m.pred < 0):
        assert not (iou[g, free] >= 0.5).any()
