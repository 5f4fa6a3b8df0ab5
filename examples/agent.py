"""A LangChain agent that calls SuperLink as a tool.

    python examples/agent.py                          # offline: the shipped `shapes` model in-process, and a
                                                      # stand-in chat model that calls the tool once
    python examples/agent.py --url http://127.0.0.1:8000 --model openai:gpt-4o-mini   # a server + a real model

Images are registered with the tool by name; the model refers to them by name.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from PIL import Image, ImageDraw

from router.pipeline import Pipeline
from services.client import SuperLinkClient
from services.langchain_tool import SuperLinkTool

INSTRUCTION = "detect the red circles"


def demo_image() -> bytes:
    img = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(img).ellipse((30, 30, 70, 70), fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class OfflineChatModel(GenericFakeChatModel):
    """Stands in for an LLM when no --model is given: it calls the superlink tool once, then answers.
    (GenericFakeChatModel refuses bind_tools, which an agent needs; this one returns itself.)"""

    def bind_tools(self, tools: Any, **kwargs: Any) -> OfflineChatModel:
        return self


def offline_chat_model(instruction: str, image_ids: list[str], final_answer: str) -> OfflineChatModel:
    call = {"name": "superlink", "args": {"instruction": instruction, "image_ids": image_ids}, "id": "call_1",
            "type": "tool_call"}
    return OfflineChatModel(messages=iter([AIMessage(content="", tool_calls=[call]), AIMessage(content=final_answer)]))


def make_backend(url: str | None, preset: str) -> SuperLinkClient | Pipeline:
    return SuperLinkClient(url) if url is not None else Pipeline.from_pretrained(preset)


def run(url: str | None = None, model: str | None = None, preset: str = "shapes") -> dict[str, Any]:
    """Build the agent, ask it about one image, return the final answer and the tool's artifact."""
    tool = SuperLinkTool(backend=make_backend(url, preset))
    tool.add_image("scene", demo_image())
    chat = model if model is not None else offline_chat_model(INSTRUCTION, ["scene"], "I ran the detector on 'scene'.")
    agent = create_agent(chat, tools=[tool], system_prompt="Registered images: 'scene'. Use the superlink tool.")
    result = agent.invoke({"messages": [HumanMessage(f"In the image 'scene', {INSTRUCTION}.")]})
    tool_msgs = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    return {"answer": result["messages"][-1].content, "tool_content": [m.content for m in tool_msgs],
            "artifacts": [m.artifact for m in tool_msgs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running SuperLink server; default: an in-process Pipeline")
    parser.add_argument("--model", help="a chat model for langchain's create_agent, e.g. openai:gpt-4o-mini")
    parser.add_argument("--preset", default="shapes", help="a preset or a saved model folder (in-process backend)")
    args = parser.parse_args()
    out = run(args.url, args.model, args.preset)
    print("tool said:", *out["tool_content"], sep="\n  ")
    print("agent answered:", out["answer"])


if __name__ == "__main__":
    main()
