"""Build and start the Ray Serve application.

    serve run configs/serve.yaml          # Ray's CLI; the file's import_path is services.app:build_app
    serve deploy configs/serve.yaml       # against a running cluster (ray start --head)
    superlink serve [--config FILE]       # the same file, through `serve(config_path)`
    serve_local(config_path)              # no Ray: uvicorn over one in-process Pipeline, same HTTP API

configs/serve.yaml is a Ray Serve config file; the application's `args:` are a ServeConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from mllm.config import ConfigError
from router.assets import config_dir
from services.config import ServeConfig, load_serve_config
from services.engines import make_engine
from services.http import create_app
from services.observability import configure_logging

DEFAULT_SERVE_YAML = config_dir() / "serve.yaml"
IMPORT_PATH = "services.app:build_app"


def build_app(args: dict[str, Any] | ServeConfig | None = None) -> Any:
    """The Serve application: ingress -> MLLM -> one deployment per decoder of the configured routes."""
    from services.deployments import DecoderDeployment, IngressDeployment, MLLMDeployment  # lazy: Ray

    cfg = load_serve_config(args)
    mllm = MLLMDeployment.options(**cfg.mllm.serve_options()).bind(cfg)
    decoders = {
        name: DecoderDeployment.options(name=f"decoder-{name}", **cfg.decoders[name].serve_options()).bind(cfg, name)
        for name in cfg.decoder_names
    }
    return IngressDeployment.options(**cfg.ingress.serve_options()).bind(cfg, mllm, decoders)


@dataclass
class ServeFile:
    """The parts of a Ray Serve config file that `serve()` uses."""

    config: ServeConfig
    name: str = "superlink"
    route_prefix: str = "/"
    http_options: dict[str, Any] = field(default_factory=dict)


def load_serve_file(path: str | Path) -> ServeFile:
    """Read a Ray Serve config file and validate the args of its SuperLink application."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: serve config file not found")
    data = yaml.safe_load(path.read_text())
    apps = [a for a in (data or {}).get("applications", []) if a.get("import_path") == IMPORT_PATH]
    if len(apps) != 1:
        raise ConfigError(f"{path}: expected exactly one application with import_path {IMPORT_PATH!r}, found {len(apps)}")
    app = apps[0]
    config = load_serve_config(app.get("args") or {})
    return ServeFile(config, app.get("name", "superlink"), app.get("route_prefix", "/"), data.get("http_options") or {})


def serve(config_path: Path | None = None) -> None:
    """Start Ray Serve with the SuperLink application and block until interrupted (`superlink serve`)."""
    from ray import serve as ray_serve  # lazy: serve_local runs without Ray

    spec = load_serve_file(config_path or DEFAULT_SERVE_YAML)
    http = {"host": spec.config.http.host, "port": spec.config.http.port, **spec.http_options}
    ray_serve.start(http_options=http)
    print(f"SuperLink serving on http://{http['host']}:{http['port']}{spec.route_prefix} (Ctrl-C stops)", flush=True)
    try:
        ray_serve.run(build_app(spec.config), name=spec.name, route_prefix=spec.route_prefix, blocking=True)
    except KeyboardInterrupt:
        print("stopping SuperLink", flush=True)
    finally:
        ray_serve.shutdown()


def serve_local(config_path: Path | None = None) -> None:
    """Serve the same HTTP API without Ray: uvicorn over one in-process Pipeline (blocking)."""
    configure_logging()  # JSON lines with the request id; the app logs one access line per request
    spec = load_serve_file(config_path or DEFAULT_SERVE_YAML)
    decoders = spec.config.decoder_names
    app = create_app(make_engine(spec.config, decoders=decoders, with_model=True), spec.config.http)
    host, port = spec.http_options.get("host", spec.config.http.host), spec.http_options.get("port", spec.config.http.port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
