"""Shapes and looks of the 20 synthetic VOC object classes (used by ``fcnquant.data.synth``).

Each class has a shape builder ``f(rng) -> list[(part, points)]`` in a local frame (y down, object roughly within
[-1, 1]^2): polygons drawn in order, ``part`` 1..3 picks the part's look, 0 cuts a hole. Each part look gives the
colour distribution (base colours + jitter) and the texture (kind, spatial period in object units, contrast).
Families share colours or outlines on purpose (cat/dog, cow/horse/sheep, car/bus/train, bicycle/motorbike,
chair/sofa/diningtable), so a network has to combine outline, texture and colour.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Parts = list[tuple[int, np.ndarray]]


def ell(cx: float, cy: float, rx: float, ry: float, n: int = 20, a0: float = 0.0, a1: float = 2 * np.pi) -> np.ndarray:
    """Returns n points on an ellipse (arc a0..a1)."""
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * np.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Returns the 4 corners of an axis-aligned rectangle."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def poly(*pts: tuple[float, float]) -> np.ndarray:
    """Returns the points as an (n, 2) array."""
    return np.array(pts, dtype=np.float64)


def bar(x0: float, y0: float, x1: float, y1: float, w: float) -> np.ndarray:
    """Returns a quad of width w along the segment (x0, y0)-(x1, y1)."""
    d = np.array([x1 - x0, y1 - y0])
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * (w / 2)
    return np.array([[x0, y0] + n, [x1, y1] + n, [x1, y1] - n, [x0, y0] - n])


def star(cx: float, cy: float, r1: float, r2: float, k: int, phase: float = 0.0) -> np.ndarray:
    """Returns a k-pointed star with outer radius r1 and inner radius r2."""
    t = phase + np.arange(2 * k) * np.pi / k
    r = np.where(np.arange(2 * k) % 2 == 0, r1, r2)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def blob(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 14, jitter: float = 0.25) -> np.ndarray:
    """Returns an irregular closed blob: a circle with random radial jitter."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (1 + jitter * rng.uniform(-1, 1, n))
    return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1)


