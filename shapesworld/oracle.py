"""The oracle: read an image back into objects (colour, kind, box, mask) by classical analysis.

1. Colour segmentation. The background colour is the median of the border pixels. Each pixel is
   explained as a mix a*c_i + (1-a)*c_j of two colours from {background} + constants.COLORS and
   takes the dominant one; pure pixels are the case a = 1. Mixing handles the blended edges of a
   resized or generated image without inventing fringe colours (red on white is not pink).
2. Connected components per colour (scipy.ndimage.label, 8-connectivity); tiny ones are noise.
3. Shape classification. Features first: solidity (area / convex-hull area) separates the
   non-convex kinds (star, cross) from the convex ones, and the fill ratio area / (pi R_max^2)
   orders the convex ones (triangle 0.41, square 0.64, pentagon 0.76, hexagon 0.83, circle 1).
   Features only narrow the candidates for unoccluded parts. The decision is made by fitting
   each candidate kind's exact template (centre, circumradius, rotation: a coarse grid, then
   hill-climbing) and keeping the best overlap, where pixels of other colours count as "possibly
   hidden" rather than as misses, so partly occluded shapes are still read right. The template
   uses the renderer's own inside test (scene.polar_inside), so a perfect fit scores 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import ConvexHull, QhullError

from shapesworld.constants import COLORS, KINDS
from shapesworld.scene import PROFILE_SAMPLES, polar_inside, profile, render, sample_scene, unit_area

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
PURE_DISTANCE = 24.0  # RGB distance within which a pixel simply is that palette colour
MAX_RESIDUAL = 60.0  # RGB distance beyond which a pixel is explained by no mix of two colours
HIDDEN_WEIGHT = 0.15  # cost of a template pixel that falls on another colour (possibly hidden)
ROTATION_STEPS = 16  # coarse rotation grid per symmetry period
REFINE_MARGIN = 0.12  # kinds whose coarse fit is this close to the best are refined
SHIFTED_KINDS = 3  # occluded parts: how many best kinds get the centre search
CENTRE_SHIFT = 0.15  # occluded parts: coarse centre offsets, as a fraction of the circumradius
BAND = 3  # half-width in px of the outline band the template fit evaluates
# Rotational symmetry period of each kind (radians); a circle has none.
PERIOD: dict[str, float] = {"circle": 0.0, "square": math.pi / 2, "triangle": 2 * math.pi / 3,
                            "star": 2 * math.pi / 5, "hexagon": math.pi / 3, "pentagon": 2 * math.pi / 5,
                            "cross": math.pi / 2}


@dataclass
class OracleObject:
    kind: str
    color: str
    box: np.ndarray  # (4,) float32 xyxy px
    mask: np.ndarray  # (H, W) bool
    area: int
    score: float = 1.0  # template overlap of the chosen kind, in [0, 1]


# ---- colour segmentation -------------------------------------------------------------------------
def background_color(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)  # (3,)


def segment_colors(image: np.ndarray) -> np.ndarray:
    """(H, W) int: 0 background / unexplained, k + 1 = COLOR_NAMES[k]."""
    _check_image(image)
    h, w, _ = image.shape
    pal = np.concatenate([background_color(image)[None], np.asarray([COLORS[c] for c in COLOR_NAMES], np.float32)])
    px = image.reshape(-1, 3).astype(np.float32)  # (N, 3)
    dist = ((px[:, None, :] - pal[None]) ** 2).sum(-1)  # (N, K + 1)
    label = dist.argmin(axis=1)
    # Pixels near one palette entry are settled; the rest (edges, blends) get the two-colour mix.
    mixed = np.nonzero(dist[np.arange(len(px)), label] > PURE_DISTANCE**2)[0]
    if len(mixed):
        label[mixed] = _mix_labels(px[mixed], pal)
    return label.reshape(h, w)


def _mix_labels(px: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """(N, 3) pixels -> (N,) palette index of the dominant colour of the best two-colour mix (0 if none fits)."""
    i, j = np.triu_indices(len(pal), k=1)  # every pair of palette entries
    d = pal[j] - pal[i]  # (P, 3)
    rel = px[:, None, :] - pal[i][None]  # (N, P, 3)
    a = np.clip((rel * d[None]).sum(-1) / (d * d).sum(-1)[None], 0.0, 1.0)  # (N, P) weight of c_j
    resid = ((rel - a[..., None] * d[None]) ** 2).sum(-1)  # (N, P)
    best = resid.argmin(axis=1)
    rows = np.arange(len(px))
    label = np.where(a[rows, best] >= 0.5, j[best], i[best])
    label[resid[rows, best] > MAX_RESIDUAL**2] = 0
    return label


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
        shape = getattr(image, "shape", None)
        raise ValueError(f"the oracle reads an (H, W, 3) uint8 RGB array, got shape {shape}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image {image.shape[:2]} is too small to read; need at least 8x8 pixels")


# ---- classification ------------------------------------------------------------------------------
def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Solidity, fill ratio (area / pi R_max^2 about the centroid), extent (area / box area)."""
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(float)
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:
        hull_area = area
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    r_max = float(np.sqrt(((corners - (cx, cy)) ** 2).sum(1)).max())
    box_area = float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return {"solidity": area / hull_area, "fill": area / (math.pi * r_max**2), "extent": area / box_area}


