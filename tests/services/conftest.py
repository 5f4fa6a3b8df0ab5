"""Shared fixtures: the tiny preset saved once per session, and the scripted tiny Pipeline over it."""

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny preset built once (random weights) and saved, so deployments load it quickly and identically."""
    import torch

    from tests.doubles import ScriptedPipeline

    out = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)  # random weights, but the same ones every run: the tests must not depend on luck
    ScriptedPipeline.from_pretrained("tiny").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def scripted_pipeline(tiny_dir):
    from tests.doubles import ScriptedPipeline

    return ScriptedPipeline.from_pretrained(tiny_dir)
