"""SuperLink's multimodal model: LLaVA (vision tower + projector + causal LM) plus super-link queries.

Forward pass, in named steps:
  embed_inputs -> add_image_features -> add_regions -> scatter_route_queries -> run_llm
  -> lm_head (logits, LM loss) and gather_link_states (last-layer states at the query slots)

Every route declared in mllm.vocab has one learned query table, `queries[name]`
(Q, D). In training text each routing token is followed by Q copies of its
placeholder ("[DET]" + 4 x "[DET_Q]"); the placeholders' embeddings are replaced by
the table rows (masked_scatter, batched) and their last-layer hidden states are the
link states handed to the route's decoder. Generation feeds the same rows after a
sampled routing token (mllm.generation).

Checkpoint keys follow the attribute names: `llava.*` (the transformers
LlavaForConditionalGeneration), `queries.<ROUTE>.weight`, `region_encoder.*`, and only when the
config enables them `format_queries.*` (mllm.format_queries) and `image_tokenizer.*` (mllm.image_tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import BaseModelOutputWithPast

from mllm.config import MLLMConfig, TextConfig, VisionConfig, require_folder, validate_mapping
from mllm.embeddings import default_dtype, grow_token_embeddings, load_weights
from mllm.format_queries import FormatQueries
from mllm.generation import generate
from mllm.image_tokenizer import LanguageGuidedTokenizer
from mllm.region import RegionEncoder
from mllm.tokenizer import add_superlink_tokens
from mllm.types import Generation, LinkStates
from mllm.vocab import BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN, REGION_TOKEN, Route, Vocabulary

if TYPE_CHECKING:
    from transformers.cache_utils import Cache

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "superlink_config.json"
LLAVA_CONFIG_FILE = "llava_config.json"
IGNORE_INDEX = -100


class ModelInputError(ValueError):
    """Inputs to the model disagree with each other (token counts, shapes); the message says how."""


@dataclass(frozen=True)
class TokenIds:
    """Ids of the tokens the model acts on, looked up once from the tokenizer."""

    image: int
    region: int
    pad: int
    bos: int
    eos: int
    route: dict[str, int]  # "DET" -> id of "[DET]"
    placeholder: dict[str, int]  # "DET" -> id of "[DET_Q]"

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, vocab: Vocabulary) -> TokenIds:
        table = tokenizer.get_vocab()
        needed = [IMAGE_TOKEN, REGION_TOKEN, PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]
        needed += [t for r in vocab.routes for t in (r.token, r.placeholder)]
        missing = [t for t in needed if t not in table]
        if missing:
            raise ModelInputError(
                f"tokenizer lacks SuperLink tokens {missing[:8]}; build it with mllm.tokenizer.build_tokenizer "
                "or add them with mllm.tokenizer.add_superlink_tokens"
            )
        return cls(
            image=table[IMAGE_TOKEN],
            region=table[REGION_TOKEN],
            pad=table[PAD_TOKEN],
            bos=table[BOS_TOKEN],
            eos=table[EOS_TOKEN],
            route={r.name: table[r.token] for r in vocab.routes},
            placeholder={r.name: table[r.placeholder] for r in vocab.routes},
        )

    def superlink_ids(self, tokenizer: PreTrainedTokenizerBase, vocab: Vocabulary) -> list[int]:
        """Ids of SuperLink's own tokens (everything added except pad/bos/eos): the rows LoRA trains."""
        table = tokenizer.get_vocab()
        skip = {PAD_TOKEN, BOS_TOKEN, EOS_TOKEN}
        return sorted(table[t] for t in vocab.special_tokens if t not in skip)


@dataclass
class SuperLinkOutput:
    loss: torch.Tensor | None  # scalar LM loss (labels shifted as in transformers), None without labels
    logits: torch.Tensor  # (B, T, V)
    # route -> states (N, Q, D) and index (N, 2); a route with no query group in the batch is absent
    link_states: dict[str, LinkStates]
    # (N_img, P, D) projected patch features (the image tokens before any image tokenizer); None without images
    image_features: torch.Tensor | None = None


