"""Batch and video inference: frame sources, batched prediction, annotated outputs, per-frame Parquet.

Works with any predictor that has `predict_arrays(list of RGB uint8 images) -> list of dicts` (boxes, scores,
landmarks5, rotation, yaw, pitch, roll; see `hpe_model.api.Predictor` and `hpe_model.export.OnnxPredictor`).

`run(predictor, inputs, out)` writes into `out`:
- `images/<name>`: annotated copy of every input image (boxes, 5 landmarks, pose axes, score and angles);
  an image from a folder input keeps its path below that folder (`images/<folder>/<relative path>`);
- `detections.json`: every image with its faces (box, score, landmarks5, rotation R_cv row-major, yaw/pitch/roll);
- `videos/<name>.mp4` (annotated, mp4v) and `videos/<name>.parquet`: one row per detection with
  frame (source frame index), time_s, face (rank by score in the frame), x1, y1, x2, y2, score, yaw, pitch,
  roll (degrees), rotation (9, row-major R_cv), landmarks5 (10, x/y pairs);
- `errors.csv` (path, reason), only when some input, image or video frame could not be used. Bad inputs are
  skipped, the rest is processed.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from hpe_data import draw
from hpe_data.imageio import ImageError, read_rgb, write_atomic, write_rgb

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
MAX_BAD_FRAMES = 25  # consecutive undecodable frames before a video is given up
DEFAULT_FPS = 25.0   # when the container does not say

PARQUET_SCHEMA = pa.schema([
    ("frame", pa.int64()), ("time_s", pa.float64()), ("face", pa.int32()),
    ("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
    ("score", pa.float64()), ("yaw", pa.float64()), ("pitch", pa.float64()), ("roll", pa.float64()),
    ("rotation", pa.list_(pa.float64(), 9)), ("landmarks5", pa.list_(pa.float64(), 10)),
])


@dataclass
class Inputs:
    """Expanded inputs: (source file, output name relative to the output folder)."""

    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # (path, reason)


def collect(paths) -> Inputs:
    """Image files, video files and folders (searched recursively; other files in folders are ignored)."""
    res = Inputs()
    used: set = set()

    def add(kind, src: Path, name: Path):
        name = _unique(name, used)
        (res.images if kind == "image" else res.videos).append((src, name))

    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(p).parts))
            found = 0
            for f in files:
                kind = _kind(f)
                if kind:
                    add(kind, f, Path(p.resolve().name or "root") / f.relative_to(p))
                    found += 1
            if not found:
                res.errors.append((str(p), "folder holds no image or video files"))
        elif p.is_file():
            add(_kind(p) or "image", p, Path(p.name))  # unknown suffix: let the decoder decide
        else:
            res.errors.append((str(p), "no such file or folder"))
    return res


def _kind(p: Path) -> str | None:
    s = p.suffix.lower()
    return "image" if s in IMAGE_EXT else "video" if s in VIDEO_EXT else None


def _unique(name: Path, used: set) -> Path:
    cand, k = name, 1
    while str(cand).lower() in used:
        k += 1
        cand = name.with_name(f"{name.stem}_{k}{name.suffix}")
    used.add(str(cand).lower())
    return cand


# ------------------------------------------------------------------------------------------ drawing


def annotate(img: np.ndarray, det: dict) -> np.ndarray:
    """Copy of an RGB image with each detection drawn: box, 5 landmarks, pose axes from the nose tip
    (from the rotation matrix), and a 'score yaw/pitch/roll' label."""
    out = np.ascontiguousarray(img).copy()
    thick = max(1, round(max(img.shape[:2]) / 400))
    for k in range(len(det["scores"])):
        b = det["boxes"][k]
        side = max(float(b[2] - b[0]), float(b[3] - b[1]), 1.0)
        draw.box(out, b, thickness=thick)
        draw.landmarks(out, det["landmarks5"][k], radius=max(1.5, side / 50))
        R = det["rotation"][k]
        if np.isfinite(R).all():
            draw.pose_axes(out, R, det["landmarks5"][k][2], 0.5 * side, thickness=thick)
        text = f"{det['scores'][k]:.2f} y{det['yaw'][k]:+.0f} p{det['pitch'][k]:+.0f} r{det['roll'][k]:+.0f}"
        draw.label(out, text, (max(0.0, b[0]), max(0.0, b[1] - 14 * thick)), scale=0.4 * thick)
    return out


def faces_json(det: dict) -> list[dict]:
    """Detections as JSON-ready dicts (NaN, e.g. angles of a model without pose head, becomes null)."""
    def f(v):
        v = float(v)
        return v if np.isfinite(v) else None

    return [{"box": [f(v) for v in det["boxes"][k]], "score": f(det["scores"][k]),
             "yaw": f(det["yaw"][k]), "pitch": f(det["pitch"][k]), "roll": f(det["roll"][k]),
             "rotation": [f(v) for v in np.asarray(det["rotation"][k]).reshape(9)],
             "landmarks5": [[f(x), f(y)] for x, y in np.asarray(det["landmarks5"][k], float).reshape(5, 2)]}
            for k in range(len(det["scores"]))]


# ------------------------------------------------------------------------------------------ images


def predict_images(predictor, items, out: Path, batch_size: int = 16, errors: list | None = None,
                   draw_images: bool = True, progress: bool = True) -> list[dict]:
    """Predict `items` [(file, output name)] in batches; annotated copies go to out/images. Returns one
    json-ready record per readable image; unreadable ones are appended to `errors`."""
    errors = errors if errors is not None else []
    records = []
    bar = tqdm(total=len(items), desc="images", unit="img", disable=not progress or None, file=sys.stderr)
    for s in range(0, len(items), batch_size):
        batch = []
        for src, name in items[s:s + batch_size]:
            try:
                batch.append((src, name, read_rgb(src)))
            except ImageError as e:
                errors.append((str(src), str(e).removeprefix(f"{src}: ")))
        dets = predictor.predict_arrays([im for _, _, im in batch]) if batch else []
        for (src, name, img), det in zip(batch, dets):
            rec = {"path": str(src), "width": int(img.shape[1]), "height": int(img.shape[0]),
                   "faces": faces_json(det)}
            if draw_images:
                target = Path("images") / (name if name.suffix.lower() in IMAGE_EXT else name.with_suffix(".jpg"))
                write_rgb(out / target, annotate(img, det))
                rec["annotated"] = target.as_posix()
            records.append(rec)
        bar.update(len(items[s:s + batch_size]))
    bar.close()
    return records


# ------------------------------------------------------------------------------------------ videos


class VideoFrames:
    """Frames of a video file as (source frame index, time in s, RGB uint8), read with cv2.VideoCapture.

    An undecodable frame is skipped and recorded in `bad` (index); after MAX_BAD_FRAMES failures in a row, or
    a failure past the header's frame count, reading stops. `truncated` says whether it stopped well before
    the header's count (more than 1 % / 2 frames short: counts of some containers are estimates).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise ImageError(f"{self.path}: cannot open as a video (missing codec, truncated or not a video)")
        self.count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        self.bad: list[int] = []
        self.stopped_at: int | None = None

    @property
    def truncated(self) -> bool:
        return self.stopped_at is not None and self.count - self.stopped_at > max(2, 0.01 * self.count)

    def __iter__(self):
        i, run = 0, []
        try:
            while True:
                ok, frame = self.cap.read()
                if ok and frame is not None:
                    self.bad += run  # failures followed by a good frame were corrupt frames
                    run = []
                    t = self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    yield i, (t if np.isfinite(t) and t > 0 else i / self.fps), cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                else:
                    run.append(i)
                    if i + 1 >= self.count or len(run) >= MAX_BAD_FRAMES:
                        self.stopped_at = run[0]  # trailing failures: the end of the stream
                        break
                i += 1
        finally:
            self.cap.release()

    def problems(self) -> list[str]:
        out = [f"frame{'s' if a != b else ''} {a}{'-' + str(b) if a != b else ''} could not be decoded; skipped"
               for a, b in _ranges(self.bad)]
        if self.truncated:
            out.append(f"decoding stopped at frame {self.stopped_at}; the header says {self.count} frames")
        return out


