"""The real LiteLLM proxy from PyPI, started on loopback for a test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import yaml

from .net import free_port, http_request, wait_until
from .processes import ManagedProcess

MASTER_KEY = "sk-e2e-master-key"
START_TIMEOUT = 120.0


def find_litellm() -> Path:
    litellm = Path(sys.executable).parent / "litellm"
    if not litellm.exists():
        raise FileNotFoundError(f"no litellm next to {sys.executable}: install the test extra (litellm[proxy])")
    return litellm


def proxy_config(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A proxy config: LiteLLM model name → its ``litellm_params``; no retries, our master key."""
    return {
        "model_list": [{"model_name": name, "litellm_params": params} for name, params in models.items()],
        # A timeout must reach the client as the error it is, not be retried into a slower one.
        "litellm_settings": {"num_retries": 0},
        "router_settings": {"num_retries": 0},
        "general_settings": {"master_key": MASTER_KEY},
    }


@contextmanager
def running_litellm(config: dict[str, Any], work_dir: Path) -> Iterator[str]:
    """Start ``litellm --config`` on a free loopback port; yield its base URL once it is alive."""
    config_path = work_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "litellm",
        [str(find_litellm()), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)],
        work_dir,
        cwd=work_dir,
        env={
            # Offline and quiet: the bundled model cost map, no telemetry, loopback never proxied.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        },
    )
    with process:

        def alive() -> bool:
            process.assert_running()
            return http_request(f"{url}/health/liveliness", timeout=2).status == 200

        wait_until(alive, START_TIMEOUT, interval=0.25, message=lambda: f"litellm up\n{process.logs()}")
        yield url


def client(base_url: str, **options: Any) -> openai.OpenAI:
    """An OpenAI SDK client for the proxy (or anything in front of it) at ``base_url``."""
    options.setdefault("timeout", 60)
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=MASTER_KEY, max_retries=0, **options)
