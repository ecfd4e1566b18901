"""ONNX export with the whole decode inside the graph, an onnxruntime predictor, and a CPU benchmark.

The exported graph (`export_onnx`):

    input   images      uint8 (N, 3, H, W) RGB 0-255, letterboxed like `hpe_model.api.Predictor` does
                        (long side -> image_size, padded right/bottom with the training mean)
    outputs scores      (N, A)        face probability per anchor (softmax)
            boxes       (N, A, 4)     x1, y1, x2, y2 in input pixels
            landmarks5  (N, A, 5, 2)  eye centres, nose tip, mouth corners, input pixels
            rotation    (N, A, 3, 3)  R_cv (head-to-camera, OpenCV camera frame)
            yaw, pitch, roll (N, A)   degrees, `hpe_data.pose.to_euler` of rotation

Mean subtraction, anchor generation, box/landmark decoding, 6D -> matrix (Gram-Schmidt) and matrix -> Euler
all run in the graph, through the same torch functions the PyTorch path uses (`postprocess.decode`,
`pose.rot6d_to_matrix`, `pose.to_euler`); nothing is re-implemented for ONNX.

Anchors are computed in the graph from the input's H and W (ceil(H / stride) cells per level, which is what
the stride-2 convs produce), so `dynamic_size=True` graphs accept any H, W; with a fixed size onnxruntime
folds them to constants.

Post-step (not in the graph, plain numpy in `select`, easy to port to any runtime): per image keep anchors with
score > score_thresh, the `pre_nms_top_n` best of them, greedy NMS at IoU > nms_thresh (torchvision semantics),
at most `keep` faces; then map coordinates back from the letterboxed input with x = (x' + 0.5) / scale - 0.5.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpe_data import pose

from . import postprocess
from .augment import MEAN_RGB
from .data import normalize
from .detector import RetinaPose

OUTPUTS = ("scores", "boxes", "landmarks5", "rotation", "yaw", "pitch", "roll")
INPUT = "images"
OPSET = 17
MIN_OPSET = 13  # landmark decoding uses unflatten (opset 13+); 13, 17 and 18 give the same results
# post-step defaults: the same as api.Predictor / postprocess.detect
SCORE_THRESH, NMS_THRESH, PRE_NMS_TOP_N, KEEP = 0.5, 0.4, 5000, 750


class ExportError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ graph


def _hypot(g, a, b):
    # aten::hypot (used by pose.to_euler) has no ONNX symbolic in the TorchScript exporter
    return g.op("Sqrt", g.op("Add", g.op("Mul", a, a), g.op("Mul", b, b)))


def _register_symbolics() -> None:
    torch.onnx.register_custom_op_symbolic("aten::hypot", _hypot, 9)


def grid_anchors(images: torch.Tensor, gen) -> torch.Tensor:
    """(A, 4) cx, cy, w, h anchors of `gen` (an AnchorGenerator) for `images`' H, W.

    Same values and order as `AnchorGenerator.__call__`, but written with tensor arithmetic on the input's
    shape so that a traced export keeps H and W symbolic.
    """
    h, w = images.shape[-2], images.shape[-1]
    levels = []
    for sizes, stride in zip(gen.sizes, gen.strides):
        gh, gw = (h + stride - 1) // stride, (w + stride - 1) // stride  # ceil, as grid_size()
        cy = ((torch.arange(gh, dtype=torch.float32, device=images.device) + 0.5) * stride).view(-1, 1, 1)
        cx = ((torch.arange(gw, dtype=torch.float32, device=images.device) + 0.5) * stride).view(1, -1, 1)
        s = torch.tensor(sizes, dtype=torch.float32, device=images.device).view(1, 1, -1)
        zero = cy * 0 + cx * 0 + s * 0  # (gh, gw, a): broadcast without symbolic expand sizes
        levels.append(torch.stack([cx + zero, cy + zero, s + zero, s + zero], -1).reshape(-1, 4))
    return torch.cat(levels)


class ExportGraph(nn.Module):
    """uint8 images -> per-anchor decoded outputs (see the module docstring), for tracing."""

    def __init__(self, model: RetinaPose, mean=MEAN_RGB):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUTS if self.model.pose_head is not None else OUTPUTS[:3]

    def forward(self, images: torch.Tensor):
        x = images.float() - self.mean  # == data.normalize
        out = self.model(x)
        dec = postprocess.decode(out, grid_anchors(x, self.model.anchor_gen), self.model.coder)
        res = [dec["scores"], dec["boxes"], dec["landmarks5"]]
        if "rotation" in dec:
            pitch, yaw, roll = pose.to_euler(dec["rotation"])
            res += [dec["rotation"], yaw, pitch, roll]
        return tuple(res)


def export_onnx(model: RetinaPose, out, image_size: int = 640, dynamic: bool = False, dynamic_size: bool = False,
                opset: int = OPSET, mean=MEAN_RGB, metadata: dict | None = None) -> Path:
    """Write `model` as ONNX to `out` (atomically) and check it with onnx.checker; returns the path.

    dynamic: batch is a symbolic dimension; dynamic_size: H and W too (implies dynamic). `image_size` is the
    traced (and, without dynamic_size, the only accepted) square input size and the default letterbox size
    recorded in the file's metadata.
    """
    import onnx

    if image_size < 32:
        raise ExportError(f"image size {image_size} is smaller than the coarsest stride (32)")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use {MIN_OPSET} or newer (17 is tested)")
    out = Path(out)
    dynamic = dynamic or dynamic_size
    graph = ExportGraph(copy.deepcopy(model).float().cpu(), mean).eval()  # export never touches the caller's model
    names = graph.output_names
    axes = None
    if dynamic:
        dims = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
        axes = {INPUT: dims, **{n: {0: "batch", **({1: "anchors"} if dynamic_size else {})} for n in names}}
    example = torch.full((1, 3, image_size, image_size), 128, dtype=torch.uint8)
    _register_symbolics()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings():  # the model's own shape checks trace to constants; that is intended
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=list(names), dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        meta = {
            "hpe.format": "hpe-onnx-1",
            "hpe.input": "uint8 RGB (N, 3, H, W), letterboxed: long side -> image_size, pad right/bottom with mean",
            "hpe.image_size": str(image_size),
            "hpe.mean": json.dumps([float(m) for m in mean]),
            "hpe.dynamic_batch": str(bool(dynamic)),
            "hpe.dynamic_size": str(bool(dynamic_size)),
            "hpe.outputs": ",".join(names),
            "hpe.postprocess": json.dumps({"score_thresh": SCORE_THRESH, "nms_thresh": NMS_THRESH,
                                           "pre_nms_top_n": PRE_NMS_TOP_N, "keep": KEEP}),
            "hpe.config": json.dumps(model.config),
            **{k: str(v) for k, v in (metadata or {}).items()},
        }
        for k, v in meta.items():
            p = proto.metadata_props.add()
            p.key, p.value = k, v
        proto.doc_string = "RetinaPose head-pose detector; decoding and Euler angles in-graph, NMS outside (hpe_model.export)"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def export_checkpoint(checkpoint, out, image_size: int | None = None, dynamic: bool = False,
                      dynamic_size: bool = False, opset: int = OPSET) -> Path:
    """`hpe-eval export`: load an hpe-train checkpoint (schema checked by checkpoint.py) and export it.
    `image_size` defaults to the checkpoint's inference size, else 640."""
    from .api import load

    p = load(checkpoint, device="cpu")
    size = int(image_size or p.input_size or 640)
    return export_onnx(p.model, out, size, dynamic, dynamic_size, opset, p.mean,
                       metadata={"hpe.checkpoint": Path(checkpoint).name})


