"""The training sample and its route targets: one schema every data source reads into.

ShapesWorld (shapesworld.tasks), COCO, RefCOCO and LLaVA JSONL (router.data) all produce
`TaskSample`s; the processor turns them into token sequences (router.loss.collate) and each
`RouteTarget` feeds the decoder of its routing token. Answers follow mllm/vocab.py: a routed
phrase is "<phrase> [ROUTE]", and for every routing token in an answer there is one RouteTarget,
in order, whose `phrase` is what `mllm.vocab.phrase_before` reads before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RouteTarget:
    route: str  # "DET" | "SEG" | "GRD" | "POSE" | "GEN" | "EDIT"
    phrase: str  # the phrase in the answer this routing token belongs to
    boxes: np.ndarray  # (n, 4) float32 xyxy pixels of the objects it refers to (n may be 0)
    masks: np.ndarray | None = None  # (n, H, W) bool
    keypoints: np.ndarray | None = None  # (n, K, 3) float32 x, y, v
    image: np.ndarray | None = None  # (H, W, 3) uint8 target image (GEN / EDIT)
    objects: list[dict] | None = None  # GEN / EDIT: what the oracle must find: [{"kind": .., "color": ..}]


@dataclass
class TaskSample:
    task: str
    image: np.ndarray | None  # (H, W, 3) uint8 input image; None for pure generation
    instruction: str  # starts with "<image>\n" when there is an image; "<region>" marks each region prompt
    answer: str
    targets: list[RouteTarget]
    # {"box": [x1,y1,x2,y2]} | {"point": [x,y]} | {"mask": HxW} | {"scribble": [[[x,y], ...], ...], "width": px}
    regions: list[dict] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)  # <cls_i> means classes[i]
    # The source's own ground truth of the picture, for evaluation (ShapesWorld: a shapesworld.scene.Scene).
    scene: Any = None
    heldout_wording: list[str] = field(default_factory=list)  # held-out grammar choices in the instruction
