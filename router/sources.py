"""Training data sources and their mix: the `training.data` section (router/config.py) -> TaskSamples.

    mix = DataMix(cfg)                        # opens every source once: annotation JSON / JSONL parsed here
    samples, names = mix.draw(rng, 8)         # 8 rows; each row's source drawn by weight, then its sample
    tokenizer = data_tokenizer(cfg)           # the BPE a from-scratch model is built with (training saves it)

Kinds (router.data reads the formats; each kind is a `SourceKind` in SOURCE_KINDS):
  shapesworld  generated scenes, tasks drawn by task_weights (registered by shapesworld/source.py)
  coco         COCO instances / person_keypoints JSON + image folder -> detection, segmentation, keypoints
  refcoco      RefCOCO-style refs + COCO instances + image folder -> grounding
  llava        LLaVA conversations (.json list or .jsonl) + image folder -> one caption / VQA sample per turn

Data sources import the router (DESIGN.md), never the reverse: a kind defined in a data-source package
registers itself when its module is imported, and KIND_MODULES names the module of each such built-in kind,
imported the first time a config uses it (as the config's `modules:` imports routes declared elsewhere).

A draw is a pure function of the generator: file sources pick records by index with it and read
only the images they picked. With one source the generator is used exactly as before `data:`
existed, so a config without the section replays the same batches for the same seed.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import TypeAdapter

from mllm.config import MLLMConfig
from mllm.processor import ASSISTANT, USER
from mllm.tokenizer import build_tokenizer
from mllm.vocab import IMAGE_TOKEN, REGION_TOKEN, Vocabulary
from router.config import (
    CocoSource,
    DataSource,
    LlavaSource,
    RefCocoSource,
    SuperLinkConfig,
)
from router.data import (
    DataFormatError,
    coco_categories,
    coco_groups,
    coco_sample,
    coco_text,
    llava_turns,
    read_image,
    read_json,
    read_llava_records,
    refcoco_sample,
    refcoco_sentences,
    refcoco_text,
)
from router.samples import TaskSample

TOKENIZER_TEXTS_PER_FILE = 2000  # texts of a file source the BPE sees: its first records, in file order


class DataSourceError(ValueError):
    """A configured data source cannot be read; the message names the source and what was expected."""


class Source(Protocol):
    name: str
    weight: float

    def draw(self, rng: np.random.Generator, n: int) -> list[TaskSample]: ...


@dataclass(frozen=True)
class SourceKind:
    """How one `kind` of training.data entry is read: opened for drawing, and the texts a tokenizer learns."""

    open: Callable[[Any, str, SuperLinkConfig], Source]  # (spec, name, config) -> the opened source
    corpus: Callable[[int], Iterator[str]] | None = None  # (location_bins) -> texts, once when the kind is used
    texts: Callable[[Any, str], Iterator[str]] | None = None  # (spec, name) -> this source's texts


SOURCE_KINDS: dict[str, SourceKind] = {}
KIND_MODULES = {"shapesworld": "shapesworld.source"}  # built-in kinds registered outside the router


def register_source_kind(kind: str, source: SourceKind) -> None:
    SOURCE_KINDS[kind] = source


def source_kind(kind: str) -> SourceKind:
    """The registered reader of `kind`, importing the module that registers it when the router knows it."""
    if kind not in SOURCE_KINDS and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])
    if kind not in SOURCE_KINDS:
        raise DataSourceError(f"training.data: no reader registered for kind {kind!r}; known: "
                              f"{sorted(set(SOURCE_KINDS) | set(KIND_MODULES))}")
    return SOURCE_KINDS[kind]


def _need_file(path: Path, where: str, what: str) -> Path:
    if not path.is_file():
        raise DataSourceError(f"{where}: {path} is not a file; expected {what}{_relative_hint(path)}")
    return path


def _need_dir(path: Path, where: str, what: str) -> Path:
    if not path.is_dir():
        raise DataSourceError(f"{where}: {path} is not a folder; expected {what}{_relative_hint(path)}")
    return path


def _relative_hint(path: Path) -> str:
    return "" if path.is_absolute() else f" (relative paths are read from the working directory {Path.cwd()})"


def _pick(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(n))


# ---- COCO instances / keypoints ------------------------------------------------------------------
class CocoData:
    def __init__(self, spec: CocoSource, name: str) -> None:
        where = f"training.data {name!r} (coco)"
        self.name, self.weight, self.where = name, spec.weight, where
        path = _need_file(spec.annotations, where, "a COCO instances or person_keypoints JSON "
                          "(e.g. instances.json written by `superlink world export`)")
        self.images = _need_dir(spec.images, where, "the folder holding the images named by its file_name entries")
        coco = _read(path, where)
        self.path, self.tasks = path, list(spec.tasks)
        self.cats = _reading(where, coco_categories, coco, str(path))
        self.groups = {t: _reading(where, coco_groups, coco, t, str(path)) for t in self.tasks}
        empty = [t for t, g in self.groups.items() if not g]
        if empty:
            raise DataSourceError(f"{where}: {path} has no image with annotations usable for {empty} "
                                  "(keypoints need num_keypoints > 0; crowd annotations are skipped)")

    def draw(self, rng: np.random.Generator, n: int) -> list[TaskSample]:
        out = []
        for _ in range(n):
            task = self.tasks[_pick(rng, len(self.tasks))]
            img, anns = self.groups[task][_pick(rng, len(self.groups[task]))]
            out.append(_reading(self.where, coco_sample, img, anns, self.cats, self.images, task,
                                f"{self.path} image {img.get('id')}"))
        return out

    def texts(self) -> Iterator[str]:
        for task in self.tasks:
            for _, anns in self.groups[task][:TOKENIZER_TEXTS_PER_FILE]:
                _, instruction, answer, _ = coco_text(anns, self.cats, task)
                yield f"{instruction}\n{answer}"


# ---- RefCOCO -------------------------------------------------------------------------------------
class RefCocoData:
    def __init__(self, spec: RefCocoSource, name: str) -> None:
        where = f"training.data {name!r} (refcoco)"
        self.name, self.weight, self.where = name, spec.weight, where
        refs = _read(_need_file(spec.refs, where, "a RefCOCO-style refs JSON (a list of {ann_id, sentences})"), where)
        instances = _need_file(spec.annotations, where, "the COCO instances JSON the refs' ann_ids point into")
        coco = _read(instances, where)
        self.images = _need_dir(spec.images, where, "the folder holding the images of the instances JSON")
        self.items = _reading(where, refcoco_items, refs, coco, spec)  # (annotation, image file, sentence)
        if not self.items:
            raise DataSourceError(f"{where}: no referring sentences in {spec.refs}"
                                  + (f" for split {spec.split!r}" if spec.split else ""))

    def draw(self, rng: np.random.Generator, n: int) -> list[TaskSample]:
        out = []
        for _ in range(n):
            ann, file, sentence = self.items[_pick(rng, len(self.items))]
            image = _reading(self.where, read_image, self.images / file)
            out.append(_reading(self.where, refcoco_sample, image, ann, sentence))
        return out

    def texts(self) -> Iterator[str]:
        for _, _, sentence in self.items[:TOKENIZER_TEXTS_PER_FILE]:
            yield "\n".join(refcoco_text(sentence))


def refcoco_items(refs: Any, coco: dict, spec: RefCocoSource) -> list[tuple[dict, str, str]]:
    """(annotation, image file, sentence) of every referring sentence of the refs in spec.split."""
    if not isinstance(refs, list):
        raise DataFormatError(f"{spec.refs} must hold a JSON list of refs, got {type(refs).__name__}")
    anns = {a["id"]: a for a in coco["annotations"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    items = []
    for k, ref in enumerate(refs):
        if spec.split is not None and ref.get("split") != spec.split:
            continue
        ann = anns.get(ref.get("ann_id"))
        if ann is None or ann.get("image_id") not in files:
            raise DataFormatError(f"{spec.refs}[{k}]: ann_id {ref.get('ann_id')} is not in {spec.annotations}")
        items += [(ann, files[ann["image_id"]], s) for s in refcoco_sentences(ref, f"{spec.refs}[{k}]")]
    return items


# ---- LLaVA conversations -------------------------------------------------------------------------
class LlavaData:
    def __init__(self, spec: LlavaSource, name: str) -> None:
        where = f"training.data {name!r} (llava)"
        self.name, self.weight, self.where = name, spec.weight, where
        path = _need_file(spec.conversations, where, "LLaVA-style conversations: a .json list or a .jsonl file")
        self.images = _need_dir(spec.images or path.parent, where, "the folder the records' image entries are read from")
        self.records = _reading(where, lambda: list(read_llava_records(path)))
        self.items: list[tuple[int, str, str, str]] = []  # (record, task, instruction, answer)
        for k, rec in enumerate(self.records):
            turns = _reading(where, llava_turns, rec, f"{path}[{k}]")
            self.items += [(k, *t) for t in turns if spec.tasks is None or t[0] in spec.tasks]
        if not self.items:
            raise DataSourceError(f"{where}: {path} has no conversation turns"
                                  + (f" of tasks {spec.tasks}" if spec.tasks else ""))

    def draw(self, rng: np.random.Generator, n: int) -> list[TaskSample]:
        out = []
        for _ in range(n):
            k, task, instruction, answer = self.items[_pick(rng, len(self.items))]
            file = self.records[k].get("image")
            image = _reading(self.where, read_image, self.images / file) if file else None
            out.append(TaskSample(task, image, instruction, answer, []))
        return out

    def texts(self) -> Iterator[str]:
        for _, _, instruction, answer in self.items[:TOKENIZER_TEXTS_PER_FILE]:
            yield f"{instruction}\n{answer}"


def _read(path: Path, where: str) -> Any:
    return _reading(where, read_json, path)


def _reading(where: str, fn: Any, *args: Any) -> Any:
    """fn(*args), with a malformed file or record reported as a DataSourceError naming the source."""
    try:
        return fn(*args)
    except DataFormatError as err:
        raise DataSourceError(f"{where}: {err}") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise DataSourceError(f"{where}: malformed record ({type(err).__name__}: {err})") from None


# ---- the mix -------------------------------------------------------------------------------------
def source_names(data: Sequence[DataSource]) -> list[str]:
    """Each source's log label: its `name`, else its kind (numbered by position when several share it)."""
    kinds = [s.kind for s in data]
    return [s.name or (s.kind if kinds.count(s.kind) == 1 else f"{s.kind}{i}") for i, s in enumerate(data)]


