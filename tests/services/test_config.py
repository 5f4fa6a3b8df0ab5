"""ServeConfig and configs/serve.yaml."""

from __future__ import annotations

import pytest

from mllm.config import ConfigError
from services.app import DEFAULT_SERVE_YAML, build_app, load_serve_file
from services.config import ServeConfig, load_serve_config


def test_serve_yaml_loads_and_builds():
    spec = load_serve_file(DEFAULT_SERVE_YAML)
    assert spec.name == "superlink" and spec.http_options["port"] == 8000
    assert spec.config.decoder_names == ["detector", "keypoints", "generator", "editor"]
    assert spec.config.decoders["generator"].serve_options()["autoscaling_config"]["max_replicas"] == 2
    app = build_app(spec.config)
    assert type(app).__name__ == "Application"


def test_decoders_follow_routes():
    cfg = ServeConfig(routes=["DET", "SEG", "GEN"])
    assert cfg.decoder_names == ["detector", "generator"]
    opts = cfg.decoders["detector"].serve_options()
    assert opts["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.0} and opts["num_replicas"] == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"routes": ["DET", "XYZ"]}, "unknown route 'XYZ'"),
        ({"mllm": {"num_replicas": 1, "autoscaling_config": {"max_replicas": 2}}}, "not both"),
        ({"decoders": {"detector": {"max_ongoing_requests": 2, "batching": {"max_batch_size": 8}}}}, "never fill a batch"),
        ({"http": {"port": "eighty"}}, "http.port"),
        ({"ingress": {"ray_actor_options": {"num_gpu": 1}}}, "num_gpu"),
        ({"routes": ["POSE"], "decoders": {"detector": {}}}, "need decoders ['keypoints']"),
    ],
)
def test_bad_config_is_named(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_serve_config(data)


def test_token_from_environment(monkeypatch):
    monkeypatch.setenv("SUPERLINK_API_TOKEN", "env-token")
    assert ServeConfig().http.resolved_token() == "env-token"
    assert ServeConfig(http={"auth_token": "cfg"}).http.resolved_token() == "cfg"


def test_serve_file_without_superlink_app(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("applications:\n  - name: other\n    import_path: x:y\n")
    with pytest.raises(ConfigError, match="services.app:build_app"):
        load_serve_file(p)


def test_make_engine_uses_factory_and_configured_routes():
    from services.engines import make_engine
    from tests.doubles import FakePipeline

    engine = make_engine(ServeConfig(engine_factory="tests.doubles:fake_engine", routes=["GEN"]), decoders=[])
    assert isinstance(engine, FakePipeline) and engine.deployed_routes == ["GEN"]
    with pytest.raises(ValueError, match="package.module:callable"):
        make_engine(ServeConfig(engine_factory="tests.doubles"))
