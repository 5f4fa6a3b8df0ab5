"""Scenes: sampled object layouts, their exact ground truth and a deterministic renderer.

Coordinates are continuous pixels: pixel (row i, column j) covers [j, j+1) x [i, i+1), so its
centre is (j + 0.5, i + 0.5) and a box of visible pixels is [xmin, ymin, xmax + 1, ymax + 1].

Every shape is a polygon that is star-shaped about its centre (circles are the limit), so
"inside" is one test in polar form: |p - c| <= R * profile_k(angle(p - c) - rotation). The
renderer and the oracle share that test, and the per-object id map the renderer paints is the
only source of the instance masks, so masks match the rendered pixels exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
from scipy import ndimage

from shapesworld.constants import COLORS, KEYPOINTS_PER_KIND, KINDS, NUM_KEYPOINTS

STAR_INNER = 0.5  # inner / outer radius of the 5-point star
CROSS_WIDTH = 0.36  # arm half-width / arm half-length of the cross
PROFILE_SAMPLES = 4096  # angular resolution of the polar profile tables
SIZE_RANGE = (0.09, 0.17)  # circumradius as a fraction of the image side (>= 23 px diameter at 128 px)
MIN_VISIBLE = 0.75  # every object keeps at least this fraction of its own area visible
SAME_COLOR_GAP = 3  # pixels between objects of one colour (keeps the oracle's components exact)
MAX_OBJECTS = 8
CENTRE_RADIUS = 0.05  # radius of the dense "centre" label's disk, as a fraction of the image side
# Channels of Scene.dense_labels: the coverage of each kind, of each colour, and object centres.
DENSE_LABELS: tuple[str, ...] = (*KINDS, *COLORS, "centre")


# ---- shape geometry ----------------------------------------------------------------------------
@cache
def unit_vertices(kind: str) -> np.ndarray:
    """(V, 2) outline vertices for circumradius 1, rotation 0, first vertex at the top, clockwise on screen."""
    if kind not in KINDS:
        raise ValueError(f"unknown shape kind {kind!r}; accepted: {', '.join(KINDS)}")
    if kind == "circle":
        n, radii = 96, [1.0] * 96
    elif kind == "star":
        n, radii = 10, [1.0, STAR_INNER] * 5
    elif kind == "cross":
        return _cross_vertices()
    else:
        n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[kind]
        radii = [1.0] * n
    ang = -math.pi / 2 + 2 * math.pi * np.arange(n) / n
    if kind == "square":
        ang = ang + math.pi / 4  # axis-aligned at rotation 0
    return np.stack([np.cos(ang) * radii, np.sin(ang) * radii], axis=1)


def _cross_vertices() -> np.ndarray:
    arm = 1.0 / math.hypot(1.0, CROSS_WIDTH)  # outer corners lie on the unit circle
    w = CROSS_WIDTH * arm
    pts = [(w, -arm), (w, -w), (arm, -w), (arm, w), (w, w), (w, arm),
           (-w, arm), (-w, w), (-arm, w), (-arm, -w), (-w, -w), (-w, -arm)]
    return np.asarray(pts, dtype=np.float64)


@cache
def unit_keypoints(kind: str) -> np.ndarray:
    """(K, 2) defined points for circumradius 1, rotation 0: vertices, star tips, arm ends, compass points."""
    if kind == "circle":
        return np.asarray([(0, -1), (1, 0), (0, 1), (-1, 0)], dtype=np.float64)
    if kind == "star":
        return unit_vertices(kind)[0::2]
    if kind == "cross":
        arm = 1.0 / math.hypot(1.0, CROSS_WIDTH)
        return np.asarray([(0, -arm), (arm, 0), (0, arm), (-arm, 0)], dtype=np.float64)
    return unit_vertices(kind)


@cache
def profile(kind: str) -> np.ndarray:
    """(PROFILE_SAMPLES + 1,) outline radius for circumradius 1 at angles 2*pi*i/PROFILE_SAMPLES (wraps)."""
    if kind == "circle":
        return np.ones(PROFILE_SAMPLES + 1)
    phi = 2 * math.pi * np.arange(PROFILE_SAMPLES + 1) / PROFILE_SAMPLES
    u = np.stack([np.cos(phi), np.sin(phi)], axis=1)  # (S, 2) ray directions
    a = unit_vertices(kind)
    e = np.roll(a, -1, axis=0) - a  # (V, 2) edges
    # Solve t*u = a + s*e for every (ray, edge): 2x2 systems by Cramer's rule.
    det = -u[:, None, 0] * e[None, :, 1] + u[:, None, 1] * e[None, :, 0]  # (S, V)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-a[None, :, 0] * e[None, :, 1] + a[None, :, 1] * e[None, :, 0]) / det
        s = (u[:, None, 0] * a[None, :, 1] - u[:, None, 1] * a[None, :, 0]) / det
    hit = (t > 0) & (s >= -1e-9) & (s <= 1 + 1e-9) & np.isfinite(t)
    return np.where(hit, t, np.inf).min(axis=1)


@cache
def unit_area(kind: str) -> float:
    """Area of the shape at circumradius 1."""
    if kind == "circle":
        return math.pi
    x, y = unit_vertices(kind).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polar_inside(kind: str, dx: np.ndarray, dy: np.ndarray, radius: float, rotation: float) -> np.ndarray:
    """Whether offsets (dx, dy) from the centre lie inside `kind` of circumradius `radius` turned by `rotation`."""
    theta = (np.arctan2(dy, dx) - rotation) % (2 * math.pi)
    idx = theta * (PROFILE_SAMPLES / (2 * math.pi))
    lo = idx.astype(np.int64)
    frac = idx - lo
    prof = profile(kind)
    edge = prof[lo] * (1 - frac) + prof[np.minimum(lo + 1, PROFILE_SAMPLES)] * frac
    return dx * dx + dy * dy <= (radius * edge) ** 2


# ---- data types ----------------------------------------------------------------------------------
@dataclass
class ObjectSpec:
    """What to draw: kind, colour name, centre (x, y) px, circumradius px, rotation rad, depth (0 = back)."""

    kind: str
    color: str
    center: tuple[float, float]
    size: float
    rotation: float = 0.0
    depth: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}; accepted: {', '.join(KINDS)}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; accepted: {', '.join(COLORS)}")
        if self.size <= 0:
            raise ValueError(f"object size (circumradius in px) must be positive, got {self.size}")


@dataclass
class SceneObject(ObjectSpec):
    """An object with its exact ground truth in the rendered scene."""

    box: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # (4,) xyxy px of visible pixels
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # (H, W) visible pixels
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((NUM_KEYPOINTS, 3), np.float32))
    area: int = 0  # visible pixels
    full_area: int = 0  # pixels the object would cover unoccluded

    @property
    def category(self) -> str:
        return self.kind

    @property
    def category_id(self) -> int:
        return KINDS.index(self.kind) + 1

    @property
    def spec(self) -> ObjectSpec:
        return ObjectSpec(self.kind, self.color, self.center, self.size, self.rotation, self.depth)

    @property
    def visible_fraction(self) -> float:
        return self.area / max(self.full_area, 1)


@dataclass(frozen=True)
class Background:
    color: tuple[int, int, int]
    noise: float = 0.0  # std of the per-pixel texture, in grey levels
    noise_seed: int = 0


@dataclass
class Scene:
    image_size: int
    background: Background
    objects: list[SceneObject]  # in depth order, back to front
    id_map: np.ndarray  # (H, W) uint8: 0 background, k + 1 = objects[k]

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8: the same as render(scene)."""
        return render(self)

    def dense_labels(self) -> np.ndarray:
        """(H, W, len(DENSE_LABELS)) float32 in {0, 1}: per pixel, the kind and the colour of the visible
        object there, and whether it lies within CENTRE_RADIUS of an object's centre (a handle for counting).
        The model's dense probe (mllm.config.DenseProbeConfig) learns these, pooled to its patch grid."""
        size, n_kinds = self.image_size, len(KINDS)
        kind_of = np.zeros(len(self.objects) + 1, np.int64)  # id -> channel; id 0 (background) is dropped
        colour_of = np.zeros(len(self.objects) + 1, np.int64)
        for k, o in enumerate(self.objects):
            kind_of[k + 1] = KINDS.index(o.kind)
            colour_of[k + 1] = n_kinds + list(COLORS).index(o.color)
        out = np.zeros((size, size, len(DENSE_LABELS)), np.float32)
        ys, xs = np.nonzero(self.id_map)
        ids = self.id_map[ys, xs]
        out[ys, xs, kind_of[ids]] = 1.0
        out[ys, xs, colour_of[ids]] = 1.0
        grid_y, grid_x = np.mgrid[0:size, 0:size] + 0.5
        r2 = (CENTRE_RADIUS * size) ** 2
        for o in self.objects:
            cx, cy = o.center
            out[..., -1] = np.maximum(out[..., -1], (grid_x - cx) ** 2 + (grid_y - cy) ** 2 <= r2)
        return out


