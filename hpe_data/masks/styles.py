"""Mask types, their surface profiles, colours and procedural textures, drawn per face from a seeded RNG.

A style is named `kind/pattern/colour` (the `mask` column), e.g. `surgical/pleats/blue`, `cloth/dots/navy`.
`--styles` takes kinds or kind/pattern pairs.

Style sets (`--style-set`): the style families are split once and for all into TRAIN and HELD-OUT, so that a
model trained on masked data can be tested on mask appearances it never saw:
  held-out patterns  cloth/camo, cloth/checks, n95/valve (exhalation valve);
  held-out colours   teal, lavender, burgundy, olive, mustard, purple, beige (as a mask's colour, a print's
                     second colour or an ear loop's colour).
A style is HELD-OUT when its pattern or its colour is held out, TRAIN otherwise; a `train` run draws only
train styles and never uses a held-out colour anywhere (prints and loops included), a `heldout` run draws
only held-out styles, `all` draws from everything. Every kind keeps styles in both sets, and a set keeps the
kind weights (KIND_WEIGHTS), renormalising patterns and colours within each kind.

Coverage (the `mask_coverage` column) is where the top edge of the mask sits on the face's own vertical
axis: 0 = at the chin (landmark 8), 1 = at the nose root between the eyes (27) (see geometry.midline_heights).
Named modes pick a range between landmarks of the face itself:
  normal      between the bridge points 29 and 28 (the nose is covered up to the bridge);
  below-nose  between the upper lip (51) and the nose base (33): nose free, mouth covered;
  chin        just under the lower lip (57), towards the chin: the mouth is free.
"""
from __future__ import annotations

import bisect
import functools
import math
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
    colour2: str = ""  # catalogue names of the second colour and of the ear loops' colour
    loop_colour: str = ""

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


STYLE_SETS = ("all", "train", "heldout")
HELDOUT_PATTERNS = frozenset({("cloth", "camo"), ("cloth", "checks"), ("n95", "valve")})
HELDOUT_COLOURS = frozenset({"teal", "lavender", "burgundy", "olive", "mustard", "purple", "beige"})


def style_set_of(name: str) -> str:
    """'train' or 'heldout' for a style name kind/pattern/colour (the `mask` column)."""
    kind, pattern, colour = name.split("/")
    return "heldout" if (kind, pattern) in HELDOUT_PATTERNS or colour in HELDOUT_COLOURS else "train"


def parse_style_set(text: str | None) -> str:
    if not text:
        return "all"
    if text not in STYLE_SETS:
        raise ValueError(f"--style-set: unknown set {text!r}; expected one of {', '.join(STYLE_SETS)}")
    return text


def _cdf(weights) -> list:
    """Cumulative weights normalised to end at 1 (what Generator.choice with p does), for bisect."""
    c = np.cumsum(np.asarray(weights, dtype=np.float64))
    return (c / c[-1]).tolist()


def _pick(cdf: list, u: float) -> int:
    return min(bisect.bisect_right(cdf, u), len(cdf) - 1)


@functools.lru_cache(maxsize=64)
def _table(styles: tuple, style_set: str):
    """Every (kind, pattern, colour) the options allow in the set, with its probability: each --styles
    entry weighs KIND_WEIGHTS[kind]; within it, pattern x colour weights restricted to the set."""
    names, weights = [], []
    for kind, only in styles:
        combos = [(pat, col, (1.0 if only else wp) * wc)
                  for pat, wp in PATTERNS[kind].items() if only in (None, pat)
                  for col, wc in PALETTES[kind].items()
                  if style_set == "all" or style_set_of(f"{kind}/{pat}/{col}") == style_set]
        total = sum(w for *_, w in combos)
        for pat, col, w in combos:
            names.append((kind, pat, col))
            weights.append(KIND_WEIGHTS[kind] * w / total)
    if not names:
        wanted = ",".join(k if p is None else f"{k}/{p}" for k, p in styles)
        raise ValueError(f"--styles {wanted}: no style of these is in the {style_set} set")
    return tuple(names), _cdf(weights)


