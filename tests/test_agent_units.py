"""Unit tests of the agent's pure pieces: durations, flag/env precedence, templating, retry rules."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kuma_common.durations import DurationError, format_duration, parse_duration
from kuma_dp.bootstrap_client import Outcome, classify, server_message
from kuma_dp.config import RunFlags, build_run_config
from kuma_dp.dataplane_file import load_dataplane, parse_var_assignments
from kuma_dp.envoy.admin import AdminAddress, admin_address_from_bootstrap
from kuma_dp.envoy.binary import parse_version_output
from kuma_dp.envoy.process import EnvoyLaunch, describe_exit, envoy_args
from kuma_dp.errors import ConfigError, EnvoyError
from kuma_dp.supervisor import CrashHistory, RestartPolicy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("1.5s", 1.5), ("0", 0), ("2h45m10s", 9910)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1x", "1m 2s", "--1s"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(DurationError, match="is not a duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (60, 0.2, 90, 3600)] == ["1m0s", "200ms", "1m30s", "1h0m0s"]


def test_flag_wins_over_env_which_wins_over_default() -> None:
    env = {"KUMA_CONTROL_PLANE_URL": "https://env-cp:5678", "KUMA_DATAPLANE_NAME": "env-name"}
    assert build_run_config(RunFlags(name="x"), {}).cp_address == "https://localhost:5678"
    from_env = build_run_config(RunFlags(), env)
    assert (from_env.cp_address, from_env.name) == ("https://env-cp:5678", "env-name")
    from_flags = build_run_config(RunFlags(cp_address="https://flag-cp:1/", name="flag-name"), env)
    assert (from_flags.cp_address, from_flags.name) == ("https://flag-cp:1", "flag-name")


def test_env_only_settings_and_defaults() -> None:
    config = build_run_config(RunFlags(name="x"), {})
    assert (config.readiness_port, config.retry_backoff_s, config.retry_max_duration_s) == (9902, 3.0, 300.0)
    assert (config.drain_time_s, config.mesh, config.max_envoy_restarts) == (30.0, "default", 5)
    env = {"KUMA_READINESS_PORT": "19902", "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "500ms",
           "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "1m"}  # fmt: skip
    config = build_run_config(RunFlags(name="x"), env)
    assert (config.readiness_port, config.retry_backoff_s, config.retry_max_duration_s) == (19902, 0.5, 60.0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUMA_READINESS_PORT": "http"}, "KUMA_READINESS_PORT: expected a port number"),
        ({"KUMA_CONTROL_PLANE_RETRY_BACKOFF": "3"}, "RETRY_BACKOFF: '3' is not a duration"),
        ({"KUMA_CONTROL_PLANE_URL": "localhost:5678"}, "expected a URL"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_run_config(RunFlags(name="x"), env)


def test_token_and_ca_sources() -> None:
    env = {"KUMA_DATAPLANE_RUNTIME_TOKEN": "env-token", "KUMA_CONTROL_PLANE_CA_CERT": "PEM"}
    config = build_run_config(RunFlags(name="x"), env)
    assert (config.token, config.token_path, config.ca_cert_pem) == ("env-token", None, "PEM")
    assert "env-token" not in repr(config)
    config = build_run_config(RunFlags(name="x", dataplane_token_file="/t", ca_cert_file="/ca.pem"), env)
    assert (config.token, str(config.token_path), str(config.ca_cert_file), config.ca_cert_pem) == (
        None, "/t", "/ca.pem", None)  # fmt: skip
    with pytest.raises(ConfigError, match="mutually exclusive"):
        build_run_config(RunFlags(name="x", dataplane_token="a", dataplane_token_file="/t"), {})


def test_name_and_mesh_default_to_the_resource() -> None:
    resource = {"type": "Dataplane", "name": "backend-1", "mesh": "prod", "networking": {}}
    config = build_run_config(RunFlags(), {}, resource)
    assert (config.name, config.mesh) == ("backend-1", "prod")
    assert '"name":"backend-1"' in (config.dataplane_json or "")


def test_conflicting_name_names_both() -> None:
    resource = {"type": "Dataplane", "name": "backend-1", "networking": {}}
    with pytest.raises(
        ConfigError, match='--name "other" conflicts with the Dataplane resource\'s name "backend-1"'
    ):
        build_run_config(RunFlags(name="other"), {}, resource)
    with pytest.raises(ConfigError, match='KUMA_DATAPLANE_MESH "m2" conflicts'):
        build_run_config(RunFlags(), {"KUMA_DATAPLANE_MESH": "m2"}, {**resource, "mesh": "m1"})


def test_name_is_required_without_resource() -> None:
    with pytest.raises(ConfigError, match="a dataplane name is required"):
        build_run_config(RunFlags(), {})


def test_dataplane_vars_are_substituted() -> None:
    text = "type: Dataplane\nname: {{ name }}\nmesh: default\nnetworking:\n  address: {{address}}\n"
    variables = parse_var_assignments(["name=dp-1", "address=10.0.0.5"])
    resource = load_dataplane(text, None, variables, io.StringIO())
    assert resource == {
        "type": "Dataplane",
        "name": "dp-1",
        "mesh": "default",
        "networking": {"address": "10.0.0.5"},
    }


def test_unresolved_vars_are_named() -> None:
    with pytest.raises(ConfigError, match=r"uses address, port but no value was given"):
        load_dataplane("name: {{ name }}\naddr: {{ address }}:{{port}}", None, {"name": "x"}, io.StringIO())


def test_dataplane_from_stdin_and_bad_yaml() -> None:
    assert load_dataplane(None, "-", {}, io.StringIO("name: a\n")) == {"name": "a"}
    with pytest.raises(ConfigError, match=r"--dataplane: invalid YAML at line 2"):
        load_dataplane("name: a\n  bad: [", None, {}, io.StringIO())
    with pytest.raises(ConfigError, match="expected a Dataplane resource"):
        load_dataplane("- a\n- b", None, {}, io.StringIO())
    with pytest.raises(ConfigError, match="--dataplane-var 'novalue' is not of the form key=value"):
        parse_var_assignments(["novalue"])


def test_missing_dataplane_file() -> None:
    with pytest.raises(ConfigError, match="--dataplane-file /no/such.yaml: cannot read: No such file"):
        load_dataplane(None, "/no/such.yaml", {}, io.StringIO())


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [(200, b"{}", Outcome.OK), (503, b"busy", Outcome.RETRY), (500, b"", Outcome.RETRY),
     (404, b"", Outcome.RETRY), (404, b'{"title": "no such mesh"}', Outcome.FATAL),
     (401, b"", Outcome.FATAL), (422, b"{}", Outcome.FATAL), (400, b"x", Outcome.FATAL)],
)  # fmt: skip
def test_retry_rules(status: int, body: bytes, outcome: Outcome) -> None:
    assert classify(status, body) is outcome


def test_server_message_reads_kuma_error_bodies() -> None:
    cause = b'{"field": "networking.address", "message": "required"}'
    body = b'{"title": "bad dp", "details": "bad dp", "causes": [' + cause + b"]}"
    assert server_message(body) == "bad dp; networking.address: required"
    assert server_message(b"plain text") == "plain text"


def test_envoy_version_parsing() -> None:
    parsed = parse_version_output("\n/x/envoy  version: 9e55/1.40.0/Clean/RELEASE/BoringSSL\n")
    assert parsed is not None
    assert (parsed.version, parsed.build) == ("1.40.0", "9e55/1.40.0/Clean/RELEASE/BoringSSL")
    assert parse_version_output("hello") is None


def test_envoy_command_line() -> None:
    launch = EnvoyLaunch(
        Path("/e"), Path("/w/bootstrap.yaml"), drain_time_s=30, log_level="warning", concurrency=2
    )
    assert envoy_args(launch) == ["/e", "--config-path", "/w/bootstrap.yaml", "--drain-time-s", "30",
                                  "--drain-strategy", "immediate", "--disable-hot-restart",
                                  "--log-level", "warning", "--concurrency", "2"]  # fmt: skip
    assert describe_exit(-9) == "signal SIGKILL" and describe_exit(1) == "exit code 1"


def test_admin_address_both_forms() -> None:
    tcp = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}}}
    assert admin_address_from_bootstrap(tcp) == AdminAddress(host="127.0.0.1", port=9901)
    pipe = admin_address_from_bootstrap({"admin": {"address": {"pipe": {"path": "/w/admin.sock"}}}})
    assert str(pipe.pipe) == "/w/admin.sock"
    with pytest.raises(EnvoyError, match="no admin address"):
        admin_address_from_bootstrap({})


def test_crash_history_backoff_and_give_up() -> None:
    history = CrashHistory(RestartPolicy(max_restarts=3, window_s=60))
    assert [history.record(t) for t in (0, 1, 2)] == [0.2, 0.4, 0.8]
    assert history.record(3) is None and history.recent == 4
    spaced = CrashHistory(RestartPolicy(max_restarts=2, window_s=10))
    assert [spaced.record(t) for t in (0, 20, 40, 60)] == [0.2, 0.2, 0.2, 0.2]  # old crashes age out


def test_backoff_is_capped() -> None:
    history = CrashHistory(RestartPolicy(max_restarts=100, window_s=1000))
    assert max(history.record(t) or 0 for t in range(20)) == 10.0