@dataclass
class RouteGroups:
    """Where one route's query groups sit in a batch of ids."""

    starts: torch.Tensor  # (B, T) bool, routing tokens followed by their placeholders
    slots: torch.Tensor  # (B, T) bool, the placeholder positions


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: (B, T) 0/1 -> (B, T), pads clamped to 0 (they are never attended)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def build_llava_config(config: MLLMConfig, token_ids: TokenIds, vocab_size: int) -> LlavaConfig:
    """A LlavaConfig (CLIP vision tower + Llama LM) for presets built from scratch."""
    if config.projector != "mlp2x_gelu":
        raise ModelInputError(
            f"projector {config.projector!r} is not available on the LLaVA backbone; accepted: 'mlp2x_gelu'"
        )
    v, t = config.vision, config.text
    vision = CLIPVisionConfig(
        hidden_size=v.hidden_size, num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
        intermediate_size=v.intermediate_size, image_size=v.image_size, patch_size=v.patch_size,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads or t.num_heads,
        intermediate_size=t.intermediate_size, max_position_embeddings=t.max_position_embeddings,
        pad_token_id=token_ids.pad, bos_token_id=token_ids.bos, eos_token_id=token_ids.eos,
        tie_word_embeddings=t.tie_word_embeddings,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=token_ids.image,
        tie_word_embeddings=t.tie_word_embeddings,
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )  # fmt: skip


def check_llava_config(cfg: LlavaConfig, token_ids: TokenIds) -> None:
    """The backbone settings this model relies on: one feature layer, CLS dropped, <image> id agreed."""
    if not isinstance(cfg.vision_feature_layer, int):
        raise ModelInputError(f"vision_feature_layer must be one int, got {cfg.vision_feature_layer!r}")
    if cfg.vision_feature_select_strategy != "default":
        raise ModelInputError(
            f"vision_feature_select_strategy {cfg.vision_feature_select_strategy!r} is not supported; "
            "accepted: 'default' (CLS dropped, num_patches features per image)"
        )
    if cfg.image_token_id != token_ids.image:
        raise ModelInputError(
            f"LLaVA image_token_id {cfg.image_token_id} differs from the tokenizer's <image> id {token_ids.image}"
        )


