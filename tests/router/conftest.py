import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The real tiny system (random weights): MLLM, projectors and every decoder."""
    import torch

    from router.pipeline import Pipeline

    torch.manual_seed(0)
    return Pipeline.from_pretrained("tiny")


@pytest.fixture(scope="session")
def scene_png() -> bytes:
    """A ShapesWorld scene as PNG bytes."""
    from shapesworld.scene import render, sample_scene

    img = render(sample_scene(np.random.default_rng(3), 96))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
