"""The one-stage head-pose network: anchors, coding, matching, losses, decoding, shapes (CPU, fast)."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpe_data import pose
from hpe_model import AnchorGenerator, BoxCoder, RetinaPose, RetinaPoseLoss, detect, geodesic_loss, match
from hpe_model.anchors import cxcywh_to_xyxy
from hpe_model.heads import Head

SIZES = {8: (16, 32), 16: (64, 128), 32: (256, 512)}


def closed_form_anchors(h, w):
    """Anchors written out by the RetinaFace definition, one at a time."""
    out = []
    for stride, sizes in SIZES.items():
        for i, j in itertools.product(range(math.ceil(h / stride)), range(math.ceil(w / stride))):
            for s in sizes:
                out.append(((j + 0.5) * stride, (i + 0.5) * stride, s, s))
    return np.array(out)


def anchor_index(h, w, stride, i, j, k):
    """Flat index of anchor k at row i, column j of the `stride` level."""
    off = 0
    for s in SIZES:
        gh, gw = math.ceil(h / s), math.ceil(w / s)
        if s == stride:
            return off + (i * gw + j) * 2 + k
        off += gh * gw * 2
    raise ValueError(stride)


# ---------------------------------------------------------------- anchors

@pytest.mark.parametrize("size,count", [((640, 640), 16800), ((256, 256), 2688)])
def test_anchor_count(size, count):
    gen = AnchorGenerator()
    assert gen(size).shape == (count, 4)
    assert gen.count(size) == count


@pytest.mark.parametrize("size", [(96, 160), (100, 70)])  # non-square, not multiples of 32
def test_anchor_centres_and_sizes_closed_form(size):
    a = AnchorGenerator()(size).numpy()
    np.testing.assert_allclose(a, closed_form_anchors(*size))


def test_anchor_cache_returns_same_tensor():
    gen = AnchorGenerator()
    assert gen((128, 128)) is gen((128, 128))
    assert gen((128, 128)) is not gen((128, 160))


def test_head_output_order_matches_anchor_order():
    # channel a*k+t of level l at (i, j) must land at anchor index (i*W + j)*2 + a of that level
    head = Head(width=1, k=1)
    h, w = 64, 96
    feats = [torch.zeros(1, 1, math.ceil(h / s), math.ceil(w / s)) for s in SIZES]
    with torch.no_grad():
        for conv in head.convs:
            conv.bias.zero_()
            conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))  # anchor a outputs (a+1)*x
    feats[1][0, 0, 2, 3] = 1.0
    out = head(feats)[0, :, 0]
    assert out.shape[0] == AnchorGenerator().count((h, w))
    nz = out.nonzero().squeeze(1).tolist()
    assert nz == [anchor_index(h, w, 16, 2, 3, 0), anchor_index(h, w, 16, 2, 3, 1)]
    assert out[nz].tolist() == [1.0, 2.0]
    anchors = AnchorGenerator()((h, w))
    assert anchors[nz[0], :2].tolist() == [(3 + 0.5) * 16, (2 + 0.5) * 16]


# ---------------------------------------------------------------- box coder

coords = st.floats(0, 640, allow_nan=False)
sides = st.floats(4, 600, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(acx=coords, acy=coords, asz=st.sampled_from([16, 32, 64, 128, 256, 512]),
       x1=coords, y1=coords, bw=sides, bh=sides)
def test_box_roundtrip(acx, acy, asz, x1, y1, bw, bh):
    coder = BoxCoder()
    anchor = torch.tensor([[acx, acy, asz, asz]], dtype=torch.float64)
    box = torch.tensor([[x1, y1, x1 + bw, y1 + bh]], dtype=torch.float64)
    d = coder.encode(box, anchor)
    torch.testing.assert_close(coder.decode(d, anchor), box, rtol=0, atol=1e-8)


def test_box_encoding_closed_form():
    coder = BoxCoder()
    anchor = torch.tensor([[100.0, 50.0, 32.0, 32.0]])
    box = torch.tensor([[90.0, 40.0, 154.0, 56.0]])  # centre (122, 48), size 64 x 16
    expect = [22 / 3.2, -2 / 3.2, math.log(2) / 0.2, math.log(0.5) / 0.2]
    torch.testing.assert_close(coder.encode(box, anchor)[0], torch.tensor(expect))


@settings(max_examples=60, deadline=None)
@given(acx=coords, acy=coords, asz=st.sampled_from([16, 64, 512]),
       pts=st.lists(st.floats(-50, 700, allow_nan=False), min_size=10, max_size=10))
def test_landmark_roundtrip(acx, acy, asz, pts):
    coder = BoxCoder()
    anchor = torch.tensor([[acx, acy, asz, asz]], dtype=torch.float64)
    p = torch.tensor(pts, dtype=torch.float64).view(1, 5, 2)
    d = coder.encode_landmarks(p, anchor)
    assert d.shape == (1, 10)
    torch.testing.assert_close(d[0, :2], (p[0, 0] - anchor[0, :2]) / (0.1 * asz))
    torch.testing.assert_close(coder.decode_landmarks(d, anchor), p, rtol=0, atol=1e-8)


# ---------------------------------------------------------------- matcher

H = W = 256


def _anchors_xyxy():
    return cxcywh_to_xyxy(AnchorGenerator()((H, W)))


def test_match_box_equal_to_anchor():
    i, j, k = 5, 7, 1  # 128-px anchor at stride 16
    idx = anchor_index(H, W, 16, i, j, k)
    cx, cy = (j + 0.5) * 16, (i + 0.5) * 16
    gt = torch.tensor([[cx - 64, cy - 64, cx + 64, cy + 64]])
    m = match(gt, _anchors_xyxy())
    assert m[idx] == 0


def test_match_tiny_face_gets_its_best_anchor():
    # 9x9 face centred on a 16-px anchor: best IoU 81/256 = 0.316, in [0.2, 0.35)
    i, j = 10, 12
    cx, cy = (j + 0.5) * 8, (i + 0.5) * 8
    gt = torch.tensor([[cx - 4.5, cy - 4.5, cx + 4.5, cy + 4.5]])
    m = match(gt, _anchors_xyxy())
    assert (m >= 0).nonzero().squeeze(1).tolist() == [anchor_index(H, W, 8, i, j, 0)]


def test_match_below_force_threshold_gets_nothing():
    # 7x7 face: best IoU 49/256 = 0.19 < 0.2
    cx, cy = 10.5 * 8, 6.5 * 8
    gt = torch.tensor([[cx - 3.5, cy - 3.5, cx + 3.5, cy + 3.5]])
    assert (match(gt, _anchors_xyxy()) < 0).all()


def test_match_no_faces_all_background():
    m = match(torch.zeros(0, 4), _anchors_xyxy())
    assert m.shape == (2688,) and (m == -1).all()


def test_match_threshold_positives_and_two_faces():
    # 64-px face on a 64-px anchor at stride 16: the 64-px anchors shifted by one cell have
    # IoU 48*64 / (2*64*64 - 48*64) = 0.6, diagonally 48*48 / (2*64*64 - 48*48) = 0.39; two cells away
    # 0.33 and below; the 32- and 128-px anchors at most 0.25: 3 x 3 positives per face.
    a_cx, a_cy = 6.5 * 16, 4.5 * 16
    b_cx, b_cy = 12.5 * 16, 12.5 * 16
    gt = torch.tensor([[a_cx - 32, a_cy - 32, a_cx + 32, a_cy + 32], [b_cx - 32, b_cy - 32, b_cx + 32, b_cy + 32]])
    m = match(gt, _anchors_xyxy())
    near = list(itertools.product([-1, 0, 1], repeat=2))
    exp0 = {anchor_index(H, W, 16, 4 + di, 6 + dj, 0) for di, dj in near}
    exp1 = {anchor_index(H, W, 16, 12 + di, 12 + dj, 0) for di, dj in near}
    assert set((m == 0).nonzero().squeeze(1).tolist()) == exp0
    assert set((m == 1).nonzero().squeeze(1).tolist()) == exp1


# ---------------------------------------------------------------- geodesic loss

@pytest.mark.parametrize("theta", [0.1, 0.5, 1.0, 2.0, 3.0])
def test_geodesic_known_angle(theta):
    R = pose.rz(torch.tensor(theta, dtype=torch.float64))
    assert abs(float(geodesic_loss(R, torch.eye(3, dtype=torch.float64))) - theta) < 1e-6


def test_geodesic_zero_for_identical_rotations():
    R = pose.to_matrix(torch.tensor([10.0, -30.0]), torch.tensor([40.0, 70.0]), torch.tensor([-5.0, 20.0]))
    assert geodesic_loss(R, R).abs().max() < 1e-3  # clamp floor: acos(1 - 1e-7) ~ 5e-4 rad


@pytest.mark.parametrize("angle", [0.0, 1e-6, 1e-3])
def test_geodesic_gradient_finite_near_identity(angle):
    six = pose.matrix_to_rot6d(pose.rz(torch.tensor(angle))).clone().requires_grad_(True)
    loss = geodesic_loss(pose.rot6d_to_matrix(six), torch.eye(3))
    loss.backward()
    assert torch.isfinite(six.grad).all()


# ---------------------------------------------------------------- losses

def num(t):
    return float(t.detach())


def _random_outputs(n, a, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, a, c, generator=g, requires_grad=True)
            for k, c in [("cls_logits", 2), ("box_deltas", 4), ("lmk_deltas", 10), ("pose6d", 6)]}


def _two_faces(rot_b, has_pose_b=False, lmk_b=None, has_lmk_b=True):
    boxes = torch.tensor([[40.0, 40.0, 104.0, 104.0], [152.0, 120.0, 216.0, 184.0]])  # on the stride-16 grid
    lmk = boxes[:, None, :2] + torch.tensor([[20.0, 24], [44, 24], [32, 36], [22, 48], [42, 48]])
    if lmk_b is not None:
        lmk[1] = lmk_b
    rot = torch.stack([pose.to_matrix(torch.tensor(10.0), torch.tensor(-20.0), torch.tensor(5.0)), rot_b])
    return [{"boxes": boxes, "landmarks5": lmk, "has_landmarks": torch.tensor([True, has_lmk_b]),
             "rotation": rot, "has_pose": torch.tensor([True, has_pose_b])}]


def test_face_without_pose_adds_no_pose_loss():
    anchors = AnchorGenerator()((H, W))
    out = _random_outputs(1, anchors.shape[0])
    crit = RetinaPoseLoss()
    rot_a = pose.to_matrix(torch.tensor(0.0), torch.tensor(60.0), torch.tensor(0.0))
    rot_b = pose.to_matrix(torch.tensor(-40.0), torch.tensor(10.0), torch.tensor(30.0))
    la = crit(out, _two_faces(rot_a), anchors)
    lb = crit(out, _two_faces(rot_b), anchors)
    lnan = crit(out, _two_faces(torch.full((3, 3), float("nan"))), anchors)
    for k in la:
        assert num(la[k]) == num(lb[k]) == num(lnan[k]), k
    # the same change on a face that carries a pose does change the loss (the test can fail)
    lc = crit(out, _two_faces(rot_a, has_pose_b=True), anchors)
    ld = crit(out, _two_faces(rot_b, has_pose_b=True), anchors)
    assert num(lc["pose"]) != num(ld["pose"])
    lnan["total"].backward()
    assert torch.isfinite(out["pose6d"].grad).all()


def test_face_without_landmarks_adds_no_landmark_loss():
    anchors = AnchorGenerator()((H, W))
    out = _random_outputs(1, anchors.shape[0])
    crit = RetinaPoseLoss()
    R = torch.eye(3)
    la = crit(out, _two_faces(R, lmk_b=torch.zeros(5, 2), has_lmk_b=False), anchors)
    lb = crit(out, _two_faces(R, lmk_b=torch.full((5, 2), 500.0), has_lmk_b=False), anchors)
    assert num(la["lmk"]) == num(lb["lmk"])
    lc = crit(out, _two_faces(R, lmk_b=torch.full((5, 2), 500.0), has_lmk_b=True), anchors)
    assert num(lc["lmk"]) != num(la["lmk"])


def test_loss_parts_and_weights():
    anchors = AnchorGenerator()((H, W))
    out = _random_outputs(2, anchors.shape[0])
    targets = _two_faces(torch.eye(3), has_pose_b=True) + [{"boxes": torch.zeros(0, 4)}]  # 2nd image: no face
    p = RetinaPoseLoss(w_pose=0.5)(out, targets, anchors)
    total = 2 * p["box"] + p["cls"] + p["lmk"] + 0.5 * p["pose"]
    torch.testing.assert_close(p["total"], total)
    assert p["num_pos"] == 18  # 9 anchors per 64-px face, see test_match_threshold_positives_and_two_faces
    p["total"].backward()
    # an image with no faces has no positives, hence no mined negatives: no gradient reaches it
    assert out["cls_logits"].grad[1].abs().sum() == 0
    assert out["cls_logits"].grad[0].abs().sum() > 0


def test_loss_with_no_faces_anywhere_is_zero_and_backpropagates():
    anchors = AnchorGenerator()((128, 128))
    out = _random_outputs(2, anchors.shape[0])
    p = RetinaPoseLoss()(out, [{"boxes": torch.zeros(0, 4)}] * 2, anchors)
    assert num(p["total"]) == 0.0
    p["total"].backward()


def test_targets_shape_errors_are_clear():
    anchors = AnchorGenerator()((128, 128))
    out = _random_outputs(1, anchors.shape[0])
    with pytest.raises(ValueError, match="landmarks5"):
        boxes = torch.tensor([[0.0, 0, 20, 20], [30, 30, 60, 60]])
        RetinaPoseLoss()(out, [{"boxes": boxes, "landmarks5": torch.zeros(3, 5, 2)}], anchors)
    with pytest.raises(ValueError, match="target 0: boxes"):
        RetinaPoseLoss()(out, [{"boxes": torch.tensor([[10.0, 10.0, 5.0, 30.0]])}], anchors)
    with pytest.raises(ValueError, match="2 images"):
        RetinaPoseLoss()(_random_outputs(2, anchors.shape[0]), [{"boxes": torch.zeros(0, 4)}], anchors)


# ---------------------------------------------------------------- detector

def synth_batch(n=8, size=128, seed=0):
    """Bright squares on dark noise as "faces", 5 points inside each, random rotations as pose."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(n, 3, size, size, generator=g) * 0.1
    rel = torch.tensor([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    targets = []
    for i in range(n):
        boxes, lmks, rots = [], [], []
        for k in range(1 + i % 2):  # one or two faces, one per image half
            s = int(torch.randint(24, 56, (1,), generator=g))
            x1 = int(torch.randint(0, size // 2 - s // 2, (1,), generator=g)) + k * (size // 2)
            y1 = int(torch.randint(0, size - s, (1,), generator=g))
            imgs[i, :, y1:y1 + s, x1:x1 + s] = 2.0
            boxes.append([x1, y1, x1 + s, y1 + s])
            lmks.append(torch.tensor([x1, y1]) + rel * s)
            rots.append(pose.to_matrix(*((torch.rand(3, generator=g) * 2 - 1) * 60)))
        f = len(boxes)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "landmarks5": torch.stack(lmks),
                        "has_landmarks": torch.full((f,), i % 3 != 0), "rotation": torch.stack(rots).float(),
                        "has_pose": torch.full((f,), i != 5)})
    return imgs, targets


def test_loss_falls_with_adam():
    torch.manual_seed(0)
    model = RetinaPose("mobilenet")
    imgs, targets = synth_batch()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    hist = []
    for _ in range(30):
        parts = model.loss(model(imgs), targets)
        opt.zero_grad()
        parts["total"].backward()
        opt.step()
        hist.append({k: num(v) for k, v in parts.items()})
    assert all(math.isfinite(h["total"]) for h in hist)
    assert hist[-1]["total"] < 0.5 * hist[0]["total"]
    assert hist[-1]["pose"] < hist[0]["pose"]


@pytest.mark.parametrize("backbone,pose_head", [("mobilenet", True), ("mobilenet", False), ("resnet50", True)])
def test_output_shapes(backbone, pose_head):
    torch.manual_seed(0)
    model = RetinaPose(backbone, pose_head=pose_head).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    a = 2 * (16 * 16 + 8 * 8 + 4 * 4)
    want = {"cls_logits": (2, a, 2), "box_deltas": (2, a, 4), "lmk_deltas": (2, a, 10), "anchors": (a, 4)}
    if pose_head:
        want["pose6d"] = (2, a, 6)
    assert {k: tuple(v.shape) for k, v in out.items()} == want
    if pose_head:  # the untrained pose head starts at the frontal pose
        R = pose.rot6d_to_matrix(out["pose6d"])
        assert pose.geodesic_deg(R, torch.eye(3)).max() < 0.1


def test_no_pose_head_is_the_same_detector_minus_pose():
    torch.manual_seed(0)
    full = RetinaPose("mobilenet").eval()
    bare = RetinaPose("mobilenet", pose_head=False).eval()
    missing, unexpected = bare.load_state_dict(full.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("pose_head.") for k in unexpected) and unexpected
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = full(x), bare(x)
    assert set(a) - set(b) == {"pose6d"} and set(b) <= set(a)
    for k in b:
        torch.testing.assert_close(a[k], b[k])
    n_pose = sum(p.numel() for p in full.pose_head.parameters())
    assert n_pose == 3 * (64 * 12 + 12)
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in bare.parameters()) == n_pose
    assert "rotation" not in bare.detect(b)[0]


def test_detect_recovers_encoded_faces():
    # outputs that encode two known faces exactly -> detect must return them with their angles
    size = (256, 256)
    anchors = AnchorGenerator()(size)
    coder = BoxCoder()
    angles = [(10.0, -35.0, 5.0), (-20.0, 50.0, -15.0)]
    boxes = torch.tensor([[40.0, 40.0, 104.0, 104.0], [150.0, 120.0, 214.0, 184.0]])
    lmk = boxes[:, None, :2] + torch.tensor([[20.0, 24], [44, 24], [32, 36], [22, 48], [42, 48]])
    R = torch.stack([pose.to_matrix(*map(torch.tensor, a)) for a in angles])
    a = anchors.shape[0]
    idx = torch.tensor([anchor_index(*size, 16, 4, 4, 0), anchor_index(*size, 16, 9, 11, 0)])
    logits = torch.zeros(1, a, 2)
    logits[..., 0] = 5.0
    logits[0, idx] = torch.tensor([-3.0, 3.0])
    out = {"cls_logits": logits, "box_deltas": torch.zeros(1, a, 4), "lmk_deltas": torch.zeros(1, a, 10),
           "pose6d": pose.matrix_to_rot6d(torch.eye(3)).repeat(1, a, 1)}
    out["box_deltas"][0, idx] = coder.encode(boxes, anchors[idx])
    out["lmk_deltas"][0, idx] = coder.encode_landmarks(lmk, anchors[idx])
    out["pose6d"][0, idx] = pose.matrix_to_rot6d(R)
    res = detect(out, anchors)
    assert len(res) == 1
    r = res[0]
    assert r["boxes"].shape == (2, 4)
    order = r["boxes"][:, 0].argsort()
    torch.testing.assert_close(r["boxes"][order], boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(r["landmarks5"][order], lmk, atol=1e-3, rtol=0)
    got = torch.stack([r["pitch"], r["yaw"], r["roll"]], 1)[order]
    torch.testing.assert_close(got, torch.tensor(angles), atol=1e-3, rtol=0)
    torch.testing.assert_close(r["scores"], torch.full((2,), 1 / (1 + math.exp(-6))))


def test_detect_nms_and_limits():
    anchors = AnchorGenerator()((128, 128))
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(0)
    out = {"cls_logits": torch.randn(2, a, 2, generator=g) * 3, "box_deltas": torch.randn(2, a, 4, generator=g),
           "lmk_deltas": torch.randn(2, a, 10, generator=g), "pose6d": torch.randn(2, a, 6, generator=g)}
    res = detect(out, anchors, score_thresh=0.3, keep=20)
    from torchvision.ops import box_iou
    for r in res:
        assert 0 < len(r["scores"]) <= 20
        assert (r["scores"] > 0.3).all() and (r["scores"][:-1] >= r["scores"][1:]).all()
        iou = box_iou(r["boxes"], r["boxes"]).fill_diagonal_(0)
        assert iou.max() <= 0.4 + 1e-6
        assert pose.is_rotation(r["rotation"].numpy(), tol=1e-4)


# ---------------------------------------------------------------- weights

def test_resnet_weights_missing_file_is_clear(tmp_path):
    missing = tmp_path / "nowhere" / "resnet50-imagenet.pth"
    with pytest.raises(FileNotFoundError, match="resnet50-imagenet.pth") as e:
        RetinaPose("resnet50", pretrained=missing)
    assert str(missing.parent) in str(e.value)


def test_resnet_loads_torchvision_state_dict_from_local_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    tv = torchvision.models.resnet50(weights=None)  # same keys as the ImageNet file, fc included
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    model = RetinaPose("resnet50", pretrained=path)
    torch.testing.assert_close(model.body.layer4[2].conv3.weight, tv.layer4[2].conv3.weight)
    torch.testing.assert_close(model.body.bn1.running_var, tv.bn1.running_var)


def test_pretrained_file_of_the_wrong_model_is_rejected(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="wrong.pth"):
        RetinaPose("mobilenet", pretrained=path)