class SuperLinkModel(nn.Module):
    def __init__(
        self,
        config: MLLMConfig,
        tokenizer: PreTrainedTokenizerBase,
        llava: LlavaForConditionalGeneration | None = None,
    ) -> None:
        super().__init__()
        self.config = config.model_copy(deep=True)  # apply_lora records itself here
        self.tokenizer = tokenizer
        self.vocab = Vocabulary.from_config(self.config)
        self.token_ids = TokenIds.from_tokenizer(tokenizer, self.vocab)
        if llava is None:
            llava = LlavaForConditionalGeneration(
                build_llava_config(self.config, self.token_ids, len(tokenizer))
            )
        check_llava_config(llava.config, self.token_ids)
        grow_token_embeddings(llava, len(tokenizer))  # new rows start at the mean of the old ones
        self.llava = llava
        hidden = llava.config.text_config.hidden_size
        self.queries = nn.ModuleDict({r.name: nn.Embedding(r.num_queries, hidden) for r in self.vocab.routes})
        for table in self.queries.values():
            nn.init.normal_(table.weight, std=llava.config.text_config.initializer_range)
        vision_dim = llava.config.vision_config.hidden_size
        self.region_encoder = RegionEncoder(vision_dim, hidden) if self.config.region.enabled else None
        # VisionLLM v1 options: absent unless the config asks for them, so older checkpoints load unchanged.
        fq, tok = self.config.format_queries, self.config.image_tokenizer
        std = llava.config.text_config.initializer_range
        self.format_queries = FormatQueries(fq.slots, hidden, std) if fq is not None else None
        n_img = self.config.num_image_tokens
        heads = llava.config.text_config.num_attention_heads
        self.image_tokenizer = LanguageGuidedTokenizer(tok, hidden, n_img, heads) if tok is not None else None
        self.projector_norm = nn.LayerNorm(vision_dim) if self.config.projector_norm else None
        probe = self.config.dense_probe
        self.dense_probe = nn.Linear(hidden, probe.labels) if probe is not None else None
        self.to(getattr(torch, self.config.dtype))
        if self.config.lora is not None:
            from mllm.lora import apply_lora  # lazy: peft loads only for a LoRA model

            apply_lora(self, self.config.lora)

    # ----- forward, in named steps -------------------------------------------------------------

    def embed_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) token embeddings."""
        if input_ids.dim() != 2:
            raise ModelInputError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        size = self.llava.get_input_embeddings().weight.shape[0]
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= size):
            raise ModelInputError(
                f"input_ids must lie in [0, {size}), got [{input_ids.min()}, {input_ids.max()}]"
            )
        return self.llava.get_input_embeddings()(input_ids)

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N_img, 3, S, S) -> patch features (N_img, P, C_vis) and projected features (N_img, P, D)."""
        cfg = self.llava.config
        if self.projector_norm is not None:  # LayerNorm -> projector (config.projector_norm)
            out = self.llava.model.vision_tower(pixel_values, output_hidden_states=True)
            patches = out.hidden_states[cfg.vision_feature_layer][:, 1:]  # (N_img, P, C_vis), CLS dropped
            return patches, self.llava.model.multi_modal_projector(self.projector_norm(patches))
        out = self.llava.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        patches = out.hidden_states[cfg.vision_feature_layer][:, 1:]  # (N_img, P, C_vis), CLS dropped
        projected = torch.stack(list(out.pooler_output))  # (N_img, P, D)
        return patches, projected

    def add_image_features(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        text_mask: torch.Tensor | None = None,  # (B, T) instruction tokens, for the language-guided tokenizer
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Scatter projected image features into the <image> slots; also return the vision tower's patch
        features (N_img, P, C_vis) and the projected ones (N_img, P, D) before any image tokenizer."""
        mask = input_ids == self.token_ids.image  # (B, T)
        n_tokens = int(mask.sum())
        if pixel_values is None:
            if n_tokens:
                raise ModelInputError(
                    f"input_ids hold {n_tokens} <image> tokens but no pixel_values were given"
                )
            return embeds, None, None
        patches, features = self.encode_images(pixel_values.to(embeds.dtype))
        projected = features
        if self.image_tokenizer is not None:
            projected = self.tokenize_images(features, embeds, input_ids, text_mask)
        n_img, n_patch = projected.shape[:2]
        if n_tokens != n_img * n_patch:
            raise ModelInputError(
                f"input_ids hold {n_tokens} <image> tokens but {n_img} images give {n_img * n_patch} features "
                f"({n_patch} each); the processor must expand each <image> to {n_patch} tokens"
            )
        embeds = embeds.masked_scatter(mask[..., None], projected.to(embeds.dtype))
        return embeds, patches, features

    def tokenize_images(
        self, projected: torch.Tensor, embeds: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """(N_img, P, D) projected patches -> (N_img, M, D) language-guided visual tokens (mllm.image_tokenizer),
        each image conditioned on the instruction tokens of the row that holds it."""
        slots = input_ids == self.token_ids.image  # (B, T)
        m = self.config.num_image_tokens
        if int(slots.sum()) != len(projected) * m:
            raise ModelInputError(
                f"input_ids hold {int(slots.sum())} <image> tokens but {len(projected)} images need {m} each"
            )
        if text_mask is None:
            text_mask = self.instruction_mask(input_ids)
        rows = slots.nonzero()[::m, 0]  # (N_img,) row of each image, in scatter order
        return self.image_tokenizer(projected, embeds[rows], text_mask[rows])

    def instruction_mask(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) bool: the instruction's own text tokens (no <image>/<region>/pad/placeholders), and with
        `labels` only those before the answer, so the image tokens never see the answer they are trained on."""
        ids = self.token_ids
        skip = torch.tensor([ids.image, ids.region, ids.pad, *ids.placeholder.values()], device=input_ids.device)
        mask = ~torch.isin(input_ids, skip)
        if labels is not None:
            mask &= (labels != IGNORE_INDEX).long().cumsum(-1) == 0
        return mask

    def add_regions(
        self,
        embeds: torch.Tensor,  # (B, T, D)
        input_ids: torch.Tensor,  # (B, T)
        region_masks: torch.Tensor | None,  # (N_reg, S, S)
        region_image_index: torch.Tensor | None,  # (N_reg,)
        image_features: torch.Tensor | None,  # (N_img, P, C_vis)
    ) -> torch.Tensor:
        """Replace each <region> token embedding by its region encoding, in order of occurrence."""
        mask = input_ids == self.token_ids.region
        n_tokens = int(mask.sum())
        if region_masks is None:
            if n_tokens:
                raise ModelInputError(
                    f"input_ids hold {n_tokens} <region> tokens but no region_masks were given"
                )
            return embeds
        if self.region_encoder is None:
            raise ModelInputError(
                "region_masks given but this model has no region encoder (region.enabled=false)"
            )
        if image_features is None or region_image_index is None:
            raise ModelInputError(
                "region_masks need pixel_values and region_image_index (which image each is on)"
            )
        if n_tokens != len(region_masks):
            raise ModelInputError(
                f"input_ids hold {n_tokens} <region> tokens but {len(region_masks)} region masks"
            )
        regions = self.region_encoder(image_features, region_masks, region_image_index)  # (N_reg, D)
        return embeds.masked_scatter(mask[..., None], regions.to(embeds.dtype))

    def route_groups(self, input_ids: torch.Tensor, route: Route) -> RouteGroups:
        """Find `route`'s query groups; raise unless every run of placeholders is Q long and follows the route token."""
        q = route.num_queries
        slots = input_ids == self.token_ids.placeholder[route.name]  # (B, T)
        n = int(slots.sum())
        if n % q:
            raise ModelInputError(
                f"{n} {route.placeholder} placeholders is not a multiple of {route.token}'s {q} queries"
            )
        follows = F.pad(slots[:, 1:], (0, 1))  # (B, T): next token is a placeholder
        starts = (input_ids == self.token_ids.route[route.name]) & follows
        # expected[t]: some start lies in [t - q, t - 1]; via a cumulative count padded on the left.
        count = F.pad(starts.long().cumsum(-1), (q + 1, 0))  # (B, T + q + 1)
        expected = (count[:, q:-1] - count[:, : -(q + 1)]) > 0  # (B, T)
        if not torch.equal(expected, slots):
            raise ModelInputError(
                f"{route.placeholder} placeholders must come in runs of exactly {q}, right after {route.token}"
            )
        return RouteGroups(starts=starts, slots=slots)

    def scatter_route_queries(self, embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Replace every placeholder run by its route's query table rows (all rows of the batch at once)."""
        for route in self.vocab.routes:
            groups = self.route_groups(input_ids, route)
            n_groups = int(groups.starts.sum())
            if n_groups:
                rows = self.queries[route.name].weight.repeat(n_groups, 1)  # (n_groups * Q, D)
                embeds = embeds.masked_scatter(groups.slots[..., None], rows.to(embeds.dtype))
        return embeds

    def prepare_embeds(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        region_image_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B, T); marks where answers start (image tokenizer only)
    ) -> torch.Tensor:
        """(B, T) ids plus images/regions -> (B, T, D) LLM input embeddings."""
        return self._prepare(input_ids, pixel_values, region_masks, region_image_index, labels)[0]

    def _prepare(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        region_masks: torch.Tensor | None,
        region_image_index: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """prepare_embeds, and the projected patch features (N_img, P, D) it used (None without images)."""
        embeds = self.embed_inputs(input_ids)
        text_mask = self.instruction_mask(input_ids, labels) if self.image_tokenizer is not None else None
        embeds, patches, features = self.add_image_features(embeds, input_ids, pixel_values, text_mask)
        embeds = self.add_regions(embeds, input_ids, region_masks, region_image_index, patches)
        return self.scatter_route_queries(embeds, input_ids), features

    def run_llm(
        self,
        embeds: torch.Tensor,  # (B, L, D)
        attention_mask: torch.Tensor,  # (B, past + L)
        position_ids: torch.Tensor | None = None,  # (B, L); from the mask when None
        cache: Cache | None = None,
    ) -> BaseModelOutputWithPast:
        """The language model without its head: last_hidden_state (B, L, D) and the updated cache."""
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)[:, -embeds.shape[1] :]
        return self.llava.model.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V)."""
        return self.llava.lm_head(hidden)

    def gather_link_states(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> dict[str, LinkStates]:
        """Last-layer states at each route's query slots: states (N, Q, D), index (N, 2) = (row, route pos)."""
        out: dict[str, LinkStates] = {}
        for route in self.vocab.routes:
            groups = self.route_groups(input_ids, route)
            if groups.starts.any():
                states = hidden[groups.slots].view(-1, route.num_queries, hidden.shape[-1])  # (N, Q, D)
                out[route.name] = LinkStates(states=states, index=groups.starts.nonzero())
        return out

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T), left- or right-padded
        attention_mask: torch.Tensor,  # (B, T)
        pixel_values: torch.Tensor | None = None,  # (N_img, 3, S, S)
        region_masks: torch.Tensor | None = None,  # (N_reg, S, S)
        region_image_index: torch.Tensor | None = None,  # (N_reg,)
        labels: torch.Tensor | None = None,  # (B, T), -100 where no loss
    ) -> SuperLinkOutput:
        check_same_shape(input_ids, attention_mask=attention_mask, labels=labels)
        embeds, features = self._prepare(input_ids, pixel_values, region_masks, region_image_index, labels)
        hidden = self.run_llm(embeds, attention_mask).last_hidden_state  # (B, T, D)
        logits = self.lm_logits(hidden)  # (B, T, V)
        loss = lm_loss(logits, labels) if labels is not None else None
        return SuperLinkOutput(
            loss=loss, logits=logits, link_states=self.gather_link_states(hidden, input_ids), image_features=features
        )

    def generate(self, batch: Any, **kwargs: Any) -> list[Generation]:
        """Batched routed generation; see mllm.generation.generate for the options."""
        return generate(self, batch, **kwargs)

    @torch.no_grad()
    def add_routes(self, routes: Mapping[str, int]) -> list[str]:
        """Grow this (trained) model by the routes of `routes` it lacks (name -> number of queries).

        Their routing and placeholder tokens are appended to the tokenizer (every old id is kept), the token
        embedding (and a separate output matrix) grows with the new rows at the mean of the old ones (no
        covariance sampling; mllm.embeddings), and each new route gets a fresh query table. Every other
        weight is kept, so the old routes answer as before. Returns the names of the routes added.
        """
        changed = {r: (self.config.routes[r], q) for r, q in routes.items() if r in self.config.routes and self.config.routes[r] != q}
        if changed:
            raise ValueError(f"routes {changed} already exist with another query count (old, new); a query table keeps its size")
        new = {r: q for r, q in routes.items() if r not in self.config.routes}
        if not new:
            return []
        if self.config.lora is not None:
            raise ValueError("add_routes needs a model without LoRA adapters; merge them first or grow before apply_lora")
        config = MLLMConfig.model_validate({**self.config.model_dump(), "routes": {**self.config.routes, **new}})
        vocab = Vocabulary.from_config(config)
        known = len(self.tokenizer)
        add_superlink_tokens(self.tokenizer, vocab)  # appended after every existing token
        grow_token_embeddings(self.llava, len(self.tokenizer), known_tokens=known)
        ref = next(iter(self.queries.values())).weight if len(self.queries) else self.llava.get_input_embeddings().weight
        std = self.llava.config.text_config.initializer_range
        for name, q in new.items():
            table = nn.Embedding(q, ref.shape[1], device=ref.device, dtype=ref.dtype)
            nn.init.normal_(table.weight, std=std)
            self.queries[name] = table
        self.config, self.vocab = config, vocab
        self.token_ids = TokenIds.from_tokenizer(self.tokenizer, vocab)
        return list(new)

    @property
    def new_token_ids(self) -> list[int]:
        """SuperLink's own token ids (location, class, routing, placeholders, <image>, <region>)."""
        return self.token_ids.superlink_ids(self.tokenizer, self.vocab)

    # ----- save / load -------------------------------------------------------------------------

    def save_pretrained(
        self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None, aliases: dict[str, str] | None = None
    ) -> None:
        """Write model.safetensors, superlink_config.json, llava_config.json and the tokenizer files.

        weights/aliases: this model's tensors gathered elsewhere (a sharded training run), tied tensors stored
        once and `aliases` naming the dropped copies, written instead of the module's own parameters.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if weights is None:
            safetensors.torch.save_model(self, str(d / WEIGHTS_FILE))  # shared/tied tensors stored once
        else:
            safetensors.torch.save_file(weights, str(d / WEIGHTS_FILE), metadata=aliases or None)
        saved = self.config.model_copy(update={"pretrained": None})  # this folder holds the weights now
        (d / CONFIG_FILE).write_text(saved.model_dump_json(indent=2))
        self.llava.config.to_json_file(str(d / LLAVA_CONFIG_FILE))
        self.tokenizer.save_pretrained(str(d))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SuperLinkModel:
        """Load what save_pretrained wrote (no pickle; LoRA re-applied when the saved config has it).

        The model is built in its saved dtype without random initialisation, then filled tensor by
        tensor, so loading never holds a float32 copy or a second copy of the weights.
        """
        d = require_folder(directory, "saved SuperLink model")
        for name in (WEIGHTS_FILE, CONFIG_FILE, LLAVA_CONFIG_FILE):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d}: {name} missing; expected a folder written by save_pretrained")
        config = validate_mapping(json.loads((d / CONFIG_FILE).read_text()), MLLMConfig, str(d / CONFIG_FILE))
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        with no_init_weights(), default_dtype(getattr(torch, config.dtype)):
            llava = LlavaForConditionalGeneration(LlavaConfig.from_json_file(str(d / LLAVA_CONFIG_FILE)))
            llava.tie_weights()  # no_init_weights skips the tying post_init would do
            model = cls(config, tokenizer, llava=llava)
        load_weights(model, d / WEIGHTS_FILE)
        return model

    @classmethod
    def from_llava(cls, directory: str | Path, config: MLLMConfig) -> SuperLinkModel:
        """Load a LLaVA-format checkpoint folder (config.json, model.safetensors, tokenizer files) in
        `config.dtype` (meta-device init, no float32 copy) and add SuperLink's tokens (rows at the mean
        of the checkpoint's token rows; spare rows reused), query tables and region encoder."""
        d = require_folder(directory, "model.pretrained (a LLaVA checkpoint)")
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d}: no config.json; expected a LlavaForConditionalGeneration folder")
        llava, info = LlavaForConditionalGeneration.from_pretrained(
            str(d), local_files_only=True, dtype=getattr(torch, config.dtype), output_loading_info=True
        )
        if info["missing_keys"] or info["mismatched_keys"]:  # transformers would leave those random
            bad = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
            raise ModelInputError(f"{d}: the checkpoint does not fill {len(bad)} weights, e.g. {bad[:4]}")
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        known = len(tokenizer)
        add_superlink_tokens(tokenizer, Vocabulary.from_config(config))
        grow_token_embeddings(llava, len(tokenizer), known_tokens=known)
        return cls(config_from_llava(llava.config, config, d), tokenizer, llava=llava)