class _Fitter:
    """Scores templates (kind, centre, circumradius, rotation) against one component in a crop."""

    def __init__(self, mask: np.ndarray, hidden: np.ndarray):
        # Pixels deep inside the component are inside every template worth considering, so only a
        # band around its outline (plus the possibly hidden pixels) is evaluated.
        core = ndimage.binary_erosion(mask, iterations=BAND)
        near = (ndimage.binary_dilation(mask, iterations=BAND) & ~core) | hidden
        ys, xs = np.nonzero(near)
        self.px, self.py = xs + 0.5, ys + 0.5  # (P,) pixel centres
        on, hid = mask[ys, xs], hidden[ys, xs]
        self.weights = np.stack([on, ~on & ~hid, hid], axis=1).astype(np.float32)  # (P, 3) hit / spill / hidden
        self.core = float(core.sum())
        self.area = float(mask.sum())

    def scores(self, kind: str, params: np.ndarray) -> np.ndarray:
        """params (C, 4) rows (cx, cy, R, rot) -> (C,) overlap in [0, 1]."""
        cx, cy, r, rot = (params[:, i : i + 1] for i in range(4))  # each (C, 1)
        return self._score(polar_inside(kind, self.px[None] - cx, self.py[None] - cy, r, rot))

    def _score(self, t: np.ndarray) -> np.ndarray:
        """(C, P) template membership of the evaluated pixels -> (C,) overlap."""
        hit, spill, hid = (t.astype(np.float32) @ self.weights).T  # one matmul for all three counts
        return (hit + self.core) / (self.area + spill + HIDDEN_WEIGHT * hid)

    def shifted(self, kind: str, start: np.ndarray, occluded: bool) -> tuple[float, np.ndarray]:
        """Best rotation x radius grid over centres shifted by a fraction of the radius (an occluded part's
        visible centroid lies off its true centre, away from the hidden side)."""
        step = CENTRE_SHIFT * start[2]
        shifts = [(dx * step, dy * step) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
        fits = [self.rotations(kind, start + (dx, dy, 0, 0), occluded) for dx, dy in shifts]
        return max(fits, key=lambda f: f[0])

    def rotations(self, kind: str, start: np.ndarray, occluded: bool) -> tuple[float, np.ndarray]:
        """Best of a rotation (x radius) grid at one centre; the angles are computed once."""
        period = PERIOD[kind]
        rots = np.arange(ROTATION_STEPS) * period / ROTATION_STEPS if period else np.zeros(1)
        radii = start[2] * (np.linspace(1.0, 1.15, 3) if occluded else np.ones(1))
        dx, dy = self.px - start[0], self.py - start[1]
        turns = PROFILE_SAMPLES / (2 * math.pi)
        base = (np.arctan2(dy, dx) * turns).astype(np.int64)  # (P,) profile index at rotation 0
        idx = (base[None] - np.rint(rots * turns).astype(np.int64)[:, None]) % PROFILE_SAMPLES  # (A, P)
        ratio = np.sqrt(dx * dx + dy * dy)[None] / profile(kind)[idx]  # (A, P) distance in circumradii
        t = ratio[None] <= radii[:, None, None]  # (Rd, A, P)
        s = self._score(t.reshape(-1, len(self.px)))
        k = int(s.argmax())
        return float(s[k]), np.asarray([start[0], start[1], radii[k // len(rots)], rots[k % len(rots)]])

    def refine(self, kind: str, p: np.ndarray, best: float) -> tuple[float, np.ndarray]:
        """Coordinate hill-climbing over (cx, cy, R, rotation) with shrinking steps."""
        period = PERIOD[kind]
        shift = max(1.0, 0.06 * p[2])  # about a pixel at 128 px; scales with the shape
        steps = np.asarray([shift, shift, 0.04 * p[2], (period or 1.0) / ROTATION_STEPS / 2])
        for _ in range(40):
            moves = np.concatenate([p + np.diag(steps) * sgn for sgn in (1, -1)])
            if not period:
                moves = moves[[0, 1, 2, 4, 5, 6]]
            s = self.scores(kind, moves)
            if s.max() > best + 1e-9:
                best, p = float(s.max()), moves[int(s.argmax())]
            elif steps[0] > 0.2:
                steps = steps / 2
            else:
                break
        return best, p


def classify(mask: np.ndarray, others: np.ndarray) -> tuple[str, float]:
    """Kind of the component `mask` (H, W bool); `others` marks pixels of other colours (possible occluders)."""
    ys, xs = np.nonzero(mask)
    margin = max(3, int(0.4 * math.sqrt(len(xs))))
    y0, x0 = max(ys.min() - margin, 0), max(xs.min() - margin, 0)
    y1, x1 = min(ys.max() + margin + 1, mask.shape[0]), min(xs.max() + margin + 1, mask.shape[1])
    crop, hidden = mask[y0:y1, x0:x1], others[y0:y1, x0:x1]
    occluded = bool((ndimage.binary_dilation(crop, iterations=2) & hidden).any())
    fitter = _Fitter(crop, hidden)
    coarse = _coarse_fits(fitter, crop, hidden, occluded)
    top = max(v[0] for v in coarse.values())
    fine = {k: fitter.refine(k, p, s)[0] for k, (s, p) in coarse.items() if s >= top - REFINE_MARGIN}
    kind = max(fine, key=fine.get)
    return kind, fine[kind]


def _coarse_fits(fitter: _Fitter, crop: np.ndarray, hidden: np.ndarray,
                 occluded: bool) -> dict[str, tuple[float, np.ndarray]]:
    """Best grid fit per candidate kind. Occluded parts also try the outline-circle centre, then a
    centre grid for the best few kinds: their visible centroid lies off the true centre."""
    ys, xs = np.nonzero(crop)
    centres = [(xs.mean() + 0.5, ys.mean() + 0.5)] + ([outline_centre(crop, hidden)] if occluded else [])
    coarse = {}
    for kind in candidate_kinds(shape_features(crop), occluded):
        r0 = math.sqrt(len(xs) / unit_area(kind))
        fits = [fitter.rotations(kind, np.asarray([x, y, r0, 0.0]), occluded) for x, y in centres]
        coarse[kind] = max(fits, key=lambda f: f[0])
    if occluded:
        for kind in sorted(coarse, key=lambda k: coarse[k][0], reverse=True)[:SHIFTED_KINDS]:
            start = coarse[kind][1].copy()
            start[2] = math.sqrt(len(xs) / unit_area(kind))
            coarse[kind] = fitter.shifted(kind, start, occluded)
    return coarse


def outline_centre(mask: np.ndarray, hidden: np.ndarray) -> tuple[float, float]:
    """Centre of the least-squares circle through the outline pixels that border background (not occluders).

    Those pixels lie on the object's true outline, so the fit finds the centre of a partly hidden shape.
    """
    free = ~mask & ~hidden
    edge = mask & (ndimage.binary_dilation(free) if free.any() else np.zeros_like(mask))
    ys, xs = np.nonzero(edge)
    if len(xs) < 8:
        ys, xs = np.nonzero(mask)
        return float(xs.mean() + 0.5), float(ys.mean() + 0.5)
    x, y = xs + 0.5, ys + 0.5
    a = np.stack([x, y, np.ones_like(x)], axis=1)  # Kasa fit: x^2 + y^2 + D x + E y + F = 0
    (d, e, _), *_ = np.linalg.lstsq(a, -(x * x + y * y), rcond=None)
    cx, cy = -d / 2, -e / 2
    h, w = mask.shape
    return float(np.clip(cx, 0, w)), float(np.clip(cy, 0, h))


def candidate_kinds(features: dict[str, float], occluded: bool) -> tuple[str, ...]:
    """Kinds worth fitting: every kind for occluded parts, else those the features allow."""
    if occluded:
        return KINDS
    if features["solidity"] < 0.8:
        return ("star", "cross")
    fill = features["fill"]
    plausible = {"triangle": (0.0, 0.6), "square": (0.5, 0.78), "pentagon": (0.62, 0.9),
                 "hexagon": (0.66, 0.95), "circle": (0.78, 1.1), "star": (0.0, 0.5), "cross": (0.0, 0.6)}
    out = tuple(k for k, (lo, hi) in plausible.items() if lo <= fill < hi and features["solidity"] >= 0.8)
    return out or KINDS


# ---- reading an image ----------------------------------------------------------------------------
def read_objects(image: np.ndarray, min_area: int | None = None) -> list[OracleObject]:
    """Every coloured object the oracle finds in an (H, W, 3) uint8 image."""
    labels = segment_colors(image)
    h, w = labels.shape
    min_area = min_area if min_area is not None else max(6, int(6e-4 * h * w))
    found = []
    for k, color in enumerate(COLOR_NAMES):
        comp, n = ndimage.label(labels == k + 1, structure=np.ones((3, 3)))
        others = (labels > 0) & (labels != k + 1)
        for i in range(1, n + 1):
            # Holes of unexplained pixels are noise (shapes have no holes); holes of other colours are occluders.
            m = comp == i
            m |= ndimage.binary_fill_holes(m) & (labels == 0)
            area = int(m.sum())
            if area < min_area:
                continue
            kind, score = classify(m, others)
            found.append(OracleObject(kind, color, _box(m), m, area, score))
    return found


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


# ---- agreement with ground truth -----------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def match_objects(truth: list[dict], found: list[OracleObject]) -> dict[str, int]:
    """One-to-one match by box IoU among same-colour pairs; counts right/wrong kinds, misses and spurious."""
    if not truth or not found:
        return {"matched": 0, "wrong_kind": 0, "missed": len(truth), "spurious": len(found)}
    iou = box_iou(np.stack([t["box"] for t in truth]), np.stack([f.box for f in found]))
    same = np.asarray([[t["color"] == f.color for f in found] for t in truth])
    iou = np.where(same, iou, 0.0)
    rows, cols = linear_sum_assignment(-iou)
    pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= 0.5]
    matched = sum(truth[r]["kind"] == found[c].kind for r, c in pairs)
    return {"matched": matched, "wrong_kind": len(pairs) - matched, "missed": len(truth) - len(pairs),
            "spurious": len(found) - len(pairs)}


def check_agreement(n: int = 200, seed: int = 0, image_size: int = 128) -> dict:
    """Render `n` scenes and report the fraction of ground-truth objects the oracle reads right.

    Right means same kind, same colour and box IoU >= 0.5. `spurious` counts oracle objects
    that match nothing.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    totals = {"objects": 0, "matched": 0, "wrong_kind": 0, "missed": 0, "spurious": 0}
    for _ in range(n):
        scene = sample_scene(rng, image_size)
        truth = [{"kind": o.kind, "color": o.color, "box": o.box} for o in scene.objects]
        counts = match_objects(truth, read_objects(render(scene)))
        totals["objects"] += len(truth)
        for key, v in counts.items():
            totals[key] += v
    return {"agreement": totals["matched"] / max(totals["objects"], 1), "scenes": n, "image_size": image_size,
            **totals, "seconds": round(time.perf_counter() - start, 2)}
