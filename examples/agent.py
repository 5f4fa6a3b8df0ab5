"""A LangChain agent that calls SuperLink as a tool.

    python examples/agent.py                          # offline: in-process tiny Pipeline, scripted chat model
    python examples/agent.py --preset shapes          # a trained preset (when shipped)
    python examples/agent.py --url http://127.0.0.1:8000 --model openai:gpt-4o-mini   # a server + a real model

Images are registered with the tool by name; the model refers to them by name.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage
from PIL import Image, ImageDraw

from services.langchain_tool import SuperLinkTool, scripted_chat_model

INSTRUCTION = "detect the red circles"


def demo_image() -> bytes:
    img = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(img).ellipse((30, 30, 70, 70), fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_backend(url: str | None, preset: str) -> Any:
    if url is not None:
        from services.client import SuperLinkClient

        return SuperLinkClient(url)
    if preset == "tiny":  # random weights: script the answer so [DET] fires; link states and detector are real
        from services.testing import ScriptedPipeline

        return ScriptedPipeline.from_pretrained(preset)
    from router.pipeline import Pipeline

    return Pipeline.from_pretrained(preset)


def run(url: str | None = None, model: str | None = None, preset: str = "tiny") -> dict[str, Any]:
    """Build the agent, ask it about one image, return the final answer and the tool's artifact."""
    tool = SuperLinkTool(backend=make_backend(url, preset))
    tool.add_image("scene", demo_image())
    chat = model if model is not None else scripted_chat_model(INSTRUCTION, ["scene"], "I ran the detector on 'scene'.")
    agent = create_agent(chat, tools=[tool], system_prompt="Registered images: 'scene'. Use the superlink tool.")
    result = agent.invoke({"messages": [HumanMessage(f"In the image 'scene', {INSTRUCTION}.")]})
    tool_msgs = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    return {"answer": result["messages"][-1].content, "tool_content": [m.content for m in tool_msgs],
            "artifacts": [m.artifact for m in tool_msgs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running SuperLink server; default: an in-process Pipeline")
    parser.add_argument("--model", help="a chat model for langchain's init_chat_model, e.g. openai:gpt-4o-mini")
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    out = run(args.url, args.model, args.preset)
    print("tool said:", *out["tool_content"], sep="\n  ")
    print("agent answered:", out["answer"])


if __name__ == "__main__":
    main()