# ---- rendering -----------------------------------------------------------------------------------
def full_mask(spec: ObjectSpec, image_size: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside the unoccluded shape."""
    cx, cy = spec.center
    r = spec.size
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, image_size)
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, image_size)
    out = np.zeros((image_size, image_size), bool)
    if x0 >= x1 or y0 >= y1:
        return out
    ys, xs = np.mgrid[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = polar_inside(spec.kind, xs + 0.5 - cx, ys + 0.5 - cy, r, spec.rotation)
    return out


def keypoints_xy(spec: ObjectSpec) -> np.ndarray:
    """(K, 2) defined points in pixels, reordered to start at the topmost and run clockwise on screen."""
    pts = unit_keypoints(spec.kind)
    if spec.kind != "circle":  # circle points are compass points, independent of rotation
        c, s = math.cos(spec.rotation), math.sin(spec.rotation)
        pts = pts @ np.asarray([[c, s], [-s, c]])
        first = int(np.argmin(pts[:, 1] + 1e-9 * pts[:, 0]))
        pts = np.roll(pts, -first, axis=0)
    return pts * spec.size + np.asarray(spec.center)


def render(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 image: background (with its texture) and the objects painted from the id map."""
    size = scene.image_size
    bg = np.broadcast_to(np.asarray(scene.background.color, np.float32), (size, size, 3)).copy()
    if scene.background.noise > 0:
        noise = np.random.default_rng(scene.background.noise_seed).normal(0, scene.background.noise, (size, size, 1))
        bg += noise.astype(np.float32)
    img = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    palette = np.asarray([COLORS[o.color] for o in scene.objects], np.uint8).reshape(-1, 3)
    fg = scene.id_map > 0
    img[fg] = palette[scene.id_map[fg] - 1]
    return img


def build_scene(specs: list[ObjectSpec], image_size: int, background: Background) -> Scene:
    """Paint `specs` back to front into an id map and derive every object's ground truth from it."""
    order = sorted(range(len(specs)), key=lambda k: specs[k].depth)
    specs = [replace(specs[k], depth=d) for d, k in enumerate(order)]
    if len(specs) > 255:
        raise ValueError(f"at most 255 objects per scene, got {len(specs)}")
    fulls = [full_mask(s, image_size) for s in specs]
    id_map = np.zeros((image_size, image_size), np.uint8)
    for k, m in enumerate(fulls):
        id_map[m] = k + 1
    objects = [_ground_truth(s, k, fulls[k], id_map, specs) for k, s in enumerate(specs)]
    return Scene(image_size, background, objects, id_map)


def _ground_truth(spec: ObjectSpec, k: int, full: np.ndarray, id_map: np.ndarray, specs: list[ObjectSpec]) -> SceneObject:
    mask = id_map == k + 1
    box = mask_box(mask)
    kps = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    xy = keypoints_xy(spec)
    size = id_map.shape[0]
    for j, (x, y) in enumerate(xy):
        hidden = any(polar_inside(f.kind, np.float64(x - f.center[0]), np.float64(y - f.center[1]), f.size, f.rotation)
                     for f in specs[k + 1:])
        if hidden or box[2] <= box[0]:
            kps[j] = (min(max(x, 0.0), size), min(max(y, 0.0), size), 1)
        else:  # a sharp tip can poke past the last pixel whose centre is inside: keep it in the visible box
            kps[j] = (min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3]), 2)
    assert len(xy) == KEYPOINTS_PER_KIND[spec.kind]
    return SceneObject(spec.kind, spec.color, spec.center, spec.size, spec.rotation, spec.depth,
                       box=box, mask=mask, keypoints=kps, area=int(mask.sum()), full_area=int(full.sum()))


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 xyxy box around the True pixels (zeros for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4, np.float32)
    return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