@torch.no_grad()
def verify_onnx(predictor, path, n: int = 2, seed: int = 0) -> dict:
    """Max differences between the ONNX file under onnxruntime and the torch model (`predictor.model`,
    `predictor.mean`) over all anchors of `n` random images at the file's size: scores, boxes and landmarks
    (px), angles (degrees, modulo 360)."""
    onnx_p = OnnxPredictor(path)
    rng = np.random.default_rng(seed)
    s = onnx_p.model_size
    x = rng.integers(0, 256, (n if onnx_p.dynamic_batch else 1, 3, s, s), dtype=np.uint8)
    got = onnx_p.raw(x)
    model = predictor.model.float().cpu().eval()
    out = model(normalize(torch.from_numpy(x), predictor.mean))
    ref = {k: v.numpy() for k, v in postprocess.decode(out, out["anchors"], model.coder).items()}
    res = {k: float(np.abs(got[k] - ref[k]).max()) for k in ("scores", "boxes", "landmarks5")}
    if "rotation" in ref:
        for k, v in zip(("pitch", "yaw", "roll"), pose.to_euler(ref["rotation"].astype(np.float64))):
            res[k] = float(np.abs((got[k] - v + 180.0) % 360.0 - 180.0).max())
    return res


# ------------------------------------------------------------------------------------------ post-step


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS, torchvision semantics: indices kept, by decreasing score; a box is dropped when its IoU
    with a kept box is > iou_thresh."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        while order.size:
            i, rest = order[0], order[1:]
            keep.append(i)
            iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
            ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
            inter = iw * ih
            iou = inter / (area[i] + area[rest] - inter)
            order = rest[~(iou > iou_thresh)]  # NaN (empty boxes) never suppresses, like torchvision
    return np.asarray(keep, np.int64)