def _ranges(idx: list[int]) -> list[tuple[int, int]]:
    out = []
    for i in idx:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def detections_table(rows: list[tuple[int, float, dict]]) -> pa.Table:
    """[(frame, time_s, detections of that frame)] -> the per-detection Parquet table."""
    cols: dict = {n: [] for n in PARQUET_SCHEMA.names}
    for frame, t, d in rows:
        for k in range(len(d["scores"])):
            b = d["boxes"][k]
            vals = (frame, t, k, b[0], b[1], b[2], b[3], d["scores"][k], d["yaw"][k], d["pitch"][k], d["roll"][k],
                    np.asarray(d["rotation"][k], float).reshape(9).tolist(),
                    np.asarray(d["landmarks5"][k], float).reshape(10).tolist())
            for n, v in zip(PARQUET_SCHEMA.names, vals):
                cols[n].append(v if isinstance(v, list) else float(v) if n not in ("frame", "face") else int(v))
    return pa.Table.from_pydict(cols, schema=PARQUET_SCHEMA)


def predict_video(predictor, src, out: Path, name: Path, batch_size: int = 16, errors: list | None = None,
                  draw_video: bool = True, progress: bool = True) -> dict | None:
    """Predict every frame of `src` in batches; write out/videos/<name>.mp4 (annotated) and .parquet.
    Returns a json-ready record, or None when the video cannot be opened (reported in `errors`)."""
    errors = errors if errors is not None else []
    try:
        frames = VideoFrames(src)
    except ImageError as e:
        errors.append((str(src), str(e).removeprefix(f"{src}: ")))
        return None
    base = out / "videos" / name.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    video_path, table_path = base.with_name(base.name + ".mp4"), base.with_name(base.name + ".parquet")
    tmp_video = video_path.with_name(f".{video_path.stem}.tmp-{os.getpid()}.mp4")
    writer, size, rows, n = None, None, [], 0
    bar = tqdm(total=frames.count or None, desc=name.name, unit="frame", disable=not progress or None,
               file=sys.stderr)

    def flush(batch):
        nonlocal writer, size, n
        dets = predictor.predict_arrays([f for _, _, f in batch])
        for (i, t, img), det in zip(batch, dets):
            rows.append((i, t, det))
            if draw_video:
                if writer is None:
                    size = img.shape[:2]
                    writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"mp4v"), frames.fps,
                                             (size[1], size[0]))
                    if not writer.isOpened():
                        raise ImageError(f"{video_path}: cv2.VideoWriter cannot write mp4v here")
                writer.write(cv2.cvtColor(_fit(annotate(img, det), size), cv2.COLOR_RGB2BGR))
        n += len(batch)
        bar.update(len(batch))

    try:
        batch = []
        for item in frames:
            batch.append(item)
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    except BaseException:
        tmp_video.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    for reason in frames.problems():
        errors.append((str(src), reason))
    if n == 0:
        tmp_video.unlink(missing_ok=True)
        errors.append((str(src), "no frame could be decoded"))
        return None
    _write_parquet(detections_table(rows), table_path)
    rec = {"path": str(src), "frames": n, "fps": frames.fps, "bad_frames": len(frames.bad),
           "detections": sum(len(d["scores"]) for _, _, d in rows), "parquet": table_path.relative_to(out).as_posix()}
    if draw_video:
        os.replace(tmp_video, video_path)
        rec["annotated"] = video_path.relative_to(out).as_posix()
    return rec


