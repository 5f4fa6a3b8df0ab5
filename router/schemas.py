"""Request and response schemas (pydantic v2, JSON-schema exportable).

Images arrive as raw bytes, base64 strings, PIL images, or {"path": ...}; a path is
accepted only when validation is given a root (`context={"image_root": DIR}`) and
the path resolves inside it. The HTTP service never passes a root, so clients can't
make the server read files.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from PIL import Image
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializeAsAny,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from mllm.scribble import (
    DEFAULT_SCRIBBLE_WIDTH,
    MAX_SCRIBBLE_LINES,
    MAX_SCRIBBLE_WIDTH,
    ScribbleError,
    check_scribble,
)


class SchemaModel(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class InputModel(SchemaModel):
    """What a client sends: unknown keys, NaN and infinities are refused."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)


MAX_SEED = 2**32 - 1  # the range every generator accepts (numpy's RandomState is the narrowest)


def _image_bytes(value: Any, info: ValidationInfo) -> bytes:
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict) and set(value) == {"path"}:
        root = (info.context or {}).get("image_root")
        if root is None:
            raise ValueError("image paths are not accepted here; send the image as base64 or bytes")
        path = (Path(root) / value["path"]).resolve()
        if not path.is_relative_to(Path(root).resolve()):
            raise ValueError(f"image path {value['path']!r} lies outside the allowed root")
        if not path.is_file():
            raise ValueError(f"image path {value['path']!r} does not exist")
        return path.read_bytes()
    if isinstance(value, str):
        data = value.split(",", 1)[1] if value.startswith("data:") else value
        data = "".join(data.split())  # line breaks and spaces, as `base64` (76-column lines) writes them
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("image string is not valid base64 (a data: URL or plain base64 is accepted)") from None
    raise ValueError(
        f"unsupported image value of type {type(value).__name__}; accepted: bytes, base64 string, PIL image, or {{'path': ...}}"
    )


ImageData = Annotated[
    Any,
    Field(description="an image: base64 string (or data: URL) in JSON; bytes or PIL image from Python"),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "encoded image (PNG, JPEG, ...)"}),
]


class RLE(InputModel):
    """COCO run-length encoding (column-major), `counts` as the compressed string."""

    size: tuple[Annotated[int, Field(ge=1, le=65536)], Annotated[int, Field(ge=1, le=65536)]]  # (height, width)
    counts: str = Field(max_length=1_000_000)


class Scribble(InputModel):
    """One or more polylines drawn with a pen `width` px wide; a one-point polyline is a dot."""

    lines: list[list[tuple[float, float]]] = Field(
        min_length=1, max_length=MAX_SCRIBBLE_LINES, description="polylines, each a list of [x, y] pixel points"
    )
    width: float = Field(DEFAULT_SCRIBBLE_WIDTH, gt=0.0, le=MAX_SCRIBBLE_WIDTH, description="pen width in pixels")

    @model_validator(mode="after")
    def _drawable(self) -> Scribble:
        try:
            check_scribble(self.lines, self.width)
        except ScribbleError as err:
            raise ValueError(str(err)) from None
        return self


class RegionPrompt(InputModel):
    """A visual prompt: one of mask, box, point or scribble on image `image`; fills the n-th <region> in the
    instruction."""

    image: int = Field(0, ge=0, le=7)
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in pixels
    point: tuple[float, float] | None = None  # x, y in pixels
    mask: RLE | None = None
    scribble: Scribble | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RegionPrompt:
        given = [k for k in ("box", "point", "mask", "scribble") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a region prompt needs exactly one of box, point, mask or scribble; got {given or 'none'}")
        if self.box is not None and (self.box[2] <= self.box[0] or self.box[3] <= self.box[1]):
            raise ValueError(f"region box {list(self.box)} must have x2 > x1 and y2 > y1")
        return self


class Options(InputModel):
    """Decoding options; every number has a range (out of range -> 422 naming the field and its bounds)."""

    max_new_tokens: int = Field(128, ge=1, le=2048)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description=f"0..{MAX_SEED}; the same seed gives the same answer")
    score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    steps: int | None = Field(None, ge=1, le=200, description="diffusion steps for [GEN]/[EDIT]")
    guidance_scale: float | None = Field(None, ge=1.0, le=30.0)
    image_guidance_scale: float | None = Field(None, ge=1.0, le=30.0)
    routes: list[str] | None = Field(None, description="routes allowed to fire; None allows every deployed route")
    timeout_s: float | None = Field(None, gt=0.0, le=600.0)


class Request(InputModel):
    images: list[ImageData] = Field(default_factory=list, max_length=8)
    instruction: str = Field(min_length=1, max_length=4000)
    regions: list[RegionPrompt] = Field(default_factory=list, max_length=16)
    options: Options = Field(default_factory=Options)
    stream: bool = Field(
        False,
        description="over HTTP: answer as server-sent events (text, then each decoder's part as it finishes, "
        "then the whole Response); ignored in-process",
    )

    @field_validator("images", mode="before")
    @classmethod
    def _images(cls, v: Any, info: ValidationInfo) -> list[bytes]:
        if not isinstance(v, list | tuple):
            v = [v]
        return [_image_bytes(x, info) for x in v]

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("instruction is empty")
        return v

    @model_validator(mode="after")
    def _regions(self) -> Request:
        for k, r in enumerate(self.regions):
            if r.image >= max(len(self.images), 1) or not self.images:
                raise ValueError(f"regions[{k}] refers to image {r.image}, but the request has {len(self.images)} image(s)")
        return self


