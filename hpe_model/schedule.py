"""Learning-rate schedules derived from the run length (in optimizer steps).

The schedule is a pure function of the global step, so resuming needs only the step count. Decay points are
fractions of the run, so no decay can fall after the last epoch (the old project decayed at epochs it never
reached).
"""
from __future__ import annotations

import math

KINDS = ("cosine", "step")


class Schedule:
    """lr(step) for step in [0, total_steps): linear warm-up from `warmup_start` x lr, then cosine down to
    `final_ratio` x lr at the last step, or steps of x`gamma` at the `milestones` fractions of the run."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 milestones=(0.6, 0.85), gamma: float = 0.1, final_ratio: float = 0.01, warmup_start: float = 0.1):
        if kind not in KINDS:
            raise ValueError(f"unknown schedule {kind!r}; choose one of {KINDS}")
        if total_steps < 1:
            raise ValueError(f"a schedule needs at least one step, got {total_steps}")
        if any(not 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(f"milestones are increasing fractions of the run in (0, 1), got {milestones}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(max(warmup_steps, 0), total_steps - 1))
        self.kind = kind
        self.milestones = tuple(float(m) for m in milestones)
        self.gamma = float(gamma)
        self.final_ratio = float(final_ratio)
        self.warmup_start = float(warmup_start)

    def __call__(self, step: int) -> float:
        step = min(max(int(step), 0), self.total_steps - 1)
        w = self.warmup_steps
        if step < w:
            return self.base_lr * (self.warmup_start + (1 - self.warmup_start) * step / w)
        if self.kind == "cosine":
            span = max(self.total_steps - 1 - w, 1)
            t = (step - w) / span
            return self.base_lr * (self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
        passed = sum(step >= round(m * self.total_steps) for m in self.milestones)
        return self.base_lr * self.gamma ** passed

    def decay_steps(self) -> list[int]:
        """Steps where a step schedule decays (all < total_steps by construction)."""
        return [round(m * self.total_steps) for m in self.milestones] if self.kind == "step" else []

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "milestones": list(self.milestones), "gamma": self.gamma,
                "final_ratio": self.final_ratio, "warmup_start": self.warmup_start}

    @classmethod
    def from_state(cls, state: dict) -> "Schedule":
        return cls(**{**state, "milestones": tuple(state["milestones"])})

    def apply(self, optimizer, step: int) -> float:
        lr = self(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr
