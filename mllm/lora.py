"""LoRA on the language model via peft, switched on by MLLMConfig.lora.

What trains afterwards: the LoRA matrices on the LLM's attention projections (the
regex keeps them off the vision tower), SuperLink's own token rows in the input
embedding and the LM head (peft trainable_token_indices, so the base vocabulary
stays frozen), the route query tables, the region encoder and the multimodal
projector. Everything else is frozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from mllm.config import LoraConfig

if TYPE_CHECKING:
    from mllm.modeling import SuperLinkModel


def lora_target_regex(module_names: list[str]) -> str:
    """Full-name regex matching the named projections inside the language model only."""
    return r".*language_model\..*\.(" + "|".join(module_names) + r")$"


def is_lora_applied(model: SuperLinkModel) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in model.llava.modules())


def apply_lora(model: SuperLinkModel, lora: LoraConfig | None = None) -> None:
    """Inject LoRA in place (checkpoint keys gain peft's names) and freeze all but the trainable parts."""
    lora = lora or model.config.lora or LoraConfig()
    if is_lora_applied(model):
        raise RuntimeError("LoRA is already applied to this model")
    token_ids = model.new_token_ids
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora.target_modules),
        trainable_token_indices={"embed_tokens": token_ids, "lm_head": token_ids},
    )
    inject_adapter_in_model(peft_config, model.llava)
    freeze_all_but_adapters(model)
    model.config.lora = lora  # saved with the model, so from_pretrained re-applies it


def freeze_all_but_adapters(model: SuperLinkModel) -> None:
    """peft left only its adapters trainable inside `llava`; SuperLink's own parts train too."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.llava.modules():
        if isinstance(module, BaseTunerLayer):  # LoRA layers and trainable-token layers
            for attr in module.adapter_layer_names:  # peft's own list of its adapter weight holders
                getattr(module, attr).requires_grad_(True)
    parts = (model.queries, model.region_encoder, model.llava.model.multi_modal_projector, model.format_queries,
             model.image_tokenizer, model.dense_probe, model.projector_norm)
    for part in parts:
        if part is not None:
            part.requires_grad_(True)
