"""Task samples for every SuperLink task, with instructions in many phrasings and exact answers.

Answers follow mllm/vocab.py: a routed phrase is "<phrase> [ROUTE]" (no query placeholders; the
processor inserts them), parts are separated by ", ", "; " or " and ", and native localisation is
written with `mllm.codec.LocationCodec`. For every routing token in an answer there is one
`RouteTarget`, in order, whose `phrase` is what `mllm.vocab.phrase_before` reads before it.

Instructions tell routed and native variants apart by wording: native ones ask for coordinates.

Wording (`make_sample(..., wording=...)`): "template" picks from the fixed `TEMPLATES` (evaluation's
reference wording, the default); "train" and "heldout" word the same request from the grammar in
`shapesworld.grammar` (its training part, or with at least one held-out choice); "noisy" is "train" with
pseudo-word fillers that ask for nothing (`grammar.FILLER_RATE` of the grammar samples), "noisy_mixed" the same
with longer fillers that mix in neutral function words of the training grammar. The wording never
changes the scene, the request's content or the answer: sample k of a seed is the same in every mode
but for its instruction, because wordings draw from a generator derived from the sample's, not from it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage

from mllm.codec import LocationCodec
from mllm.localize import DEFAULT_POLYGON_POINTS
from mllm.scribble import rasterize_scribble
from mllm.vocab import IMAGE_TOKEN, REGION_TOKEN
from router.samples import RouteTarget, TaskSample
from shapesworld import grammar
from shapesworld.constants import COLORS, DEFAULT_IMAGE_SIZE, KINDS, NUM_KEYPOINTS, SPLIT_SEEDS
from shapesworld.scene import (
    ObjectSpec,
    Scene,
    SceneObject,
    build_scene,
    place_objects,
    render,
    sample_background,
    sample_scene,
    scene_is_valid,
)

TASKS: tuple[str, ...] = ("caption", "vqa", "grounding", "detection", "segmentation", "native_detection",
                          "native_grounding", "polygon", "keypoints", "generation", "editing", "region", "compound",
                          "scribble")
LARGE_SIZES = (0.15, 0.25)  # generation / editing objects: big enough to survive a 32 px generator
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
# Polygon answers draw their point count from this range (phrasings without a count use the default).
POLYGON_POINTS = tuple(range(4, 21))


# ---- phrasings -----------------------------------------------------------------------------------
TEMPLATES: dict[str, tuple[str, ...]] = {
    "caption": ("Describe the image.", "What is in this picture?", "Write a short caption for the image.",
                "List the shapes you see.", "Give a brief description of this scene.", "What shapes are in the image?",
                "Caption this image.", "Describe what you see.", "Summarise the contents of the picture.",
                "Tell me which objects are shown."),
    "vqa_count_kind": ("How many {kinds} are there?", "Count the {kinds}.", "How many {kinds} can you see?",
                       "What is the number of {kinds} in the image?"),
    "vqa_count_color": ("How many {color} shapes are there?", "Count the {color} objects.",
                        "How many objects are {color}?", "What is the number of {color} shapes?"),
    "vqa_color": ("What colour is the {kind}?", "Which colour does the {kind} have?", "What is the colour of the {kind}?",
                  "Tell me the colour of the {kind}."),
    "vqa_shape": ("What shape is the {color} object?", "Which shape is {color}?", "What kind of shape is the {color} one?",
                  "Name the shape of the {color} object."),
    "vqa_exists": ("Is there a {name}?", "Does the image contain a {name}?", "Can you see a {name}?",
                   "Is any {name} present?"),
    "vqa_side": ("Is the {name} on the left or the right?", "On which side of the image is the {name}, left or right?",
                 "Is the {name} in the left or the right half?", "Left or right: where is the {name}?"),
    "vqa_height": ("Is the {name} at the top or the bottom?", "Is the {name} in the top or the bottom half?",
                   "Top or bottom: where is the {name}?", "Is the {name} near the top or near the bottom?"),
    "grounding": ("Where is the {expr}?", "Find the {expr}.", "Locate the {expr} in the image.", "Show me the {expr}.",
                  "Point out the {expr}.", "Ground the {expr}.", "Can you find the {expr}?", "Highlight the {expr}.",
                  "Which object is the {expr}? Locate it.", "Mark the {expr} in the picture."),
    "native_grounding": ("What are the coordinates of the {expr}?", "Give the box coordinates of the {expr}.",
                         "Output the bounding box of the {expr} as coordinates.",
                         "Where is the {expr}? Answer with coordinates.", "Write the box of the {expr} in coordinates.",
                         "Report the coordinates of the {expr}.", "Tell me the box coordinates for the {expr}.",
                         "Give me the location of the {expr} as a box.", "Return the coordinates of the {expr}.",
                         "Provide box coordinates for the {expr}."),
    "detection": ("Detect {cats}.", "Find all instances of {cats}.", "Detect every {cats} in the image.",
                  "Locate all objects of these categories: {cats}.", "Please detect: {cats}.",
                  "Where are the objects of class {cats}?", "Draw boxes around each {cats}.",
                  "Detect objects of categories {cats}.", "Run detection for {cats}.", "Find every {cats}."),
    "segmentation": ("Segment {cats}.", "Give instance masks for {cats}.", "Segment every {cats} in the image.",
                     "Produce a mask for each {cats}.", "Please segment: {cats}.", "Which pixels belong to each {cats}?",
                     "Cut out every {cats}.", "Run instance segmentation for {cats}.", "Mask all instances of {cats}.",
                     "Outline the pixels of every {cats}."),
    "native_detection": ("Detect {cats} and give their box coordinates.", "Output the box coordinates of every {cats}.",
                         "List the boxes of every {cats} as coordinates.", "Where exactly is each {cats}? Answer with coordinates.",
                         "Give me coordinates for each {cats}.", "Write the box of every {cats} in coordinates.",
                         "Return class and box coordinates for {cats}.", "Report the coordinates of each {cats}.",
                         "Find {cats} and reply with box coordinates.", "Enumerate each {cats} with box coordinates."),
    "polygon": ("Outline every {cats} with a polygon of {n} points.", "Give a {n}-point polygon for each {cats}.",
                "Segment {cats} as polygons with {n} vertices.", "Trace each {cats} with {n} points.",
                "Describe the outline of every {cats} using {n} coordinate pairs.",
                "Write a polygon of {n} points around each {cats}.", "Return a {n}-vertex polygon for every {cats}.",
                "Draw a polygon with {n} corners around every {cats}.", "Polygon segmentation of {cats} with {n} points.",
                "Give the contour of each {cats} as {n} points.", "Segment each {cats} with a {n}-point polygon.",
                "Outline every {cats} using {n} vertices.", "Give {n}-vertex outlines of every {cats}.",
                "Outline each {cats} with a polygon.", "Trace every {cats} as polygons."),
    "keypoints": ("Find the keypoints of every {cats}.", "Estimate the pose of each {cats}.",
                  "Locate the corners of each {cats}.", "Detect the keypoints of {cats}.", "Where are the vertices of each {cats}?",
                  "Give the keypoints for every {cats}.", "Mark the key points of every {cats}.",
                  "Run keypoint detection for {cats}.", "Find the defining points of each {cats}.",
                  "Show the keypoints of each {cats}."),
    "generation": ("Draw {desc}.", "Generate an image of {desc}.", "Create a picture with {desc}.", "Paint {desc}.",
                   "Make an image showing {desc}.", "Render {desc} on a plain background.", "Can you draw {desc}?",
                   "I want a picture of {desc}.", "Produce an image containing {desc}.", "Sketch {desc}."),
    "edit_recolor": ("Make the {name} {color}.", "Change the colour of the {name} to {color}.",
                     "Recolour the {name} {color}.", "Paint the {name} {color}."),
    "edit_remove": ("Remove the {name}.", "Delete the {name} from the image.", "Erase the {name}.",
                    "Take the {name} out of the picture."),
    "edit_add": ("Add {obj}.", "Put {obj} in the image.", "Insert {obj} into the picture.", "Draw {obj} as well."),
    "edit_move": ("Move the {name} {direction}.", "Shift the {name} {direction}.", "Push the {name} {direction}.",
                  "Slide the {name} {direction}."),
    "region_what": ("What is in {region}?", "What do you see in {region}?", "Describe the object in {region}.",
                    "What object is at {region}?"),
    "region_color": ("What colour is the object in {region}?", "Which colour is {region}?",
                     "Tell me the colour of the shape at {region}."),
    "region_shape": ("What shape is in {region}?", "Which kind of shape is {region}?",
                     "Name the shape at {region}."),
    "compound2": ("{a} and {b}.", "Please {a}, then {b}.", "First {a}; then {b}.", "{a}, and also {b}.",
                  "Could you {a} and {b}?", "I need you to {a} and to {b}.", "{a}. After that, {b}.",
                  "Do two things: {a}; {b}.", "{a} as well as {b}.", "Both {a} and {b}, please."),
    "compound3": ("{a}, {b} and {c}.", "Please {a}, {b}, then {c}.", "First {a}; then {b}; finally {c}.",
                  "Could you {a}, {b} and {c}?", "Do three things: {a}; {b}; {c}.", "{a}. Also {b}. Finally {c}.",
                  "I need you to {a}, to {b} and to {c}.", "{a}, then {b}, then {c}.", "{a}; {b}; {c}.",
                  "Three jobs: {a}, {b} and {c}."),
    "clause_det": ("detect every {cats}", "find each {cats}", "detect {cats}", "locate each {cats}"),
    "clause_seg": ("segment every {cats}", "give masks for {cats}", "segment {cats}", "cut out each {cats}"),
    "clause_grd": ("find the {expr}", "locate the {expr}", "point out the {expr}", "show me the {expr}"),
    "clause_pose": ("find the keypoints of every {cats}", "estimate the pose of each {cats}",
                    "locate the corners of each {cats}", "give the keypoints of {cats}"),
    "clause_gen": ("draw {desc}", "generate an image of {desc}", "paint {desc}", "make a picture of {desc}"),
}
TASK_TEMPLATES: dict[str, tuple[str, ...]] = {
    "caption": ("caption",), "grounding": ("grounding",), "native_grounding": ("native_grounding",),
    "detection": ("detection",), "segmentation": ("segmentation",), "native_detection": ("native_detection",),
    "polygon": ("polygon",), "keypoints": ("keypoints",), "generation": ("generation",),
    "vqa": ("vqa_count_kind", "vqa_count_color", "vqa_color", "vqa_shape", "vqa_exists", "vqa_side", "vqa_height"),
    "editing": ("edit_recolor", "edit_remove", "edit_add", "edit_move"),
    "region": ("region_what", "region_color", "region_shape"),
    "scribble": ("region_what", "region_color", "region_shape"),
    "compound": ("compound2", "compound3"),
}


def phrasings(task: str) -> list[str]:
    """Every instruction template a task draws from."""
    return [t for key in TASK_TEMPLATES[task] for t in TEMPLATES[key]]


# ---- words ---------------------------------------------------------------------------------------
def plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def plural_phrase(category: str) -> str:
    """"red circle" -> "red circles": a category's plural, as a request may name it ("find the red circles")."""
    *words, kind = category.split()
    return " ".join([*words, plural(kind)])