# ---- sampling ------------------------------------------------------------------------------------
def sample_background(rng: np.random.Generator) -> Background:
    grey = int(rng.integers(222, 248))
    tint = rng.integers(-6, 7, size=3)
    color = tuple(int(v) for v in np.clip(grey + tint, 0, 255))
    noise = float(rng.uniform(1.5, 5.0)) if rng.random() < 0.5 else 0.0
    return Background(color, noise, int(rng.integers(0, 2**31 - 1)))


def random_spec(rng: np.random.Generator, image_size: int, kind: str | None = None, color: str | None = None,
                size_range: tuple[float, float] = SIZE_RANGE, depth: int = 0) -> ObjectSpec:
    """One object fully inside the image, with random (or given) kind and colour."""
    r = float(rng.uniform(*size_range)) * image_size
    cx, cy = rng.uniform(r + 1, image_size - r - 1, size=2)
    return ObjectSpec(kind or str(rng.choice(KINDS)), color or str(rng.choice(list(COLORS))),
                      (float(cx), float(cy)), r, float(rng.uniform(0, 2 * math.pi)), depth)


def scene_is_valid(scene: Scene, min_visible: float = MIN_VISIBLE) -> bool:
    """The constraints that keep ground truth readable: mostly visible, one piece, same colours apart."""
    for o in scene.objects:
        if o.visible_fraction < min_visible:
            return False
        if ndimage.label(o.mask, structure=np.ones((3, 3)))[1] != 1:
            return False
    return not _same_color_close(scene)


