"""The training loop: full-frame RetinaPose training from manifests, single process or DDP (torchrun).

Guarantees:
- exact resume: the data order and every augmentation are functions of (seed, epoch, index), the learning rate
  a function of the global step, and checkpoints carry weights, optimizer, scaler and RNG states, so a run
  killed and resumed from `last.pt` ends with the weights of an uninterrupted run;
- DDP equals one process with the global batch (per-process batch x world size): each rank takes its slice of
  the same global batch, BatchNorm statistics are synchronised, and the loss terms are normalised by the
  positives of the whole global batch;
- checkpoints are atomic and load with `torch.load(weights_only=True)`; `metrics.csv` is rewritten atomically
  from the history stored in the checkpoint, so it never repeats or loses an epoch across a resume.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from hpe_data.imageio import write_atomic

from . import checkpoint as ckpt
from .anchors import cxcywh_to_xyxy
from .api import _to_numpy, build_model
from .augment import MEAN_RGB, Augment
from .data import FaceImages, Frames, MixSampler, collate, collate_frames, normalize, parse_manifest_arg, worker_init
from .matcher import match as match_anchors
from .schedule import Schedule

# Fields that shape the trajectory: a resume with other values would not continue the same run.
_RESUME_KEYS = ("manifests", "backbone", "pretrained", "epochs", "batch_size", "image_size", "lr", "optimizer",
                "momentum", "weight_decay", "schedule", "warmup_steps", "seed", "max_steps", "flip_prob",
                "rotate_prob", "rotate_max", "crop_scales", "color", "min_face", "epoch_size", "w_pose", "amp",
                "grad_clip", "world_size", "dtype", "ema")
LOSS_WEIGHTS = {"box": 2.0, "cls": 1.0, "lmk": 1.0}  # the detector's total = 2 box + cls + lmk + w_pose pose


@dataclass
class TrainConfig:
    manifests: list  # "path[:weight]" strings
    out: str
    val_manifest: str | None = None
    backbone: str = "mobilenet"
    pretrained: str | None = None
    epochs: int = 10
    batch_size: int = 16  # per process
    image_size: int = 256
    lr: float | None = None  # default: 0.01 for sgd, 0.001 for adamw
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int | None = None  # default: 5 % of the run, at most 1000 steps
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    max_steps: int | None = None
    resume: bool = False
    save_every: int = 0  # also write last.pt every N steps (0: at epoch ends only)
    flip_prob: float = 0.5
    rotate_prob: float = 0.0
    rotate_max: float = 0.0
    crop_scales: tuple = (0.3, 1.0)
    color: bool = True
    min_face: float = 2.0
    epoch_size: int | None = None
    w_pose: float | None = None
    grad_clip: float | None = None
    ema: float = 0.998  # decay of the weight moving average used for validation and inference (0: off)
    val_size: int | None = None  # letterbox size for validation / inference (default: image_size)
    val_score: float = 0.5
    val_batch: int = 8
    val_every: int = 1  # validate every N epochs (and after the last)
    sync_bn: bool = True
    dtype: str = "float32"  # "float64" (CPU) makes DDP-vs-single and similar exactness checks rounding-free
    progress: bool = True
    world_size: int = 1  # filled in at start


# ---------------------------------------------------------------- distributed helpers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every input is the sum of the output gradients of all processes."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch of all DDP processes, for CPU/gloo (nn.SyncBatchNorm is GPU-only).

    Two differentiable all-reduces (sum and count, then squared deviations) give exactly the statistics one
    process would compute on the whole global batch, so gradients match a single-process run.
    """

    def forward(self, x):
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        C = x.shape[1]
        n_local = x.numel() // C
        s = all_reduce(torch.cat([x.sum((0, 2, 3)), x.new_tensor([float(n_local)])]))
        n = s[C]
        mean = s[:C] / n
        d = x - mean.view(1, C, 1, 1)
        var = all_reduce((d * d).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = d * torch.rsqrt(var + self.eps).view(1, C, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return y


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for GlobalBatchNorm2d (same parameters and buffers, same state_dict keys)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            g = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            g.load_state_dict(child.state_dict())
            setattr(module, name, g)
        else:
            global_batchnorm(child)
    return module


# ---------------------------------------------------------------- loss over the global batch


def _counts(model, anchors, targets) -> torch.Tensor:
    """Positives, positives with landmarks, positives with pose (the loss normalisers) for this process."""
    crit = model.criterion
    a = cxcywh_to_xyxy(anchors.float())
    n = torch.zeros(3, dtype=torch.float64)
    for t in targets:
        m = match_anchors(t["boxes"].to(a.device).float(), a, crit.pos_iou, crit.force_iou)
        f = m[m >= 0].cpu()
        n += torch.tensor([f.numel(), t["has_landmarks"][f].sum().item(), t["has_pose"][f].sum().item()],
                          dtype=torch.float64)
    return n


def global_total(model, parts: dict, outputs: dict, targets: list, d: Dist, checked: list,
                 w_pose: float | None = None) -> torch.Tensor:
    """This rank's share of the loss of the whole global batch, times the world size (DDP averages).

    Each term is a sum over this rank's positives divided by its local count; rescaling by local / global
    count turns the average of rank losses into the loss one process computes on the global batch.
    """
    if d.world == 1:
        return parts["total"]
    local = _counts(model, outputs["anchors"], targets)
    if abs(local[0].item() - parts["num_pos"].item()) > 0.5:
        raise RuntimeError("train.global_total: positive count differs from the detector's loss; "
                           "the matcher rules changed, update train._counts")
    glob = local.clone()
    dist.all_reduce(glob)
    w_pose = model.criterion.w_pose if w_pose is None else w_pose
    terms = {"box": 0, "cls": 0, "lmk": 1, "pose": 2}
    weights = {**LOSS_WEIGHTS, "pose": w_pose}
    if not checked:  # the recomposition must reproduce the detector's own total
        recomposed = sum(weights[k] * parts[k] for k in terms if k in parts)
        if not torch.allclose(recomposed, parts["total"], rtol=1e-4, atol=1e-6):
            raise RuntimeError("train.global_total: the detector's loss weights changed; update LOSS_WEIGHTS")
        checked.append(True)
    total = 0.0
    for k, i in terms.items():
        if k in parts:
            total = total + weights[k] * parts[k] * (max(local[i].item(), 1.0) / max(glob[i].item(), 1.0))
    return total * d.world


class EMA:
    """Exponential moving average of the weights (and BatchNorm statistics), for validation and inference.

    decay_t = min(decay, (1 + t) / (10 + t)): short runs are not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


# ---------------------------------------------------------------- validation


@torch.no_grad()
def validate(model, manifest, image_size: int, device, batch_size: int = 8, score_thresh: float = 0.5,
             iou_thresh: float = 0.5, workers: int = 0, mean=MEAN_RGB) -> dict:
    """Detector on full frames (letterboxed to `image_size`), matched to the faces by IoU >= `iou_thresh`.

    Returns mae (mean of the yaw/pitch/roll MAEs over matched faces with a pose), the three MAEs, detected
    (matched share of all faces), faces, false_positives. Matching and Euler errors come from
    `hpe_model.evaluation` (the evaluator's definitions).
    """
    from .evaluation.matching import match
    from .evaluation.metrics import euler

    was_training = model.training
    model.eval()
    frames = Frames(manifest, image_size)
    loader = DataLoader(frames, batch_size=batch_size, num_workers=workers, collate_fn=collate_frames,
                        worker_init_fn=worker_init)
    errs, n_faces, n_hit, n_fp = [], 0, 0, 0
    for images, scales, gts in loader:
        x = normalize(images.to(device), mean).to(next(model.parameters()).dtype)
        dets = model.detect(model(x), score_thresh=min(score_thresh, 0.02))
        for d, scale, gt in zip(dets, scales, gts):
            a = _to_numpy(d, scale)
            m = match(gt["boxes"], a["boxes"], a["scores"], iou_thresh, score_thresh)
            n_faces += len(gt["boxes"])
            n_hit += int(m.matched.sum())
            n_fp += len(m.false_positives)
            ok = m.matched & np.isfinite(gt["rotation"]).all((1, 2))
            if ok.any():
                errs.append(np.abs(euler(a["rotation"][m.pred[ok]]) - euler(gt["rotation"][ok])))
    model.train(was_training)
    e = np.concatenate(errs) if errs else np.full((0, 3), np.nan)
    per = e.mean(0) if len(e) else np.full(3, np.nan)
    return {"mae": float(per.mean()), "yaw": float(per[0]), "pitch": float(per[1]), "roll": float(per[2]),
            "detected": n_hit / max(n_faces, 1), "faces": n_faces, "false_positives": n_fp}


def val_score(v: dict) -> float:
    """What best.pt minimises: val MAE plus 90 degrees per missed face share (a miss costs a 90-degree error),
    so a model that finds few faces cannot win on the MAE of those few."""
    mae = v["mae"] if np.isfinite(v["mae"]) else 90.0
    return float(mae + 90.0 * (1.0 - v["detected"]))


# ---------------------------------------------------------------- run files


def _write_metrics(out: Path, history: list[dict]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    write_atomic(out / "metrics.csv", buf.getvalue().encode())


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(out / "tb"))


def _device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available")
        dev = torch.device("cuda", d.local_rank if d.world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    return dev


def _optimizer(cfg: TrainConfig, model: nn.Module):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw")


def _plain_config(cfg: TrainConfig) -> dict:
    c = asdict(cfg)
    c["crop_scales"] = list(c["crop_scales"])
    c["manifests"] = [str(m) for m in c["manifests"]]
    return c


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, hooks: dict | None = None, dist_info: Dist | None = None) -> dict:
    """Train; returns {"step", "epoch", "best", "history", "out"}. `hooks["after_step"](step, info)` runs
    after every optimizer step, before any periodic checkpoint (tests use it to simulate a kill)."""
    hooks = hooks or {}
    d = dist_info or dist_from_env()
    own_group = False
    if d.world > 1 and not dist.is_initialized():
        backend = "nccl" if (cfg.device in ("auto", "cuda") and torch.cuda.is_available()) else "gloo"
        dist.init_process_group(backend, rank=d.rank, world_size=d.world)
        own_group = True
    try:
        return _train(cfg, hooks, d)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, hooks: dict, d: Dist) -> dict:
    cfg.world_size = d.world
    if cfg.lr is None:
        cfg.lr = 0.01 if cfg.optimizer == "sgd" else 1e-3
    cfg.crop_scales = tuple(cfg.crop_scales)
    out = Path(cfg.out)
    device = _device(cfg.device, d)
    cuda = device.type == "cuda"
    if d.main:
        out.mkdir(parents=True, exist_ok=True)

    parsed = [parse_manifest_arg(m) for m in cfg.manifests]
    augment = Augment(cfg.image_size, cfg.crop_scales, cfg.flip_prob, cfg.rotate_prob, cfg.rotate_max,
                      cfg.color, cfg.min_face)
    data = FaceImages([p for p, _ in parsed], augment, cfg.seed)
    sampler = MixSampler(data.sizes, [w for _, w in parsed], cfg.batch_size, cfg.seed, d.rank, d.world,
                         cfg.epoch_size)
    spe = sampler.steps_per_epoch
    total = cfg.epochs * spe if not cfg.max_steps else min(cfg.epochs * spe, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(1000, round(0.05 * total))
    schedule = Schedule(cfg.lr, total, warmup, cfg.schedule)

    torch.manual_seed(cfg.seed)
    model = build_model({"backbone": cfg.backbone}, cfg.pretrained)
    if d.world > 1 and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if cuda else global_batchnorm(model)
    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    model.to(device, dtype)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(cfg, model)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cfg.amp and cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step, epoch, epoch_step, best, history, sums = 0, 0, 0, math.inf, [], {}
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        state = ckpt.load(last, map_location="cpu")
        old = state["config"]
        diff = [k for k in _RESUME_KEYS if k in old and _norm(old[k]) != _norm(_plain_config(cfg)[k])]
        if diff:
            raise ValueError(f"{last}: cannot resume with different settings: " + ", ".join(
                f"{k} {old[k]!r} -> {_plain_config(cfg)[k]!r}" for k in diff))
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, epoch_step = state["step"], state["epoch"], state["epoch_step"]
        best, history, sums = state["best"], list(state["history"]), dict(state["sums"])
        ckpt.set_rng_state(state["rng"])
        if d.main:
            tqdm.write(f"resumed from {last}: epoch {epoch}, step {step}", file=sys.stderr)
    elif cfg.resume and d.main:
        tqdm.write(f"no {last} yet: starting a new run", file=sys.stderr)

    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if d.main:
        write_atomic(out / "config.json", json.dumps(_plain_config(cfg), indent=2).encode())
    tb = _tensorboard(out) if d.main else None
    loader_kw = dict(batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.workers,
                     pin_memory=cuda, worker_init_fn=worker_init, drop_last=True)
    if cfg.workers > 0:  # persistent: short epochs would otherwise pay the worker start-up each time
        loader_kw.update(prefetch_factor=4, persistent_workers=True)
    loader = DataLoader(data, **loader_kw)
    model_cfg = {"backbone": cfg.backbone, "pose_head": True, "image_size": cfg.image_size,
                 "infer_size": cfg.val_size or cfg.image_size, "pixel_mean": list(MEAN_RGB)}
    checked: list = []

    def save(path: Path, extra: dict | None = None):
        if not d.main:
            return
        ckpt.save({"config": {**_plain_config(cfg), **model_cfg}, "model": model.state_dict(),
                   **({"ema": ema.state_dict()} if ema is not None else {}),
                   "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                   "schedule": schedule.state_dict(), "rng": ckpt.rng_state(), "step": step, "epoch": epoch,
                   "epoch_step": epoch_step, "best": best, "history": history, "sums": sums, **(extra or {})}, path)

    model.train()
    t0 = time.time()
    while epoch < cfg.epochs and step < total:
        sampler.set_epoch(epoch, epoch_step * cfg.batch_size)
        n_batches = min(spe - epoch_step, total - step)
        bar = tqdm(total=spe, initial=epoch_step, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not (cfg.progress and d.main), file=sys.stderr, leave=False)
        it = iter(loader)
        for _ in range(n_batches):
            images, targets = next(it)
            lr = schedule.apply(optimizer, step)
            images = normalize(images.to(device, non_blocking=True)).to(dtype)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = net(images)
            parts = model.loss(outputs, targets, cfg.w_pose)
            loss = global_total(model, parts, outputs, targets, d, checked, cfg.w_pose)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step)
            step += 1
            epoch_step += 1
            logged = {k: float(v.detach()) for k, v in parts.items() if k != "num_pos"}
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["n"] = sums.get("n", 0) + 1
            bar.update(1)
            bar.set_postfix(loss=f"{logged['total']:.3f}", lr=f"{lr:.2e}")
            if tb is not None:
                for k, v in logged.items():
                    tb.add_scalar(f"train/{k}", v, step)
                tb.add_scalar("train/lr", lr, step)
            if "after_step" in hooks:
                hooks["after_step"](step, {"epoch": epoch, "epoch_step": epoch_step, "model": model, "loss": logged,
                                           "lr": lr})
            if cfg.save_every and step % cfg.save_every == 0 and epoch_step < spe:
                save(last)
        del it
        bar.close()
        finished = epoch_step >= spe
        row = {"epoch": epoch + 1, "step": step, "lr": schedule(step - 1),
               **{f"loss_{k}": v / max(sums.get("n", 1), 1) for k, v in sums.items() if k != "n"},
               "time_s": round(time.time() - t0, 1)}
        last_epoch = step >= total
        if d.main and cfg.val_manifest and (last_epoch or (epoch + 1) % max(cfg.val_every, 1) == 0):
            v = validate(ema.model if ema is not None else model, cfg.val_manifest,
                         cfg.val_size or cfg.image_size, device, cfg.val_batch,
                         cfg.val_score, workers=min(cfg.workers, 2))
            row.update({f"val_{k}": v[k] for k in ("mae", "yaw", "pitch", "roll", "detected")})
            row["val_score"] = val_score(v)
            if tb is not None:
                for k in ("mae", "detected"):
                    tb.add_scalar(f"val/{k}", v[k], step)
            tqdm.write(f"epoch {epoch + 1}: loss {row.get('loss_total', float('nan')):.4f}  val MAE "
                       f"{v['mae']:.2f} (yaw {v['yaw']:.2f} pitch {v['pitch']:.2f} roll {v['roll']:.2f})  "
                       f"detected {100 * v['detected']:.1f}%", file=sys.stderr)
        elif d.main:
            tqdm.write(f"epoch {epoch + 1}: loss {row.get('loss_total', float('nan')):.4f}", file=sys.stderr)
        history.append(row)
        improved = d.main and "val_score" in row and row["val_score"] < best
        if improved:
            best = row["val_score"]
        if finished:
            epoch, epoch_step, sums = epoch + 1, 0, {}
        save(last)
        if improved:
            save(out / "best.pt")
        if d.main:
            _write_metrics(out, history)
        if d.world > 1:
            dist.barrier()  # the other ranks wait for validation and the checkpoint
    if tb is not None:
        tb.close()
    return {"step": step, "epoch": epoch, "best": best, "history": history, "out": str(out)}


def _norm(v):
    """Config values compared across a resume (tuples and lists alike)."""
    return list(v) if isinstance(v, (list, tuple)) else v
