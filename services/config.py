"""Serving configuration: one YAML file (configs/serve.yaml) drives the Ray Serve application.

Every deployment gets its own `ray_actor_options` (fractional CPUs/GPUs allowed), a
replica count or an autoscaling policy, and `max_ongoing_requests`; each decoder also
gets its batching policy. Unknown keys are errors (StrictModel).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from mllm.config import StrictModel, load_yaml, validate_mapping
from mllm.devices import DtypeName
from router.config import import_modules, model_config_of
from router.routes import ROUTES, route_decoders

TOKEN_ENV = "SUPERLINK_API_TOKEN"


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


class ServeConfig(StrictModel):
    """The whole Serve application: model, routes to deploy, per-deployment options, HTTP."""

    model: str = Field("tiny", description="a preset name from configs/ or a saved SuperLink folder")
    modules: list[str] = Field(
        default_factory=list,
        description="modules to import first (routes and decoder kinds declared outside the package); a saved "
        "model's own `modules:` are imported when its config loads",
    )
    routes: list[str] = Field(
        default_factory=list,
        description="routes to deploy; left out: every route the model declares that has a route module",
    )
    engine_factory: str | None = Field(
        None,
        description="'module:callable' with Pipeline.from_pretrained's signature (model, decoders=, with_model=); "
        "None uses router.pipeline.Pipeline.from_pretrained",
    )
    ingress: DeploymentConfig = DeploymentConfig(ray_actor_options=ActorOptions(num_cpus=0.1))
    mllm: BatchedDeploymentConfig = BatchedDeploymentConfig()
    # Deployment options per decoder name (the model config's `decoders:` entries the routes use). Left out:
    # defaults for every decoder the routes need; given: it must name each of them.
    decoders: dict[str, BatchedDeploymentConfig] = Field(default_factory=dict)
    http: HTTPConfig = HTTPConfig()

    @model_validator(mode="before")
    @classmethod
    def _import_modules(cls, data: Any) -> Any:
        return import_modules(data)

    @model_validator(mode="after")
    def _check_routes(self) -> ServeConfig:
        if not self.routes:  # derived from the model: the routes it declares that have a route module
            self.routes = [r for r in model_config_of(self.model).model.routes if r in ROUTES]
        for r in self.routes:
            if r not in ROUTES:
                raise ValueError(f"unknown route {r!r} in routes; accepted: {', '.join(ROUTES)}")
        if not self.decoders:
            self.decoders = {name: BatchedDeploymentConfig() for name in self.decoder_names}
        missing = sorted(set(self.decoder_names) - set(self.decoders))
        if missing:
            raise ValueError(f"routes {self.routes} need decoders {missing}, which have no entry under decoders")
        return self

    @property
    def decoder_names(self) -> list[str]:
        """Decoders the configured routes need, in first-use order."""
        return list(dict.fromkeys(route_decoders(self.routes).values()))


def load_serve_config(source: str | Path | dict | ServeConfig | None) -> ServeConfig:
    """A ServeConfig from a YAML path, a mapping (Serve's `args:`), an instance, or None (defaults)."""
    if source is None:
        return ServeConfig()
    if isinstance(source, ServeConfig):
        return source
    if isinstance(source, dict):
        return validate_mapping(source, ServeConfig, "serve config")
    return load_yaml(source, ServeConfig)