def _same_color_close(scene: Scene) -> bool:
    grown: dict[str, np.ndarray] = {}
    for o in scene.objects:
        region = ndimage.binary_dilation(full_mask(o.spec, scene.image_size), iterations=SAME_COLOR_GAP)
        if o.color in grown and (grown[o.color] & region).any():
            return True
        grown[o.color] = grown.get(o.color, np.zeros_like(region)) | region
    return False


def place_objects(rng: np.random.Generator, wants: list[tuple[str | None, str | None]], image_size: int,
                  background: Background, size_range: tuple[float, float] = SIZE_RANGE,
                  fixed: list[ObjectSpec] | None = None, tries: int = 60) -> Scene | None:
    """Add one object per (kind or None, colour or None) in `wants` on top of `fixed`; None when it won't fit.

    Checks are incremental (a new object goes on top, so only the ones under it lose pixels); the
    ground truth is built once at the end.
    """
    specs = sorted(fixed or [], key=lambda s: s.depth)
    specs = [replace(s, depth=d) for d, s in enumerate(specs)]
    fulls = [full_mask(s, image_size) for s in specs]
    id_map = np.zeros((image_size, image_size), np.uint8)
    for k, m in enumerate(fulls):
        id_map[m] = k + 1
    for kind, color in wants:
        for _ in range(tries):
            cand = random_spec(rng, image_size, kind, color, size_range, depth=len(specs))
            full = full_mask(cand, image_size)
            trial = id_map.copy()
            trial[full] = len(specs) + 1
            if _fits(cand, full, trial, specs, fulls):
                specs, fulls, id_map = specs + [cand], fulls + [full], trial
                break
        else:
            return None
    return build_scene(specs, image_size, background)


def _fits(cand: ObjectSpec, full: np.ndarray, trial: np.ndarray, specs: list[ObjectSpec], fulls: list[np.ndarray]) -> bool:
    """Would `cand` on top keep every object under it mostly visible, in one piece, and apart from its colour?"""
    near = ndimage.binary_dilation(full, iterations=SAME_COLOR_GAP)
    for k, (s, f) in enumerate(zip(specs, fulls, strict=True)):
        if s.color == cand.color and (near & f).any():
            return False
        if (full & f).any():
            vis = trial == k + 1
            if vis.sum() < MIN_VISIBLE * f.sum() or ndimage.label(vis, structure=np.ones((3, 3)))[1] != 1:
                return False
    return True


def sample_scene(rng: np.random.Generator, image_size: int = 128, n_objects: int | None = None) -> Scene:
    """A random scene of 1-8 objects (or exactly `n_objects`) that satisfies `scene_is_valid`."""
    if n_objects is not None and not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n_objects}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px so shapes stay distinguishable, got {image_size}")
    for _ in range(20):
        n = n_objects or int(rng.integers(1, MAX_OBJECTS + 1))
        scene = place_objects(rng, [(None, None)] * n, image_size, sample_background(rng))
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {n_objects} objects on a {image_size} px image; ask for fewer objects")


def render_objects(specs: list[ObjectSpec], image_size: int, rng: np.random.Generator) -> Scene:
    """A scene of exactly `specs` (generation / editing targets) on a random background; render() gives the image."""
    return build_scene(list(specs), image_size, sample_background(rng))
