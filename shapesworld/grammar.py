"""A grammar of instruction wordings, with a held-out part the training sampler never produces.

Every task family's instruction is a *frame* (politeness prefix and suffix, end mark) around a *core*
(verb synonyms, nouns, word order), then a casing and, sometimes, a light typo. Compounds join clause
cores with connectors. The data-source code (`shapesworld.tasks`) chooses *what* is asked (categories,
expressions, answers); this module only chooses *how* it is worded.

Pattern syntax (parsed once, sampled many times):

    (a|b|c)   one of the alternatives            [x]   optional (same as (x|))
    <name>    a shared production (`SHARED`)      {slot} a value from the sample: never typo'd
    ~         before an alternative, or a whole pattern: held out (evaluation only)
    ^         before a whole imperative pattern: it has its own frame ("I need you to ..."), so no politeness

Wording modes:

    "template"  the task's fixed template list (`shapesworld.tasks.TEMPLATES`), as before the grammar
    "train"     the grammar without any held-out alternative, casing or typo pattern; about a third of
                the samples are the template wordings verbatim, so the core mapping is learnt fast
    "heldout"   every instruction uses at least one held-out choice (a verb, noun, politeness frame,
                connector, word order, casing or typo pattern) and may mix in training ones
    "noisy"     "train", and FILLER_RATE of the grammar samples get a filler: a prefix or suffix of
                pseudo-words ("vuto kessa and find the stars", "count the squares, pim lodaru") that asks
                for nothing, so a model learns that words it does not know add no task. Pseudo-words are
                random syllables, never a word of the grammar (held-out words included) or a ShapesWorld name
    "noisy_mixed"  "noisy" with longer fillers (one to five words) in which NEUTRAL_SHARE of the words are
                neutral function words of the training part ("you", "the", "it", ...: `NEUTRAL_WORDS`), so
                a frame of known and unknown words ("vuto the kessa for you") asks for nothing either

Sampling draws only from a `numpy.random.Generator`, walks lists in a fixed order and never iterates a
set, so the same generator state gives the same wording in every process, whatever PYTHONHASHSEED.
`Wording.heldout` lists the held-out choices a sample used (empty for "template" and "train").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

WORDINGS: tuple[str, ...] = ("template", "train", "heldout", "noisy", "noisy_mixed")
TRAINING = ("train", "noisy", "noisy_mixed")  # grammar modes that never take a held-out choice
TEMPLATE_SHARE = 0.35  # "train": share of samples worded exactly as a template
TYPO_RATE = 0.12  # "train": share of grammar samples with one light typo (a few get two)
HELDOUT_TYPO_RATE = 0.3  # "heldout": share with one typo (half of them of the held-out kind)
FILLER_RATE = 0.3  # "noisy": share of grammar samples with a pseudo-word filler
NEUTRAL_SHARE = 0.4  # "noisy_mixed": share of filler words that are NEUTRAL_WORDS
# Function words of the grammar's training part that never ask for a task, a category or a relation (no
# connector such as "and"/"then", no side or position word); tests check that none is held-out only.
NEUTRAL_WORDS: tuple[str, ...] = ("you", "the", "a", "it", "to", "for", "me", "i", "if", "this", "now",
                                  "is", "well", "can", "could", "would", "please")

# ---- shared productions ---------------------------------------------------------------------------
SHARED: dict[str, tuple[str, ...]] = {
    # politeness around imperatives; "" is weighted up so plain requests stay the most common
    # (the frames after "now " and ", thanks" were added for the checkpoint after the second LLM-trained alignment:
    # with four tails in training, an unseen tail such as ", if you don't mind" drew an extra route in 23 of 67
    # held-out requests; EVAL.md "Wider frames and plural requests", which also added the {cats_pl} patterns)
    "pre": ("", "", "", "", "", "please ", "please ", "could you ", "can you ", "would you ", "I'd like you to ",
            "I want you to ", "please could you ", "now ", "", "", "", "kindly ", "could you please ",
            "would you please ", "can you please ", "go ahead and ", "please go ahead and ", "try to ", "just ",
            "hey, ", "ok, ", "I would like you to ", "you should ", "quickly ", "~would you be so kind as to ",
            "~I'd appreciate it if you could ", "~do me a favour and ", "~be a dear and "),
    "post": ("", "", "", "", "", "", "", ", please", " please", " for me", ", thanks", "", "", "", ", thank you",
             " thanks", ", if possible", ", if you can", " right away", " now", " quickly", " as soon as possible",
             ", thanks a lot", ", cheers", " asap", " for me please",
             "~, if you don't mind", "~ when you get a chance"),
    "image": ("image", "picture", "scene", "~photo", "~snapshot"),
    "in_image": ("in the <image>", "in this <image>"),
    "each": ("every", "each"),
    "colour": ("colour", "color", "~hue"),
    # verbs
    "det_verb": ("detect", "find", "locate", "show me", "look for", "~spot", "~pick out", "~track down"),
    "grd_verb": ("find", "locate", "show me", "point out", "highlight", "mark", "ground", "look for", "~spot",
                 "~pick out", "~zero in on", "~single out"),
    "seg_verb": ("segment", "cut out", "mask", "~carve out", "~isolate"),
    "gen_verb": ("draw", "paint", "sketch", "render", "draw me", "~illustrate", "~doodle"),
    "make_verb": ("generate", "create", "make", "produce", "~conjure up", "~whip up"),
    "picture": ("an image", "a picture", "~an illustration", "~a drawing"),
    "tell": ("tell me", "say", "~inform me"),
    # compound connectors (before the last clause; between earlier ones)
    "then": (" and ", ", then ", "; then ", " and then ", "; ", ". then ", ", and also ", ". also ", " then ",
             "~ & ", "~, plus ", "~; next, ", "~ and next "),
    "sep": (", ", "; ", ", then ", "~ & "),
}

# ---- cores per template key (imperatives get the politeness frame, questions do not) ---------------
@dataclass(frozen=True)
class Cores:
    imperative: tuple[str, ...] = ()
    question: tuple[str, ...] = ()


CORES: dict[str, Cores] = {
    "caption": Cores(
        ("describe (the|this) <image>", "describe what you see", "write a [short |brief ]caption for (the|this) <image>",
         "caption (this|the) <image>", "give a (brief|short) description of (the|this) <image>",
         "list the shapes you see", "summarise the contents of the <image>", "tell me which objects are shown",
         "~sum up (the|this) <image> in one sentence", "~give me a rundown of (the|this) <image>",
         "~narrate what the <image> shows"),
        ("what is in (this|the) <image>?", "what shapes are in the <image>?", "what do you see?",
         "~what can be seen here?", "~what's going on in (this|the) <image>?")),
    "vqa_count_kind": Cores(
        ("count the {kinds}", "<tell> how many {kinds} there are", "~give me the number of {kinds}",
         "~tally the {kinds}"),
        ("how many {kinds} (are there|can you see|do you see|are in the <image>)?",
         "what is the number of {kinds}[ <in_image>]?", "~how many {kinds} are visible?", "~what's the count of {kinds}?")),
    "vqa_count_color": Cores(
        ("count the {color} (shapes|objects)", "<tell> how many {color} (shapes|objects) there are",
         "~give me the number of {color} (shapes|objects)", "~tally the {color} (shapes|objects)"),
        ("how many {color} (shapes|objects) (are there|can you see|do you see)?", "how many objects are {color}?",
         "what is the number of {color} (shapes|objects)?", "~how many {color} (shapes|objects) are visible?",
         "~what's the count of {color} (shapes|objects)?")),
    "vqa_color": Cores(
        ("<tell> the <colour> of the {kind}", "name the <colour> of the {kind}", "~identify the <colour> of the {kind}"),
        ("what <colour> is the {kind}?", "which <colour> does the {kind} have?", "what is the <colour> of the {kind}?",
         "~what's the {kind}'s <colour>?", "~the {kind} is which <colour>?")),
    "vqa_shape": Cores(
        ("name the shape of the {color} (object|one)", "<tell> the shape of the {color} (object|one)",
         "~identify the shape of the {color} object"),
        ("what shape is the {color} (object|one|shape)?", "which shape is {color}?",
         "what kind of shape is the {color} (one|object)?", "~what sort of shape is the {color} (one|object)?",
         "~the {color} object is which shape?")),
    "vqa_exists": Cores(
        ("<tell> (if|whether) there is a {name}", "~check whether there is a {name}"),
        ("is there (a|any) {name}[ <in_image>]?", "does the <image> (contain|have|show) a {name}?",
         "can you see a {name}?", "is any {name} present?", "~is a {name} visible?", "~do you notice a {name}?")),
    "vqa_side": Cores(
        ("<tell> whether the {name} is on the left or the right", "~say if the {name} sits left or right"),
        ("is the {name} on the left or the right?", "is the {name} in the left or the right half?",
         "on which side (of the <image> |)is the {name}, left or right?", "left or right: where is the {name}?",
         "~does the {name} sit left or right?", "~which half holds the {name}, left or right?")),
    "vqa_height": Cores(
        ("<tell> whether the {name} is at the top or the bottom", "~say if the {name} sits top or bottom"),
        ("is the {name} (at|near) the top or (at|near) the bottom?", "is the {name} in the top or the bottom half?",
         "top or bottom: where is the {name}?", "~does the {name} sit top or bottom?",
         "~which half holds the {name}, top or bottom?")),
    "grounding": Cores(
        ("<grd_verb> the {expr}[ <in_image>]", "~put your finger on the {expr}", "~go and find the {expr}"),
        ("which object is the {expr}? locate it", "where is the {expr}[ <in_image>]?", "can you find the {expr}?", "~where's the {expr}?",
         "~which one is the {expr}?")),
    "native_grounding": Cores(
        ("(give|tell me|report|return|write|output|provide) the [box ]coordinates (of|for) the {expr}",
         "output the bounding box of the {expr} as coordinates", "give me the location of the {expr} as a box",
         "<grd_verb> the {expr} and answer with coordinates", "~(share|spell out) the [box ]coordinates of the {expr}",
         "~<grd_verb> the {expr} and reply in coordinates"),
        ("what are the [box ]coordinates of the {expr}?", "where is the {expr}? answer with coordinates",
         "~what are the {expr}'s box coordinates?")),
    "detection": Cores(
        ("<det_verb> <each> {cats}[ <in_image>]", "<det_verb> {cats}", "<det_verb> all instances of {cats}",
         "draw (boxes|bounding boxes) around (each|every) {cats}", "(run|do) detection for {cats}",
         "^<in_image>, <det_verb> <each> {cats}", "<det_verb> (all |)the {cats_pl}[ <in_image>]",
         "<det_verb> all {cats_pl}", "draw (boxes|bounding boxes) around (all |)the {cats_pl}",
         "~put a box around (each|every) {cats}", "~<det_verb> any and all instances of {cats}",
         # "find the stars" ([DET]) against "find the star" ([GRD]) differ by one "s" token: with eight copies "find/locate
         # the Xs" is 8% of [DET] requests, about as common as "find/locate the X" among [GRD] ones (9%); with two (4%) it
         # was not learnt
         *("+<det_verb> the {cats_pl}",) * 8, *("+<det_verb> {the_cats_pl}[ <in_image>]",) * 2,
         "+<det_verb> {cats_every}[ <in_image>]", "+put (boxes|bounding boxes) on (all |)the {cats_pl}",
         "+put a (box|bounding box) on (each|every) {cats}", "+mark (each|every) {cats} with a box"),
        ("where are the objects of class {cats}?", "can you (find|detect|locate) (all |)the {cats_pl}?",
         "where are (all |)the {cats_pl}[ <in_image>]?", "~which objects are of class {cats}?",
         "+can you (find|detect|locate|show me) {the_cats_pl}?", "+where are {the_cats_pl}?")),
    "segmentation": Cores(
        ("<seg_verb> <each> {cats}[ <in_image>]", "<seg_verb> {cats}", "give [instance ]masks for {cats}",
         "produce a mask for (each|every) {cats}", "run instance segmentation for {cats}",
         "mask all instances of {cats}", "outline the pixels of (each|every) {cats}",
         "^<in_image>, <seg_verb> <each> {cats}", "<seg_verb> (all |)the {cats_pl}[ <in_image>]",
         "<seg_verb> all {cats_pl}", "give [me ](masks|instance masks|segmentation masks) (for|of) (all |)the {cats_pl}",
         "~fill in a mask for (each|every) {cats}",
         "+<seg_verb> the {cats_pl}", "+<seg_verb> {the_cats_pl}[ <in_image>]", "+<seg_verb> {cats_every}",
         "+give [me ]a (mask|segmentation mask) for (each|every) {cats}", "+give [me ]a mask of (each|every) {cats}",
         "+make masks (for|of) (all |)the {cats_pl}"),
        ("which pixels belong to (each|every) {cats}?", "can you (segment|mask) (all |)the {cats_pl}?",
         "~what pixels make up (each|every) {cats}?", "+can you (segment|mask|cut out) {the_cats_pl}?")),
    "native_detection": Cores(
        ("<det_verb> {cats} and (give|return|report) their box coordinates",
         "output the box coordinates of <each> {cats}", "list the boxes of <each> {cats} as coordinates",
         "give me coordinates for each {cats}", "write the box of every {cats} in coordinates",
         "return class and box coordinates for {cats}", "report the coordinates of each {cats}",
         "enumerate each {cats} with box coordinates", "~(share|spell out) the box coordinates of <each> {cats}",
         "~<det_verb> <each> {cats} and reply in coordinates"),
        ("where exactly is each {cats}? answer with coordinates", "~what are the box coordinates of each {cats}?")),
    "keypoints": Cores(
        ("(find|detect|give|mark|show) the (keypoints|key points) of <each> {cats}", "estimate the pose of <each> {cats}",
         "locate the (corners|vertices) of <each> {cats}", "run keypoint detection for {cats}",
         "find the defining points of each {cats}", "(find|give|mark|show) the (keypoints|key points) of (all |)the {cats_pl}",
         "locate the (corners|vertices) of (all |)the {cats_pl}", "estimate the pose of (all |)the {cats_pl}",
         "~pinpoint the (corners|vertices|keypoints) of <each> {cats}", "~trace the key points of <each> {cats}",
         "+(find|give|mark|show) the (keypoints|key points) of {the_cats_pl}", "+estimate the pose of {the_cats_pl}",
         "+(find|give|mark|show) the (keypoints|key points) of {cats_every}"),
        ("where are the (vertices|corners|keypoints) of (each|every) {cats}?",
         "where are the (vertices|corners|keypoints) of (all |)the {cats_pl}?",
         "~what are the keypoints of (each|every) {cats}?")),
    "generation": Cores(
        ("<gen_verb> {desc}[ on a plain background]", "<make_verb> <picture> (of|with|showing|containing) {desc}",
         "^I want <picture> of {desc}", "~picture {desc} for me in a drawing"),
        ("can you draw {desc}?", "~how would {desc} look? show me in <picture>")),
    "edit_recolor": Cores(
        ("make the {name} {color}", "change the <colour> of the {name} to {color}", "(recolour|recolor) the {name} {color}",
         "paint the {name} {color}", "turn the {name} {color}", "~dye the {name} {color}", "~switch the {name} to {color}")),
    "edit_remove": Cores(
        ("remove the {name}[ from the <image>]", "delete the {name}", "erase the {name}",
         "take the {name} out of the <image>", "get rid of the {name}", "~wipe out the {name}",
         "~drop the {name} from the <image>", "~make the {name} disappear")),
    "edit_add": Cores(
        ("add {obj}[ to the <image>]", "put {obj} in the <image>", "insert {obj} into the <image>", "draw {obj} as well",
         "~throw in {obj}", "~include {obj} too")),
    "edit_move": Cores(
        ("(move|shift|push|slide) the {name} {direction}", "~nudge the {name} {direction}",
         "~drag the {name} {direction}")),
    "region_what": Cores(
        ("describe the object in {region}", "~identify the object at {region}"),
        ("what is in {region}?", "what do you see in {region}?", "what object is at {region}?",
         "~what's located at {region}?")),
    "region_color": Cores(
        ("<tell> the <colour> of the shape at {region}", "~identify the <colour> at {region}"),
        ("what <colour> is the object in {region}?", "which <colour> is {region}?", "~what's the <colour> at {region}?")),
    "region_shape": Cores(
        ("name the shape at {region}", "~identify the shape at {region}"),
        ("what shape is in {region}?", "which kind of shape is {region}?", "~what sort of shape is at {region}?")),
    "compound2": Cores(
        ("{a}<then>{b}", "^first {a}; then {b}", "^do two things: {a}; {b}", "^both {a} and {b}",
         "^I need you to {a} and to {b}", "~^two jobs: {a}<then>{b}", "~^to begin, {a}; to finish, {b}")),
    "compound3": Cores(
        ("{a}<sep>{b}<then>{c}", "^first {a}; then {b}; finally {c}", "^do three things: {a}; {b}; {c}",
         "^I need you to {a}, to {b} and to {c}", "~^three jobs: {a}<sep>{b}<then>{c}")),
}
# Compound clauses use the imperative cores of the standalone families (no frame of their own).
CLAUSE_OF: dict[str, str] = {"clause_det": "detection", "clause_seg": "segmentation", "clause_grd": "grounding",
                             "clause_pose": "keypoints", "clause_gen": "generation"}


# ---- surface: casing, end mark, typos ---------------------------------------------------------------
def _title(s: str) -> str:
    return re.sub(r"(?<![A-Za-z'])[a-z]", lambda m: m.group(0).upper(), s)


CASINGS: tuple[tuple[str, bool, float], ...] = (  # name, held out, weight in "train"
    ("sentence", False, 0.55), ("lower", False, 0.33), ("upper", False, 0.12), ("title", True, 0.0),
)
END_MARKS: dict[bool, tuple[tuple[str, bool, float], ...]] = {  # by "is a question": mark, held out, weight
    False: ((".", False, 0.55), ("", False, 0.3), ("!", False, 0.15), ("...", True, 0.0), ("!!", True, 0.0)),
    True: (("?", False, 0.7), ("", False, 0.3), ("??", True, 0.0), ("?!", True, 0.0)),
}


def _swap(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 2))  # keep the first letter
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _drop(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))
    return word[:i] + word[i + 1 :]


def _double(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))
    return word[:i] + word[i] + word[i:]


# name, function, held out
TYPOS: tuple[tuple[str, Callable[[str, np.random.Generator], str], bool], ...] = (
    ("swap", _swap, False), ("drop", _drop, False), ("double", _double, True),
)
MIN_TYPO_LEN = 4  # shorter words are never misspelt
# Never misspelt either: the words that switch the answer between routed and native (coordinates) or polygon
# output (a typo there makes the request ambiguous rather than misspelt), and the word just before a slot
# value (the "each" of "each circle", which tells a reader such as mllm.localize where a list starts).
KEY_WORDS = ("coordinates", "coordinate", "polygon", "polygons")


# ---- pattern parsing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Alt:
    options: tuple[tuple[object, ...], ...]  # each option is a sequence of nodes
    heldout: tuple[bool, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Slot:
    name: str


_TOKEN_RE = re.compile(r"\(|\)|\[|\]|\||<[a-z_]+>|\{[a-z_]+\}|[^()\[\]|<{]+|[<{]")


def _parse_seq(tokens: list[str], pos: int, stop: tuple[str, ...]) -> tuple[tuple[object, ...], int]:
    nodes: list[object] = []
    while pos < len(tokens) and tokens[pos] not in stop:
        tok = tokens[pos]
        if tok in ("(", "["):
            options, pos = _parse_options(tokens, pos + 1, ")" if tok == "(" else "]")
            if tok == "[":
                options.append("")
            nodes.append(_alt(options))
        elif tok.startswith("<") and tok.endswith(">") and len(tok) > 2:
            nodes.append(_Ref(tok[1:-1]))
            pos += 1
        elif tok.startswith("{") and tok.endswith("}"):
            nodes.append(_Slot(tok[1:-1]))
            pos += 1
        else:
            nodes.append(tok)
            pos += 1
    return tuple(nodes), pos


def _parse_options(tokens: list[str], pos: int, close: str) -> tuple[list, int]:
    options: list = []
    while True:
        start = pos
        seq, pos = _parse_seq(tokens, pos, ("|", close))
        options.append(("".join(tokens[start:pos]), seq))
        if pos >= len(tokens):
            raise ValueError(f"unclosed group: missing {close!r}")
        pos += 1
        if tokens[pos - 1] == close:
            return options, pos


def _alt(options: list) -> _Alt:
    seqs, held, labels = [], [], []
    for opt in options:
        if opt == "":
            seqs.append(())
            held.append(False)
            labels.append("")
            continue
        text, seq = opt
        is_held = text.startswith("~")
        if is_held:
            seq = (seq[0][1:], *seq[1:]) if isinstance(seq[0], str) else seq
            seq = tuple(n for n in seq if n != "")
        seqs.append(seq)
        held.append(is_held)
        labels.append(text.lstrip("~"))
    return _Alt(tuple(seqs), tuple(held), tuple(labels))


@functools.cache
def parse(pattern: str) -> tuple[object, ...]:
    """A pattern -> its node sequence (a plain tuple of str, _Alt, _Ref and _Slot)."""
    tokens = _TOKEN_RE.findall(pattern)
    if "".join(tokens) != pattern:
        raise ValueError(f"cannot parse pattern {pattern!r}")
    nodes, pos = _parse_seq(tokens, 0, ())
    return nodes


@functools.cache
def _shared(name: str) -> _Alt:
    if name not in SHARED:
        raise KeyError(f"unknown production <{name}>; known: {', '.join(SHARED)}")
    return _alt([(o, parse(o)) if o else "" for o in SHARED[name]])


# ---- sampling ---------------------------------------------------------------------------------------
_PROTECT_OPEN, _PROTECT_CLOSE = "\x02", "\x03"  # around slot values: never typo'd
_RAW_OPEN, _RAW_CLOSE = "\x04", "\x05"  # around special tokens (<region>): never re-cased either
_MARKS = _PROTECT_OPEN + _PROTECT_CLOSE + _RAW_OPEN + _RAW_CLOSE
HELDOUT_SHARE = 0.35  # "heldout": chance that a choice point with held-out options takes one


@dataclass
class Wording:
    text: str  # the instruction (without the "<image>\n" prefix the task adds)
    heldout: list[str] = field(default_factory=list)  # held-out choices used, e.g. ["det_verb=spot", "casing=title"]


class _Sampler:
    def __init__(self, rng: np.random.Generator, mode: str):
        if mode not in (*TRAINING, "heldout"):
            raise ValueError(f"grammar mode must be one of {', '.join((*TRAINING, 'heldout'))}, got {mode!r}")
        self.rng, self.mode = rng, mode
        self.used: list[str] = []

    def pick(self, axis: str, labels: Sequence[str], heldout: Sequence[bool],
             weights: Sequence[float] | None = None) -> int:
        """Index of one option: "train" never takes a held-out one; "heldout" takes one HELDOUT_SHARE of the time."""
        held = np.asarray(heldout, bool)
        w = np.asarray(weights if weights is not None else [1.0] * len(labels), float)
        w = np.where(held, 0.0, w)
        if w.sum() <= 0:
            raise ValueError(f"{axis}: no training option among {list(labels)}")
        w = w / w.sum()
        if self.mode == "heldout" and held.any():
            w = (1 - HELDOUT_SHARE) * w + HELDOUT_SHARE * held / held.sum()
        k = int(self.rng.choice(len(w), p=w))
        if held[k]:
            self.used.append(f"{axis}={labels[k]}")
        return k

    def choose(self, alt: _Alt, slots: Mapping[str, str], axis: str) -> str:
        return self.expand(alt.options[self.pick(axis, alt.labels, alt.heldout)], slots, axis)

    def expand(self, nodes: Sequence[object], slots: Mapping[str, str], axis: str) -> str:
        out = []
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Slot):
                if node.name not in slots:
                    raise KeyError(f"pattern needs slot {{{node.name}}}; given: {', '.join(slots)}")
                out.append(slots[node.name])
            elif isinstance(node, _Ref):
                out.append(self.choose(_shared(node.name), slots, node.name))
            else:
                out.append(self.choose(node, slots, axis))
        return "".join(out)


def _protect(value: object) -> str:
    text = str(value)
    if any(c in text for c in _MARKS):  # already marked (a compound clause)
        return text
    if text.startswith("<") and text.endswith(">"):
        return f"{_RAW_OPEN}{text}{_RAW_CLOSE}"
    return f"{_PROTECT_OPEN}{text}{_PROTECT_CLOSE}"


def _unmark(text: str) -> str:
    return re.sub(f"[{_MARKS}]", "", text)


def _cores(key: str, templates: Sequence[str] = (), mode: str | None = None) -> list[tuple[str, bool, str]]:
    """(pattern, held out, kind) of a key; kind is "imp" (takes a politeness frame), "own" (has its own) or "q".

    Patterns marked "+" are training-only additions made after the held-out set was fixed: `mode` "heldout"
    leaves them out, so held-out requests (and their random draws) stay the same across grammar widenings.

    A clause key (compound part) gets its family's imperatives that can stand inside a sentence;
    a key without grammar (polygon) uses its templates, `templates`.
    """
    family = CLAUSE_OF.get(key)
    cores = CORES.get(family or key)
    if cores is None:
        if not templates:
            raise KeyError(f"no grammar and no templates for {key!r}")
        lower = [t[:1].lower() + t[1:] if not t.startswith("I ") else t for t in templates]
        cores = Cores(tuple(t.rstrip(".") for t in lower if not t.endswith("?")), tuple(t for t in lower if t.endswith("?")))
    out = []
    for p in cores.imperative:
        extra, p = p.startswith("+"), p.lstrip("+")
        held, p = p.startswith("~"), p.lstrip("~")
        own, p = p.startswith("^"), p.lstrip("^")
        if not (family and own) and not (extra and mode == "heldout"):
            out.append((p, held, "own" if own else "imp"))
    if not family:
        out += [(p.lstrip("+~"), p.startswith("~"), "q") for p in cores.question
                if not (p.startswith("+") and mode == "heldout")]
    return out


def _recase(text: str, casing: str) -> str:
    """Apply a casing outside raw segments (special tokens); sentence case capitalises the first letter only."""
    if casing == "sentence":
        m = re.search(f"[^{_MARKS}]", text)
        return text if m is None or text[m.start() - 1 : m.start()] == _RAW_OPEN else (
            text[: m.start()] + text[m.start()].upper() + text[m.start() + 1 :])
    fn = {"lower": str.lower, "upper": str.upper, "title": _title}[casing]
    parts = re.split(f"({_RAW_OPEN}[^{_RAW_CLOSE}]*{_RAW_CLOSE})", text)
    return "".join(p if p.startswith(_RAW_OPEN) else fn(p) for p in parts)


def _typo(text: str, s: _Sampler, forced: str | None = None) -> str:
    """One misspelt word outside slot values (words shorter than MIN_TYPO_LEN are left alone)."""
    free = re.sub(f"[{_PROTECT_OPEN}{_RAW_OPEN}][^{_PROTECT_CLOSE}{_RAW_CLOSE}]*[{_PROTECT_CLOSE}{_RAW_CLOSE}]",
                  lambda m: "\x00" * len(m.group(0)), text)  # same length, slot values blanked
    words = [m for m in re.finditer(r"[A-Za-z]+", free) if len(m.group(0)) >= MIN_TYPO_LEN
             and m.group(0).lower() not in KEY_WORDS and free[m.end() : m.end() + 2] != " \x00"]
    if not words:
        return text
    w = words[int(s.rng.integers(len(words)))]
    names = [t[0] for t in TYPOS]
    if forced is not None:
        k = names.index(forced)
        s.used.append(f"typo={forced}")
    else:
        k = s.pick("typo", names, [t[2] for t in TYPOS])
    return text[: w.start()] + TYPOS[k][1](w.group(0), s.rng) + text[w.end() :]


def clause(key: str, rng: np.random.Generator, mode: str, **slots: object) -> Wording:
    """A compound clause: an imperative core, lower case, no frame; slot values stay marked for `render`."""
    s = _Sampler(rng, mode)
    cores = _cores(key, mode=mode)  # clause keys always have a grammar (CLAUSE_OF)
    k = s.pick("pattern", [p for p, _, _ in cores], [h for _, h, _ in cores])
    return Wording(s.expand(parse(cores[k][0]), {n: _protect(v) for n, v in slots.items()}, key), s.used)


def render(key: str, rng: np.random.Generator, mode: str, template: str | None = None,
           clause_heldout: Sequence[str] = (), templates: Sequence[str] = (), **slots: object) -> Wording:
    """One instruction for template key `key` in `mode` ("train" or "heldout").

    `template` is the already-filled template wording, used verbatim for TEMPLATE_SHARE of "train" samples.
    `clause_heldout` lists held-out choices already made inside compound clauses (passed in `slots`);
    `templates` are the key's template wordings, the patterns of a key without grammar of its own (polygon).
    """
    if mode in TRAINING and template is not None and rng.random() < TEMPLATE_SHARE:
        return Wording(_unmark(template))
    for _ in range(20):
        w = _render_once(key, rng, mode, clause_heldout, templates, slots)
        if mode in TRAINING or w.heldout:
            return w
    return _render_once(key, rng, mode, clause_heldout, templates, slots, force_casing="title")  # rare: nothing came up


def _render_once(key: str, rng: np.random.Generator, mode: str, clause_heldout: Sequence[str],
                 templates: Sequence[str], slots: Mapping[str, object], force_casing: str | None = None) -> Wording:
    s = _Sampler(rng, mode)
    s.used += list(clause_heldout)
    cores = _cores(key, templates, mode)
    k = s.pick("pattern", [p for p, _, _ in cores], [h for _, h, _ in cores])
    text = s.expand(parse(cores[k][0]), {n: _protect(v) for n, v in slots.items()}, key)
    if cores[k][2] == "imp":  # a politeness frame around it ("please" at most once)
        pre = s.choose(_shared("pre"), {}, "pre")
        post = s.choose(_shared("post"), {}, "post")
        post = "" if "please" in pre and "please" in post else post
        text = pre + text + (f"{_PROTECT_OPEN}{post}{_PROTECT_CLOSE}" if post else "")  # a misspelt tail reads as a name
    question = text.endswith("?")
    marks = END_MARKS[question]
    text = text[:-1] if question else text
    if mode in ("noisy", "noisy_mixed") and rng.random() < FILLER_RATE:
        text = _with_filler(text, rng, mixed=mode == "noisy_mixed")
    text += marks[s.pick("end", [m for m, _, _ in marks], [h for _, h, _ in marks], [w for *_, w in marks])][0]
    names = [c for c, *_ in CASINGS]
    if force_casing is not None:
        casing = force_casing
        s.used.append(f"casing={casing}")
    else:
        casing = names[s.pick("casing", names, [h for _, h, _ in CASINGS], [w for *_, w in CASINGS])]
    text = _recase(text, casing)
    if mode in TRAINING:
        for _ in range(int(rng.random() < TYPO_RATE) + int(rng.random() < TYPO_RATE / 4)):
            text = _typo(text, s)
    elif rng.random() < HELDOUT_TYPO_RATE:
        text = _typo(text, s, forced="double" if rng.random() < 0.5 else None)
    return Wording(_unmark(text), s.used)


# ---- fillers ("noisy") -------------------------------------------------------------------------------
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "kr", "pl", "sn", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "m", "k", "s", "t", "r")
# where a filler goes: before the request (joined by a comma or "and") or after it (a comma or a space). Not
# "{r} and {f}": a trailing "and ..." is how a compound request adds its last task, and with that form the
# model learnt to drop the last clause of compounds (template routing 0.982 -> 0.970, EVAL.md "Fillers and longer teachers")
FILLER_FORMS: tuple[str, ...] = ("{f}, {r}", "{f} and {r}", "{r}, {f}", "{r} {f}")


@functools.cache
def grammar_words() -> frozenset[str]:
    """Every word the grammar can write, held-out alternatives included, and every ShapesWorld name."""
    from shapesworld.constants import COLORS, KINDS

    text: list[str] = []

    def walk(nodes: Sequence[object]) -> None:
        for n in nodes:
            if isinstance(n, str):
                text.append(n)
            elif isinstance(n, _Alt):
                for opt in n.options:
                    walk(opt)

    for name in SHARED:
        walk((_shared(name),))
    for key in CORES:
        for pattern, _, _ in _cores(key):
            walk(parse(pattern))
    words = set(re.findall(r"[a-z']+", " ".join(text).lower()))
    return frozenset(words | set(KINDS) | set(COLORS) | {k + "s" for k in KINDS} | {k + "es" for k in KINDS})


def pseudo_word(rng: np.random.Generator) -> str:
    """Two or three random syllables that are not a word of the grammar."""
    while True:
        n = 2 + int(rng.random() < 0.4)
        word = "".join(_ONSETS[int(rng.integers(len(_ONSETS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
                       + (_CODAS[int(rng.integers(len(_CODAS)))] if k == n - 1 else "") for k in range(n))
        if word not in grammar_words():
            return word


def _with_filler(text: str, rng: np.random.Generator, mixed: bool = False) -> str:
    """`text` with one to three pseudo-words before or after it (slot values and special tokens untouched);
    `mixed`: one to five words, NEUTRAL_SHARE of them neutral function words."""
    if mixed:
        words = [NEUTRAL_WORDS[int(rng.integers(len(NEUTRAL_WORDS)))] if rng.random() < NEUTRAL_SHARE
                 else pseudo_word(rng) for _ in range(1 + int(rng.integers(5)))]
    else:
        words = [pseudo_word(rng) for _ in range(1 + int(rng.integers(3)))]
    filler = " ".join(words)
    form = FILLER_FORMS[int(rng.integers(len(FILLER_FORMS)))]
    return form.format(f=filler, r=text)


def heldout_words(templates: Mapping[str, Sequence[str]]) -> list[str]:
    """Words of held-out alternatives that no training alternative (nor template in `templates`) uses."""
    train_text: list[str] = []
    held_text: list[str] = []

    def walk(nodes: Sequence[object], held: bool) -> None:
        for n in nodes:
            if isinstance(n, str):
                (held_text if held else train_text).append(n)
            elif isinstance(n, _Alt):
                for opt, h in zip(n.options, n.heldout, strict=True):
                    walk(opt, held or h)

    for name in SHARED:
        walk((_shared(name),), False)
    for key in [*CORES, *CLAUSE_OF]:
        for pattern, h, _ in _cores(key):
            walk(parse(pattern), h)
    train_text += [t for ts in templates.values() for t in ts]  # template wordings are training wordings
    train = set(re.findall(r"[a-z']+", " ".join(train_text).lower()))
    return sorted({w for w in re.findall(r"[a-z']+", " ".join(held_text).lower()) if w not in train})
