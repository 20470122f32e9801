"""MeshCircuitBreaker → Envoy, as Kuma maps it, on the cluster of an outbound service (`to`) or of
the application behind an inbound (`from` / `rules`, merged into one conf for all callers):
- connectionLimits.* → the cluster's circuit_breakers threshold of DEFAULT priority
  (max_connections, max_connection_pools, max_pending_requests, max_requests, max_retries), with
  track_remaining (Envoy's `remaining_*` gauges);
- outlierDetection (unless disabled) → cluster.outlier_detection: interval, base_ejection_time,
  max_ejection_percent, split_external_local_origin_errors; each detector given is enforced at
  100 %, each one not given at 0 %: totalFailures → consecutive_5xx, gatewayFailures →
  consecutive_gateway_failure, localOriginFailures → consecutive_local_origin_failure, successRate
  → success_rate_* (standardDeviationFactor x 1000 → success_rate_stdev_factor), failurePercentage
  → failure_percentage_*; healthyPanicThreshold → common_lb_config.healthy_panic_threshold.
Unset fields are left to Envoy, as Kuma does. Unlike Kuma, detectors not given are all off
(Kuma leaves success-rate detection on at Envoy's default when `detectors` is absent).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2

from control_plane.policies.core.fields import decimal_of, set_duration
from control_plane.policies.core.parts import InboundParts, OutboundParts
from control_plane.policies.core.rules import InboundPolicy, MergedConf
from control_plane.policies.meshcircuitbreaker.api import (
    Conf,
    ConnectionLimits,
    Detectors,
    OutlierDetection,
)

ENFORCED, NOT_ENFORCED = 100, 0
_LIMITS = {
    "maxConnections": "max_connections",
    "maxConnectionPools": "max_connection_pools",
    "maxPendingRequests": "max_pending_requests",
    "maxRequests": "max_requests",
    "maxRetries": "max_retries",
}


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    configure_cluster(merged.parsed(Conf), parts.cluster)


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    merged = policy.catch_all
    if merged is None or parts.cluster is None:
        return
    configure_cluster(merged.parsed(Conf), parts.cluster)


def configure_cluster(conf: Conf, cluster: cluster_pb2.Cluster) -> None:
    _connection_limits(default_threshold(cluster), conf.connectionLimits)
    if conf.outlierDetection is not None:
        _outlier_detection(cluster, conf.outlierDetection)


def default_threshold(cluster: cluster_pb2.Cluster) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    """The cluster's threshold for DEFAULT-priority traffic (added if absent)."""
    for threshold in cluster.circuit_breakers.thresholds:
        if threshold.priority == base_pb2.DEFAULT:
            return threshold
    return cluster.circuit_breakers.thresholds.add(priority=base_pb2.DEFAULT)


def _connection_limits(
    threshold: circuit_breaker_pb2.CircuitBreakers.Thresholds, limits: ConnectionLimits | None
) -> None:
    threshold.track_remaining = True
    for field, envoy_field in _LIMITS.items():
        value = getattr(limits, field, None)
        if value is not None:
            getattr(threshold, envoy_field).value = value


def _outlier_detection(cluster: cluster_pb2.Cluster, conf: OutlierDetection) -> None:
    cluster.ClearField("outlier_detection")
    if conf.disabled:
        return
    detection = cluster.outlier_detection
    detection.SetInParent()
    if conf.interval is not None:
        set_duration(detection.interval, conf.interval, 0)
    if conf.baseEjectionTime is not None:
        set_duration(detection.base_ejection_time, conf.baseEjectionTime, 0)
    if conf.maxEjectionPercent is not None:
        detection.max_ejection_percent.value = conf.maxEjectionPercent
    if conf.splitExternalAndLocalErrors is not None:
        detection.split_external_local_origin_errors = conf.splitExternalAndLocalErrors
    _detectors(detection, conf.detectors or Detectors.model_construct())
    if conf.healthyPanicThreshold is not None:
        threshold = float(decimal_of(conf.healthyPanicThreshold))
        cluster.common_lb_config.healthy_panic_threshold.value = threshold


def _detectors(detection: outlier_detection_pb2.OutlierDetection, detectors: Detectors) -> None:
    for detector, count, enforcing in (
        (detectors.totalFailures, "consecutive_5xx", "enforcing_consecutive_5xx"),
        (detectors.gatewayFailures, "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure"),
        (
            detectors.localOriginFailures,
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
        ),
    ):
        getattr(detection, enforcing).value = NOT_ENFORCED if detector is None else ENFORCED
        if detector is not None:
            getattr(detection, count).value = detector.consecutive

    rate = detectors.successRate
    detection.enforcing_success_rate.value = NOT_ENFORCED if rate is None else ENFORCED
    detection.enforcing_local_origin_success_rate.value = NOT_ENFORCED if rate is None else ENFORCED
    if rate is not None:
        if rate.minimumHosts is not None:
            detection.success_rate_minimum_hosts.value = rate.minimumHosts
        if rate.requestVolume is not None:
            detection.success_rate_request_volume.value = rate.requestVolume
        if rate.standardDeviationFactor is not None:
            factor = decimal_of(rate.standardDeviationFactor) * 1000
            detection.success_rate_stdev_factor.value = int(factor)  # Envoy's unit: 1/1000

    failures = detectors.failurePercentage
    detection.enforcing_failure_percentage.value = NOT_ENFORCED if failures is None else ENFORCED
    detection.enforcing_failure_percentage_local_origin.value = NOT_ENFORCED if failures is None else ENFORCED
    if failures is not None:
        if failures.minimumHosts is not None:
            detection.failure_percentage_minimum_hosts.value = failures.minimumHosts
        if failures.requestVolume is not None:
            detection.failure_percentage_request_volume.value = failures.requestVolume
        if failures.threshold is not None:
            detection.failure_percentage_threshold.value = failures.threshold
