"""Serving configuration: one YAML file (configs/serve.yaml) drives the Ray Serve application.

Every deployment gets its own `ray_actor_options` (fractional CPUs/GPUs allowed), a
replica count or an autoscaling policy, and `max_ongoing_requests`; each decoder also
gets its batching policy. Unknown keys are errors (StrictModel).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mllm.config import ROUTE_NAMES, StrictModel, load_yaml, validate_mapping
from mllm.devices import DtypeName
from router.bindings import default_bindings

DecoderName = Literal["detector", "keypoints", "generator", "editor"]
TOKEN_ENV = "SUPERLINK_API_TOKEN"
# Route -> decoder name from router's built-in binding table; picks the decoder deployments routes need.
ROUTE_DECODERS: dict[str, str] = {route: b.decoder for route, b in default_bindings().items()}


class ActorOptions(StrictModel):
    """Resources one replica reserves. Ray defaults to 1 CPU per replica, which starves small hosts."""

    num_cpus: float = Field(0.25, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    memory: int | None = Field(None, ge=0, description="bytes of heap memory reserved")


class AutoscalingConfig(StrictModel):
    min_replicas: int = Field(1, ge=0)
    initial_replicas: int | None = Field(None, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self


class DeploymentConfig(StrictModel):
    """Options of one Serve deployment; give num_replicas or autoscaling_config, not both.

    `device`/`dtype` place the replica's model (mllm.devices): "auto" puts it on the replica's GPU when
    ray_actor_options.num_gpus > 0 (Ray makes that card the replica's cuda:0) and on the CPU otherwise.
    """

    ray_actor_options: ActorOptions = ActorOptions()
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: DtypeName = Field("auto", description="auto (bf16/fp16 on a GPU, unchanged on CPU) or a dtype name")
    num_replicas: int | None = Field(1, ge=1)
    autoscaling_config: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(32, ge=1)
    health_check_period_s: float = Field(10.0, gt=0.0)

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentConfig:
        if self.autoscaling_config is not None and self.num_replicas is not None:
            raise ValueError("give either num_replicas or autoscaling_config, not both (set num_replicas: null)")
        if self.autoscaling_config is None and self.num_replicas is None:
            raise ValueError("give num_replicas or autoscaling_config")
        return self

    def placement(self) -> tuple[str, str]:
        """(device, dtype) for this deployment's replicas; "auto" follows the GPUs the replica reserves."""
        device = self.device
        if device == "auto":
            device = "cuda" if self.ray_actor_options.num_gpus > 0 else "cpu"
        return device, self.dtype

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        opts: dict[str, Any] = {
            "ray_actor_options": self.ray_actor_options.model_dump(exclude_none=True),
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
        }
        if self.autoscaling_config is not None:
            opts["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class BatchingConfig(StrictModel):
    """Dynamic batching across callers (`@serve.batch`) for one decoder."""

    enabled: bool = True
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)


class BatchedDeploymentConfig(DeploymentConfig):
    """A deployment whose callers are batched together: the MLLM and each decoder."""

    batching: BatchingConfig = BatchingConfig()

    @model_validator(mode="after")
    def _room_for_batches(self) -> BatchedDeploymentConfig:
        if self.batching.enabled and self.batching.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"batching.max_batch_size {self.batching.max_batch_size} exceeds max_ongoing_requests "
                f"{self.max_ongoing_requests}; a replica could never fill a batch"
            )
        return self


class HTTPConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024, description="request line + headers, in all")
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    request_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    auth_token: str | None = Field(None, description=f"bearer token; falls back to env {TOKEN_ENV}")

    def resolved_token(self) -> str | None:
        """The configured token, else the environment's, else None (auth off)."""
        return self.auth_token or os.environ.get(TOKEN_ENV) or None


def _default_decoders() -> dict[str, BatchedDeploymentConfig]:
    return {name: BatchedDeploymentConfig() for name in ("detector", "keypoints", "generator", "editor")}


class ServeConfig(StrictModel):
    """The whole Serve application: model, routes to deploy, per-deployment options, HTTP."""

    model: str = Field("tiny", description="a preset name from configs/ or a saved SuperLink folder")
    routes: list[str] = Field(default_factory=lambda: list(ROUTE_NAMES), description="routes to deploy")
    engine_factory: str | None = Field(
        None,
        description="'module:callable' with Pipeline.from_pretrained's signature (model, decoders=, with_model=); "
        "None uses router.pipeline.Pipeline.from_pretrained",
    )
    ingress: DeploymentConfig = DeploymentConfig(ray_actor_options=ActorOptions(num_cpus=0.1))
    mllm: BatchedDeploymentConfig = BatchedDeploymentConfig()
    decoders: dict[DecoderName, BatchedDeploymentConfig] = Field(default_factory=_default_decoders)
    http: HTTPConfig = HTTPConfig()

    @model_validator(mode="after")
    def _check_routes(self) -> ServeConfig:
        for r in self.routes:
            if r not in ROUTE_DECODERS:
                raise ValueError(f"unknown route {r!r} in routes; accepted: {', '.join(ROUTE_DECODERS)}")
        missing = sorted(set(self.decoder_names) - set(self.decoders))
        if missing:
            raise ValueError(f"routes {self.routes} need decoders {missing}, which have no entry under decoders")
        return self

    @property
    def decoder_names(self) -> list[str]:
        """Decoders the configured routes need, in first-use order."""
        return list(dict.fromkeys(ROUTE_DECODERS[r] for r in self.routes))


def load_serve_config(source: str | Path | dict | ServeConfig | None) -> ServeConfig:
    """A ServeConfig from a YAML path, a mapping (Serve's `args:`), an instance, or None (defaults)."""
    if source is None:
        return ServeConfig()
    if isinstance(source, ServeConfig):
        return source
    if isinstance(source, dict):
        return validate_mapping(source, ServeConfig, "serve config")
    return load_yaml(source, ServeConfig)
