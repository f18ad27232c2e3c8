"""The README's snippets are the shipped files' truth: each one parses and says what they say."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from support.manifests import Manifests

from buffered_stream.envoy_config import converting_routes, enable_keepalive, load_packaged_config
from buffered_stream.settings import RouteSettings, load_service_settings, route_settings_from_metadata

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)


def yaml_block(containing: str) -> Any:
    (text,) = [body for lang, body in BLOCKS if lang == "yaml" and containing in body]
    return yaml.safe_load(text)


def test_set_up_commands_are_make_targets() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.M)
        assert f"make {target}" in README
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_route_metadata_example_is_valid_and_shaped_like_the_shipped_route() -> None:
    (route,) = yaml_block('models: ["llama-*"]')
    settings = route_settings_from_metadata(route["metadata"]["filter_metadata"])
    assert settings == RouteSettings(enabled=True, mode="buffered", models=("llama-*",))
    shipped = {r["name"]: r for r in converting_routes(load_packaged_config())}[route["name"]]
    assert route["route"] == shipped["route"] and route["match"] == shipped["match"]


def test_settings_file_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(yaml_block("drain_seconds")))
    settings = load_service_settings(str(path))
    assert settings.listen.startswith("unix:") and settings.defaults.max_body_bytes == 16 << 20


def test_litellm_example_is_the_shipped_config() -> None:
    shown = yaml_block("model_list")
    shipped = yaml.safe_load((REPO_ROOT / "deploy" / "litellm" / "config.yaml").read_text())
    assert shown["model_list"] == shipped["model_list"]
    assert shown["general_settings"] == shipped["general_settings"]


def test_envoy_gateway_annotations_are_the_shipped_ones() -> None:
    shown = yaml_block("gateway.envoyproxy.io/buffered-stream")["metadata"]["annotations"]
    routes = [d for d in Manifests(REPO_ROOT / "deploy" / "envoy-gateway").docs if d["kind"] == "HTTPRoute"]
    shipped = [r["metadata"].get("annotations", {}) for r in routes]
    assert any(shown.items() <= annotations.items() for annotations in shipped)


def test_kubernetes_commands_name_real_paths() -> None:
    (commands,) = [body for lang, body in BLOCKS if lang == "sh" and "kubectl apply" in body]
    assert (REPO_ROOT / "deploy" / "kubernetes" / "kustomization.yaml").exists()
    assert "kubectl apply -k deploy/kubernetes" in commands
    assert (REPO_ROOT / "Dockerfile").exists()


def test_keepalive_example_is_what_enable_keepalive_writes() -> None:
    (route,) = yaml_block("FULL_DUPLEX_STREAMED")
    shipped = copy.deepcopy({r["name"]: r for r in converting_routes(load_packaged_config())}[route["name"]])
    del shipped["metadata"]["filter_metadata"]["buffered_stream"]["mode"]
    assert route == enable_keepalive(shipped, 5)
    assert route_settings_from_metadata(route["metadata"]["filter_metadata"]).keepalive_seconds == 5
