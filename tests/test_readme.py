"""The README's and docs pages' snippets are the shipped files' truth: each one parses and says what they say."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from buffered_stream.demo_backend import DEMO_TEXT
from buffered_stream.envoy_config import converting_routes, enable_keepalive, load_packaged_config
from buffered_stream.settings import RouteSettings, load_service_settings, route_settings_from_metadata
from support.manifests import Manifests
from support.net import http_request, wait_until
from support.processes import ManagedProcess
from support.stack import SOURCE_ROOT, run_args

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
DOCS = README + "".join(page.read_text() for page in sorted((REPO_ROOT / "docs").glob("*.md")))
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", DOCS, re.S)


def yaml_block(containing: str) -> Any:
    """The YAML block that holds ``containing``; where the README and a page both show it, the
    copies must agree."""
    (text,) = {body for lang, body in BLOCKS if lang == "yaml" and containing in body}
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


# --- the quick start, run as written ---------------------------------------------------------


def quick_start_blocks(lang: str) -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [body for block_lang, body in re.findall(r"```(\w*)\n(.*?)```", section, re.S) if block_lang == lang]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """What `make run` starts without a backend: `buffered-stream run` and its demo backend."""
    args, port = run_args()
    with ManagedProcess(
        "run", args, tmp_path_factory.mktemp("quick-start"), env={"PYTHONPATH": str(SOURCE_ROOT)}
    ) as run:
        request = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}

        def up() -> bool:
            run.assert_running()
            return (
                http_request(f"http://127.0.0.1:{port}/v1/chat/completions", "POST", request, timeout=10).status == 200
            )

        wait_until(up, 60, interval=0.2, message=run.logs)
        yield f"127.0.0.1:{port}"


def test_quick_start_python_snippets_answer_every_api_through_the_sdks(quick_start: str) -> None:
    """The README's Python snippets, as written but for the port: chat completions, completions and
    Responses through the OpenAI SDK, Messages through the Anthropic SDK, all converted."""
    snippets = quick_start_blocks("python")
    assert len(snippets) == 3 and "from anthropic import Anthropic" in snippets[2]
    printed = []
    for snippet in snippets:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(snippet.replace("127.0.0.1:10000", quick_start), {})
        printed.append(out.getvalue())
    words = DEMO_TEXT.split(" ")
    assert printed[0].startswith(DEMO_TEXT) and "completion_tokens=" in printed[0]
    text, response = printed[1].splitlines()
    assert text == "".join(w if i == 0 else " " + w for i, w in enumerate(words[:8]))
    assert response.startswith(DEMO_TEXT) and "output_tokens=" in response
    assert printed[2].startswith(DEMO_TEXT) and "output_tokens=" in printed[2]


def test_quick_start_curl_lines_answer_every_api(quick_start: str) -> None:
    (curl_lines,) = [block for block in quick_start_blocks("sh") if "/v1/messages" in block]
    result = subprocess.run(
        ["bash", "-c", curl_lines.replace("127.0.0.1:10000", quick_start)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    decoder, text, answers = json.JSONDecoder(), result.stdout.strip(), []
    while text:
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].strip()
    assert [a.get("object", a.get("type")) for a in answers] == ["text_completion", "response", "message"]
    assert answers[1]["output"][0]["content"][0]["text"] == DEMO_TEXT
    assert answers[2]["content"] == [{"type": "text", "text": DEMO_TEXT}]
