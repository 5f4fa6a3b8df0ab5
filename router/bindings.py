"""The route table: each route declared in mllm/ is bound here to a decoder and a projector.

Adding a task is one route declaration in the model config (`model.routes`), one
`RouteBinding` row (in `default_bindings()` or passed to the pipeline), and one
decoder builder (in `default_decoder_builders()` or passed to the pipeline).

A row says, for its route:
  decoder      which decoder runs it ("detector", "keypoints", "generator", "editor")
  projector    factory (llm_hidden, link_dim) -> module mapping each link state to the decoder width
  build_batch  (calls, projected (N, Q, C), decoder) -> (decoder batch, owners): owners[i] lists the
               positions in `calls` that prediction i answers
  to_items     (prediction, owner calls, decoder) -> items per owner call (Response items)
  train_batch  (projected (N, Q, C), rows, targets, images, decoder) -> (decoder batch, decoder targets)
               for the joint loss: group n belongs to batch row rows[n] and answers targets[n]
               (a router.samples.RouteTarget); images[r] is row r's input image. None: no training path
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from router.config import SuperLinkConfig
from router.schemas import Item
from router.stages import DecoderCall, DecoderResult, failed

ProjectorFactory = Callable[[int, int], nn.Module]
BuildBatch = Callable[[Sequence[DecoderCall], torch.Tensor, nn.Module], tuple[Any, list[list[int]]]]
ToItems = Callable[[Any, Sequence[DecoderCall], nn.Module], list[list[Item]]]
TrainBatch = Callable[[torch.Tensor, Sequence[int], Sequence[Any], Sequence[Any], nn.Module], tuple[Any, Any]]
DecoderBuilder = Callable[[SuperLinkConfig], nn.Module]


def perception_projector(llm_hidden: int, link_dim: int) -> nn.Module:
    """VisionLLM v2's patch2query: a 3-layer MLP (ReLU) applied to every link state."""
    return nn.Sequential(
        nn.Linear(llm_hidden, link_dim),
        nn.ReLU(),
        nn.Linear(link_dim, link_dim),
        nn.ReLU(),
        nn.Linear(link_dim, link_dim),
    )


