"""MeshAccessLog → Envoy, as Kuma maps it:
- every backend becomes an `access_log` entry of the chain's main filter: the HTTP connection
  manager (one entry per request) or tcp_proxy (one per connection, written when it closes);
- File → `envoy.access_loggers.file` writing to `path`; Tcp → the same logger writing into the
  agent's FIFO (`kuma_common/accesslog.py`), each entry one JSON line `{"address", "message"}`
  that kuma-dp sends on to the address;
- format absent → Kuma's default for the protocol (HTTP or TCP, `formats.py`); Plain → Envoy's text
  format (a newline appended); Json → Envoy's `json_format` (values that are one operator keep their
  type, e.g. a number); omitEmptyValues → `omit_empty_values`;
- Kuma's placeholders (`%KUMA_MESH%` ...) are replaced here, Envoy's own operators passed through.
Inbound: the merged `from` / `rules` (all callers) on every chain of the inbound's listener (with
mTLS: the mesh peers' and, PERMISSIVE, the plaintext one); outbound (`to`): the chain receiving the
local application's calls to that service.

Outbound entries read who the calling proxy is (its service, address and zone, in the default
formats) from Envoy's node metadata (formats.py), so they are the same for every proxy and the
transparent proxies' mesh-wide shared build stays shared. Only a Tcp backend names the proxy in
the config (its agent's FIFO): a proxy such a `to` MeshAccessLog selects gets its own outbound
build (`outbound_per_proxy`); the others keep sharing.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as sfs_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.formatter.cel.v3 import cel_pb2
from google.protobuf import struct_pb2

from control_plane.policies.core.parts import ChainParts, InboundParts, OutboundParts
from control_plane.policies.core.rules import InboundPolicy, MergedConf
from control_plane.policies.meshaccesslog.api import JSON, TCP, Backend, Conf, Format
from control_plane.policies.meshaccesslog.formats import (
    CEL_FORMATTER,
    UNKNOWN_SERVICE,
    KumaValues,
    default_format,
)
from control_plane.xds.generate.pack import pack
from control_plane.xds.generate.protocol import is_http
from kuma_common.accesslog import access_log_socket_path

FILE_LOGGER = "envoy.access_loggers.file"
OUTBOUND, INBOUND = "OUTBOUND", "INBOUND"


def names_proxy(merged: MergedConf) -> bool:
    """A conf with a Tcp backend names the proxy's own FIFO: its outbound build is the proxy's."""
    conf: Conf = merged.parsed(Conf)
    return any(backend.type == TCP for backend in conf.backends)


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Conf = merged.parsed(Conf)
    # Policies apply within their own mesh: any contributing one names the proxy's mesh.
    values = KumaValues.from_node(merged.origins[0].mesh, parts.service, OUTBOUND)
    proxy = parts.proxy  # only in a build of its own (a Tcp backend: see names_proxy)
    socket = None
    if proxy is not None and proxy.workdir:
        socket = access_log_socket_path(proxy.workdir, proxy.name, proxy.mesh)
    _attach(parts.chain, access_logs(conf, is_http(parts.protocol), values, socket))


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    merged = policy.catch_all
    if merged is None:
        return
    conf: Conf = merged.parsed(Conf)
    dataplane = parts.dataplane
    address = dataplane.networking.advertisedAddress or dataplane.networking.address
    zone = (dataplane.labels or {}).get("kuma.io/zone", "")
    values = KumaValues(dataplane.mesh, UNKNOWN_SERVICE, address, parts.inbound.service, INBOUND, zone)
    socket = access_log_socket_path(parts.workdir, dataplane.name, dataplane.mesh) if parts.workdir else None
    logs = access_logs(conf, is_http(parts.protocol), values, socket)
    for chain in parts.chains:
        _attach(chain, logs)


def _attach(chain: ChainParts, logs: list[accesslog_pb2.AccessLog]) -> None:
    if chain.hcm is not None:
        chain.hcm.access_log.extend(logs)
    if chain.tcp_proxy is not None:
        chain.tcp_proxy.access_log.extend(logs)


def access_logs(
    conf: Conf, http: bool, values: KumaValues, socket: str | None
) -> list[accesslog_pb2.AccessLog]:
    """One Envoy access log per backend. A Tcp backend needs the agent's FIFO: without a work dir
    (a proxy not run by kuma-dp) it is left out."""
    logs = []
    for backend in conf.backends:
        if backend.type == TCP and socket is None:
            continue
        logs.append(_access_log(backend, http, values, socket))
    return logs


def _access_log(
    backend: Backend, http: bool, values: KumaValues, socket: str | None
) -> accesslog_pb2.AccessLog:
    fmt = backend.format
    if backend.tcp is not None:
        assert socket is not None
        config = file_pb2.FileAccessLog(
            path=socket, log_format=_tcp_format(backend.tcp.address, fmt, http, values)
        )
    else:
        assert backend.file is not None
        config = file_pb2.FileAccessLog(path=backend.file.path, log_format=_file_format(fmt, http, values))
    return accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(config))


def _file_format(fmt: Format | None, http: bool, values: KumaValues) -> sfs_pb2.SubstitutionFormatString:
    if fmt is not None and fmt.type == JSON:
        return _json(_json_fields(fmt, values), bool(fmt.omitEmptyValues))
    text = fmt.plain if fmt is not None and fmt.plain is not None else default_format(http)
    return _with_formatters(
        sfs_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=values.interpolate(text) + "\n"),
            omit_empty_values=bool(fmt is not None and fmt.omitEmptyValues),
        )
    )


def _tcp_format(
    address: str, fmt: Format | None, http: bool, values: KumaValues
) -> sfs_pb2.SubstitutionFormatString:
    """Kuma's wrapping: the entry as `message` beside the collector's `address`, one JSON line."""
    message = struct_pb2.Value()
    if fmt is not None and fmt.type == JSON:
        message.struct_value.CopyFrom(_json_fields(fmt, values))
    else:
        text = fmt.plain if fmt is not None and fmt.plain is not None else default_format(http)
        message.string_value = values.interpolate(text) + "\n"
    wrapped = struct_pb2.Struct()
    wrapped.fields["address"].string_value = address
    wrapped.fields["message"].CopyFrom(message)
    return _json(wrapped, bool(fmt is not None and fmt.omitEmptyValues))


def _json_fields(fmt: Format, values: KumaValues) -> struct_pb2.Struct:
    fields = struct_pb2.Struct()
    for item in fmt.json_ or []:
        fields.fields[item.key].string_value = values.interpolate(item.value)
    return fields


def _json(fields: struct_pb2.Struct, omit_empty: bool) -> sfs_pb2.SubstitutionFormatString:
    fmt = sfs_pb2.SubstitutionFormatString(json_format=fields, omit_empty_values=omit_empty)
    return _with_formatters(fmt)


def _with_formatters(fmt: sfs_pb2.SubstitutionFormatString) -> sfs_pb2.SubstitutionFormatString:
    """Envoy's CEL formatter declared where the format uses `%CEL(...)%` (the node's values)."""
    if "%CEL(" in str(fmt):
        fmt.formatters.add(name=CEL_FORMATTER, typed_config=pack(cel_pb2.Cel()))
    return fmt