def _fit(img: np.ndarray, shape) -> np.ndarray:
    """A frame whose size changed mid-stream is resized to the writer's size (VideoWriter needs one size)."""
    return img if img.shape[:2] == tuple(shape) else cv2.resize(img, (shape[1], shape[0]))


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ driver


@dataclass
class Summary:
    out: Path
    images: int
    videos: int
    frames: int
    faces: int
    errors: list

    def text(self) -> str:
        s = (f"{self.images} image(s), {self.videos} video(s) ({self.frames} frames), {self.faces} face(s) "
             f"-> {self.out}")
        return s + (f"; {len(self.errors)} problem(s) in {self.out / 'errors.csv'}" if self.errors else "")


def run(predictor, inputs, out, batch_size: int = 16, draw_outputs: bool = True, progress: bool = True,
        meta: dict | None = None) -> Summary:
    """Everything in `inputs` (files, folders, videos) through `predictor`; see the module docstring."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = collect(inputs)
    errors = list(found.errors)
    images = predict_images(predictor, found.images, out, batch_size, errors, draw_outputs, progress)
    videos = [r for r in (predict_video(predictor, src, out, name, batch_size, errors, draw_outputs, progress)
                          for src, name in found.videos) if r is not None]
    doc = {**(meta or {}), "images": images, "videos": videos}
    write_atomic(out / "detections.json", json.dumps(doc, indent=1).encode())
    report = out / "errors.csv"
    if errors:
        _write_errors(report, errors)
    elif report.exists():
        report.unlink()  # a stale report from an earlier run would mislead
    return Summary(out, len(images), len(videos), sum(v["frames"] for v in videos),
                   sum(len(r["faces"]) for r in images) + sum(v["detections"] for v in videos), errors)


def _write_errors(path: Path, errors: list) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    w.writerows(errors)
    write_atomic(path, buf.getvalue().encode())
