"""kuma-cp configuration: defaults < YAML < environment, and errors that name the bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.config import ConfigError, load_config
from kuma_common.durations import format_duration, parse_duration


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kuma-cp.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_are_kumas() -> None:
    config = load_config(None, env={})
    assert config.general.work_dir == Path("~/.kuma").expanduser()
    assert config.general.tls_cert_file is None
    assert config.store.type == "sqlite"
    assert config.dp_server.port == 5678
    assert config.dp_server.dp_proxy_authn == "dpToken"
    assert config.api_server.http_port == 5681
    assert config.api_server.http_interface == "0.0.0.0"
    assert config.api_server.https_port == 5682
    assert config.api_server.localhost_is_admin is True
    assert config.xds.dataplane_deregistration_delay == 10.0
    assert config.defaults.skip_mesh_creation is False
    assert config.ignored_keys == ()


def test_yaml_overrides_defaults_and_env_overrides_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
general:
  workDir: /var/lib/kuma
store:
  type: memory
  postgres: {host: db.local, port: 6543, dbName: mesh}
dpServer:
  port: 15678
  authn:
    dpProxy:
      type: none
apiServer:
  http: {port: 15681, interface: 127.0.0.1}
  https: {port: 15682}
  authn: {localhostIsAdmin: false}
xds:
  dataplaneDeregistrationDelay: 1m30s
defaults:
  skipMeshCreation: true
""",
    )
    config = load_config(path, env={})
    assert config.general.work_dir == Path("/var/lib/kuma")
    assert config.store.type == "memory"
    assert (config.store.postgres.host, config.store.postgres.port) == ("db.local", 6543)
    assert config.store.postgres.db_name == "mesh"
    assert config.store.postgres.user == "kuma"
    assert config.dp_server.port == 15678
    assert config.dp_server.dp_proxy_authn == "none"
    assert config.api_server.http_port == 15681
    assert config.api_server.http_interface == "127.0.0.1"
    assert config.api_server.https_port == 15682
    assert config.api_server.localhost_is_admin is False
    assert config.xds.dataplane_deregistration_delay == 90.0
    assert config.defaults.skip_mesh_creation is True

    env = {
        "KUMA_GENERAL_WORK_DIR": "~/kuma-work",
        "KUMA_STORE_TYPE": "sqlite",
        "KUMA_DP_SERVER_PORT": "25678",
        "KUMA_API_SERVER_HTTP_PORT": "25681",
        "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN": "true",
        "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY": "500ms",
        "KUMA_DEFAULTS_SKIP_MESH_CREATION": "false",
        "KUMA_STORE_POSTGRES_PASSWORD": "secret",
        "KUMA_GENERAL_TLS_CERT_FILE": "/etc/kuma/cp.crt",
        "KUMA_GENERAL_TLS_KEY_FILE": "/etc/kuma/cp.key",
    }
    config = load_config(path, env=env)
    assert config.general.work_dir == Path("~/kuma-work").expanduser()
    assert config.store.type == "sqlite"
    assert config.dp_server.port == 25678
    assert config.api_server.http_port == 25681
    assert config.api_server.https_port == 15682  # from the file: env did not set it
    assert config.api_server.localhost_is_admin is True
    assert config.xds.dataplane_deregistration_delay == 0.5
    assert config.defaults.skip_mesh_creation is False
    assert config.store.postgres.password == "secret"
    assert config.general.tls_cert_file == "/etc/kuma/cp.crt"
    assert config.general.tls_key_file == "/etc/kuma/cp.key"