register_source_kind("coco", SourceKind(open=lambda spec, name, _: CocoData(spec, name),
                                         texts=lambda spec, name: CocoData(spec, name).texts()))
register_source_kind("refcoco", SourceKind(open=lambda spec, name, _: RefCocoData(spec, name),
                                            texts=lambda spec, name: RefCocoData(spec, name).texts()))
register_source_kind("llava", SourceKind(open=lambda spec, name, _: LlavaData(spec, name),
                                          texts=lambda spec, name: LlavaData(spec, name).texts()))


def open_source(spec: DataSource, name: str, cfg: SuperLinkConfig) -> Source:
    return source_kind(spec.kind).open(spec, name, cfg)


class DataMix:
    """The sources of `cfg.training.data` with a positive weight, opened once (a run holds one)."""

    def __init__(self, cfg: SuperLinkConfig) -> None:
        named = zip(cfg.training.data, source_names(cfg.training.data), strict=True)
        self.sources = [open_source(spec, name, cfg) for spec, name in named if spec.weight > 0]
        w = np.array([s.weight for s in self.sources], float)
        self.p = w / w.sum()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def draw(self, rng: np.random.Generator, n: int) -> tuple[list[TaskSample], list[str]]:
        """n samples and the name of the source of each; the source of each row is drawn by weight first."""
        if len(self.sources) == 1:  # no source draw: the generator runs as it did before `data:` existed
            return self.sources[0].draw(rng, n), [self.sources[0].name] * n
        picks = rng.choice(len(self.sources), size=n, p=self.p)
        rows: list[TaskSample | None] = [None] * n
        for k, source in enumerate(self.sources):
            at = np.flatnonzero(picks == k)
            for i, sample in zip(at, source.draw(rng, len(at)), strict=True):
                rows[int(i)] = sample
        return rows, [self.sources[int(k)].name for k in picks]  # type: ignore[return-value]


