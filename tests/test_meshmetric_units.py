"""MeshMetric's pure parts: the policy's validation, the agent's settings, profiles and selectors,
merging and format negotiation, and the control plane's discovery answers (HTTP SD and Kuma's MADS)."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from control_plane.monitoring.server import MADS_PATH, MADS_TYPE_URL, create_monitoring_app
from control_plane.policies.meshmetric.api import MeshMetric
from control_plane.store.base import ResourceKey
from control_plane.store.memory import MemoryStore
from kuma_dp.metrics.exposition import OPENMETRICS, TEXT, ExpositionError, merged, negotiate, parse
from kuma_dp.metrics.profiles import EnvoyFilter
from kuma_dp.metrics.settings import MetricsSettings, Selector, SettingsError, parse_settings

ENVOY = """# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 12
envoy_cluster_upstream_rq_total{envoy_cluster_name="ads_cluster"} 3
envoy_cluster_upstream_rq_total{envoy_cluster_name="_kuma:metrics:hijacker"} 1
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="backend"} 12
# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 2
# TYPE envoy_cluster_lb_zone_routing_all_directly counter
envoy_cluster_lb_zone_routing_all_directly{envoy_cluster_name="backend"} 0
# TYPE envoy_server_live gauge
envoy_server_live{} 1
# TYPE envoy_cluster_upstream_cx_connect_ms histogram
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="ads_cluster",le="0.5"} 1
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="ads_cluster",le="+Inf"} 1
envoy_cluster_upstream_cx_connect_ms_sum{envoy_cluster_name="ads_cluster"} 0.1
envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name="ads_cluster"} 1
"""
APP = """# HELP orders_total Orders.
# TYPE orders_total counter
orders_total{shop="a"} 4.0
"""


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def settings(**kw) -> MetricsSettings:
    return MetricsSettings(**kw)


# --- profiles and selectors (Kuma's semantics) -------------------------------------------------


def test_basic_is_the_default_and_drops_the_mesh_plumbing() -> None:
    out = EnvoyFilter(settings()).apply(ENVOY)
    assert families(out) == {
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_rq",
        "envoy_cluster_upstream_cx_total",
        "envoy_server_live",
    }
    assert 'envoy_cluster_name="backend"} 12' in out
    assert "ads_cluster" not in out and "_kuma:metrics:hijacker" not in out  # internal series dropped
    # a Basic family left with internal series only goes entirely (cx_connect_ms on ads_cluster)


def test_all_keeps_everything_and_none_keeps_only_includes() -> None:
    assert EnvoyFilter(settings(profiles=("All",))).apply(ENVOY) == ENVOY
    only = settings(profiles=("None",), include=(Selector("Exact", "envoy_server_live"),))
    assert families(EnvoyFilter(only).apply(ENVOY)) == {"envoy_server_live"}


def test_exclude_beats_profiles_and_include_beats_exclude() -> None:
    chosen = settings(
        profiles=("All",),
        exclude=(Selector("Prefix", "envoy_cluster_"),),
        include=(Selector("Regex", "rq_total$"),),  # a search, as Go's MatchString
    )
    assert families(EnvoyFilter(chosen).apply(ENVOY)) == {
        "envoy_cluster_upstream_rq_total",
        "envoy_server_live",
    }


def test_selector_types() -> None:
    assert Selector("Contains", "rq_t").matches("envoy_rq_total")
    assert Selector("Prefix", "envoy").matches("envoy_x") and not Selector("Prefix", "x").matches("envoy_x")
    assert Selector("Exact", "a").matches("a") and not Selector("Exact", "a").matches("ab")
    assert Selector("Regex", "q_t").matches("envoy_rq_total")


# --- the settings the control plane sends ------------------------------------------------------


def test_settings_from_the_contract() -> None:
    body = {
        "observability": {
            "metrics": {
                "applications": [{"name": "web", "path": "/m", "port": 9100}, {"port": 9200}],
                "sidecar": {"includeUnused": True, "profiles": {"appendProfiles": [{"name": "All"}]}},
            }
        }
    }
    parsed = parse_settings(json.dumps(body).encode())
    assert [a.url for a in parsed.applications] == [
        "http://127.0.0.1:9100/m",
        "http://127.0.0.1:9200/metrics",
    ]
    assert [a.name for a in parsed.applications] == ["web", "app-9200"]
    assert parsed.include_unused and parsed.profiles == ("All",)


@pytest.mark.parametrize(
    "body", [b"{}", b"[]", b"not json", b'{"observability": {"metrics": {"applications": [{}]}}}']
)
def test_settings_not_the_contract_are_refused(body: bytes) -> None:
    with pytest.raises(SettingsError):
        parse_settings(body)


# --- merging and formats -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", OPENMETRICS),
        ("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5", TEXT),
        ("*/*", TEXT),
        (None, TEXT),
    ],
)
def test_negotiation(accept: str | None, fmt: str) -> None:
    assert negotiate(accept) == fmt


def test_text_keeps_envoys_bytes_and_labels_the_app() -> None:
    body = merged(ENVOY, [("shop", parse(APP, "text/plain; version=0.0.4"))], TEXT).decode()
    assert body.startswith(ENVOY)
    assert 'orders_total{kuma_application="shop",shop="a"} 4.0' in body or (
        'orders_total{shop="a",kuma_application="shop"} 4.0' in body
    )


def test_openmetrics_is_one_valid_document() -> None:
    body = merged(ENVOY, [("shop", parse(APP, "text/plain"))], OPENMETRICS).decode()
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1
    reparsed = {f.name: f for f in parse(body, "application/openmetrics-text; version=1.0.0")}
    assert reparsed["orders"].samples[0].labels == {"shop": "a", "kuma_application": "shop"}
    assert reparsed["envoy_cluster_upstream_cx"].type == "counter"
    # upstream_rq_total beside upstream_rq{envoy_response_code}: both keep their names, no clash
    assert reparsed["envoy_cluster_upstream_rq_total"].type == "unknown"
    assert reparsed["envoy_cluster_upstream_rq"].samples[0].labels["envoy_response_code"] == "200"
    # Envoy's series keep Envoy's names: a counter without `_total` is not renamed, but `unknown`.
    assert reparsed["envoy_cluster_lb_zone_routing_all_directly"].type == "unknown"
    assert reparsed["envoy_cluster_lb_zone_routing_all_directly"].samples[0].name == (
        "envoy_cluster_lb_zone_routing_all_directly"
    )
    assert reparsed["envoy_cluster_upstream_cx_connect_ms"].type == "histogram"
    assert [s.name for s in reparsed["envoy_cluster_upstream_rq_total"].samples] == [
        "envoy_cluster_upstream_rq_total"
    ] * 3


def test_an_app_that_does_not_speak_prometheus_is_an_error() -> None:
    with pytest.raises(ExpositionError):
        parse("<html>hello</html>\n", "text/html")


# --- the policy's validation -----------------------------------------------------------------


def policy(default: dict) -> dict:
    return {
        "type": "MeshMetric",
        "mesh": "default",
        "name": "m",
        "spec": {"targetRef": {"kind": "Mesh"}, "default": default},
    }


@pytest.mark.parametrize(
    ("default", "field", "says"),
    [
        (
            {"backends": [{"type": "OpenTelemetry", "openTelemetry": {"endpoint": "otel:4317"}}]},
            "backends.0",
            "OpenTelemetry",
        ),
        (
            {"backends": [{"type": "Prometheus", "prometheus": {"tls": {"mode": "ProvidedTLS"}}}]},
            "mode",
            "Disabled",
        ),
        ({"backends": [{"type": "Zipkin"}]}, "type", "Prometheus"),
        ({"backends": [{"type": "Prometheus", "prometheus": {"path": "metrics"}}]}, "path", "absolute"),
        ({"backends": [{"type": "Prometheus"}, {"type": "Prometheus"}]}, "backends", "5670"),
        ({"applications": [{"port": 0}]}, "port", "1"),
        (
            {"sidecar": {"profiles": {"exclude": [{"type": "Regex", "match": "("}]}}},
            "exclude",
            "regular expression",
        ),
        ({"sidecar": {"profiles": {"appendProfiles": [{"name": "Most"}]}}}, "name", "All"),
        ({"sidecar": {"includeUnused": "maybe"}}, "includeUnused", "bool"),
    ],
)
def test_invalid_fields_are_named(default: dict, field: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MeshMetric.model_validate(policy(default))
    text = str(caught.value)
    assert field in text and says in text, text


# --- discovery: HTTP SD and Kuma's MADS ------------------------------------------------------------


def _store() -> MemoryStore:
    store = MemoryStore()
    store.upsert(ResourceKey("Mesh", "", "default"), {})
    for name, address in (("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")):
        store.upsert(
            ResourceKey("Dataplane", "default", name),
            {
                "labels": {"kuma.io/zone": "z1"},
                "networking": {
                    "address": address,
                    "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}],
                },
            },
        )
    spec = policy({"backends": [{"type": "Prometheus", "prometheus": {"port": 5670, "path": "/m"}}]})["spec"]
    store.upsert(ResourceKey("MeshMetric", "default", "m"), {"spec": spec})
    return store


async def _client(store: MemoryStore) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_monitoring_app(store)), base_url="http://cp"
    )


async def test_http_sd_lists_every_selected_proxy() -> None:
    store = _store()
    async with await _client(store) as client:
        groups = (await client.get("/http_sd")).json()
    assert groups[0] == {
        "targets": ["10.0.0.1:5670"],
        "labels": {
            "mesh": "default",
            "dataplane": "web-1",
            "service": "web",
            "zone": "z1",
            "__metrics_path__": "/m",
        },
    }
    assert [g["targets"] for g in groups] == [["10.0.0.1:5670"], ["10.0.0.2:5670"]]
    store.delete(ResourceKey("MeshMetric", "default", "m"))
    async with await _client(store) as client:
        assert (await client.get("/http_sd")).json() == []  # no MeshMetric: nothing to scrape (Kuma)


async def test_mads_answers_as_kuma_sd_expects_and_304_when_unchanged() -> None:
    async with await _client(_store()) as client:
        first = await client.post(MADS_PATH, json={"versionInfo": "", "node": {"id": "prometheus"}})
        response = first.json()
        assert response["type_url"] == MADS_TYPE_URL
        assignment = response["resources"][0]
        assert assignment["@type"] == MADS_TYPE_URL
        assert assignment["mesh"] == "default" and assignment["service"] == "web"
        assert assignment["targets"][0]["address"] == "10.0.0.1:5670"
        assert assignment["targets"][0]["metrics_path"] == "/m"
        assert assignment["targets"][0]["name"] == "web-1"
        same = await client.post(
            MADS_PATH + "?fetch-timeout=0s", json={"version_info": response["version_info"]}
        )
        assert same.status_code == 304
        bad = await client.post(MADS_PATH, content=b"{not json")
        assert bad.status_code == 400


async def test_the_meshs_older_metrics_field_is_discovered_where_no_meshmetric_selects() -> None:
    store = _store()
    store.delete(ResourceKey("MeshMetric", "default", "m"))
    metrics = {
        "enabledBackend": "p",
        "backends": [{"name": "p", "type": "prometheus", "conf": {"port": 5690}}],
    }
    store.upsert(ResourceKey("Mesh", "", "default"), {"metrics": metrics})
    async with await _client(store) as client:
        groups = (await client.get("/http_sd")).json()
    assert [(g["targets"], g["labels"]["__metrics_path__"]) for g in groups] == [
        (["10.0.0.1:5690"], "/metrics"),
        (["10.0.0.2:5690"], "/metrics"),
    ]