def test_config_is_frozen() -> None:
    config = load_config(None, env={})
    with pytest.raises(AttributeError):
        config.dp_server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "named", "value"),
    [
        ({"KUMA_API_SERVER_HTTP_PORT": "http"}, "KUMA_API_SERVER_HTTP_PORT", "'http'"),
        ({"KUMA_DP_SERVER_PORT": "70000"}, "KUMA_DP_SERVER_PORT", "'70000'"),
        ({"KUMA_STORE_TYPE": "etcd"}, "KUMA_STORE_TYPE", "'etcd'"),
        (
            {"KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY": "10"},
            "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY",
            "'10'",
        ),
        (
            {"KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY": "ten"},
            "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY",
            "'ten'",
        ),
        (
            {"KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN": "yes"},
            "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN",
            "'yes'",
        ),
        ({"KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE": "token"}, "KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE", "'token'"),
    ],
)
def test_bad_env_values_name_the_variable_and_value(env: dict[str, str], named: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert named in str(info.value)
    assert value in str(info.value)


@pytest.mark.parametrize(
    ("text", "named", "value"),
    [
        ("apiServer:\n  http:\n    port: abc\n", "apiServer.http.port", "'abc'"),
        ("store:\n  type: mysql\n", "store.type", "'mysql'"),
        (
            "xds:\n  dataplaneDeregistrationDelay: 5 minutes\n",
            "xds.dataplaneDeregistrationDelay",
            "'5 minutes'",
        ),
        ("dpServer: 5678\n", "dpServer", "5678"),
        ("defaults:\n  skipMeshCreation: maybe\n", "defaults.skipMeshCreation", "'maybe'"),
    ],
)
def test_bad_yaml_values_name_the_key_and_value(tmp_path: Path, text: str, named: str, value: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert named in str(info.value)
    assert value in str(info.value)
    assert path in str(info.value)


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "apiServr:\n  http:\n    port: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'apiServr'"):
        load_config(path, env={})


def test_kuma_keys_we_do_not_implement_are_listed_not_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "environment: universal\nreports:\n  enabled: false\napiServer:\n  readOnly: true\n"
        "general:\n  tlsCertFile:\n",
    )
    config = load_config(path, env={})
    assert set(config.ignored_keys) == {"environment", "reports", "apiServer.readOnly"}
    assert config.general.tls_cert_file is None


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "store:\n  type: memory\n bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert path in str(info.value)
    assert "line" in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing, env={})


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == load_config(None, env={})


def test_tls_cert_without_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="KUMA_GENERAL_TLS_KEY_FILE"):
        load_config(None, env={"KUMA_GENERAL_TLS_CERT_FILE": "/x.crt"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("1.5s", 1.5),
        ("2us", 2e-6),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1s2", "ten seconds", "-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(90, "1m30s"), (0.5, "500ms"), (10, "10s"), (3600, "1h0m0s")])
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@given(st.integers(min_value=0, max_value=10 * 24 * 3600 * 1000))
def test_duration_round_trip_property(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_dp_server_and_xds_limits_from_yaml_and_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dpServer:\n  readHeaderTimeout: 2s\n  maxConnectionsPerSource: 7\n"
        "xdsServer:\n  maxStreams: 9\n  sendTimeout: 30s\n",
    )
    env = {"KUMA_DP_SERVER_MAX_REQUEST_BODY_BYTES": "2048", "KUMA_XDS_SERVER_REQUEST_QUEUE_SIZE": "5"}
    config = load_config(path, env=env)
    limits, xds = config.dp_server.limits, config.dp_server.xds_limits
    assert (limits.read_header_timeout, limits.max_connections_per_source) == (2.0, 7)
    assert limits.max_request_body_bytes == 2048
    assert (xds.max_streams, xds.send_timeout, xds.request_queue_size) == (9, 30.0, 5)
    assert config.ignored_keys == ()
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"KUMA_DP_SERVER_MAX_CONNECTIONS": "0"})
    assert "KUMA_DP_SERVER_MAX_CONNECTIONS" in str(info.value) and "'0'" in str(info.value)


# --- unknown names: a typo is refused, Kuma's own names we do not implement are listed ----------


def test_unknown_kuma_variable_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="KUMA_API_SERVER_AUTHN_TYPO") as info:
        load_config(None, env={"KUMA_API_SERVER_AUTHN_TYPO": "tokens"})
    assert "no Kuma setting" in str(info.value)


def test_a_misspelt_variable_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean KUMA_API_SERVER_HTTP_PORT"):
        load_config(None, env={"KUMA_API_SERVER_HTTP_PROT": "5681"})


def test_kuma_variables_we_do_not_implement_are_listed_not_refused() -> None:
    env = {"KUMA_REPORTS_ENABLED": "false", "KUMA_READINESS_PORT": "9902", "HOME": "/root", "KUMAX": "1"}
    ignored = load_config(None, env=env).ignored_keys
    assert ignored == (
        "KUMA_READINESS_PORT (environment; a kuma-dp setting)",
        "KUMA_REPORTS_ENABLED (environment)",
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("apiServer:\n  authn:\n    typo: tokens\n", "apiServer.authn.typo"),
        ("reports:\n  enabld: false\n", "reports.enabld"),
        ("store:\n  postgres:\n    hots: db\n", "store.postgres.hots"),
    ],
)
def test_unknown_nested_keys_are_refused(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(write(tmp_path, text), env={})


def test_kuma_lists_and_free_form_maps_are_accepted_whole(tmp_path: Path) -> None:
    text = (
        "apiServer:\n  corsAllowedDomains: [a.example]\n"
        "access:\n  static:\n    adminResources:\n      users: [x]\n"
    )
    assert set(load_config(write(tmp_path, text), env={}).ignored_keys) == {
        "apiServer.corsAllowedDomains",
        "access",
    }