class SkipProjector(nn.Module):
    """LayerNorm, a linear map to the decoder width, and a GELU MLP residual on top.

    The linear path keeps phrase link states as distinct as the LLM makes them. The ReLU MLP above feeds
    non-negative features into its last layer, so its outputs share one direction: at initialisation the
    projected phrase vectors already have a mean pairwise cosine of about 0.7 (bench/link_ablation.py).
    """

    def __init__(self, llm_hidden: int, link_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(llm_hidden)
        self.linear = nn.Linear(llm_hidden, link_dim)
        self.mlp = nn.Sequential(nn.Linear(link_dim, link_dim), nn.GELU(), nn.Linear(link_dim, link_dim))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h = self.linear(self.norm(states))  # (..., C)
        return h + self.mlp(h)


def generation_projector(llm_hidden: int, link_dim: int) -> nn.Module:
    """VisionLLM v2's emb_proj for [GEN]/[EDIT]: Linear-GELU-Linear (the decoder's mapper does the rest)."""
    return nn.Sequential(nn.Linear(llm_hidden, link_dim), nn.GELU(), nn.Linear(link_dim, link_dim))


# Perception projectors by name (`model.link_projector`); a binding's own factory is used when it names none.
PROJECTORS: dict[str, ProjectorFactory] = {"relu_mlp": perception_projector, "skip_mlp": SkipProjector}


@dataclass(frozen=True)
class RouteBinding:
    route: str
    decoder: str
    projector: ProjectorFactory
    build_batch: BuildBatch
    to_items: ToItems
    train_batch: TrainBatch | None = None


BindingTable = Mapping[str, RouteBinding]


def check_table(
    table: BindingTable, routes: Sequence[str], decoders: Mapping[str, object]
) -> None:
    """Every binding names a declared route and a known decoder; fail loudly otherwise."""
    for name, b in table.items():
        if name != b.route:
            raise ValueError(f"binding table key {name!r} differs from its row's route {b.route!r}")
        if b.route not in routes:
            raise ValueError(
                f"route {b.route!r} is bound but not declared in model.routes {list(routes)}; "
                "declare it in the model config first"
            )
        if b.decoder not in decoders:
            raise ValueError(
                f"route {b.route!r} is bound to decoder {b.decoder!r}, which has no builder; "
                f"known decoders: {sorted(decoders)}"
            )


class SuperLinkSystem(nn.Module):
    """The trainable whole: MLLM + one projector per bound route + the decoders.

    Attribute names are checkpoint keys: `model.*`, `projectors.<ROUTE>.*`, `decoders.<name>.*`.
    `model` may be None for a decoder-only process (a Ray Serve decoder replica).
    """

    def __init__(
        self, model: nn.Module | None, decoders: Mapping[str, nn.Module], table: BindingTable, llm_hidden: int
    ) -> None:
        super().__init__()
        self.model = model
        self.decoders = nn.ModuleDict(dict(decoders))
        self.table = dict(table)
        self.projectors = nn.ModuleDict(
            {
                route: b.projector(llm_hidden, int(self.decoders[b.decoder].link_dim))
                for route, b in self.table.items()
                if b.decoder in self.decoders
            }
        )

    @property
    def deployed_routes(self) -> list[str]:
        return list(self.projectors.keys())

    def binding(self, route: str) -> RouteBinding:
        if route not in self.table:
            raise KeyError(f"route {route!r} has no binding; bound routes: {sorted(self.table)}")
        return self.table[route]

    def decoder_for(self, route: str) -> nn.Module:
        name = self.binding(route).decoder
        if name not in self.decoders:
            raise KeyError(f"decoder {name!r} for route {route!r} is not loaded here; loaded: {list(self.decoders)}")
        return self.decoders[name]

    def project(self, route: str, states: torch.Tensor) -> torch.Tensor:
        """(N, Q, D) LLM link states -> (N, Q, C) in the route's decoder width."""
        if route not in self.projectors:
            raise KeyError(f"route {route!r} is not deployed here; deployed: {self.deployed_routes}")
        return self.projectors[route](states)


def run_route(system: SuperLinkSystem, route: str, calls: Sequence[DecoderCall]) -> list[DecoderResult]:
    """Project the calls' link states, run the route's decoder once, map predictions back to calls.

    Any failure becomes a PartError on every call of this route; other routes are unaffected.
    """
    if route not in system.table or system.table[route].decoder not in system.decoders:
        msg = f"route {route!r} has no decoder deployed here; deployed routes: {system.deployed_routes}"
        return [failed(c, "route_not_deployed", msg) for c in calls]
    binding = system.table[route]
    decoder = system.decoders[binding.decoder]
    try:
        device = next(system.projectors[route].parameters()).device
        states = torch.from_numpy(np.stack([c.states for c in calls])).float().to(device)  # (N, Q, D)
        batch, owners = binding.build_batch(calls, system.project(route, states), decoder)
        predictions = decoder(batch).predictions
        items: list[list[Item]] = [[] for _ in calls]
        for pred, own in zip(predictions, owners, strict=True):
            for i, its in zip(own, binding.to_items(pred, [calls[i] for i in own], decoder), strict=True):
                items[i].extend(its)
    except Exception as err:  # a failing decoder must not take the response down
        msg = f"{binding.decoder} failed on {route}: {type(err).__name__}: {err}"
        return [failed(c, "decoder_failed", msg) for c in calls]
    return [DecoderResult(c.request, c.event, c.route, c.phrase, items=items[i]) for i, c in enumerate(calls)]


# ---- shared helpers for the rows ------------------------------------------------------------
def _by_request(calls: Sequence[DecoderCall]) -> list[list[int]]:
    """Positions of `calls` grouped by request, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(calls):
        groups.setdefault(c.request, []).append(i)
    return list(groups.values())


def _need_image(call: DecoderCall) -> np.ndarray:
    if call.image is None:
        raise ValueError(f"route {call.route} needs an input image, but request {call.request} has none")
    return call.image


def _seeds(calls: Sequence[DecoderCall]) -> list[int] | None:
    """One seed per call: the request's seed offset by the event index, so two [GEN] in one answer differ."""
    if all(c.options.seed is None for c in calls):
        return None
    fresh = np.random.default_rng()
    return [int(c.options.seed) + c.event if c.options.seed is not None else int(fresh.integers(2**31)) for c in calls]


# ---- [DET] [SEG] [GRD] -> detector ----------------------------------------------------------
def detector_batch(calls: Sequence[DecoderCall], projected: torch.Tensor, decoder: nn.Module) -> tuple[Any, list[list[int]]]:
    """One detector item per request; its phrases are that request's calls of this route."""
    from decoders.detection import DetectionBatch
    from decoders.keypoints import PoseBatch

    owners = _by_request(calls)
    p_max, (q, c) = max(len(o) for o in owners), projected.shape[1:]
    states = projected.new_zeros(len(owners), p_max, q, c)  # (B, P, Q, C)
    mask = torch.zeros(len(owners), p_max, dtype=torch.bool, device=projected.device)  # (B, P)
    for b, own in enumerate(owners):
        states[b, : len(own)] = projected[own]
        mask[b, : len(own)] = True
    pose = calls[0].route == "POSE"
    batch = (PoseBatch if pose else DetectionBatch).from_images(
        [_need_image(calls[o[0]]) for o in owners],
        states,
        mask,
        [[calls[i].phrase or f"phrase {i}" for i in o] for o in owners],
        decoder.detector.config if pose else decoder.config,
        task="det" if pose else calls[0].route.lower(),
        score_threshold=min(c.options.score_threshold for c in calls),
    )
    return batch, owners


def detector_items(prediction: Any, calls: Sequence[DecoderCall], decoder: nn.Module) -> list[list[Item]]:
    """Detections of phrase j belong to owner call j; each call's own score threshold applies."""
    from router.response import mask_rle
    from router.schemas import Detection

    out: list[list[Item]] = [[] for _ in calls]
    for d in prediction:
        call = calls[d.phrase_index]
        if d.score < call.options.score_threshold and call.route != "GRD":
            continue
        mask = mask_rle(d.mask) if d.mask is not None else None
        out[d.phrase_index].append(
            Detection(route=call.route, phrase=call.phrase, image=call.image_index or 0, label=call.phrase,
                      box=tuple(float(v) for v in d.box), score=float(d.score), mask=mask)
        )
    return out


def keypoint_items(prediction: Any, calls: Sequence[DecoderCall], decoder: nn.Module) -> list[list[Item]]:
    from router.schemas import Keypoints

    out: list[list[Item]] = [[] for _ in calls]
    for inst in prediction:
        call = calls[inst.phrase_index]
        if inst.score < call.options.score_threshold:
            continue
        kps = [(float(x), float(y), float(v)) for x, y, v in inst.keypoints]
        out[inst.phrase_index].append(
            Keypoints(route=call.route, phrase=call.phrase, image=call.image_index or 0, label=call.phrase,
                      box=tuple(float(v) for v in inst.box), score=float(inst.score), keypoints=kps)
        )
    return out


def _groups_by_row(rows: Sequence[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for n, r in enumerate(rows):
        groups.setdefault(r, []).append(n)
    return list(groups.values())


def detector_train_batch(
    projected: torch.Tensor, rows: Sequence[int], targets: Sequence[Any], images: Sequence[Any], decoder: nn.Module
) -> tuple[Any, Any]:
    """One detector item per row; phrase j of a row is its j-th group; target labels index phrases."""
    from decoders.detection import DetectionBatch, DetectionTarget
    from decoders.keypoints import PoseBatch, PoseTarget

    route = targets[0].route
    owners = _groups_by_row(rows)
    p_max, (q, c) = max(len(o) for o in owners), projected.shape[1:]
    states = projected.new_zeros(len(owners), p_max, q, c)  # (B, P, Q, C)
    mask = torch.zeros(len(owners), p_max, dtype=torch.bool, device=projected.device)
    dec_targets = []
    for b, own in enumerate(owners):
        states[b, : len(own)] = projected[own]
        mask[b, : len(own)] = True
        dec_targets.append(_detection_target(route, [targets[n] for n in own], DetectionTarget, PoseTarget))
    pose = route == "POSE"
    batch = (PoseBatch if pose else DetectionBatch).from_images(
        [images[rows[o[0]]] for o in owners], states, mask, [[targets[n].phrase for n in o] for o in owners],
        decoder.detector.config if pose else decoder.config, task="det" if pose else route.lower(),
    )  # fmt: skip
    return batch, dec_targets


def _detection_target(route: str, phrase_targets: Sequence[Any], det_cls: type, pose_cls: type) -> Any:
    """A row's RouteTargets (one per phrase) -> one DetectionTarget / PoseTarget with phrase labels."""
    boxes = torch.from_numpy(np.concatenate([t.boxes for t in phrase_targets]).astype(np.float32)).reshape(-1, 4)
    labels = torch.tensor([j for j, t in enumerate(phrase_targets) for _ in range(len(t.boxes))], dtype=torch.long)
    if route == "POSE":
        kps = np.concatenate([t.keypoints for t in phrase_targets]).astype(np.float32)
        return pose_cls(boxes, labels, keypoints=torch.from_numpy(kps))
    masks = None
    if route == "SEG":
        masks = torch.from_numpy(np.concatenate([t.masks for t in phrase_targets]).astype(bool))
    return det_cls(boxes, labels, masks)


# ---- [GEN] [EDIT] -> generator, editor --------------------------------------------------------
def generator_batch(calls: Sequence[DecoderCall], projected: torch.Tensor, decoder: nn.Module) -> tuple[Any, list[list[int]]]:
    """One image per call; steps and guidance come from the first call's options (one sampler run)."""
    from decoders.diffusion import GenerationBatch

    o = calls[0].options
    batch = GenerationBatch(projected, steps=o.steps, guidance_scale=o.guidance_scale, seeds=_seeds(calls))
    return batch, [[i] for i in range(len(calls))]


def editor_batch(calls: Sequence[DecoderCall], projected: torch.Tensor, decoder: nn.Module) -> tuple[Any, list[list[int]]]:
    from decoders.diffusion import EditBatch

    o = calls[0].options
    batch = EditBatch(
        projected,
        steps=o.steps,
        guidance_scale=o.guidance_scale,
        seeds=_seeds(calls),
        source_images=[_need_image(c) for c in calls],
        image_guidance_scale=o.image_guidance_scale,
    )
    return batch, [[i] for i in range(len(calls))]


def target_texts(targets: Sequence[Any]) -> list[str] | None:
    """What each image target shows, in words ("red circle blue square"), when every target lists its objects."""
    if any(t.objects is None for t in targets):
        return None
    return [" ".join(f"{o['color']} {o['kind']}" for o in t.objects) for t in targets]


def generator_train_batch(
    projected: torch.Tensor, rows: Sequence[int], targets: Sequence[Any], images: Sequence[Any], decoder: nn.Module
) -> tuple[Any, Any]:
    from decoders.diffusion import DiffusionTargets, GenerationBatch

    return GenerationBatch(projected), DiffusionTargets([t.image for t in targets], texts=target_texts(targets))


def editor_train_batch(
    projected: torch.Tensor, rows: Sequence[int], targets: Sequence[Any], images: Sequence[Any], decoder: nn.Module
) -> tuple[Any, Any]:
    from decoders.diffusion import DiffusionTargets, EditBatch

    sources = [images[r] for r in rows]
    if any(s is None for s in sources):
        raise ValueError("an [EDIT] training row has no source image")
    return EditBatch(projected, source_images=sources), DiffusionTargets([t.image for t in targets], texts=target_texts(targets))


def image_items(prediction: Any, calls: Sequence[DecoderCall], decoder: nn.Module) -> list[list[Item]]:
    from router.response import png_base64
    from router.schemas import GeneratedImage

    (call,) = calls
    h, w = prediction.image.shape[:2]
    source = call.image_index if call.route == "EDIT" else None
    item = GeneratedImage(route=call.route, phrase=call.phrase, image=call.image_index or 0,
                          png_base64=png_base64(prediction.image), width=w, height=h, source_image=source)
    return [[item]]


# ---- decoder builders ------------------------------------------------------------------------
def build_detector(cfg: SuperLinkConfig) -> nn.Module:
    from decoders.detection import DetectionDecoder

    c = cfg.decoders.detector
    return DetectionDecoder.from_pretrained(c.pretrained, c) if c.pretrained else DetectionDecoder(c)


def build_keypoints(cfg: SuperLinkConfig) -> nn.Module:
    """The [POSE] decoder with its own detector (loaded from detector.pretrained when set). With
    keypoints.share_detector the detector is a placeholder until `share_decoders` gives it the real one."""
    from decoders.detection import DetectionDecoder
    from decoders.keypoints import KeypointDecoder

    det = cfg.decoders.detector
    if cfg.decoders.keypoints.share_detector and det.pretrained:
        return KeypointDecoder(cfg.decoders.keypoints, DetectionDecoder(det.model_copy(update={"pretrained": None})))
    return KeypointDecoder.build(cfg.decoders.keypoints, det)


def share_decoders(cfg: SuperLinkConfig, decoders: dict[str, nn.Module]) -> None:
    """keypoints.share_detector: [POSE] runs on the very detector [DET] runs on (one set of weights in-process);
    a process holding only the keypoint decoder (a Ray replica) loads its own copy of detector.pretrained."""
    if not cfg.decoders.keypoints.share_detector or "keypoints" not in decoders:
        return
    if "detector" in decoders:
        decoders["keypoints"].detector = decoders["detector"]
    elif cfg.decoders.detector.pretrained:
        decoders["keypoints"].detector = build_detector(cfg)


def build_generator(cfg: SuperLinkConfig) -> nn.Module:
    from decoders.diffusion import GenerationDecoder

    c = cfg.decoders.generator
    return GenerationDecoder.from_pretrained_sd(c.pretrained, c) if c.pretrained else GenerationDecoder(c)


def build_editor(cfg: SuperLinkConfig) -> nn.Module:
    from decoders.diffusion import EditDecoder

    c = cfg.decoders.editor
    return EditDecoder.from_pretrained_ip2p(c.pretrained, c) if c.pretrained else EditDecoder(c)


DecoderLoader = Callable[[Path], nn.Module]


def default_decoder_loaders() -> dict[str, DecoderLoader]:
    """Decoder name -> loader of the folder its save_pretrained wrote (a self-contained saved system)."""
    from decoders.detection import DetectionDecoder
    from decoders.diffusion import EditDecoder, GenerationDecoder
    from decoders.keypoints import KeypointDecoder

    return {
        "detector": DetectionDecoder.from_pretrained,
        "keypoints": KeypointDecoder.from_pretrained,
        "generator": GenerationDecoder.from_pretrained,
        "editor": EditDecoder.from_pretrained,
    }


def pretrained_decoders(cfg: SuperLinkConfig, names: Sequence[str]) -> list[str]:
    """Those of `names` built from a `pretrained` folder (keypoints: from the detector's)."""
    folder = {
        "detector": cfg.decoders.detector.pretrained,
        "keypoints": cfg.decoders.detector.pretrained,
        "generator": cfg.decoders.generator.pretrained,
        "editor": cfg.decoders.editor.pretrained,
    }
    return [n for n in names if folder.get(n)]


# ---- the table ---------------------------------------------------------------------------------
def default_decoder_builders() -> dict[str, DecoderBuilder]:
    return {"detector": build_detector, "keypoints": build_keypoints, "generator": build_generator, "editor": build_editor}


def default_bindings() -> dict[str, RouteBinding]:
    """The built-in route table: one row per route."""
    rows = [
        RouteBinding("DET", "detector", perception_projector, detector_batch, detector_items, detector_train_batch),
        RouteBinding("SEG", "detector", perception_projector, detector_batch, detector_items, detector_train_batch),
        RouteBinding("GRD", "detector", perception_projector, detector_batch, detector_items, detector_train_batch),
        RouteBinding("POSE", "keypoints", perception_projector, detector_batch, keypoint_items, detector_train_batch),
        RouteBinding("GEN", "generator", generation_projector, generator_batch, image_items, generator_train_batch),
        RouteBinding("EDIT", "editor", generation_projector, editor_batch, image_items, editor_train_batch),
    ]
    return {r.route: r for r in rows}