def category_slots(cats: Sequence[str]) -> dict[str, str]:
    """The ways a request names its categories: "red circle and star", "red circles and stars",
    "the red circles and the stars", "every red circle and every star"."""
    return {"cats": join_words(cats), "cats_pl": join_words([plural_phrase(c) for c in cats]),
            "the_cats_pl": join_words([f"the {plural_phrase(c)}" for c in cats]),
            "cats_every": join_words([f"every {c}" for c in cats])}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def counted(n: int, color: str | None, kind: str) -> str:
    """(2, "red", "circle") -> "two red circles"; (1, "orange", "star") -> "an orange star"."""
    words = " ".join(w for w in (color, kind if n == 1 else plural(kind)) if w)
    return f"{article(words)} {words}" if n == 1 else f"{NUMBERS[n]} {words}"


def join_words(items: Sequence[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _with_image(text: str) -> str:
    return f"{IMAGE_TOKEN}\n{text}"


def describe_groups(objects: Sequence[SceneObject | ObjectSpec]) -> str:
    """Objects grouped by (colour, kind) in order of first appearance from the left: "two red circles and a blue star"."""
    groups: dict[tuple[str, str], int] = {}
    for o in sorted(objects, key=lambda o: o.center[0]):
        groups[(o.color, o.kind)] = groups.get((o.color, o.kind), 0) + 1
    return join_words([counted(n, c, k) for (c, k), n in groups.items()])


# ---- selections ----------------------------------------------------------------------------------
def _matches(o: SceneObject, category: str) -> bool:
    """A category is a kind ("circle") or a colour and a kind ("red circle")."""
    parts = category.split()
    return o.kind == parts[-1] and (len(parts) == 1 or o.color == parts[0])


def _stack(objs: list[SceneObject], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 4) boxes, (n, H, W) masks, (n, K, 3) keypoints."""
    boxes = np.asarray([o.box for o in objs], np.float32).reshape(-1, 4)
    masks = np.asarray([o.mask for o in objs], bool).reshape(-1, size, size)
    kps = np.asarray([o.keypoints for o in objs], np.float32).reshape(-1, NUM_KEYPOINTS, 3)
    return boxes, masks, kps


def sample_categories(rng: np.random.Generator, scene: Scene, max_n: int = 3) -> list[str]:
    """1..max_n distinct categories, mostly present in the scene, sometimes absent; kinds or colour + kind."""
    with_color = rng.random() < 0.35
    present = sorted({f"{o.color} {o.kind}" if with_color else o.kind for o in scene.objects})
    n = int(rng.integers(1, max_n + 1))
    cats = list(rng.permutation(present)[: n])
    if rng.random() < 0.3 or not cats:
        extra = f"{_pick(rng, list(COLORS))} {_pick(rng, KINDS)}" if with_color else _pick(rng, KINDS)
        if extra not in cats and len(cats) < max_n + 1:
            cats.append(extra)
    return [str(c) for c in cats]


def referring_expressions(scene: Scene) -> list[tuple[str, SceneObject]]:
    """Expressions that pick out exactly one object: attributes, extremes, relations."""
    objs = scene.objects
    out = []
    for o in objs:
        if sum(p.kind == o.kind and p.color == o.color for p in objs) == 1:
            out.append((f"{o.color} {o.kind}", o))
        if sum(p.kind == o.kind for p in objs) == 1:
            out.append((o.kind, o))
        if sum(p.color == o.color for p in objs) == 1:
            out.append((f"{o.color} shape", o))
    out += _extremes(objs) + _relations(objs)
    return out


def _extremes(objs: list[SceneObject]) -> list[tuple[str, SceneObject]]:
    out = []
    tests: dict[str, Callable[[SceneObject], float]] = {
        "leftmost": lambda o: o.center[0], "rightmost": lambda o: -o.center[0],
        "topmost": lambda o: o.center[1], "lowest": lambda o: -o.center[1],
        "smallest": lambda o: o.area, "largest": lambda o: -o.area,
    }
    for kind in sorted({o.kind for o in objs}):  # sorted: set order changes with PYTHONHASHSEED
        group = [o for o in objs if o.kind == kind]
        if len(group) < 2:
            continue
        for word, key in tests.items():
            ranked = sorted(group, key=key)
            gap = key(ranked[1]) - key(ranked[0])
            if gap > (0.25 * ranked[0].area if word in ("smallest", "largest") else 6):
                out.append((f"{word} {kind}", ranked[0]))
    return out


def _relations(objs: list[SceneObject]) -> list[tuple[str, SceneObject]]:
    unique = [o for o in objs if sum(p.kind == o.kind for p in objs) == 1]
    out = []
    for a in unique:
        for b in unique:
            if a is b:
                continue
            dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
            if dy < -8 and abs(dy) > abs(dx):
                out.append((f"{a.kind} above the {b.kind}", a))
            if dy > 8 and abs(dy) > abs(dx):
                out.append((f"{a.kind} below the {b.kind}", a))
            if dx < -8 and abs(dx) > abs(dy):
                out.append((f"{a.kind} to the left of the {b.kind}", a))
            if dx > 8 and abs(dx) > abs(dy):
                out.append((f"{a.kind} to the right of the {b.kind}", a))
    return out


def polygon_points(mask: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) outline points of a mask: the farthest mask point on n rays from its centroid, from the top, clockwise."""
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    ang = -math.pi / 2 + 2 * math.pi * np.arange(n) / n
    t = np.arange(0, mask.shape[0] * 1.5, 0.25)  # (T,) distances along each ray
    px = cx + np.cos(ang)[:, None] * t[None]  # (n, T)
    py = cy + np.sin(ang)[:, None] * t[None]
    h, w = mask.shape
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    on = np.zeros_like(inside)
    on[inside] = mask[py[inside].astype(int), px[inside].astype(int)]
    last = np.where(on.any(1), on.shape[1] - 1 - np.argmax(on[:, ::-1], axis=1), 0)  # (n,)
    reach = t[last] + 0.25  # the pixel edge lies just beyond the last sample inside (best IoU in a sweep)
    pts = np.stack([cx + np.cos(ang) * reach, cy + np.sin(ang) * reach], 1)
    return pts.clip(0, [w, h])


# ---- task builders -------------------------------------------------------------------------------
WORDINGS = grammar.WORDINGS  # "template" | "train" | "heldout" | "noisy" | "noisy_mixed"


def _derived_rng(rng: np.random.Generator, salt: str) -> np.random.Generator:
    """A generator seeded from `rng`'s current state without drawing from it (so wording never moves scenes)."""
    state = json.dumps(rng.bit_generator.state, sort_keys=True, default=str) + salt
    return np.random.default_rng(np.frombuffer(hashlib.sha256(state.encode()).digest(), np.uint32))


@dataclass
class _Ctx:
    rng: np.random.Generator
    size: int
    codec: LocationCodec
    wording: str = "template"
    heldout: list[str] = field(default_factory=list)  # held-out grammar choices made so far

    def scene(self) -> Scene:
        return sample_scene(self.rng, self.size)

    def template(self, key: str, **kw: object) -> str:
        """The instruction text for template key `key`: a template, or (grammar wordings) a grammar rendering.

        The template is drawn from `rng` in every mode, so the draws after it are the same whatever the wording.
        """
        return self.word(key, _pick(self.rng, TEMPLATES[key]), **kw)

    def word(self, key: str, chosen: str, **kw: object) -> str:
        """Word `chosen`, one of the TEMPLATES of `key` already drawn, as this sample's wording asks."""
        text = chosen.format(**kw)
        if self.wording == "template":
            return text
        w = grammar.render(key, _derived_rng(self.rng, key), self.wording, template=text, templates=TEMPLATES[key], **kw)
        self.heldout += w.heldout
        return w.text

    def clause(self, key: str, **kw: object) -> tuple[str, grammar.Wording | None]:
        """A compound clause: its template text (drawn from `rng` as always) and, for grammar wordings, a clause."""
        text = _pick(self.rng, TEMPLATES[key]).format(**kw)
        if self.wording == "template":
            return text, None
        return text, grammar.clause(key, _derived_rng(self.rng, key), self.wording, **kw)


def make_caption(ctx: _Ctx) -> TaskSample:
    scene = ctx.scene()
    return TaskSample("caption", render(scene), _with_image(ctx.template("caption")),
                      describe_groups(scene.objects) + ".", [], scene=scene)


def make_vqa(ctx: _Ctx) -> TaskSample:
    scene = ctx.scene()
    options = _vqa_questions(ctx, scene)
    key, kw, answer = _pick(ctx.rng, options)
    return TaskSample("vqa", render(scene), _with_image(ctx.template(key, **kw)), answer, [], scene=scene)


def _vqa_questions(ctx: _Ctx, scene: Scene) -> list[tuple[str, dict, str]]:
    objs, rng, half = scene.objects, ctx.rng, scene.image_size / 2
    kind, color = _pick(rng, KINDS), _pick(rng, list(COLORS))
    qs = [("vqa_count_kind", {"kinds": plural(kind)}, NUMBERS[sum(o.kind == kind for o in objs)]),
          ("vqa_count_color", {"color": color}, NUMBERS[sum(o.color == color for o in objs)])]
    o = _pick(rng, objs)
    name = f"{o.color} {o.kind}" if rng.random() < 0.5 else f"{color} {kind}"
    exists = any(_matches(p, name) for p in objs)
    qs.append(("vqa_exists", {"name": name}, "yes" if exists else "no"))
    if sum(p.kind == o.kind for p in objs) == 1:
        qs.append(("vqa_color", {"kind": o.kind}, o.color))
    if sum(p.color == o.color for p in objs) == 1:
        qs.append(("vqa_shape", {"color": o.color}, o.kind))
    if sum(p.kind == o.kind and p.color == o.color for p in objs) == 1:
        name = f"{o.color} {o.kind}"
        if abs(o.center[0] - half) > 0.1 * half:
            qs.append(("vqa_side", {"name": name}, "left" if o.center[0] < half else "right"))
        if abs(o.center[1] - half) > 0.1 * half:
            qs.append(("vqa_height", {"name": name}, "top" if o.center[1] < half else "bottom"))
    return qs


def _ground(ctx: _Ctx, task: str) -> TaskSample:
    for _ in range(50):
        scene = ctx.scene()
        exprs = referring_expressions(scene)
        if exprs:
            break
    else:
        raise RuntimeError("no scene with a uniquely referable object in 50 tries")
    expr, obj = _pick(ctx.rng, exprs)
    instruction = _with_image(ctx.template(task, expr=expr))
    if task == "native_grounding":
        box = ctx.codec.encode_box(obj.box.tolist(), (scene.image_size, scene.image_size))
        return TaskSample(task, render(scene), instruction, f"Sure, the {expr} {box}.", [], scene=scene)
    boxes, masks, _ = _stack([obj], scene.image_size)
    target = RouteTarget("GRD", expr, boxes, masks)
    return TaskSample(task, render(scene), instruction, f"Sure, the {expr} [GRD].", [target], scene=scene)


def _routed_categories(ctx: _Ctx, task: str, route: str) -> TaskSample:
    scene = ctx.scene()
    cats = sample_categories(ctx.rng, scene)
    targets = []
    for cat in cats:
        boxes, masks, kps = _stack([o for o in scene.objects if _matches(o, cat)], scene.image_size)
        targets.append(RouteTarget(route, cat, boxes, masks, kps if route == "POSE" else None))
    answer = "Sure, " + join_words([f"{c} [{route}]" for c in cats]) + "."
    instruction = _with_image(ctx.template(task, **category_slots(cats)))
    return TaskSample(task, render(scene), instruction, answer, targets, classes=cats, scene=scene)


def _native_categories(ctx: _Ctx, task: str) -> TaskSample:
    scene = ctx.scene()
    cats = sample_categories(ctx.rng, scene)
    size = (scene.image_size, scene.image_size)
    n = int(_pick(ctx.rng, POLYGON_POINTS))
    template = _pick(ctx.rng, TEMPLATES[task])
    if "{n}" not in template:  # "Outline each star with a polygon.": the default point count
        n = DEFAULT_POLYGON_POINTS
    groups = []
    for k, cat in enumerate(cats):
        for o in sorted((o for o in scene.objects if _matches(o, cat)), key=lambda o: tuple(o.box)):
            if task == "polygon":
                groups.append(ctx.codec.encode_polygon(polygon_points(o.mask, n).ravel().tolist(), size, cls=k))
            else:
                groups.append(ctx.codec.encode_box(o.box.tolist(), size, cls=k))
    answer = (", ".join(groups) if groups else "none") + "."
    instruction = _with_image(ctx.word(task, template, cats=join_words(cats), n=n))
    return TaskSample(task, render(scene), instruction, answer, [], classes=cats, scene=scene)


def _keypoint_sample(ctx: _Ctx) -> TaskSample:
    sample = _routed_categories(ctx, "keypoints", "POSE")
    for t in sample.targets:
        t.masks = None
    return sample


def make_generation(ctx: _Ctx) -> TaskSample:
    scene = _generation_scene(ctx)
    desc = describe_groups(scene.objects)
    target = _image_target("GEN", "image", scene)
    return TaskSample("generation", None, ctx.template("generation", desc=desc),
                      "Sure, here is the image [GEN].", [target])


def _generation_scene(ctx: _Ctx) -> Scene:
    for _ in range(50):
        n_groups = int(ctx.rng.integers(1, 4))
        wants = []
        for _ in range(n_groups):
            kind, color = _pick(ctx.rng, KINDS), _pick(ctx.rng, list(COLORS))
            wants += [(kind, color)] * (int(ctx.rng.integers(1, 3)) if n_groups < 3 else 1)
        scene = place_objects(ctx.rng, wants, ctx.size, sample_background(ctx.rng), LARGE_SIZES)
        if scene is not None:
            return scene
    raise RuntimeError("could not lay out a generation target in 50 tries")


def _image_target(route: str, phrase: str, scene: Scene) -> RouteTarget:
    boxes, masks, _ = _stack(scene.objects, scene.image_size)
    objects = [{"kind": o.kind, "color": o.color} for o in scene.objects]
    return RouteTarget(route, phrase, boxes, masks, image=render(scene), objects=objects)


def make_editing(ctx: _Ctx) -> TaskSample:
    for _ in range(100):
        ctx.heldout = []  # only the attempt that is kept counts
        n = int(ctx.rng.integers(1, 5))
        source = place_objects(ctx.rng, [(None, None)] * n, ctx.size, sample_background(ctx.rng), LARGE_SIZES)
        if source is None:
            continue
        edit = _edit(ctx, source)
        if edit is not None:
            text, target = edit
            return TaskSample("editing", render(source), _with_image(text), "Sure, here is the edited image [EDIT].",
                              [_image_target("EDIT", "edited image", target)], scene=source)
    raise RuntimeError("could not find a valid edit in 100 tries")


def _edit(ctx: _Ctx, source: Scene) -> tuple[str, Scene] | None:
    """One recolour / remove / add / move instruction and the edited scene, or None when it breaks the rules."""
    rng, objs, size = ctx.rng, source.objects, source.image_size
    specs = [o.spec for o in objs]
    op = _pick(rng, ("recolor", "remove", "add", "move"))
    if op == "add":
        kind, color = _pick(rng, KINDS), _pick(rng, list(COLORS))
        scene = place_objects(rng, [(kind, color)], size, source.background, LARGE_SIZES, fixed=specs)
        return (ctx.template("edit_add", obj=counted(1, color, kind)), scene) if scene is not None else None
    unique = [k for k, o in enumerate(objs) if sum(p.kind == o.kind and p.color == o.color for p in objs) == 1]
    if not unique:
        return None
    k = int(_pick(rng, unique))
    name = f"{objs[k].color} {objs[k].kind}"
    # Training wordings also name an object by its kind alone when no other object has that kind ("remove the
    # circle"): people do, and with colour-and-kind names only, "Make the star red." was routed as [GRD]. Drawn from
    # a derived generator and never in template or held-out wordings, so scenes and evaluation requests stay put.
    if ctx.wording in grammar.TRAINING and sum(o.kind == objs[k].kind for o in objs) == 1 and (
            _derived_rng(rng, "edit_name").random() < 0.5):
        name = objs[k].kind
    if op == "remove":
        if len(specs) == 1:
            return None
        new, text = specs[:k] + specs[k + 1 :], ctx.template("edit_remove", name=name)
    elif op == "recolor":
        color = _pick(rng, [c for c in COLORS if c != objs[k].color])
        new, text = list(specs), ctx.template("edit_recolor", name=name, color=color)
        new[k] = replace(specs[k], color=color)
    else:
        direction, (dx, dy) = _pick(rng, (("left", (-1, 0)), ("right", (1, 0)), ("up", (0, -1)), ("down", (0, 1))))
        step = 0.25 * size
        s = specs[k]
        new, text = list(specs), ctx.template("edit_move", name=name, direction=direction)
        new[k] = replace(s, center=(s.center[0] + dx * step, s.center[1] + dy * step))
        if not all(s.size + 1 <= v <= size - s.size - 1 for v in new[k].center):
            return None
    scene = build_scene(new, size, source.background)
    return (text, scene) if scene_is_valid(scene) else None


def make_region(ctx: _Ctx, kinds: Sequence[str] = ("box", "point", "mask"), task: str = "region") -> TaskSample:
    scene = ctx.scene()
    o = _pick(ctx.rng, scene.objects)
    kind = _pick(ctx.rng, kinds)
    if kind == "scribble":
        region: dict = scribble_on(o.mask, ctx.rng)
    elif kind == "box":
        region: dict = {"box": o.box.tolist()}
    elif kind == "point":
        depth = ndimage.distance_transform_edt(np.pad(o.mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(depth.argmax()), depth.shape)
        region = {"point": [float(x) + 0.5, float(y) + 0.5]}
    else:
        region = {"mask": o.mask.copy()}
    key = _pick(ctx.rng, TASK_TEMPLATES["region"])
    answer = {"region_what": counted(1, o.color, o.kind), "region_color": o.color, "region_shape": o.kind}[key]
    instruction = _with_image(ctx.template(key, region=REGION_TOKEN))
    return TaskSample(task, render(scene), instruction, answer, [], regions=[region], scene=scene)


def scribble_on(mask: np.ndarray, rng: np.random.Generator, tries: int = 10) -> dict:
    """A scribble region prompt on an object: a 2..4-point polyline through its interior, drawn 2..5 px wide,
    kept when at least 80% of its pixels fall on the object; else a dot at the object's deepest point."""
    width = float(rng.integers(2, 6))
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    h, w = mask.shape
    inside = np.argwhere(depth >= max(width / 2, 1.0))  # (n, 2) y, x where the pen stays on the object
    for _ in range(tries if len(inside) >= 2 else 0):
        pick = inside[rng.choice(len(inside), size=int(rng.integers(2, 5)), replace=len(inside) < 4)]
        line = [[float(x) + 0.5, float(y) + 0.5] for y, x in pick[np.argsort(pick[:, 1])]]
        drawn = rasterize_scribble([line], width, (w, h))
        if (drawn & mask).sum() >= 0.8 * drawn.sum():
            return {"scribble": [line], "width": width}
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return {"scribble": [[[float(x) + 0.5, float(y) + 0.5]]], "width": width}


def make_compound(ctx: _Ctx) -> TaskSample:
    scene = ctx.scene()
    parts = list(ctx.rng.permutation(["det", "seg", "grd", "pose", "gen"])[: int(ctx.rng.integers(2, 4))])
    if parts == ["gen"] or set(parts) == {"gen"}:
        parts = ["det", "gen"]
    clauses, worded, answers, targets = [], [], [], []
    for part in parts:
        (clause, words), answer, part_targets = _compound_part(ctx, scene, str(part))
        clauses.append(clause)
        worded.append(words)
        answers.append(answer)
        targets += part_targets
    key = f"compound{len(clauses)}"
    text = _pick(ctx.rng, TEMPLATES[key]).format(**dict(zip("abc", clauses, strict=False)))
    text = text[0].upper() + text[1:]
    if ctx.wording != "template":
        held = [h for w in worded for h in w.heldout]
        w = grammar.render(key, _derived_rng(ctx.rng, key), ctx.wording, template=text, clause_heldout=held,
                           **dict(zip("abc", [w.text for w in worded], strict=False)))
        text, ctx.heldout = w.text, ctx.heldout + w.heldout
    return TaskSample("compound", render(scene), _with_image(text), "Sure, " + "; ".join(answers) + ".", targets,
                      scene=scene)


def _compound_part(ctx: _Ctx, scene: Scene, part: str) -> tuple[tuple[str, grammar.Wording | None], str,
                                                                 list[RouteTarget]]:
    if part == "gen":
        gen = _generation_scene(ctx)
        return (ctx.clause("clause_gen", desc=describe_groups(gen.objects)), "here is the image [GEN]",
                [_image_target("GEN", "image", gen)])
    exprs = referring_expressions(scene)
    if part == "grd" and exprs:
        expr, obj = _pick(ctx.rng, exprs)
        boxes, masks, _ = _stack([obj], scene.image_size)
        return ctx.clause("clause_grd", expr=expr), f"the {expr} [GRD]", [RouteTarget("GRD", expr, boxes, masks)]
    route = {"det": "DET", "seg": "SEG", "pose": "POSE", "grd": "DET"}[part]
    cats = sample_categories(ctx.rng, scene, max_n=2)
    targets = []
    for cat in cats:
        boxes, masks, kps = _stack([o for o in scene.objects if _matches(o, cat)], scene.image_size)
        targets.append(RouteTarget(route, cat, boxes, None if route == "POSE" else masks,
                                   kps if route == "POSE" else None))
    key = {"DET": "clause_det", "SEG": "clause_seg", "POSE": "clause_pose"}[route]
    return ctx.clause(key, **category_slots(cats)), join_words([f"{c} [{route}]" for c in cats]), targets


BUILDERS: dict[str, Callable[[_Ctx], TaskSample]] = {
    "caption": make_caption,
    "vqa": make_vqa,
    "grounding": lambda ctx: _ground(ctx, "grounding"),
    "native_grounding": lambda ctx: _ground(ctx, "native_grounding"),
    "detection": lambda ctx: _routed_categories(ctx, "detection", "DET"),
    "segmentation": lambda ctx: _routed_categories(ctx, "segmentation", "SEG"),
    "native_detection": lambda ctx: _native_categories(ctx, "native_detection"),
    "polygon": lambda ctx: _native_categories(ctx, "polygon"),
    "keypoints": _keypoint_sample,
    "generation": make_generation,
    "editing": make_editing,
    "region": make_region,
    "scribble": lambda ctx: make_region(ctx, ("scribble",), "scribble"),
    "compound": make_compound,
}


def make_sample(task: str, rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE,
                location_bins: int = 1000, wording: str = "template") -> TaskSample:
    """One sample of `task`, drawn with `rng`, its instruction worded as `wording` (see the module docstring)."""
    if task not in BUILDERS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    if wording not in WORDINGS:
        raise ValueError(f"unknown wording {wording!r}; accepted: {', '.join(WORDINGS)}")
    ctx = _Ctx(rng, image_size, LocationCodec(location_bins), wording)
    sample = BUILDERS[task](ctx)
    sample.heldout_wording = list(ctx.heldout)
    return sample


# ---- data set ------------------------------------------------------------------------------------
class ShapesWorldDataset(torch.utils.data.Dataset):
    """`n` task samples of a split; sample i is drawn from seed SPLIT_SEEDS[split] + seed + i, so it never changes."""

    def __init__(self, split: str, n: int, seed: int | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                 location_bins: int = 1000, tasks: Sequence[str] | None = None,
                 weights: Sequence[float] | None = None, wording: str = "template"):
        if wording not in WORDINGS:
            raise ValueError(f"unknown wording {wording!r}; accepted: {', '.join(WORDINGS)}")
        self.wording = wording
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLIT_SEEDS)}")
        self.tasks = tuple(tasks or TASKS)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; accepted: {', '.join(TASKS)}")
        w = np.ones(len(self.tasks)) if weights is None else np.asarray(weights, float)
        if w.shape != (len(self.tasks),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(self.tasks)} non-negative numbers with a positive sum, got {weights}")
        self.split, self.n, self.seed = split, n, seed or 0
        self.image_size, self.location_bins = image_size, location_bins
        self.probs = w / w.sum()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> TaskSample:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        rng = np.random.default_rng(SPLIT_SEEDS[self.split] + self.seed + i)
        task = self.tasks[int(rng.choice(len(self.tasks), p=self.probs))]
        return make_sample(task, rng, self.image_size, self.location_bins, self.wording)


def corpus(n: int, image_size: int = DEFAULT_IMAGE_SIZE, location_bins: int = 1000,
           wording: str = "train") -> Iterator[str]:
    """Instruction + answer texts of `n` training samples over all tasks (for training a tokenizer)."""
    data = ShapesWorldDataset("train", n, image_size=image_size, location_bins=location_bins, wording=wording)
    for i in range(n):
        s = data[i]
        yield f"{s.instruction}\n{s.answer}"
