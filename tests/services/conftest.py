"""Shared fixtures: the tiny preset saved once per session, and the scripted tiny Pipeline over it."""

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny preset built once (random weights) and saved, so deployments load it quickly and identically."""
    from services.testing import ScriptedPipeline

    out = tmp_path_factory.mktemp("tiny")
    ScriptedPipeline.from_pretrained("tiny").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def scripted_pipeline(tiny_dir):
    from services.testing import ScriptedPipeline

    return ScriptedPipeline.from_pretrained(tiny_dir)
