"""examples/: the user-facing scripts run offline as their docstrings say."""

from __future__ import annotations

from examples.agent import run
from router.schemas import Response


def test_agent_example_runs_offline_on_the_shipped_model():
    """No server and no LLM: the shipped model answers in-process and a stand-in chat model drives the agent."""
    out = run()
    assert out["answer"] == "I ran the detector on 'scene'."
    (artifact,) = out["artifacts"]
    response = Response.model_validate(artifact) if isinstance(artifact, dict) else artifact
    assert response.detections, out["tool_content"]  # the red circle is found
    assert "red circle" in out["tool_content"][0]
