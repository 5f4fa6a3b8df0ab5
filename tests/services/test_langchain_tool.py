"""SuperLinkTool: schema, content + artifact, sync and async, over HTTP and in-process, in a real agent loop."""

from __future__ import annotations

import asyncio
import io

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage
from PIL import Image

from router.schemas import Response
from services.client import AsyncSuperLinkClient, SuperLinkClient
from services.http import BackgroundServer, create_app
from services.langchain_tool import SuperLinkTool, summarize
from tests.doubles import FakePipeline, scripted_chat_model


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (240, 20, 20)).save(buf, format="PNG")
    return buf.getvalue()


def tool_call(args: dict) -> dict:
    return {"type": "tool_call", "id": "c1", "name": "superlink", "args": args}


def test_schema_hides_bytes_and_lists_args():
    tool = SuperLinkTool(backend=FakePipeline())
    props = tool.tool_call_schema.model_json_schema()["properties"]
    assert set(props) == {"instruction", "image_ids", "regions"}


def test_in_process_content_and_artifact():
    tool = SuperLinkTool(backend=FakePipeline())
    tool.add_image("scene", png())
    msg = tool.invoke(tool_call({"instruction": "detect circles, draw one", "image_ids": ["scene"]}))
    assert isinstance(msg, ToolMessage) and isinstance(msg.artifact, Response)
    assert msg.artifact.routes == ["DET", "GEN"]
    assert "1 detections" in msg.content and "1 images" in msg.content


def test_unknown_image_goes_back_to_the_model():
    tool = SuperLinkTool(backend=FakePipeline())
    msg = tool.invoke(tool_call({"instruction": "detect", "image_ids": ["nope"]}))
    assert "unknown image ids ['nope']" in msg.content


def test_http_backends_sync_and_async():
    with BackgroundServer(create_app(FakePipeline(fail={"generator"}))) as url:
        sync_tool = SuperLinkTool(backend=SuperLinkClient(url))
        msg = sync_tool.invoke(tool_call({"instruction": "draw a star"}))
        assert msg.artifact.errors[0].kind == "decoder_failed" and "decoder_failed" in msg.content

        async def run_async() -> ToolMessage:
            async_tool = SuperLinkTool(backend=AsyncSuperLinkClient(url))
            async_tool.add_image("a", png())
            return await async_tool.ainvoke(tool_call({"instruction": "detect it", "image_ids": ["a"]}))

        amsg = asyncio.run(run_async())
        assert amsg.artifact.detections[0].route == "DET" and amsg.artifact.routes == ["DET"]


def test_summary_mentions_errors_and_counts():
    resp = Response(text="a [DET]", raw_text="a [DET]", errors=[{"route": "DET", "phrase": "a", "kind": "timeout", "message": "m"}])
    assert summarize(resp) == "answer: a [DET]; error for DET 'a': timeout"


def test_agent_loop_with_tiny_pipeline(scripted_pipeline):
    """A scripted chat model calls the tool, then answers; the ToolMessage artifact holds the tiny model's Response.

    The tiny model's answer is forced (ScriptedPipeline) so that [DET] fires; link states, projector and
    Grounding DINO decoder are real.
    """
    tool = SuperLinkTool(backend=scripted_pipeline)
    tool.add_image("scene", png())
    model = scripted_chat_model("detect the red circles", ["scene"], "Here you go.")
    agent = create_agent(model, tools=[tool])
    result = agent.invoke({"messages": [HumanMessage("Detect the red circles in 'scene'.")]})
    tool_msgs = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 1 and result["messages"][-1].content == "Here you go."
    artifact = tool_msgs[0].artifact
    assert isinstance(artifact, Response) and artifact.routes == ["DET"]
    assert artifact.detections and all(d.phrase == "red circles" and d.route == "DET" for d in artifact.detections)
    assert all(0 <= v <= 32 for d in artifact.detections for v in d.box)  # pixels of the 32x32 input
    assert {"preprocess", "generate", "detector", "total"} <= set(artifact.timings_ms)
    assert tool_msgs[0].content.startswith("answer: the red circles (") and "detections (red circles:" in tool_msgs[0].content


def test_regions_with_a_scribble_reach_the_request():
    seen = []

    class Recording(FakePipeline):
        def __call__(self, request):
            seen.append(request)
            return super().__call__(request)

    tool = SuperLinkTool(backend=Recording())
    tool.add_image("a", png())
    tool.add_image("b", png())
    msg = tool.invoke(tool_call({"instruction": "detect <region> and <region>", "image_ids": ["a", "b"], "regions": [
        {"image_id": "b", "scribble": [[[2, 2], [20, 9]]], "width": 3}, {"point": [4, 4]}]}))
    assert isinstance(msg.artifact, Response)
    (req,) = seen
    assert req.regions[0].image == 1 and req.regions[0].scribble.lines == [[(2.0, 2.0), (20.0, 9.0)]]
    assert req.regions[1].image == 0 and req.regions[1].point == (4.0, 4.0)
    bad = tool.invoke(tool_call({"instruction": "<region>", "image_ids": ["a"], "regions": [{"scribble": [[]]}]}))
    assert "polyline 0 is empty" in bad.content
    wrong = tool.invoke(tool_call({"instruction": "<region>", "image_ids": ["a"], "regions": [{"image_id": "z", "point": [1, 1]}]}))
    assert "not among image_ids" in wrong.content