def u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Returns one uniform draw in [lo, hi)."""
    return float(rng.uniform(lo, hi))


# ---------------------------------------------------------------- shapes (one per class)

def aeroplane(rng):
    span, sweep = u(rng, 0.7, 1.0), u(rng, 0.1, 0.4)
    return [(1, ell(0, 0, 1.0, u(rng, 0.11, 0.17), 18)),
            (1, poly((-0.15, 0), (0.15 - sweep, -span), (0.3 - sweep, -span), (0.3, 0), (0.3 - sweep, span),
                     (0.15 - sweep, span))),
            (2, poly((-0.95, 0), (-1.05, -0.45), (-0.8, -0.45), (-0.65, 0))),
            (2, ell(0.75, -0.03, 0.12, 0.05, 8))]


def bicycle(rng):
    rw, wb = u(rng, 0.38, 0.48), u(rng, 0.55, 0.7)
    t = u(rng, 0.1, 0.14)
    out: Parts = []
    for cx in (-wb, wb):
        out += [(1, ell(cx, 0.3, rw, rw, 20)), (0, ell(cx, 0.3, rw - t, rw - t, 20))]
    fw = u(rng, 0.09, 0.12)
    out += [(2, bar(-wb, 0.3, -0.05, 0.3, fw)), (2, bar(-0.05, 0.3, 0.45, -0.25, fw)),
            (2, bar(-wb, 0.3, -0.2, -0.25, fw)), (2, bar(-0.2, -0.25, 0.45, -0.25, fw)),
            (2, bar(0.45, -0.25, wb, 0.3, fw)), (3, rect(-0.32, -0.36, -0.08, -0.28)),
            (3, bar(0.38, -0.4, 0.62, -0.45, fw))]
    return out


def bird(rng):
    h = u(rng, 0.28, 0.4)
    return [(1, ell(0, 0, 0.62, h, 18)), (1, ell(0.55, -h * 0.8, 0.25, 0.22, 14)),
            (2, poly((0.78, -h * 0.9), (1.05, -h * 0.75), (0.78, -h * 0.6))),
            (1, poly((-0.5, -0.05), (-1.0, -0.25 - u(rng, 0, 0.2)), (-1.0, 0.2), (-0.5, 0.1))),
            (3, poly((-0.35, -0.1), (0.25, -0.05), (-0.1, -h - u(rng, 0.2, 0.5)))),
            (2, bar(-0.05, h * 0.8, -0.1, h + 0.3, 0.05)), (2, bar(0.15, h * 0.8, 0.15, h + 0.3, 0.05))]


def boat(rng):
    hull = u(rng, 0.25, 0.35)
    sail = u(rng, 0.6, 1.0)
    return [(1, poly((-1.0, 0.2), (1.0, 0.2), (0.75, 0.2 + hull), (-0.75, 0.2 + hull))),
            (3, rect(-0.03, 0.2 - sail - 0.1, 0.03, 0.2)),
            (2, poly((0.0, 0.2 - sail), (0.0, 0.1), (u(rng, 0.45, 0.7), 0.1))),
            (2, poly((-0.05, 0.2 - sail * 0.8), (-0.05, 0.1), (-u(rng, 0.3, 0.5), 0.1)))]


def bottle(rng):
    w, neck = u(rng, 0.25, 0.36), u(rng, 0.08, 0.13)
    return [(1, rect(-w, -0.35, w, 1.0)), (1, ell(0, -0.35, w, 0.2, 12, np.pi, 2 * np.pi)),
            (1, rect(-neck, -0.95, neck, -0.4)), (2, rect(-neck - 0.02, -1.05, neck + 0.02, -0.9)),
            (3, rect(-w, 0.05, w, 0.5))]


def bus(rng):
    h = u(rng, 0.5, 0.65)
    out: Parts = [(1, rect(-1.0, -h, 1.0, h * 0.8))]
    n = int(rng.integers(4, 7))
    gap = 1.8 / n
    for i in range(n):
        x0 = -0.9 + i * gap
        out.append((2, rect(x0, -h * 0.75, x0 + gap * 0.8, -h * 0.15)))
    out += [(3, ell(-0.6, h * 0.8, 0.17, 0.17, 12)), (3, ell(0.6, h * 0.8, 0.17, 0.17, 12))]
    return out


def car(rng):
    cab = u(rng, 0.3, 0.45)
    return [(1, poly((-1.0, 0.0), (-0.95, -0.25), (1.0, -0.25), (1.0, 0.25), (-1.0, 0.25))),
            (1, poly((-0.55, -0.25), (-0.3, -0.25 - cab), (0.35, -0.25 - cab), (0.6, -0.25))),
            (2, poly((-0.45, -0.27), (-0.27, -0.2 - cab), (0.0, -0.2 - cab), (0.0, -0.27))),
            (2, poly((0.06, -0.27), (0.06, -0.2 - cab), (0.32, -0.2 - cab), (0.5, -0.27))),
            (3, ell(-0.6, 0.25, 0.2, 0.2, 14)), (3, ell(0.6, 0.25, 0.2, 0.2, 14))]


def cat(rng):
    return [(1, ell(-0.1, 0.2, 0.65, 0.35, 18)), (1, ell(0.6, -0.25, 0.3, 0.27, 14)),
            (1, poly((0.38, -0.4), (0.42, -0.75), (0.58, -0.48))),
            (1, poly((0.65, -0.5), (0.82, -0.78), (0.85, -0.42))),
            (1, bar(-0.7, 0.15, -1.0, -0.45 + u(rng, -0.2, 0.2), 0.1)),
            (1, rect(-0.55, 0.35, -0.42, 0.85)), (1, rect(0.2, 0.35, 0.33, 0.85)),
            (2, ell(0.68, -0.28, 0.05, 0.04, 6)), (2, ell(0.52, -0.28, 0.05, 0.04, 6))]


def chair(rng):
    back = u(rng, 0.7, 1.0)
    leg = 0.11
    return [(1, rect(-0.5, 0.05, 0.5, 0.22)), (1, rect(0.38, 0.1 - back, 0.5, 0.1)),
            (2, rect(0.42, 0.15 - back, 0.5, 0.05)),
            (1, rect(-0.48, 0.2, -0.48 + leg, 1.0)), (1, rect(0.42, 0.2, 0.42 + leg, 1.0)),
            (1, rect(-0.3, 0.2, -0.3 + leg * 0.8, 0.85)), (1, rect(0.26, 0.2, 0.26 + leg * 0.8, 0.85))]


def cow(rng):
    return [(1, poly((-0.8, -0.3), (0.55, -0.35), (0.6, 0.3), (-0.8, 0.3))),
            (1, poly((0.5, -0.3), (0.95, -0.35), (1.05, 0.05), (0.85, 0.1), (0.5, 0.0))),
            (3, poly((0.55, -0.42), (0.45, -0.55), (0.62, -0.36))),
            (1, rect(-0.75, 0.25, -0.58, 0.9)), (1, rect(-0.45, 0.25, -0.28, 0.9)),
            (1, rect(0.25, 0.25, 0.42, 0.9)), (1, rect(0.48, 0.25, 0.62, 0.9)),
            (2, ell(-0.1, 0.35, 0.15, 0.1, 10)), (1, bar(-0.8, -0.25, -0.95, 0.4, 0.06))]


def diningtable(rng):
    d = u(rng, 0.15, 0.3)
    return [(1, poly((-1.0, -0.2 + d), (-0.75, -0.2 - d), (0.75, -0.2 - d), (1.0, -0.2 + d))),
            (2, rect(-1.0, -0.2 + d, 1.0, -0.1 + d)),
            (1, rect(-0.92, -0.1 + d, -0.8, 0.8)), (1, rect(0.8, -0.1 + d, 0.92, 0.8)),
            (1, rect(-0.6, -0.2, -0.5, 0.6)), (1, rect(0.5, -0.2, 0.6, 0.6)),
            (3, ell(u(rng, -0.5, 0.3), -0.2, 0.18, 0.07, 12))]


def dog(rng):
    return [(1, ell(-0.1, 0.1, 0.7, 0.33, 18)), (1, ell(0.6, -0.35, 0.26, 0.24, 14)),
            (1, poly((0.7, -0.42), (1.05, -0.3), (1.02, -0.15), (0.7, -0.2))),
            (2, poly((0.45, -0.5), (0.38, -0.1), (0.5, -0.08), (0.58, -0.45))),
            (1, bar(-0.75, 0.0, -1.0, -0.35, 0.12)),
            (1, rect(-0.65, 0.25, -0.5, 0.9)), (1, rect(-0.38, 0.25, -0.23, 0.9)),
            (1, rect(0.2, 0.25, 0.35, 0.9)), (1, rect(0.42, 0.25, 0.55, 0.9)), (3, ell(1.0, -0.27, 0.06, 0.05, 6))]


def horse(rng):
    neck = u(rng, 0.5, 0.7)
    return [(1, ell(-0.1, 0.0, 0.7, 0.3, 18)),
            (1, poly((0.35, -0.2), (0.55, -0.2 - neck), (0.75, -0.2 - neck), (0.7, 0.05))),
            (1, poly((0.55, -0.2 - neck), (1.05, -0.05 - neck), (1.0, 0.05 - neck), (0.7, -neck + 0.05))),
            (2, poly((0.5, -0.25), (0.48, -0.25 - neck), (0.58, -0.2 - neck), (0.42, -0.15))),
            (2, poly((-0.78, -0.05), (-1.0, 0.45), (-0.9, 0.5), (-0.72, 0.1))),
            (1, rect(-0.62, 0.15, -0.5, 1.0)), (1, rect(-0.4, 0.15, -0.28, 1.0)),
            (1, rect(0.22, 0.15, 0.34, 1.0)), (1, rect(0.42, 0.15, 0.54, 1.0))]


def motorbike(rng):
    r = u(rng, 0.32, 0.4)
    out: Parts = []
    for cx in (-0.62, 0.62):
        out += [(3, ell(cx, 0.4, r, r, 18)), (2, ell(cx, 0.4, r * 0.45, r * 0.45, 12))]
    out += [(1, poly((-0.5, 0.15), (-0.3, -0.2), (0.35, -0.25), (0.55, 0.1), (0.2, 0.35), (-0.3, 0.35))),
            (3, poly((-0.55, -0.2), (-0.1, -0.3), (-0.05, -0.18), (-0.55, -0.12))),
            (2, bar(0.4, -0.2, 0.62, 0.4, 0.08)), (2, bar(0.4, -0.2, 0.55, -0.55, 0.06))]
    return out


def person(rng):
    sh = u(rng, 0.25, 0.35)
    return [(1, ell(0, -0.78, 0.17, 0.2, 14)),
            (2, poly((-sh, -0.55), (sh, -0.55), (sh * 0.8, 0.15), (-sh * 0.8, 0.15))),
            (2, bar(-sh, -0.5, -sh - 0.12, 0.1, 0.12)), (2, bar(sh, -0.5, sh + 0.12 + u(rng, 0, 0.25), 0.05, 0.12)),
            (3, poly((-sh * 0.8, 0.15), (sh * 0.8, 0.15), (sh * 0.75, 1.0), (0.05, 1.0), (0.0, 0.35), (-0.05, 1.0),
                     (-sh * 0.75, 1.0))),
            (1, ell(0, -0.92, 0.18, 0.08, 10))]


def pottedplant(rng):
    out: Parts = [(2, poly((-0.35, 0.35), (0.35, 0.35), (0.25, 1.0), (-0.25, 1.0))), (3, rect(-0.4, 0.3, 0.4, 0.42))]
    for _ in range(int(rng.integers(4, 8))):
        out.append((1, blob(rng, u(rng, -0.45, 0.45), u(rng, -0.75, 0.15), u(rng, 0.2, 0.35), 10, 0.4)))
    return out


def sheep(rng):
    out: Parts = []
    for _ in range(int(rng.integers(7, 11))):
        out.append((1, ell(u(rng, -0.6, 0.45), u(rng, -0.25, 0.2), u(rng, 0.2, 0.3), u(rng, 0.18, 0.26), 12)))
    out += [(2, ell(0.72, -0.15, 0.2, 0.15, 12)), (2, poly((0.6, -0.22), (0.5, -0.35), (0.68, -0.28))),
            (2, rect(-0.5, 0.2, -0.4, 0.7)), (2, rect(-0.25, 0.2, -0.15, 0.7)), (2, rect(0.15, 0.2, 0.25, 0.7)),
            (2, rect(0.35, 0.2, 0.45, 0.7))]
    return out


def sofa(rng):
    back = u(rng, 0.35, 0.55)
    return [(1, rect(-1.0, -back, 1.0, 0.1)), (2, rect(-0.8, 0.0, 0.8, 0.35)),
            (1, rect(-1.05, -0.15, -0.78, 0.55)), (1, rect(0.78, -0.15, 1.05, 0.55)),
            (1, rect(-0.8, 0.35, 0.8, 0.55)), (3, rect(-0.95, 0.55, -0.85, 0.65)), (3, rect(0.85, 0.55, 0.95, 0.65))]


def train(rng):
    h = u(rng, 0.35, 0.48)
    nose = u(rng, 0.15, 0.35)
    out: Parts = [(1, poly((-1.0, -h), (1.0 - nose, -h), (1.0, 0.0), (1.0, h * 0.7), (-1.0, h * 0.7))),
                  (3, rect(-1.0, h * 0.1, 1.0 - nose * 0.3, h * 0.3))]
    n = int(rng.integers(5, 9))
    gap = (1.8 - nose) / n
    for i in range(n):
        x0 = -0.95 + i * gap
        out.append((2, rect(x0, -h * 0.75, x0 + gap * 0.6, -h * 0.2)))
    for cx in np.linspace(-0.8, 0.7, 4):
        out.append((2, ell(float(cx), h * 0.75, 0.08, 0.08, 8)))
    return out


def tvmonitor(rng):
    a = u(rng, 0.55, 0.75)
    b = u(rng, 0.06, 0.1)
    return [(1, rect(-1.0, -a, 1.0, a)), (2, rect(-1.0 + b, -a + b, 1.0 - b, a - b)),
            (1, rect(-0.1, a, 0.1, a + 0.2)), (1, rect(-0.4, a + 0.18, 0.4, a + 0.26))]


# ---------------------------------------------------------------- looks

@dataclass(frozen=True)
class Look:
    """A part's colour and texture distribution.

    ``colors``: base RGB colours (one chosen per object, then jittered by ``jitter`` per channel); ``second``: the
    texture's other colour as a multiplier of the base (or an absolute RGB when ``absolute``); ``texture``: one
    of flat, stripes, checks, dots, noise, patches, grain; ``period``: texture period in object units (random
    within the range); ``contrast``: mixing weight of the second colour.
    """

    colors: tuple[tuple[int, int, int], ...]
    texture: str = "flat"
    period: tuple[float, float] = (0.3, 0.5)
    contrast: tuple[float, float] = (0.3, 0.6)
    second: tuple[float, float, float] = (0.5, 0.5, 0.5)
    absolute: bool = False
    jitter: float = 18.0
    angle: float | None = None  # texture angle in object frame (radians); None = random


@dataclass(frozen=True)
class ClassStyle:
    """How a class looks: shape builder, per-part looks, pose ranges (rotation in degrees, aspect jitter)."""

    shape: Callable[[np.random.Generator], Parts]
    parts: dict[int, Look]
    rotation: float = 10.0
    aspect: tuple[float, float] = (0.85, 1.15)
    scale: tuple[float, float] = (0.8, 1.2)


VEHICLE = ((200, 30, 30), (30, 60, 170), (230, 200, 40), (235, 235, 235), (40, 40, 45), (120, 125, 130))
FUR = ((120, 80, 45), (70, 60, 55), (200, 170, 120), (150, 150, 145), (35, 30, 28), (215, 140, 60))
WOOD = ((130, 85, 45), (95, 60, 35), (175, 130, 80), (60, 45, 35))
FABRIC = ((150, 40, 50), (60, 90, 140), (90, 110, 70), (170, 150, 120), (80, 70, 90))
DARK = ((25, 25, 28), (45, 45, 50), (15, 15, 20))
CLOTHES = ((200, 40, 40), (40, 70, 160), (240, 240, 240), (30, 30, 35), (60, 140, 70), (230, 190, 40),
           (150, 60, 150))

STYLES: dict[int, ClassStyle] = {
    1: ClassStyle(aeroplane, {1: Look(((225, 228, 232), (190, 195, 205), (170, 200, 230)), "flat", jitter=12),
                              2: Look(((200, 30, 30), (30, 60, 170), (235, 235, 235)))}, rotation=35,
                  scale=(0.9, 1.3)),
    2: ClassStyle(bicycle, {1: Look(DARK, jitter=8), 2: Look(VEHICLE, "stripes", (0.08, 0.12), (0.1, 0.3)),
                            3: Look(DARK)}, scale=(0.9, 1.2)),
    3: ClassStyle(bird, {1: Look(((110, 75, 45), (60, 60, 70), (40, 80, 150), (150, 140, 120)), "noise", (0.08, 0.15),
                                 (0.3, 0.6)),
                         2: Look(((230, 170, 40), (60, 50, 40))),
                         3: Look(((80, 55, 35), (40, 40, 50), (30, 60, 120)), "stripes", (0.06, 0.1), (0.4, 0.7))},
                  rotation=30, scale=(0.6, 1.0)),
    4: ClassStyle(boat, {1: Look(VEHICLE[:5] + ((110, 70, 40),), "stripes", (0.12, 0.2), (0.3, 0.6), angle=0.0),
                         2: Look(((240, 240, 235), (225, 215, 190), (200, 60, 50)), jitter=10),
                         3: Look(WOOD)}, rotation=8),
    5: ClassStyle(bottle, {1: Look(((40, 110, 50), (110, 60, 25), (180, 200, 210), (30, 60, 30)), "stripes",
                                   (0.25, 0.45), (0.3, 0.5), second=(1.6, 1.6, 1.6), angle=np.pi / 2),
                           2: Look(((200, 180, 40), (180, 30, 30), (200, 200, 200))),
                           3: Look(((235, 230, 210), (220, 60, 40), (40, 40, 160)))}, aspect=(0.7, 1.1),
                  scale=(0.6, 0.9)),
    6: ClassStyle(bus, {1: Look(VEHICLE[:4] + ((240, 140, 30),), "flat", jitter=14),
                        2: Look(((40, 50, 60), (70, 90, 110)), jitter=10), 3: Look(DARK)}, rotation=5,
                  aspect=(0.9, 1.2), scale=(1.0, 1.4)),
    7: ClassStyle(car, {1: Look(VEHICLE, "flat", jitter=15), 2: Look(((60, 75, 90), (100, 120, 140)), jitter=10),
                        3: Look(DARK)}, rotation=5),
    8: ClassStyle(cat, {1: Look(FUR, "stripes", (0.09, 0.16), (0.25, 0.5), second=(0.45, 0.45, 0.45)),
                        2: Look(((90, 170, 60), (200, 170, 40)))}, rotation=12, scale=(0.7, 1.0)),
    9: ClassStyle(chair, {1: Look(WOOD, "grain", (0.05, 0.09), (0.2, 0.4), angle=np.pi / 2),
                          2: Look(FABRIC, "checks", (0.1, 0.2), (0.2, 0.4))}, rotation=6, scale=(0.7, 1.0)),
    10: ClassStyle(cow, {1: Look(((235, 235, 230), (130, 80, 50), (60, 45, 40)), "patches", (0.35, 0.6), (0.85, 1.0),
                                 second=(25, 22, 20), absolute=True),
                         2: Look(((230, 170, 170),)), 3: Look(((210, 200, 180),))}, rotation=6, scale=(0.9, 1.2)),
    11: ClassStyle(diningtable, {1: Look(WOOD + ((235, 235, 230),), "grain", (0.05, 0.1), (0.2, 0.4), angle=0.0),
                                 2: Look(WOOD, "flat"), 3: Look(((240, 240, 240), (220, 200, 60)))},
                   rotation=5, aspect=(0.9, 1.1), scale=(1.0, 1.3)),
    12: ClassStyle(dog, {1: Look(FUR, "noise", (0.06, 0.1), (0.3, 0.55), second=(0.6, 0.6, 0.6)),
                         2: Look(FUR[:3], "flat"), 3: Look(DARK)}, rotation=12, scale=(0.7, 1.0)),
    13: ClassStyle(horse, {1: Look(((110, 65, 35), (60, 40, 30), (30, 25, 22), (215, 210, 200), (150, 100, 60)),
                                   "flat", jitter=14),
                           2: Look(((30, 25, 20), (70, 50, 35), (200, 190, 170)), "stripes", (0.04, 0.07), (0.2, 0.4))},
                   rotation=6, scale=(0.9, 1.2)),
    14: ClassStyle(motorbike, {1: Look(VEHICLE, "flat", jitter=15), 2: Look(((170, 175, 180), (140, 140, 150))),
                               3: Look(DARK)}, rotation=8),
    15: ClassStyle(person, {1: Look(((230, 190, 160), (190, 140, 100), (120, 80, 55), (250, 215, 190)), jitter=12),
                            2: Look(CLOTHES, "stripes", (0.1, 0.2), (0.0, 0.5)),
                            3: Look(((40, 50, 90), (30, 30, 35), (110, 100, 80), (150, 150, 160)), "noise",
                                    (0.1, 0.2), (0.1, 0.3))}, rotation=10, aspect=(0.75, 1.0), scale=(0.8, 1.2)),
    16: ClassStyle(pottedplant, {1: Look(((50, 120, 40), (30, 90, 35), (90, 150, 50), (40, 70, 30)), "dots",
                                         (0.08, 0.14), (0.3, 0.6), second=(1.5, 1.5, 0.8)),
                                 2: Look(((180, 90, 50), (150, 70, 40), (210, 200, 190), (60, 60, 65)), "stripes",
                                         (0.15, 0.25), (0.1, 0.25), angle=0.0),
                                 3: Look(((160, 80, 45), (120, 60, 35)))}, rotation=6, scale=(0.7, 1.0)),
    17: ClassStyle(sheep, {1: Look(((225, 220, 200), (200, 195, 180), (240, 238, 230)), "dots", (0.06, 0.1),
                                   (0.3, 0.5), second=(0.72, 0.72, 0.68)),
                           2: Look(((40, 35, 30), (200, 190, 175), (90, 75, 65)))}, rotation=6, scale=(0.7, 1.0)),
    18: ClassStyle(sofa, {1: Look(FABRIC + ((110, 70, 40),), "checks", (0.1, 0.22), (0.1, 0.35)),
                          2: Look(FABRIC, "checks", (0.1, 0.22), (0.1, 0.35), second=(0.75, 0.75, 0.75)),
                          3: Look(WOOD)}, rotation=5, scale=(1.0, 1.3)),
    19: ClassStyle(train, {1: Look(VEHICLE + ((40, 100, 60),), "flat", jitter=14),
                           2: Look(((40, 45, 55), (80, 95, 110)), jitter=10),
                           3: Look(((230, 200, 40), (220, 220, 220), (200, 40, 40)))}, rotation=6,
                   aspect=(1.0, 1.3), scale=(1.1, 1.5)),
    20: ClassStyle(tvmonitor, {1: Look(DARK + ((190, 190, 195),), jitter=8),
                               2: Look(((40, 60, 140), (30, 30, 40), (90, 140, 200), (200, 200, 210)), "noise",
                                       (0.2, 0.5), (0.2, 0.6), second=(1.8, 1.5, 1.2))}, rotation=5,
                   aspect=(0.8, 1.2), scale=(0.7, 1.0)),
}
