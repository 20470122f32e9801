"""MeshHealthCheck → Envoy, as Kuma maps it (an unset field takes Kuma's default once a policy applies):
- one active health check appended to the outbound cluster's `health_checks`: interval (1m),
  timeout (15s), unhealthy_threshold (5), healthy_threshold (1), and, only when set,
  initial_jitter, interval_jitter, interval_jitter_percent, no_traffic_interval,
  reuse_connection, always_log_health_check_failures, event_logger (Envoy's file event sink);
- the checker is chosen by the service's protocol, as Kuma chooses: `http` for HTTP and HTTP/2
  services (HTTP/2 checks for HTTP/2), `grpc` for gRPC, `tcp` for TCP; `tcp` is also the fallback
  when the protocol's own checker is present with `disabled: true`. When nothing fits (e.g. only
  `http` for a TCP service) the cluster gets no health check;
- http: path ("/"), request_headers_to_add (`set` overwrites, `add` appends), expected_statuses
  (each status a [s, s+1) range; Envoy's default is 200 only);
- tcp: `send` / `receive` are base64 in the policy and the decoded bytes go to Envoy (hex text
  payloads). Kuma hex-encodes the base64 text itself, so Envoy would send the base64 characters;
  here the bytes the user encoded are what goes on the wire;
- grpc: service_name, authority;
- healthyPanicThreshold → cluster.common_lb_config.healthy_panic_threshold;
  failTrafficOnPanic → cluster.common_lb_config.zone_aware_lb_config.fail_traffic_on_panic.
Kuma also adds an `x-kuma-tags` header with the caller's tags to HTTP checks; nothing here reads
that header and it would make the cluster differ per proxy (clusters are shared by proxies that
select the same policies), so it is left out.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2, health_check_pb2
from envoy.extensions.health_check.event_sinks.file.v3 import file_pb2
from envoy.type.v3 import http_pb2, range_pb2

from control_plane.policies.core.fields import decimal_of, set_duration
from control_plane.policies.core.parts import OutboundParts
from control_plane.policies.core.rules import MergedConf
from control_plane.policies.meshhealthcheck import api
from control_plane.policies.meshhealthcheck.api import (
    Conf,
    GrpcHealthCheck,
    HttpHealthCheck,
    TcpHealthCheck,
)
from control_plane.xds.generate.pack import pack
from control_plane.xds.generate.protocol import GRPC, HTTP, HTTP2, TCP

EVENT_SINK = "envoy.health_check.event_sinks.file"
HeaderOption = base_pb2.HeaderValueOption


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Conf = merged.parsed(Conf)
    _configure_panic(conf, parts.cluster)
    check = _health_check(conf, parts.protocol)
    if check is not None:
        parts.cluster.health_checks.append(check)


def checker_for(conf: Conf, protocol: str) -> str | None:
    """Which checker a service speaking `protocol` gets (Kuma's selectHealthCheckType)."""
    http, tcp, grpc = (_enabled(c) for c in (conf.http, conf.tcp, conf.grpc))
    if protocol in (HTTP, HTTP2) and http:
        return HTTP
    if protocol == GRPC and grpc:
        return GRPC
    if protocol == TCP and tcp:
        return TCP
    own = conf.grpc if protocol == GRPC else conf.http if protocol in (HTTP, HTTP2) else None
    if own is not None and own.disabled and tcp:  # the protocol's checker is switched off
        return TCP
    return None


def _enabled(checker: HttpHealthCheck | TcpHealthCheck | GrpcHealthCheck | None) -> bool:
    return checker is not None and not checker.disabled


def _health_check(conf: Conf, protocol: str) -> health_check_pb2.HealthCheck | None:
    kind = checker_for(conf, protocol)
    if kind is None:
        return None
    check = health_check_pb2.HealthCheck()
    set_duration(check.interval, conf.interval, api.DEFAULT_INTERVAL_S)
    set_duration(check.timeout, conf.timeout, api.DEFAULT_TIMEOUT_S)
    check.unhealthy_threshold.value = conf.unhealthyThreshold or api.DEFAULT_UNHEALTHY_THRESHOLD
    check.healthy_threshold.value = conf.healthyThreshold or api.DEFAULT_HEALTHY_THRESHOLD
    if conf.initialJitter is not None:
        set_duration(check.initial_jitter, conf.initialJitter, 0)
    if conf.intervalJitter is not None:
        set_duration(check.interval_jitter, conf.intervalJitter, 0)
    if conf.intervalJitterPercent is not None:
        check.interval_jitter_percent = conf.intervalJitterPercent
    if conf.noTrafficInterval is not None:
        set_duration(check.no_traffic_interval, conf.noTrafficInterval, 0)
    if conf.reuseConnection is not None:
        check.reuse_connection.value = conf.reuseConnection
    if conf.alwaysLogHealthCheckFailures is not None:
        check.always_log_health_check_failures = conf.alwaysLogHealthCheckFailures
    if conf.eventLogPath is not None:
        sink = file_pb2.HealthCheckEventFileSink(event_log_path=conf.eventLogPath)
        logger = extension_pb2.TypedExtensionConfig(name=EVENT_SINK, typed_config=pack(sink))
        check.event_logger.append(logger)
    if kind == HTTP:
        assert conf.http is not None
        check.http_health_check.CopyFrom(_http_checker(conf.http, protocol))
    elif kind == GRPC:
        assert conf.grpc is not None
        check.grpc_health_check.service_name = conf.grpc.serviceName or ""
        check.grpc_health_check.authority = conf.grpc.authority or ""
    else:
        check.tcp_health_check.CopyFrom(_tcp_checker(conf.tcp or TcpHealthCheck()))
    return check


def _http_checker(http: HttpHealthCheck, protocol: str) -> health_check_pb2.HealthCheck.HttpHealthCheck:
    checker = health_check_pb2.HealthCheck.HttpHealthCheck(
        path=http.path or api.DEFAULT_HTTP_PATH,
        codec_client_type=http_pb2.HTTP2 if protocol == HTTP2 else http_pb2.HTTP1,
    )
    headers = http.requestHeadersToAdd
    if headers is not None:
        for header, action in [
            *((h, HeaderOption.APPEND_IF_EXISTS_OR_ADD) for h in headers.add or []),
            *((h, HeaderOption.OVERWRITE_IF_EXISTS_OR_ADD) for h in headers.set or []),
        ]:
            value = base_pb2.HeaderValue(key=header.name, value=header.value)
            checker.request_headers_to_add.append(HeaderOption(header=value, append_action=action))
    for status in http.expectedStatuses or []:
        checker.expected_statuses.append(range_pb2.Int64Range(start=status, end=status + 1))
    return checker


def _tcp_checker(tcp: TcpHealthCheck) -> health_check_pb2.HealthCheck.TcpHealthCheck:
    checker = health_check_pb2.HealthCheck.TcpHealthCheck()
    if tcp.send is not None:
        checker.send.text = api.base64_bytes(tcp.send).hex()
    for block in tcp.receive or []:
        checker.receive.add(text=api.base64_bytes(block).hex())
    return checker


def _configure_panic(conf: Conf, cluster: cluster_pb2.Cluster) -> None:
    if conf.healthyPanicThreshold is not None:
        cluster.common_lb_config.healthy_panic_threshold.value = float(decimal_of(conf.healthyPanicThreshold))
    if conf.failTrafficOnPanic is not None:
        cluster.common_lb_config.zone_aware_lb_config.fail_traffic_on_panic = conf.failTrafficOnPanic
