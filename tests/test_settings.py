"""Route settings from Envoy metadata (plain and Envoy Gateway shapes) and service settings files."""

import pytest

from buffered_stream.settings import (
    RouteSettings,
    SettingsError,
    load_service_settings,
    route_settings_from_metadata,
)


def test_plain_envoy_metadata():
    settings = route_settings_from_metadata(
        {
            "buffered_stream": {
                "enabled": True,
                "mode": "streamed",
                "profile": "vllm",
                "models": ["llama-*"],
                "max_body_bytes": 1048576.0,
                "max_event_bytes": 65536.0,
            }
        }
    )
    assert settings == RouteSettings(True, "streamed", "vllm", ("llama-*",), 1048576, 65536)
    assert settings.body_limit == 1048576


def test_no_metadata_means_defaults():
    assert route_settings_from_metadata({}) == RouteSettings()
    assert route_settings_from_metadata({}, RouteSettings(enabled=True)).enabled


def test_envoy_gateway_annotations():
    metadata = {
        "envoy-gateway": {
            "resources": [
                {
                    "kind": "HTTPRoute",
                    "name": "llm",
                    "namespace": "default",
                    "annotations": {
                        "buffered-stream.enabled": "true",
                        "buffered-stream.mode": "buffered",
                        "buffered-stream.models": "llama-*, qwen*",
                        "buffered-stream.max_body_bytes": "2097152",
                        "other.io/thing": "ignored",
                    },
                }
            ]
        }
    }
    settings = route_settings_from_metadata(metadata)
    assert settings == RouteSettings(enabled=True, models=("llama-*", "qwen*"), max_body_bytes=2097152)


def test_keepalive_seconds_from_metadata_and_annotations():
    assert route_settings_from_metadata({"buffered_stream": {"keepalive_seconds": 5.0}}).keepalive_seconds == 5.0
    gateway = {
        "envoy-gateway": {
            "resources": [{"annotations": {"gateway.envoyproxy.io/buffered-stream.keepalive_seconds": "2.5"}}]
        }
    }
    assert route_settings_from_metadata(gateway).keepalive_seconds == 2.5
    assert RouteSettings().keepalive_seconds == 0


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"buffered_stream": {"enable": True}}, "unknown key 'enable'"),
        ({"buffered_stream": {"enabled": "yes"}}, "enabled must be true or false"),
        ({"buffered_stream": {"mode": "fast"}}, "mode 'fast' is not one of buffered, streamed"),
        ({"buffered_stream": {"profile": "nope"}}, "profile 'nope' is not one of"),
        ({"buffered_stream": {"models": "llama-*"}}, "models must be a list of glob patterns"),
        ({"buffered_stream": {"max_body_bytes": 1.5}}, "max_body_bytes must be a whole number"),
        ({"buffered_stream": {"max_body_bytes": 0}}, "max_body_bytes must be a positive"),
        ({"buffered_stream": "on"}, "must be a struct"),
        ({"buffered_stream": {"keepalive_seconds": "5"}}, "keepalive_seconds must be a number of seconds"),
        ({"buffered_stream": {"keepalive_seconds": 0.01}}, "keepalive_seconds must be 0 .off. or between 0.1 and 3600"),
        ({"buffered_stream": {"keepalive_seconds": -1}}, "keepalive_seconds must be 0"),
        (
            {"envoy-gateway": {"resources": [{"annotations": {"buffered-stream.keepalive_seconds": "soon"}}]}},
            "keepalive_seconds must be a number of seconds",
        ),
        (
            {"envoy-gateway": {"resources": [{"annotations": {"buffered-stream.enabled": "maybe"}}]}},
            "HTTPRoute annotations",
        ),
    ],
)
def test_bad_route_settings_name_the_problem(metadata, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        route_settings_from_metadata(metadata)


def test_service_settings_file(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("listen: unix:/run/bs.sock\ndrain_seconds: 5\ndefaults:\n  enabled: true\n  mode: streamed\n")
    settings = load_service_settings(str(path), log_level="debug", listen=None)
    assert settings.listen == "unix:/run/bs.sock" and settings.drain_seconds == 5 and settings.log_level == "debug"
    assert settings.defaults == RouteSettings(enabled=True, mode="streamed")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: [\n", "does not parse"),
        ("lisen: x\n", "unknown key"),
        ("- 1\n", "must hold a mapping"),
        ("defaults: {mode: fast}\n", "mode 'fast'"),
    ],
)
def test_bad_service_settings_file(tmp_path, text, message):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_service_settings(str(path))


def test_body_limit_defaults_per_mode():
    assert RouteSettings().body_limit == 16 << 20  # the shipped Envoy buffer
    assert RouteSettings(mode="streamed").body_limit == 1 << 30  # only the answer is held
    assert RouteSettings(mode="streamed", max_body_bytes=5 << 20).body_limit == 5 << 20


@pytest.mark.parametrize(
    "profile", ["vllm", "vllm-0.24", "vllm-0.16", "vllm-0.11.1", "vllm-0.11.0", "vllm-0.10", "openai"]
)
def test_versioned_profiles_are_route_profile_values(profile):
    settings = route_settings_from_metadata({"buffered_stream": {"profile": profile}})
    assert settings.profile == profile
    gateway = {"envoy-gateway": {"resources": [{"annotations": {"buffered-stream.profile": profile}}]}}
    assert route_settings_from_metadata(gateway).profile == profile
