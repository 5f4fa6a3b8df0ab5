"""One `device` / `dtype` setting for every part: "auto" or an explicit value, resolved here.

    device: "auto" (the CUDA device this process sees, else CPU), "cpu", "cuda", "cuda:1", "mps"
    dtype:  "auto" (bfloat16 on a GPU that has it, float16 on one that does not, unchanged on CPU),
            "float32", "bfloat16", "float16"
"""

from __future__ import annotations

from typing import Literal

import torch

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The torch.device `spec` names; "auto" is cuda when CUDA is available here, else cpu."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {spec!r} is not a device; accepted: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but this process sees no CUDA device; use 'auto' or 'cpu'")
    return device


def resolve_dtype(spec: str | None, device: torch.device) -> torch.dtype | None:
    """The dtype `spec` names; "auto" picks bfloat16/float16 on CUDA and None (keep as built) elsewhere."""
    if spec is None:
        return None
    if spec not in DTYPES:
        raise ValueError(f"dtype {spec!r} is not accepted; accepted: {', '.join(DTYPES)}")
    if spec != "auto":
        return getattr(torch, spec)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