# ---- the tokenizer of a from-scratch model -------------------------------------------------------
_DATA = TypeAdapter(list[DataSource])


def corpus_texts(data: Sequence[DataSource], location_bins: int) -> Iterator[str]:
    """What the BPE is trained on: each configured kind's own corpus, once (the ShapesWorld corpus when a
    shapesworld source is configured), then the first TOKENIZER_TEXTS_PER_FILE instruction/answer texts of each
    file source, in config order."""
    for kind in dict.fromkeys(s.kind for s in data):
        corpus = source_kind(kind).corpus
        if corpus is not None:
            yield from corpus(location_bins)
    for spec, name in zip(data, source_names(data), strict=True):
        texts = source_kind(spec.kind).texts
        if texts is not None:
            yield from texts(spec, name)


_PLACEHOLDERS = re.compile(rf"^(?:(?:{re.escape(IMAGE_TOKEN)}|{re.escape(REGION_TOKEN)})\s*)+")


def as_prompted(text: str, lowercase: bool) -> str:
    """A corpus text ("instruction\nanswer") laid out as the processor prompts it: after the user's role
    marker and the image, lower-cased when the model lower-cases instructions, the answer after the assistant's
    marker. The BPE then learns the words the model reads ("how", " one"), not their capitalised or line-initial
    spellings, and the role markers as whole tokens."""
    text = _PLACEHOLDERS.sub("", text)  # "<image>\n" before the question: the line break would split it off
    instruction, _, answer = text.partition("\n")
    return f"{USER}\n{instruction.lower() if lowercase else instruction} {ASSISTANT} {answer}"


