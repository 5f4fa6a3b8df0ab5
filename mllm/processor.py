"""The processor: images -> pixel values, instructions (+ answers) -> token ids and labels, region prompts -> masks.

Chat template (Vicuna v1, as LLaVA-1.5 and VisionLLM v2 use), a Jinja `chat_template` on the
tokenizer (CHAT_TEMPLATE, set at load time when a saved tokenizer has none) rendered by
`apply_chat_template`; BOS is prepended as an id:

    <s>USER: <image>\\n{instruction} ASSISTANT: {answer}</s>

Prompt safety: an instruction may not forge a turn or a special token. It is refused
(ProcessorError) when it holds a role marker (`USER:` / `ASSISTANT:`, any case, after Unicode
NFKC folding and with invisible characters removed) or any text the tokenizer would read as an
added token other than `<image>` / `<region>` (`<loc_i>`, `<cls_i>`, `</s>`, `<s>`, `<pad>`,
routing tokens, placeholders).

`<image>` becomes `num_image_tokens` image tokens (one per patch by default) (the model masked_scatters one projected
patch feature into each). `<region>` stays one token per region prompt (the region encoder
replaces its embedding). In answers, each routing token is followed by its route's query
placeholders, which carry no label. Rows are LEFT padded so batched generation continues
every row from its last real token.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mllm.config import MLLMConfig
from mllm.constraints import PolygonConstraint
from mllm.images import load_image
from mllm.localize import LocalizeError, LocalizeRequest, localize_request
from mllm.scribble import DEFAULT_SCRIBBLE_WIDTH, ScribbleError, rasterize_scribble
from mllm.tokenizer import resegment
from mllm.vocab import IMAGE_TOKEN, REGION_TOKEN, Vocabulary, cls_token, loc_token

IGNORE_INDEX = -100  # label of positions the LM loss skips (torch cross_entropy's default ignore_index)
USER, ASSISTANT = "USER:", "ASSISTANT:"
# The Vicuna turns as a Jinja chat template; renders exactly the string format the shipped model was trained on.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('roles are user and assistant, got ' + m['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_ROLE_MARKER = re.compile(r"\b(user|assistant)\s*:", re.IGNORECASE)
_REGION_KEYS = ("box", "point", "mask", "scribble")


class ProcessorError(ValueError):
    """Bad processor input; the message says what was wrong and what is accepted."""


@dataclass
class EncodedRow:
    """One row before padding: ids, labels (None without an answer) and the prompt length."""

    input_ids: list[int]
    labels: list[int] | None
    prompt_length: int


class SuperLinkProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: MLLMConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.vocab = Vocabulary.from_config(config)
        self.image_size = config.vision.image_size
        self.num_image_tokens = config.num_image_tokens
        self._check_tokenizer()
        if not getattr(tokenizer, "chat_template", None):  # saved before templates were stored: same format
            tokenizer.chat_template = CHAT_TEMPLATE
        ids = tokenizer.convert_tokens_to_ids
        self.image_token_id: int = ids(IMAGE_TOKEN)
        self.region_token_id: int = ids(REGION_TOKEN)
        self.pad_token_id: int = tokenizer.pad_token_id
        self.bos_token_id: int | None = tokenizer.bos_token_id
        self.eos_token_id: int = tokenizer.eos_token_id
        self.route_token_ids: dict[str, int] = {r.name: ids(r.token) for r in self.vocab.routes}
        self.placeholder_token_ids: dict[str, int] = {r.name: ids(r.placeholder) for r in self.vocab.routes}
        self._queries_by_route_id = {self.route_token_ids[r.name]: r for r in self.vocab.routes}
        self.loc_token_ids: list[int] = ids([loc_token(i) for i in range(self.vocab.location_bins)])
        self.cls_token_ids: list[int] = ids([cls_token(i) for i in range(self.vocab.class_slots)])
        # every added token a user may not type: all but the <image>/<region> placeholders
        self._reserved_ids = sorted(
            set(tokenizer.added_tokens_decoder) - {self.image_token_id, self.region_token_id}
        )
        self.subword_dropout = 0.0  # training only: see with_subword_dropout
        self._segment_rng: np.random.Generator | None = None

    def with_subword_dropout(self, rate: float, seed: Any = 0) -> SuperLinkProcessor:
        """A training copy whose prompts are re-segmented at random (`mllm.tokenizer.resegment`, subword
        regularisation); answers and the prompt checks keep the usual segmentation. `reseed` fixes the
        randomness per step, so a resumed run re-draws the same segmentations."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"subword dropout rate must be in [0, 1); got {rate}")
        other = copy.copy(self)
        other.subword_dropout = rate
        other.reseed(seed)
        return other

    def reseed(self, seed: Any) -> None:
        """Seed the prompt re-segmentation (any numpy SeedSequence entropy, e.g. [seed, step, micro, rank])."""
        self._segment_rng = np.random.default_rng(seed)

    def _check_tokenizer(self) -> None:
        known = self.tokenizer.get_vocab()
        missing = [t for t in self.vocab.special_tokens if t not in known]
        if missing:
            shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
            raise ProcessorError(
                f"tokenizer lacks SuperLink tokens: {shown}; add them with mllm.tokenizer.add_superlink_tokens "
                "(and resize the model's embeddings)"
            )
        for name in ("pad_token_id", "eos_token_id"):
            if getattr(self.tokenizer, name) is None:
                raise ProcessorError(
                    f"tokenizer has no {name.removesuffix('_id')}; SuperLink needs pad and eos tokens"
                )

    # ---- images --------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Any]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images -> pixel_values (N, 3, S, S) float32 (bicubic resize, CLIP normalisation) and original (w, h)."""
        pils = [load_image(im, self.config.max_image_pixels) for im in images]
        s = self.image_size
        arrays = [
            np.asarray(p.resize((s, s), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0 for p in pils
        ]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, S, S, 3) -> (N, 3, S, S)
        mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
        return ((pixels - mean) / std).contiguous(), [p.size for p in pils]

    # ---- text ----------------------------------------------------------------------------
    def build_prompt(self, instruction: str, answer: str | None = None, num_images: int = 0) -> str:
        """Vicuna-style prompt; "<image>\\n" is prepended once per image when the instruction has none."""
        n = instruction.count(IMAGE_TOKEN)
        if n == 0 and num_images:
            instruction = (IMAGE_TOKEN + "\n") * num_images + instruction
        elif n != num_images:
            raise ProcessorError(
                f"instruction has {n} {IMAGE_TOKEN} placeholder(s) but {num_images} image(s) were given; "
                f"use one {IMAGE_TOKEN} per image, or none to put all images first"
            )
        messages = [{"role": "user", "content": instruction}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)

    def encode_row(self, instruction: str, num_images: int, answer: str | None = None) -> EncodedRow:
        """Token ids for one row: <image> expanded, routing tokens followed by placeholders; labels when answered."""
        prompt = self._expand_images(self._encode_prompt(instruction, num_images))
        if len(prompt) > self.config.max_prompt_tokens:
            raise ProcessorError(
                f"prompt is {len(prompt)} tokens ({num_images} image(s) x {self.num_image_tokens} image tokens "
                f"included); the limit is {self.config.max_prompt_tokens} (config model.max_prompt_tokens)"
            )
        if answer is None:
            return EncodedRow(prompt, None, len(prompt))
        ans_ids, ans_labels = self._encode_answer(answer)
        return EncodedRow(prompt + ans_ids, [IGNORE_INDEX] * len(prompt) + ans_labels, len(prompt))

    def check_instruction(self, instruction: str) -> None:
        """Refuse (ProcessorError) user text that would forge a chat turn or a special token."""
        folded = "".join(ch for ch in unicodedata.normalize("NFKC", instruction) if unicodedata.category(ch) != "Cf")
        m = _ROLE_MARKER.search(folded)
        if m:
            raise ProcessorError(
                f"instruction contains the role marker {m.group(0)!r}; the chat turns ({USER} ... {ASSISTANT}) are "
                "added by the processor, so an instruction may not contain 'USER:' or 'ASSISTANT:' in any case; "
                "reword it (e.g. drop the colon)"
            )
        for text in {instruction, folded}:
            found = sorted(set(self._tokenize(text)) & set(self._reserved_ids))
            if found:
                names = ", ".join(self.tokenizer.convert_ids_to_tokens(found))
                raise ProcessorError(
                    f"instruction contains {names}; special tokens are reserved for the model (only {IMAGE_TOKEN} "
                    f"and {REGION_TOKEN} placeholders may appear in an instruction)"
                )

    def _encode_prompt(self, instruction: str, num_images: int) -> list[int]:
        self.check_instruction(instruction)
        if self.config.text.lowercase_instructions:  # after the check: "[DET]" must not slip through as "[det]"
            instruction = instruction.lower()
        ids = self._tokenize(self.build_prompt(instruction, num_images=num_images))
        if self.subword_dropout > 0.0 and self._segment_rng is not None:
            ids = resegment(self.tokenizer, ids, self.subword_dropout, self._segment_rng)
        return ([self.bos_token_id] if self.bos_token_id is not None else []) + ids

    def _encode_answer(self, answer: str) -> tuple[list[int], list[int]]:
        """ " {answer}</s>" with each routing token followed by its placeholders; placeholders get no label."""
        forbidden = [self.image_token_id, self.region_token_id, *self.placeholder_token_ids.values()]
        self._refuse_tokens(answer, "answer", forbidden)
        ids, labels = [], []
        for tok in self._tokenize(" " + answer) + [self.eos_token_id]:
            ids.append(tok)
            labels.append(tok)
            route = self._queries_by_route_id.get(tok)
            if route is not None:
                ids += [self.placeholder_token_ids[route.name]] * route.num_queries
                labels += [IGNORE_INDEX] * route.num_queries
        return ids, labels

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _refuse_tokens(self, text: str, where: str, forbidden: list[int]) -> None:
        found = sorted(set(self._tokenize(text)) & set(forbidden))
        if found:
            names = self.tokenizer.convert_ids_to_tokens(found)
            raise ProcessorError(
                f"{where} contains {', '.join(names)}; the processor inserts these itself "
                "(<image>/<region> belong in instructions, bare routing tokens such as [DET] in answers)"
            )

    def _expand_images(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for tok in ids:
            out += [tok] * self.num_image_tokens if tok == self.image_token_id else [tok]
        return out

    # ---- native localisation -------------------------------------------------------------
    def localization(self, instruction: str) -> LocalizeRequest:
        """How the instruction wants locations answered: boxes ("auto") or N-point polygons, N read from it
        ("outline the red circle using 20 vertices" -> polygon, 20); a count out of range is a ProcessorError."""
        try:
            return localize_request(instruction)
        except LocalizeError as err:
            raise ProcessorError(str(err)) from None

    def decoding_constraint(self, localization: LocalizeRequest, num_classes: int) -> PolygonConstraint | None:
        """The logits constraint that makes generation answer with exactly the requested polygons, or None.

        `num_classes` is how many class slots the request bound (0: the instruction listed none, every slot allowed).
        """
        if localization.mode != "polygon" or localization.points is None:
            return None
        bound = min(num_classes, len(self.cls_token_ids)) if num_classes else None
        return PolygonConstraint(localization.points, self.loc_token_ids, self.cls_token_ids, bound)

    # ---- regions -------------------------------------------------------------------------
    def region_mask(self, region: dict[str, Any], size: tuple[int, int]) -> torch.Tensor:
        """A region prompt on an image of original (w, h) -> binary mask (S, S) float32 at the vision resolution."""
        given = [k for k in _REGION_KEYS if region.get(k) is not None]
        unknown = set(region) - {*_REGION_KEYS, "image", "width"}
        if len(given) != 1 or unknown or ("width" in region and given != ["scribble"]):
            raise ProcessorError(
                "a region prompt needs exactly one of box, point, mask or scribble (plus optional 'image', and "
                f"'width' for a scribble); got keys {sorted(region)}"
            )
        kind = given[0]
        if kind == "scribble":
            width = region.get("width")
            try:
                mask = rasterize_scribble(region["scribble"], DEFAULT_SCRIBBLE_WIDTH if width is None else width, size)
            except ScribbleError as err:
                raise ProcessorError(f"region {err}") from None
            return self._resize_mask(torch.from_numpy(mask))
        if kind == "box":
            return self._box_mask(region["box"], size)
        if kind == "point":
            return self._point_mask(region["point"], size)
        return self._resize_mask(_mask_array(region["mask"], size))

    def _pixel_grid(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-centre coordinates of the S x S grid, in ORIGINAL image pixels: (1, S) xs and (S, 1) ys."""
        s, (w, h) = self.image_size, size
        centres = torch.arange(s, dtype=torch.float64) + 0.5
        return (centres * w / s).view(1, s), (centres * h / s).view(s, 1)

    def _box_mask(self, box: Sequence[float], size: tuple[int, int]) -> torch.Tensor:
        x1, y1, x2, y2 = _check_coords(box, 4, size, "box")
        if x2 < x1 or y2 < y1:
            raise ProcessorError(
                f"region box {list(box)} has x2 < x1 or y2 < y1; accepted [x1, y1, x2, y2] in pixels"
            )
        xs, ys = self._pixel_grid(size)
        mask = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)  # (S, S)
        if not mask.any():  # a box thinner than one vision pixel: keep the pixel holding its centre
            return self._point_mask(((x1 + x2) / 2, (y1 + y2) / 2), size, radius=0.0)
        return mask.float()

    def _point_mask(
        self, point: Sequence[float], size: tuple[int, int], radius: float | None = None
    ) -> torch.Tensor:
        """A disc of radius ~1/16 of the side around the point (at least the pixel that holds it)."""
        x, y = _check_coords(point, 2, size, "point")
        s, (w, h) = self.image_size, size
        r = max(s / 16, 1.0) if radius is None else radius  # in vision pixels
        xs, ys = self._pixel_grid(size)
        mask = ((xs - x) * s / w) ** 2 + ((ys - y) * s / h) ** 2 <= r * r  # (S, S)
        col, row = min(int(x * s / w), s - 1), min(int(y * s / h), s - 1)
        mask[row, col] = True
        return mask.float()

    def _resize_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(H, W) bool -> (S, S) float: area coverage >= 1/2, or any coverage for masks that would vanish."""
        if not mask.any():
            raise ProcessorError("region mask is empty; a region needs at least one pixel set")
        cover = F.interpolate(mask[None, None].float(), size=(self.image_size,) * 2, mode="area")[
            0, 0
        ]  # (S, S)
        out = cover >= 0.5
        return (out if out.any() else cover > 0).float()

    def encode_regions(
        self, regions: list[list[dict[str, Any]]], sizes: list[tuple[int, int]], images_per_row: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """All rows' regions -> region_masks (N_reg, S, S) and region_image_index (N_reg,) into pixel_values."""
        masks, index = [], []
        offset = 0
        for row, (row_regions, n_img) in enumerate(zip(regions, images_per_row, strict=True)):
            for reg in row_regions:
                k = reg.get("image", 0)
                if not isinstance(k, int) or not 0 <= k < n_img:
                    raise ProcessorError(
                        f"row {row}: region refers to image {k!r} but the row has {n_img} image(s)"
                    )
                masks.append(self.region_mask(reg, sizes[offset + k]))
                index.append(offset + k)
            offset += n_img
        if not masks:
            return None, None
        return torch.stack(masks), torch.tensor(index, dtype=torch.long)

    # ---- batch ---------------------------------------------------------------------------
    def __call__(
        self,
        instructions: list[str],
        images: list[list[Any]] | None = None,
        answers: list[str] | None = None,
        regions: list[list[dict[str, Any]]] | None = None,
    ) -> BatchFeature:
        """A batch of rows -> input_ids/attention_mask (B, T) left padded, pixel_values, region masks, labels."""
        b = len(instructions)
        images = _per_row(images, b, "images") or [[] for _ in range(b)]
        regions = _per_row(regions, b, "regions") or [[] for _ in range(b)]
        answers = _per_row(answers, b, "answers")
        self._check_region_counts(instructions, regions)
        rows = [
            self.encode_row(text, len(imgs), None if answers is None else answers[i])
            for i, (text, imgs) in enumerate(zip(instructions, images, strict=True))
        ]
        flat = [im for row in images for im in row]
        pixel_values, sizes = self.preprocess_images(flat) if flat else (None, [])
        masks, index = self.encode_regions(regions, sizes, [len(r) for r in images])
        data = self.pad(rows)
        data.update(
            pixel_values=pixel_values,
            image_sizes=sizes,
            images_per_row=[len(r) for r in images],
            region_masks=masks,
            region_image_index=index,
        )
        return BatchFeature(data=data)

    def _check_region_counts(self, instructions: list[str], regions: list[list[dict[str, Any]]]) -> None:
        for row, (text, regs) in enumerate(zip(instructions, regions, strict=True)):
            n = text.count(REGION_TOKEN)
            if n != len(regs):
                raise ProcessorError(
                    f"row {row}: instruction has {n} {REGION_TOKEN} placeholder(s) but {len(regs)} region prompt(s) "
                    f"were given; use one {REGION_TOKEN} per region, in order"
                )

    def pad(self, rows: list[EncodedRow]) -> dict[str, torch.Tensor]:
        """Left pad to the longest row: input_ids / attention_mask (B, T) long, and labels (B, T) when answered."""
        t = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), t), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), t), dtype=torch.long)
        labels = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.input_ids)
            ids[i, t - n :] = torch.tensor(r.input_ids, dtype=torch.long)
            attn[i, t - n :] = 1
            if r.labels is not None:
                labels[i, t - n :] = torch.tensor(r.labels, dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": attn}
        if rows[0].labels is not None:
            out["labels"] = labels
        return out

    # ---- decode / save / load ------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> text with routing, location and class tokens kept; placeholders, pad and eos dropped."""
        drop = {
            *self.placeholder_token_ids.values(),
            self.pad_token_id,
            self.eos_token_id,
            self.bos_token_id,
            self.image_token_id,
        }
        return self.tokenizer.decode(
            [int(i) for i in ids if int(i) not in drop], skip_special_tokens=False
        ).strip()

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes the tokenizer files; the MLLMConfig is saved with the model."""
        self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: MLLMConfig) -> SuperLinkProcessor:
        path = Path(directory)
        if not path.is_dir():
            raise ProcessorError(f"{path}: no such directory; expected a folder written by save_pretrained")
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        tokenizer.padding_side = "left"
        return cls(tokenizer, config)


def _per_row(values: list[Any] | None, b: int, name: str) -> list[Any] | None:
    if values is not None and len(values) != b:
        raise ProcessorError(
            f"{name} has {len(values)} rows but there are {b} instructions; give one entry per row"
        )
    return values


def _check_coords(xy: Sequence[float], n: int, size: tuple[int, int], what: str) -> list[float]:
    w, h = size
    vals = [float(v) for v in xy]
    if len(vals) != n:
        raise ProcessorError(f"region {what} needs {n} coordinates, got {len(vals)}")
    for k, v in enumerate(vals):
        side = w if k % 2 == 0 else h
        if not 0.0 <= v <= side:
            raise ProcessorError(
                f"region {what} {vals} lies outside the {w}x{h} image; coordinates are pixels of the original image"
            )
    return vals


def rle_run_lengths(counts: str | bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString format: each count in
    5-bit groups as chars '0'+v, bit 0x20 = more groups follow, 0x10 of the last group = negative;
    counts after the second are stored as differences from the one two places back)."""
    text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ProcessorError("region mask RLE counts end in the middle of a number")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ProcessorError(f"region mask RLE counts hold {text[p]!r}, outside the RLE alphabet '0'..'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _check_rle_counts(counts: str | bytes, size: list[Any]) -> None:
    """The runs must be non-negative and cover exactly h * w pixels (else pycocotools leaves memory unset)."""
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ProcessorError(f"region mask RLE size {size} must be [h, w] with positive integers")
    runs = rle_run_lengths(counts)
    if any(r < 0 for r in runs):
        raise ProcessorError("region mask RLE has a negative run length")
    if sum(runs) != size[0] * size[1]:
        raise ProcessorError(
            f"region mask RLE runs cover {sum(runs)} pixels but the mask is {size[0]}x{size[1]} = {size[0] * size[1]}; "
            "the counts must cover every pixel exactly once"
        )


def _mask_array(mask: Any, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W) array/tensor or a COCO RLE dict {"size": [h, w], "counts": ...} -> (H, W) bool tensor."""
    if isinstance(mask, dict):
        counts = mask.get("counts")
        if isinstance(counts, str | bytes):
            _check_rle_counts(counts, list(mask.get("size", ())))
        rle = {
            "size": list(mask.get("size", ())),
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
        try:
            mask = mask_utils.decode(rle)
        except Exception as err:  # pycocotools raises bare TypeError/ValueError on bad RLE
            raise ProcessorError(
                f"region mask RLE could not be decoded ({err}); accepted {{'size': [h, w], 'counts': str}}"
            ) from None
    m = torch.as_tensor(np.asarray(mask)).bool()
    w, h = size
    if tuple(m.shape) != (h, w):
        raise ProcessorError(
            f"region mask has shape {tuple(m.shape)}; it must match the original image (H, W) = ({h}, {w})"
        )
    return m
