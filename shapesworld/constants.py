"""The closed sets ShapesWorld draws from. Names here are the words captions and answers use."""

from __future__ import annotations

# Shape kinds (category names; COCO category id = index + 1).
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "pentagon", "cross")

# Colour name -> RGB. Chosen far apart so the oracle separates them by nearest colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (245, 130, 190),
    "brown": (130, 80, 40),
}

# Keypoints: every instance has NUM_KEYPOINTS slots; a kind uses the first KEYPOINTS_PER_KIND[kind]
# (vertices in a fixed order starting from the one nearest the top; circles use 4 compass points,
# stars their 5 tips, crosses their 4 arm ends). Unused slots have visibility 0.
KEYPOINTS_PER_KIND: dict[str, int] = {
    "circle": 4,
    "square": 4,
    "triangle": 3,
    "star": 5,
    "hexagon": 6,
    "pentagon": 5,
    "cross": 4,
}
NUM_KEYPOINTS: int = max(KEYPOINTS_PER_KIND.values())
KEYPOINT_NAMES: tuple[str, ...] = tuple(f"point{i + 1}" for i in range(NUM_KEYPOINTS))
# OKS sigmas for pycocotools (one per slot); shapes have sharp, well-defined points.
KEYPOINT_SIGMAS: tuple[float, ...] = (0.05,) * NUM_KEYPOINTS

DEFAULT_IMAGE_SIZE = 128
SPLIT_SEEDS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