def data_tokenizer(config: SuperLinkConfig) -> Any:
    """A BPE tokenizer trained on the texts of the configured data sources (`corpus_texts`), with the
    model's special tokens. A training run saves it (OUT/tokenizer, model/mllm/); a saved system loads
    its own and never calls this. Cached per (model config, data config, file versions) in a process."""
    data = config.training.data
    return copy.deepcopy(_tokenizer(config.model.model_dump_json(), _DATA.dump_json(data).decode(), _stamps(data)))


def _stamps(data: Sequence[DataSource]) -> str:
    """Size and mtime of every annotation file a source reads, so an edited file trains a new tokenizer."""
    files = [p for s in data for p in _annotation_files(s)]
    return json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [str(p)] for p in files])


def _annotation_files(spec: DataSource) -> list[Path]:
    if isinstance(spec, CocoSource):
        return [spec.annotations]
    if isinstance(spec, RefCocoSource):
        return [spec.refs, spec.annotations]
    if isinstance(spec, LlavaSource):
        return [spec.conversations]
    return []


@functools.lru_cache(maxsize=4)
def _tokenizer(model_json: str, data_json: str, stamps: str) -> Any:
    cfg = MLLMConfig.model_validate_json(model_json)
    texts = (as_prompted(t, cfg.text.lowercase_instructions)
             for t in corpus_texts(_DATA.validate_json(data_json), cfg.vocab.location_bins))
    return build_tokenizer(texts, Vocabulary.from_config(cfg), vocab_size=cfg.text.tokenizer_vocab_size)
