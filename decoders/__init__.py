"""Task decoders driven by super-link states: detection/segmentation/grounding, keypoints, generation, editing."""

from decoders import builtin  # noqa: F401  (registers the built-in decoder kinds, decoders.registry)
