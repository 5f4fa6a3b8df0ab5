"""SuperLink as a LangChain tool.

Images travel out of band: the tool holds a registry (name -> image bytes) and the model
refers to images by name, so no bulky base64 passes through the chat. The tool returns
(content, artifact): a short text summary the model reads, and the full Response.

    tool = SuperLinkTool(backend=SuperLinkClient(url))        # or an in-process Pipeline
    tool.add_image("scene", png_bytes)
    agent = create_agent(model, tools=[tool])

Over an AsyncSuperLinkClient the async path streams the request: each event (the text as it is generated,
the text once generated, then each decoder's part as it finishes) is dispatched as a LangChain custom event
named "superlink_generating" / "superlink_text" / "superlink_part", visible in `astream_events`, before the
tool returns.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.callbacks.manager import adispatch_custom_event
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field, ValidationError

from router.schemas import LEGACY_LISTS, Options, RegionPrompt, Request, Response
from services.client import AsyncSuperLinkClient, SuperLinkClient, SuperLinkHTTPError


class ToolRegion(BaseModel):
    """A visual prompt the instruction refers to with <region>: a box, a point or a scribble on one image."""

    image_id: str | None = Field(None, description="which of image_ids the region is on (default: the first)")
    box: list[float] | None = Field(None, description="[x1, y1, x2, y2] in pixels")
    point: list[float] | None = Field(None, description="[x, y] in pixels")
    scribble: list[list[list[float]]] | None = Field(
        None, description="polylines, each a list of [x, y] pixel points, e.g. [[[10, 12], [30, 40]]]"
    )
    width: float | None = Field(None, description="scribble pen width in pixels (default 4)")


class SuperLinkInput(BaseModel):
    instruction: str = Field(description="what to do with the images, e.g. 'detect the red circles', 'draw a blue star', "
                             "'outline each star with a 12-point polygon' or 'what is in <region>?'")
    image_ids: list[str] = Field(default_factory=list, description="names of registered images the instruction refers to")
    regions: list[ToolRegion] = Field(
        default_factory=list, description="visual prompts, in order, one per <region> in the instruction"
    )


def summarize(response: Response, limit: int = 400) -> str:
    """A short text a chat model can use: the answer and counts of what came back."""
    parts = [f"answer: {response.text.strip()[:limit]}"]
    kinds = {"detections": response.detections, "keypoint sets": response.keypoints, "images": response.images,
             "polygons": response.polygons, "points": response.points}
    for kind, items in kinds.items():
        if items:
            by_phrase = Counter(i.phrase or "-" for i in items)
            parts.append(f"{len(items)} {kind} (" + ", ".join(f"{p}: {n}" for p, n in by_phrase.items()) + ")")
    other: dict[str, Counter] = {}  # parts of kinds a route module declares (no list of their own)
    for item in (p for p in response.parts if type(p) not in LEGACY_LISTS):
        other.setdefault(item.kind, Counter())[item.phrase or "-"] += 1
    for kind, by_phrase in other.items():
        parts.append(f"{sum(by_phrase.values())} {kind} parts (" + ", ".join(f"{p}: {n}" for p, n in by_phrase.items()) + ")")
    for err in response.errors:
        parts.append(f"error for {err.route or 'answer'} '{err.phrase}': {err.kind}")
    return "; ".join(parts)


class SuperLinkTool(BaseTool):
    """Run a SuperLink request: text answers, detection, segmentation, grounding, pose, generation, editing."""

    name: str = "superlink"
    description: str = (
        "Look at registered images and answer, detect, segment, ground or find keypoints of objects, outline them "
        "with polygons of a requested number of points, or generate/edit an image. Give an instruction and the "
        "names of the images it refers to; to ask about a place, put <region> in the instruction and give a box, "
        "point or scribble (polylines of pixel points) in regions."
    )
    args_schema: type[BaseModel] = SuperLinkInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    backend: Any = Field(description="SuperLinkClient, AsyncSuperLinkClient, or an in-process Pipeline")
    images: dict[str, bytes] = Field(default_factory=dict)
    options: Options = Field(default_factory=Options)
    handle_tool_error: bool = True  # a bad image name or HTTP error goes back to the model as text

    def add_image(self, name: str, data: bytes) -> None:
        self.images[name] = data

    def _request(self, instruction: str, image_ids: list[str], regions: list[ToolRegion | dict] | None = None) -> Request:
        missing = [i for i in image_ids if i not in self.images]
        if missing:
            raise ToolException(f"unknown image ids {missing}; registered images: {sorted(self.images)}")
        try:
            prompts = [_region_prompt(ToolRegion.model_validate(r), image_ids) for r in regions or []]
            return Request(instruction=instruction, images=[self.images[i] for i in image_ids], regions=prompts,
                           options=self.options)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in err.errors())
            raise ToolException(f"bad request: {problems}") from None

    def _run(
        self,
        instruction: str,
        image_ids: list[str] | None = None,
        regions: list[ToolRegion | dict] | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, Response]:
        request = self._request(instruction, image_ids or [], regions)
        response = self._call_sync(request)
        return summarize(response), response

    async def _arun(
        self,
        instruction: str,
        image_ids: list[str] | None = None,
        regions: list[ToolRegion | dict] | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, Response]:
        request = self._request(instruction, image_ids or [], regions)
        if isinstance(self.backend, AsyncSuperLinkClient):
            response = await _http_errors_as_tool_errors(_consume_stream(self.backend, request, run_manager is not None))
        else:
            response = await asyncio.to_thread(self._call_sync, request)
        return summarize(response), response

    def _call_sync(self, request: Request) -> Response:
        if isinstance(self.backend, SuperLinkClient):
            try:
                return self.backend.tasks(request)
            except SuperLinkHTTPError as err:
                raise ToolException(str(err)) from None
        if isinstance(self.backend, AsyncSuperLinkClient):
            raise ToolException("an AsyncSuperLinkClient backend needs the async path (ainvoke)")
        return self.backend(request)  # an in-process Pipeline


async def _consume_stream(client: AsyncSuperLinkClient, request: Request, dispatch: bool) -> Response:
    """Stream the request, dispatching its text and part events (inside a run); the final event's Response."""
    async for event in client.stream(request):
        if event.response is not None:
            return event.response
        if dispatch:
            await adispatch_custom_event(f"superlink_{event.event}", event.data)
    raise ToolException("the stream ended without a response event")


def _region_prompt(region: ToolRegion, image_ids: list[str]) -> RegionPrompt:
    """A tool region -> RegionPrompt: image names become indices into the request's images."""
    if region.image_id is not None and region.image_id not in image_ids:
        raise ToolException(f"region refers to image {region.image_id!r}, which is not among image_ids {image_ids}")
    out: dict[str, Any] = {"image": image_ids.index(region.image_id) if region.image_id is not None else 0}
    if region.box is not None:
        out["box"] = region.box
    if region.point is not None:
        out["point"] = region.point
    if region.scribble is not None:
        out["scribble"] = {"lines": region.scribble} | ({"width": region.width} if region.width is not None else {})
    return RegionPrompt.model_validate(out)


async def _http_errors_as_tool_errors(call: Any) -> Response:
    try:
        return await call
    except SuperLinkHTTPError as err:
        raise ToolException(str(err)) from None