def style_table(styles, style_set: str = "all") -> tuple:
    """((kind, pattern, colour), ...) that sample_style can draw for parse_styles output `styles` in a set;
    raises ValueError when there is none."""
    return _table(tuple(styles), style_set)[0]


@functools.lru_cache(maxsize=32)
def _allowed(colours: tuple, style_set: str) -> tuple:
    """Secondary colours usable in a set: a train run never shows a held-out colour."""
    return tuple(c for c in colours if style_set != "train" or c not in HELDOUT_COLOURS)


def _tint(u: float, g0: float, g1: float, g2: float, rgb) -> tuple:
    """Small per-face variation of a catalogue colour (dye lots, wear): u uniform, g* normals."""
    k = 0.92 + 0.12 * u
    return (min(max(rgb[0] * k + 0.015 * g0, 0.02), 0.98), min(max(rgb[1] * k + 0.015 * g1, 0.02), 0.98),
            min(max(rgb[2] * k + 0.015 * g2, 0.02), 0.98))


N_UNIFORM, N_NORMAL = 17, 9  # the draws of one style


def sample_style(rng: np.random.Generator, styles=None, coverage=("normal",), style_set: str = "all") -> Style:
    """Draw one style. `styles` from parse_styles, `coverage` from parse_coverage, `style_set` one of
    STYLE_SETS. The number and order of draws is fixed (N_UNIFORM uniforms, then N_NORMAL normals), so a
    face's style depends only on its RNG."""
    styles = tuple(styles or parse_styles(None))
    names, cdf = _table(styles, style_set)
    u = rng.random(N_UNIFORM).tolist()
    g = rng.standard_normal(N_NORMAL).tolist()
    kind, pattern, colour = names[_pick(cdf, u[0])]
    prints = _allowed(PRINT_COLOURS, style_set)
    second = prints[min(int(u[1] * len(prints)), len(prints) - 1)]
    if second == colour:
        second = "white" if colour != "white" else "navy"
    if kind == "n95" and pattern == "valve":
        second = "grey" if colour != "grey" else "white"
    loops = _allowed(LOOP_COLOURS[kind], style_set)
    loop = loops[min(int(u[2] * len(loops)), len(loops) - 1)]
    numeric = len(coverage) == 2 and all(isinstance(v, float) for v in coverage)
    mode = None if numeric else coverage[min(int(u[3] * len(coverage)), len(coverage) - 1)]
    return Style(
        kind=kind, pattern=pattern, colour=colour,
        rgb=_tint(u[4], g[0], g[1], g[2], COLOURS[colour]), rgb2=_tint(u[5], g[3], g[4], g[5], COLOURS[second]),
        loop_rgb=_tint(u[6], g[6], g[7], g[8], COLOURS[loop]),
        coverage_mode=mode, coverage_draw=u[7], coverage_range=tuple(coverage) if numeric else None,
        pleats=2 + min(int(u[8] * 3), 2), period=0.12 + 0.18 * u[9], angle=math.pi * u[10],
        valve_side=-1.0 if u[11] < 0.5 else 1.0, seed=int(u[12] * (2 ** 31 - 1)),
        jitter=tuple(2.0 * v - 1.0 for v in u[13:17]), colour2=second, loop_colour=loop,
    )


def coverage_value(style: Style, heights: dict[int, float]) -> float:
    """Top-edge height of this style on a face with the given midline heights (geometry.midline_heights)."""
    if style.coverage_range is not None:
        lo, hi = style.coverage_range
        return lo + (hi - lo) * style.coverage_draw
    a, b, (f0, f1) = COVERAGE_SPANS[style.coverage_mode]
    f = f0 + (f1 - f0) * style.coverage_draw
    return heights[a] + f * (heights[b] - heights[a])