def config_from_llava(cfg: LlavaConfig, config: MLLMConfig, directory: Path) -> MLLMConfig:
    """`config` with vision/text sizes taken from a loaded LLaVA checkpoint, so the processor agrees with it."""
    v, t = cfg.vision_config, cfg.text_config
    vision = VisionConfig(
        image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.hidden_size,
        num_layers=v.num_hidden_layers, num_heads=v.num_attention_heads, intermediate_size=v.intermediate_size,
    )  # fmt: skip
    text = TextConfig(
        hidden_size=t.hidden_size, num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
        num_kv_heads=t.num_key_value_heads, intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings, tokenizer_vocab_size=config.text.tokenizer_vocab_size,
    )  # fmt: skip
    return config.model_copy(update={"vision": vision, "text": text, "pretrained": str(directory)}, deep=True)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, T, V) at t predict labels at t + 1; -100 is ignored."""
    shifted = labels[:, 1:].reshape(-1)  # (B * (T - 1),)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shifted, ignore_index=IGNORE_INDEX
    )


def check_same_shape(input_ids: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.shape != input_ids.shape:
            raise ModelInputError(
                f"{name} shape {tuple(t.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )


def build_model(config: MLLMConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> SuperLinkModel:
    """From a LLaVA checkpoint when `config.pretrained` is set, else from scratch with `tokenizer`."""
    if config.pretrained is not None:
        return SuperLinkModel.from_llava(config.pretrained, config)
    if tokenizer is None:
        raise ModelInputError("a model built from scratch needs a tokenizer (mllm.tokenizer.build_tokenizer)")
    return SuperLinkModel(config, tokenizer)
