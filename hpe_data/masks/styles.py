"""Mask types, their surface profiles, colours and procedural textures, drawn per face from a seeded RNG.

A style is named `kind/pattern/colour` (the `mask` column), e.g. `surgical/pleats/blue`, `cloth/dots/navy`,
so a held-out set of styles is a filter on that string. `--styles` takes kinds or kind/pattern pairs.

Coverage (the `mask_coverage` column) is where the top edge of the mask sits on the face's own vertical
axis: 0 = at the chin (landmark 8), 1 = at the nose root between the eyes (27) (see geometry.midline_heights).
Named modes pick a range between landmarks of the face itself:
  normal      between the bridge points 29 and 28 (the nose is covered up to the bridge);
  below-nose  between the upper lip (51) and the nose base (33): nose free, mouth covered;
  chin        just under the lower lip (57), towards the chin: the mouth is free.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Profile:
    """Surface shape of a mask type; lengths are in face-scale units (geometry.scale_of)."""

    out_side: float  # outline pushed out of the jaw contour at the sides
    out_chin: float  # ... and under the chin
    drop: float  # side anchors this far below the top centre (fraction of the 8..27 height)
    side: float  # side anchors moved this many jaw indices towards the chin (narrower masks)
    side_len: float  # share of the jaw between the side anchor and the chin taken by the side edge
    arch: float  # exponent of the top edge from the bridge to the sides
    standoff: float  # minimum distance in front of the face
    edge_standoff: float  # distance of the border from the face
    tension: int  # membrane iterations: many = taut (tent over nose and chin), few = conformal
    pressure: float  # outward push per iteration (cup masks)
    ridge: float = 0.0  # central seam standing off (folded KN95)


PROFILES = {
    "surgical": Profile(0.03, 0.12, 0.22, 0.0, 0.45, 1.3, 0.04, 0.01, 80, 0.0),
    "n95": Profile(0.0, 0.12, 0.26, 0.9, 0.40, 1.8, 0.06, 0.01, 80, 0.0035),
    "kn95": Profile(0.02, 0.12, 0.20, 0.3, 0.45, 1.6, 0.05, 0.01, 80, 0.0, ridge=0.12),
    "cloth": Profile(0.02, 0.10, 0.22, 0.2, 0.45, 1.1, 0.02, 0.008, 8, 0.0),
}

KIND_WEIGHTS = {"surgical": 0.4, "n95": 0.15, "kn95": 0.2, "cloth": 0.25}

PATTERNS = {  # kind -> {pattern: weight}
    "surgical": {"pleats": 1.0},
    "n95": {"plain": 0.6, "valve": 0.4},
    "kn95": {"seam": 1.0},
    "cloth": {"solid": 0.35, "stripes": 0.2, "dots": 0.15, "checks": 0.15, "camo": 0.15},
}
PATTERN_CODES = {"plain": 0, "solid": 0, "pleats": 1, "valve": 2, "seam": 3, "stripes": 4, "dots": 5,
                 "checks": 6, "camo": 7}

COLOURS = {
    "blue": (0.50, 0.72, 0.90), "light-blue": (0.70, 0.84, 0.95), "teal": (0.42, 0.72, 0.76),
    "white": (0.92, 0.92, 0.91), "green": (0.60, 0.83, 0.70), "pink": (0.95, 0.72, 0.79),
    "black": (0.09, 0.09, 0.10), "lavender": (0.74, 0.70, 0.90), "cream": (0.93, 0.90, 0.82),
    "grey": (0.62, 0.63, 0.65), "beige": (0.84, 0.77, 0.66), "navy": (0.12, 0.15, 0.32),
    "red": (0.70, 0.12, 0.13), "burgundy": (0.42, 0.08, 0.14), "olive": (0.40, 0.42, 0.20),
    "denim": (0.26, 0.36, 0.52), "mustard": (0.80, 0.62, 0.15), "purple": (0.40, 0.22, 0.52),
}
PALETTES = {  # kind -> {colour: weight}
    "surgical": {"blue": 5, "light-blue": 3, "teal": 1, "white": 2, "green": 1, "pink": 1, "black": 2,
                 "lavender": 1},
    "n95": {"white": 5, "cream": 2, "grey": 1, "light-blue": 1},
    "kn95": {"white": 5, "black": 3, "grey": 1, "pink": 1, "beige": 1},
    "cloth": {"black": 4, "navy": 2, "grey": 2, "red": 1, "burgundy": 1, "olive": 1, "denim": 2, "beige": 1,
              "pink": 1, "mustard": 1, "white": 1, "purple": 1},
}
PRINT_COLOURS = ("white", "black", "red", "navy", "mustard", "pink", "light-blue", "green", "beige")
LOOP_COLOURS = {"surgical": ("white", "blue", "white"), "n95": ("white", "blue", "beige"),
                "kn95": ("white", "black"), "cloth": ("black", "grey", "white")}

COVERAGE_MODES = ("normal", "below-nose", "chin")
# mode -> (lower landmark, upper landmark, fraction range between them)
COVERAGE_SPANS = {"normal": (29, 28, (0.1, 0.9)), "below-nose": (51, 33, (0.25, 0.6)),
                  "chin": (8, 57, (0.65, 0.9))}


@dataclass(frozen=True)
class Style:
    kind: str
    pattern: str
    colour: str
    rgb: tuple
    rgb2: tuple  # second colour of prints, valve body
    loop_rgb: tuple
    coverage_mode: str | None  # requested mode, or None with a numeric coverage
    coverage_draw: float  # uniform draw in [0, 1] placing the top edge within the mode's (or numeric) range
    coverage_range: tuple | None  # numeric (lo, hi)
    pleats: int
    period: float  # print period, face-scale units
    angle: float  # print direction, radians
    valve_side: float  # -1 / +1: side of the exhalation valve
    seed: int  # procedural noise seed
    jitter: tuple  # 4 numbers in [-1, 1] for geometry variety

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.pattern}/{self.colour}"

    @property
    def profile(self) -> Profile:
        return PROFILES[self.kind]


def parse_styles(text: str | None) -> list[tuple[str, str | None]]:
    """'surgical,cloth/dots' -> [('surgical', None), ('cloth', 'dots')]; None or '' = every kind."""
    if not text:
        return [(k, None) for k in PROFILES]
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, _, pattern = part.partition("/")
        if kind not in PROFILES:
            raise ValueError(f"--styles: unknown mask kind {kind!r}; expected one of {', '.join(PROFILES)}")
        if pattern and pattern not in PATTERNS[kind]:
            raise ValueError(f"--styles: {kind} has no pattern {pattern!r}; expected one of "
                             f"{', '.join(PATTERNS[kind])}")
        out.append((kind, pattern or None))
    if not out:
        raise ValueError("--styles: no style given")
    return out


def parse_coverage(text: str | None) -> tuple[str, ...] | tuple[float, float]:
    """'normal', 'normal,chin' (modes drawn uniformly) or 'LO:HI' (numbers, 0 = chin .. 1 = nose root)."""
    if not text:
        return ("normal",)
    if ":" in text:
        try:
            lo, hi = (float(v) for v in text.split(":"))
        except ValueError:
            raise ValueError(f"--coverage expects LO:HI numbers or mode names, got {text!r}") from None
        if not (0.15 <= lo <= hi <= 1.0):
            raise ValueError(f"--coverage {text}: need 0.15 <= LO <= HI <= 1 (0 = chin, 1 = nose root 27; "
                             f"below 0.15 the mask would be a sliver under the chin)")
        return (lo, hi)
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in COVERAGE_MODES]
    if bad or not modes:
        raise ValueError(f"--coverage: unknown mode(s) {bad or text!r}; expected {', '.join(COVERAGE_MODES)} "
                         f"or LO:HI")
    return modes


def _pick(rng: np.random.Generator, weights: dict) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _tint(rng: np.random.Generator, rgb) -> tuple:
    """Small per-face variation of a catalogue colour (dye lots, wear)."""
    c = np.asarray(rgb) * rng.uniform(0.92, 1.04) + rng.normal(0.0, 0.015, 3)
    return tuple(float(v) for v in np.clip(c, 0.02, 0.98))


def sample_style(rng: np.random.Generator, styles=None, coverage=("normal",)) -> Style:
    """Draw one style. `styles` from parse_styles, `coverage` from parse_coverage. The number and order of
    draws is fixed, so a face's style depends only on its RNG."""
    styles = styles or parse_styles(None)
    weights = {i: KIND_WEIGHTS[k] for i, (k, _) in enumerate(styles)}
    kind, pattern = styles[int(_pick(rng, weights))]
    drawn_pattern = _pick(rng, PATTERNS[kind])
    pattern = pattern or drawn_pattern
    colour = _pick(rng, PALETTES[kind])
    second = PRINT_COLOURS[int(rng.integers(len(PRINT_COLOURS)))]
    if second == colour:
        second = "white" if colour != "white" else "navy"
    if kind == "n95" and pattern == "valve":
        second = "grey" if colour != "grey" else "white"
    loop = LOOP_COLOURS[kind][int(rng.integers(len(LOOP_COLOURS[kind])))]
    numeric = len(coverage) == 2 and all(isinstance(v, float) for v in coverage)
    mode = None if numeric else coverage[int(rng.integers(len(coverage)))]
    return Style(
        kind=kind, pattern=pattern, colour=colour,
        rgb=_tint(rng, COLOURS[colour]), rgb2=_tint(rng, COLOURS[second]), loop_rgb=_tint(rng, COLOURS[loop]),
        coverage_mode=mode, coverage_draw=float(rng.uniform()), coverage_range=tuple(coverage) if numeric else None,
        pleats=int(rng.integers(2, 5)), period=float(rng.uniform(0.12, 0.3)), angle=float(rng.uniform(0, np.pi)),
        valve_side=float(rng.choice([-1.0, 1.0])), seed=int(rng.integers(0, 2 ** 31 - 1)),
        jitter=tuple(float(v) for v in rng.uniform(-1, 1, 4)),
    )


def coverage_value(style: Style, heights: dict[int, float]) -> float:
    """Top-edge height of this style on a face with the given midline heights (geometry.midline_heights)."""
    if style.coverage_range is not None:
        lo, hi = style.coverage_range
        return lo + (hi - lo) * style.coverage_draw
    a, b, (f0, f1) = COVERAGE_SPANS[style.coverage_mode]
    f = f0 + (f1 - f0) * style.coverage_draw
    return heights[a] + f * (heights[b] - heights[a])