# ---- response -----------------------------------------------------------------------------

Route = str  # "DET", "SEG", ...

# Item kind -> class. Every Item subclass with a `kind` literal registers here as it is defined, so a route module
# declaring its own item type (router.routes) makes it readable in Response.parts, in-process and from JSON.
ITEM_KINDS: dict[str, type[Item]] = {}


class Item(SchemaModel):
    """One result a route (or native localisation) answers with; `kind` tags it in Response.parts."""

    kind: str = "item"
    route: Route | None = None  # None for natively localised answers (location tokens)
    phrase: str = ""  # the phrase in the answer this item belongs to
    image: int = 0

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["kind"].default
        if not isinstance(kind, str) or kind == "item":
            raise TypeError(f"{cls.__name__} must declare its own kind: `kind: Literal['name'] = 'name'`")
        if kind in ITEM_KINDS and ITEM_KINDS[kind].__qualname__ != cls.__qualname__:
            raise TypeError(f"item kind {kind!r} is taken by {ITEM_KINDS[kind].__name__}; pick another")
        ITEM_KINDS[kind] = cls


class Detection(Item):
    kind: Literal["detection"] = "detection"
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the input image
    score: float
    mask: RLE | None = None


class Polygon(Item):
    kind: Literal["polygon"] = "polygon"
    label: str
    points: list[tuple[float, float]]  # (x, y) pixels of the input image, in order
    mask: RLE | None = None  # the polygon rasterised on the input image


class Point(Item):
    kind: Literal["point"] = "point"
    label: str
    point: tuple[float, float]


class Keypoints(Item):
    kind: Literal["keypoints"] = "keypoints"
    label: str
    box: tuple[float, float, float, float]
    score: float
    keypoints: list[tuple[float, float, float]]  # (x, y, visibility score)


class GeneratedImage(Item):
    kind: Literal["image"] = "image"
    png_base64: str
    width: int
    height: int
    source_image: int | None = None  # for [EDIT]: which input image was edited


class UnknownPart(Item):
    """A part whose kind this process has no class for (a client older than the server): fields kept as sent."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["unknown"] = "unknown"
    sent_kind: str = ""


def as_item(value: Any) -> Item:
    """An Item from an Item or its JSON form, by its `kind`."""
    if isinstance(value, Item):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"a response part must be an object with a kind, got {type(value).__name__}")
    cls = ITEM_KINDS.get(str(value.get("kind")))
    if cls is None:
        return UnknownPart(**{**value, "kind": "unknown", "sent_kind": str(value.get("kind"))})
    return cls.model_validate(value)


# Legacy Response lists by item class (kept for existing clients); every item is also in Response.parts.
LEGACY_LISTS: dict[type[Item], str] = {
    Detection: "detections", Polygon: "polygons", Point: "points", Keypoints: "keypoints", GeneratedImage: "images",
}


class PartError(SchemaModel):
    route: Route | None = None
    phrase: str = ""
    kind: Literal["decoder_failed", "timeout", "route_not_allowed", "route_not_deployed", "bad_output"]
    message: str


class Response(SchemaModel):
    text: str  # routing markers replaced by readable references
    raw_text: str  # what the model generated, routing tokens kept
    routes: list[Route] = Field(default_factory=list)  # routes the model emitted, in order
    detections: list[Detection] = Field(default_factory=list)
    polygons: list[Polygon] = Field(default_factory=list)
    points: list[Point] = Field(default_factory=list)
    keypoints: list[Keypoints] = Field(default_factory=list)
    images: list[GeneratedImage] = Field(default_factory=list)
    parts: list[SerializeAsAny[Item]] = Field(
        default_factory=list,
        description="every item in answer order, each tagged by `kind` (detection, polygon, point, keypoints, "
        "image, or a kind a route module declares); the lists above hold the same items of the built-in kinds",
    )
    errors: list[PartError] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)  # per stage: preprocess, generate, DET, ...
    request_id: str | None = None  # set by the HTTP service (also in the X-Request-ID header)

    @field_validator("parts", mode="before")
    @classmethod
    def _parts(cls, v: Any) -> list[Item]:
        return [as_item(x) for x in v] if isinstance(v, list | tuple) else v


def response_model() -> type[Response]:
    """Response with `parts` typed as the discriminated union (on `kind`) of every item kind registered now:
    the built-in kinds and those of the route modules imported so far. The HTTP service documents this one."""
    kinds = tuple(ITEM_KINDS.values())
    part = Annotated[Union[kinds], Field(discriminator="kind")]  # noqa: UP007  (a runtime tuple of classes)
    field = Response.model_fields["parts"]
    return create_model(
        "Response", __base__=Response, parts=(list[part], Field(default_factory=list, description=field.description))
    )
