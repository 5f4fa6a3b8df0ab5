"""Task decoders driven by super-link states: detection/segmentation/grounding, keypoints, generation, editing."""
