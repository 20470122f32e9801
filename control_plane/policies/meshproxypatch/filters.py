"""`networkFilter`, `httpFilter` and `virtualHost` modifications: inside the filter chains of the
matched listeners (every chain, as Kuma, the default chain included).

HTTP filters and virtual hosts live in the typed config of each `http_connection_manager`
network filter (routes are inline here, no RDS): it is unpacked, changed and packed again. A
listener is copied only when something in it changed, so an untouched listener stays the one
other proxies share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from control_plane.policies.meshproxypatch.api import (
    ADD,
    ADD_AFTER,
    ADD_BEFORE,
    ADD_FIRST,
    ADD_LAST,
    PATCH,
    REMOVE,
    FilterMatch,
    HttpFilterMod,
    NetworkFilterMod,
    VirtualHostMod,
)
from control_plane.policies.meshproxypatch.envoy_json import pack, parsed_value, unpack
from control_plane.policies.meshproxypatch.origins import chain_origin, listener_origin
from control_plane.policies.meshproxypatch.patching import copy_of, patched, patched_typed_config
from control_plane.policies.meshproxypatch.staged import Staged
from control_plane.xds.generate.listeners import HCM_FILTER
from control_plane.xds.names import LISTENER_TYPE

F = TypeVar("F", listener_components_pb2.Filter, hcm.HttpFilter)
# (a chain of the listener, its origin) → whether it changed
ChainEdit = Callable[[listener_components_pb2.FilterChain, "str | None"], bool]


def modify_network_filters(mod: NetworkFilterMod, staged: Staged) -> None:
    def edit(chain: listener_components_pb2.FilterChain, origin: str | None) -> bool:
        if not _origin_fits(mod.match, origin):
            return False
        return _edit_filters(chain.filters, mod, listener_components_pb2.Filter)

    _edit_listeners(staged, mod.match.listenerName if mod.match else None, edit)


def modify_http_filters(mod: HttpFilterMod, staged: Staged) -> None:
    def edit(chain: listener_components_pb2.FilterChain, origin: str | None) -> bool:
        if not _origin_fits(mod.match, origin):
            return False
        return _edit_managers(chain, lambda manager: _edit_filters(manager.http_filters, mod, hcm.HttpFilter))

    _edit_listeners(staged, mod.match.listenerName if mod.match else None, edit)


def modify_virtual_hosts(mod: VirtualHostMod, staged: Staged) -> None:
    match = mod.match

    def edit_routes(manager: hcm.HttpConnectionManager) -> bool:
        if not manager.HasField("route_config"):
            return False  # routes from RDS: none here
        routes = manager.route_config
        if match.routeConfigurationName is not None and match.routeConfigurationName != routes.name:
            return False
        return _edit_virtual_hosts(routes.virtual_hosts, mod)

    def edit(chain: listener_components_pb2.FilterChain, origin: str | None) -> bool:
        if match.origin is not None and match.origin != origin:
            return False
        return _edit_managers(chain, edit_routes)

    _edit_listeners(staged, None, edit)


def _origin_fits(match: FilterMatch | None, origin: str | None) -> bool:
    return match is None or match.origin is None or match.origin == origin


def _edit_listeners(staged: Staged, listener_name: str | None, edit: ChainEdit) -> None:
    for name in staged.names(LISTENER_TYPE):
        if listener_name is not None and listener_name != name:
            continue
        current = staged.get(LISTENER_TYPE, name)
        assert isinstance(current, listener_pb2.Listener)
        origin = staged.added_origin(LISTENER_TYPE, name) or listener_origin(name)
        listener = copy_of(current)
        changed = False
        for chain in _chains(listener):
            changed |= edit(chain, chain_origin(origin, chain.name))
        if changed:
            staged.put(LISTENER_TYPE, name, listener)


def _chains(listener: listener_pb2.Listener) -> Iterator[listener_components_pb2.FilterChain]:
    yield from listener.filter_chains
    if listener.HasField("default_filter_chain"):
        yield listener.default_filter_chain


def _edit_managers(
    chain: listener_components_pb2.FilterChain, edit: Callable[[hcm.HttpConnectionManager], bool]
) -> bool:
    """`edit` each HTTP connection manager of the chain; repacked only when it changed."""
    changed = False
    for network_filter in chain.filters:
        if network_filter.name != HCM_FILTER:
            continue
        manager = unpack(network_filter.typed_config)
        assert isinstance(manager, hcm.HttpConnectionManager)
        if edit(manager):
            network_filter.typed_config.CopyFrom(pack(manager))
            changed = True
    return changed


def _edit_filters(filters: Any, mod: NetworkFilterMod | HttpFilterMod, filter_type: type[F]) -> bool:
    """Kuma's filter operations on one chain's (or connection manager's) filter list."""
    current: list[F] = list(filters)
    name = mod.match.name if mod.match is not None else None
    value = parsed_value(mod.value, filter_type) if mod.value is not None else None
    found = [i for i, f in enumerate(current) if name is None or f.name == name]
    if mod.operation == ADD_FIRST:
        result = [value, *current]
    elif mod.operation == ADD_LAST:
        result = [*current, value]
    elif mod.operation in (ADD_BEFORE, ADD_AFTER):
        if not found:
            return False  # as Kuma: nothing to add next to
        at = found[0] + (1 if mod.operation == ADD_AFTER else 0)
        result = [*current[:at], value, *current[at:]]
    elif mod.operation == REMOVE:
        result = [f for i, f in enumerate(current) if i not in found]
    else:
        assert mod.operation == PATCH
        result = [_patched_filter(f, value, mod) if i in found else f for i, f in enumerate(current)]
    if result == current:
        return False
    del filters[:]
    filters.extend(result)
    return True


def _patched_filter(item: F, value: F | None, mod: NetworkFilterMod | HttpFilterMod) -> F:
    result = copy_of(item)
    value_config = value.typed_config if value is not None else None
    result.typed_config.CopyFrom(patched_typed_config(item.typed_config, value_config, mod.jsonPatches))
    return result


def _edit_virtual_hosts(virtual_hosts: Any, mod: VirtualHostMod) -> bool:
    current: list[route_components_pb2.VirtualHost] = list(virtual_hosts)
    name = mod.match.name
    if mod.operation == ADD:
        assert mod.value is not None
        result = [*current, parsed_value(mod.value, route_components_pb2.VirtualHost)]
    elif mod.operation == REMOVE:
        result = [vh for vh in current if name is not None and vh.name != name]
    else:
        result = [
            patched(vh, mod.value, mod.jsonPatches) if name is None or vh.name == name else vh
            for vh in current
        ]
    if result == current:
        return False
    del virtual_hosts[:]
    virtual_hosts.extend(result)
    return True