def select(outputs: dict, i: int, score_thresh: float = SCORE_THRESH, nms_thresh: float = NMS_THRESH,
           pre_nms_top_n: int = PRE_NMS_TOP_N, keep: int = KEEP) -> dict:
    """Detections of image `i` from per-anchor graph outputs (numpy), sorted by score."""
    s = outputs["scores"][i]
    idx = np.flatnonzero(s > score_thresh)
    if idx.size > pre_nms_top_n:
        idx = idx[np.argpartition(-s[idx], pre_nms_top_n - 1)[:pre_nms_top_n]]
    kept = idx[nms(outputs["boxes"][i, idx], s[idx], nms_thresh)[:keep]]
    return {k: v[i, kept] for k, v in outputs.items()}


# ------------------------------------------------------------------------------------------ predictor


class OnnxPredictor:
    """onnxruntime twin of `hpe_model.api.Predictor`: same `predict` / `predict_arrays`, same preprocessing
    (the torch Predictor's own letterbox code), numpy NMS. Angles come from the graph.

    input_size: "model" (default) = the size stored at export; None = native size padded to a multiple of 32
    (needs a dynamic-size export); or an int (a fixed-size export only accepts its own size).
    """

    def __init__(self, path, input_size="model", score_thresh: float = SCORE_THRESH, nms_thresh: float = NMS_THRESH,
                 batch_size: int = 8, threads: int | None = None, spinning: bool = True, providers=None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: no such ONNX file")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if not spinning:  # idle pool threads would otherwise busy-wait and steal cores from other work
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise ExportError(f"{self.path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("hpe.format") != "hpe-onnx-1":
            raise ExportError(f"{self.path}: not exported by hpe-eval export (no hpe.format metadata)")
        self.outputs = meta["hpe.outputs"].split(",")
        self.mean = tuple(json.loads(meta["hpe.mean"]))
        self.model_size = int(meta["hpe.image_size"])
        self.dynamic_batch = meta["hpe.dynamic_batch"] == "True"
        self.dynamic_size = meta["hpe.dynamic_size"] == "True"
        self.input_size = self.model_size if input_size == "model" else input_size
        if not self.dynamic_size and self.input_size != self.model_size:
            want = "native size" if self.input_size is None else f"input size {self.input_size}"
            raise ExportError(f"{self.path}: exported for {self.model_size}x{self.model_size} inputs only; "
                              f"re-export with --dynamic-size to run at {want}")
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.batch_size = batch_size if self.dynamic_batch else 1

    def _prepare(self, img):
        from .api import Predictor

        return Predictor._prepare(self, img)  # one letterbox implementation for both backends

    def raw(self, images: np.ndarray) -> dict:
        """uint8 (N, 3, H, W) prepared images -> per-anchor outputs (numpy), as the graph returns them."""
        images = np.ascontiguousarray(images, np.uint8)
        if self.dynamic_batch:
            res = self.session.run(self.outputs, {INPUT: images})
        else:
            parts = [self.session.run(self.outputs, {INPUT: images[i:i + 1]}) for i in range(len(images))]
            res = [np.concatenate(p) for p in zip(*parts)]
        return dict(zip(self.outputs, res))

    def predict_arrays(self, images) -> list[dict]:
        """Per image: boxes (K, 4), scores (K,), rotation (K, 3, 3), landmarks5 (K, 5, 2), yaw/pitch/roll (K,)
        degrees -- float64 numpy in the input image's pixels, sorted by score."""
        if isinstance(images, np.ndarray) and images.ndim == 3 or isinstance(images, (str, os.PathLike)):
            images = [images]
        out = []
        for s in range(0, len(images), self.batch_size):
            prepared = [self._prepare(im) for im in images[s:s + self.batch_size]]
            shapes = {p.shape for p, _ in prepared}
            groups = [prepared] if len(shapes) == 1 else [[p] for p in prepared]
            for g in groups:
                raw = self.raw(np.stack([p.transpose(2, 0, 1) for p, _ in g]))
                for i, (_, scale) in enumerate(g):
                    out.append(_to_image(select(raw, i, self.score_thresh, self.nms_thresh), scale))
        return out

    def predict(self, image_or_batch):
        """One image -> list of face dicts; a list/batch of images -> one such list per image."""
        from .api import _faces

        single = isinstance(image_or_batch, (str, os.PathLike)) or \
            (isinstance(image_or_batch, np.ndarray) and image_or_batch.ndim == 3)
        res = [_faces(d) for d in self.predict_arrays(image_or_batch)]
        return res[0] if single else res


def _to_image(d: dict, scale: float) -> dict:
    """Letterboxed-input pixels -> original image pixels (inverse of augment.letterbox), float64."""
    k = d["scores"].shape[0]
    f = {k2: np.asarray(v, np.float64) for k2, v in d.items()}
    nan = np.full(k, np.nan)
    return {"boxes": (f["boxes"] + 0.5) / scale - 0.5, "scores": f["scores"],
            "landmarks5": (f["landmarks5"] + 0.5) / scale - 0.5,
            "rotation": f.get("rotation", np.full((k, 3, 3), np.nan)),
            "yaw": f.get("yaw", nan), "pitch": f.get("pitch", nan), "roll": f.get("roll", nan)}


# ------------------------------------------------------------------------------------------ tests / bench


def random_model(backbone: str = "mobilenet", seed: int = 0, pose_head: bool = True,
                 face_bias: float = 0.0) -> RetinaPose:
    """A seeded random-weight RetinaPose whose outputs look like a trained model's in range (for tests and
    benchmarks before checkpoints exist): BN statistics calibrated on random images so features do not vanish,
    heads re-initialised so scores spread over (0, 1) and rotations vary around R = I (the real pose head starts
    at exactly R = I, which would make every angle comparison trivial). `face_bias` is added to the face logit:
    negative values make most anchors background, as in a trained model (-4: ~0.1% of anchors score > 0.5)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = RetinaPose(backbone, pose_head=pose_head)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average over the calibration batches
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(normalize(torch.randint(0, 256, (2, 3, 128, 128), generator=g, dtype=torch.uint8)))
    for b in bns:
        b.momentum = 0.1
    heads = [(m.cls_head, 0.1), (m.box_head, 0.02), (m.lmk_head, 0.02)] + \
        ([(m.pose_head, 0.05)] if m.pose_head is not None else [])
    with torch.no_grad():
        for h, std in heads:
            for c in h.convs:
                c.weight.normal_(0.0, std, generator=g)
        for c in m.cls_head.convs:
            c.bias[1::2] += face_bias  # channels are (background, face) per anchor
    return m.eval()


def bench_predict(sizes=(640, 320), batch_sizes=(1, 16), backbone: str = "mobilenet", checkpoint=None,
                  threads: int | None = None, repeats: int = 3, image_shape=(480, 640), seed: int = 0,
                  echo=None) -> dict:
    """Images/s of `predict_arrays` on CPU, PyTorch vs onnxruntime, same images, same preprocessing and thread
    count. Returns {"predict_{torch|onnx}_{size}_b{batch}_img_per_s": ..., "predict_onnx_over_torch_{size}_b{batch}":
    ratio (> 1: ONNX faster)}. A random-weight model (see `random_model`) unless `checkpoint` is given; each
    timed call predicts `batch` noise images of `image_shape`; best of `repeats` calls after one warm-up."""
    from .api import Predictor, load

    threads = int(threads or torch.get_num_threads())
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    # random weights: mostly background on noise images (~30 faces per 640 px image), so NMS costs what it would
    # on a crowded photo instead of dominating with thousands of candidates
    model = load(checkpoint).model if checkpoint else random_model(backbone, seed, face_bias=-4.0)
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, tuple(image_shape) + (3,), dtype=np.uint8) for _ in range(max(batch_sizes))]
    res = {}
    try:
        with tempfile.TemporaryDirectory(prefix="hpe-bench-onnx-") as tmp:
            for size in sizes:
                onnx_path = export_onnx(model, Path(tmp) / f"m{size}.onnx", size, dynamic=True)
                for b in batch_sizes:
                    backends = {"torch": Predictor(model, input_size=size, batch_size=b),
                                "onnx": OnnxPredictor(onnx_path, batch_size=b, threads=threads, spinning=False)}
                    for name, p in backends.items():
                        batch = imgs[:b]
                        p.predict_arrays(batch)  # warm-up (allocations, onnxruntime arena)
                        best = min(_timed(p.predict_arrays, batch) for _ in range(repeats))
                        res[f"predict_{name}_{size}_b{b}_img_per_s"] = b / best
                        if echo:
                            echo(f"{name:5s} {size}px batch {b:2d}: {b / best:7.2f} images/s")
                    res[f"predict_onnx_over_torch_{size}_b{b}"] = (res[f"predict_onnx_{size}_b{b}_img_per_s"]
                                                                   / res[f"predict_torch_{size}_b{b}_img_per_s"])
    finally:
        torch.set_num_threads(old_threads)
    res["predict_threads"] = threads
    return res


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0
