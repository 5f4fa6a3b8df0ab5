"""ShapesWorld: procedural scenes with exact ground truth for every SuperLink task, and an oracle."""
