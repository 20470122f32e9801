"""Which pods kuma-cni touches, and with which transparent-proxy settings (pure; no effects).

Node-wide settings come from the plugin's own config keys; each pod overrides them with Kuma's
annotation names (`kuma.io/transparent-proxying-inbound-port`, `traffic.kuma.io/exclude-inbound-ports`,
...) in `CNI_ARGS`, then in `runtimeConfig` (containerd's `io.kubernetes.cri.pod-annotations` map,
then entries named like the annotation itself), later winning. The rules themselves are the
transparent-proxy engine's: this module only builds its `TProxyConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kuma_cni.spec import INVALID_CONFIG, CniError
from transparent_proxy import sources
from transparent_proxy.config import TProxyConfig, TProxyConfigError, parse_bool

INJECTION_ANNOTATION = "kuma.io/sidecar-injection"
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
POD_NAMESPACE_ARG = "K8S_POD_NAMESPACE"
# The plugin's own keys in its entry of the conflist.
KEY_LOG_FILE = "log_file"  # read by the entry point, before anything else
KEY_EXCLUDE_NAMESPACES = "exclude_namespaces"
KEY_SIDECAR_INJECTION = "sidecar_injection"  # the default for pods that do not say
KEY_TRANSPARENT_PROXY = "transparent_proxy"  # Kuma's transparent-proxy config keys

Overrides = dict[str, tuple[str, str]]  # annotation name → (value, where it came from)


def pod_overrides(cni_args: Mapping[str, str], runtime_config: object) -> Overrides:
    """Kuma annotations a runtime passed for this pod; unrelated keys are ignored."""
    overrides: Overrides = {}
    for key, value in cni_args.items():
        if _is_kuma_key(key):
            overrides[key] = (value, f"CNI_ARGS {key}")
    if not isinstance(runtime_config, Mapping):
        return overrides
    pod_annotations = runtime_config.get(POD_ANNOTATIONS_CAPABILITY)
    if isinstance(pod_annotations, Mapping):
        for key, value in pod_annotations.items():
            if _is_kuma_key(key):
                overrides[key] = (str(value), f"runtimeConfig {POD_ANNOTATIONS_CAPABILITY} {key}")
    for key, value in runtime_config.items():
        if _is_kuma_key(key):
            overrides[key] = (str(value), f"runtimeConfig {key}")
    return overrides


def _is_kuma_key(key: str) -> bool:
    return key.startswith(("kuma.io/", "traffic.kuma.io/"))


def skip_reason(conf: Mapping[str, Any], cni_args: Mapping[str, str], overrides: Overrides) -> str | None:
    """Why this pod stays outside the mesh (passed through untouched), or None when it is in."""
    namespace = cni_args.get(POD_NAMESPACE_ARG)
    excluded = conf.get(KEY_EXCLUDE_NAMESPACES, [])
    if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
        raise CniError(INVALID_CONFIG, f'"{KEY_EXCLUDE_NAMESPACES}" must be a list of namespace names')
    if namespace and namespace in excluded:
        return f"namespace {namespace} is in {KEY_EXCLUDE_NAMESPACES}"
    injection, where = overrides.get(INJECTION_ANNOTATION, (conf.get(KEY_SIDECAR_INJECTION, True), None))
    if not _injection_enabled(injection, where or f'config "{KEY_SIDECAR_INJECTION}"'):
        return f"{where or KEY_SIDECAR_INJECTION} is {injection}"
    return None


def _injection_enabled(value: object, where: str) -> bool:
    try:  # Kuma's annotation takes enabled/disabled as well as true/false
        return parse_bool(value, where)
    except TProxyConfigError as exc:
        raise CniError(INVALID_CONFIG, str(exc)) from None


def tproxy_config(conf: Mapping[str, Any], overrides: Overrides) -> TProxyConfig:
    """The node's settings, then the pod's; every error names the key or annotation at fault."""
    try:
        node = sources.mapping_layer(conf.get(KEY_TRANSPARENT_PROXY), f'config "{KEY_TRANSPARENT_PROXY}"')
        pod: sources.Layer = {}
        for field in sources.FIELDS:
            if field.annotation and field.annotation in overrides:
                pod[field.name] = overrides[field.annotation]
        return sources.build_config(node, pod)
    except TProxyConfigError as exc:
        raise CniError(INVALID_CONFIG, str(exc)) from None
