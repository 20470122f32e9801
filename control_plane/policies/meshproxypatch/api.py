"""MeshProxyPatch's schema: changes to the selected proxies' finished Envoy config (Kuma order 9999).

```yaml
type: MeshProxyPatch
mesh: default
name: backend-patch
spec:
  targetRef: {kind: Dataplane, name: backend-1}   # any top-level kind (absent: the whole mesh)
  default:
    appendModifications:                           # applied in order; policies' lists concatenated
    - cluster:
        match: {name: backend, origin: outbound}   # absent: every cluster
        operation: Patch                           # Add | Remove | Patch
        value: |                                   # an Envoy Cluster (YAML or JSON), merged in
          connectTimeout: 2s
    - httpFilter:
        match: {name: envoy.filters.http.router, origin: inbound}
        operation: AddBefore               # AddFirst | AddLast | AddBefore | AddAfter | Patch | Remove
        value: |
          name: envoy.filters.http.header_mutation
          typedConfig:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations: {requestMutations: [{append: {header: {key: x-patched, value: "yes"}}}]}
    - listener:
        match: {name: "inbound:10.0.0.1:8080"}
        operation: Patch
        jsonPatches:                               # RFC 6902 on the resource's JSON (camelCase)
        - {op: add, path: /perConnectionBufferLimitBytes, value: 65536}
```
Kinds: `cluster` and `listener` (match `name`, `origin`), `networkFilter` and `httpFilter` (the
filters of every chain of the matched listeners; match `name` of the filter, `listenerName`,
`origin`), `virtualHost` (in the routes inline in HTTP connection managers; match `name`,
`routeConfigurationName`, `origin`). `origin`: inbound, outbound, transparent or mesh-proxy-patch
(see origins.py). `value` is checked by parsing it into the Envoy message (an unknown field, a bad
duration or an unknown `@type` is refused, naming the field); Envoy checks the rest when the config
reaches it. Patch with `value` merges it in as protobuf's merge does (set fields replace, lists are
appended to, messages merge); `jsonPatches` patch the resource's JSON (a filter's: its typed
config's) with Kuma's options (see jsonpatch.py).
Removing a cluster that an HTTP route still names leaves that route answering 503 (the route
tables do not validate their clusters, as Kuma's): remove or patch the route too (virtualHost).
Left out of Kuma's schema: `listener.match.tags` and `listenerTags` (Kuma matches the `io.kuma.tags`
metadata on listeners; listeners here carry none, so they would match nothing: refused).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf.message import Message
from pydantic import AfterValidator, Field, JsonValue, field_validator, model_validator

from control_plane.policies.core.spec import Sections, policy_model
from control_plane.policies.meshproxypatch.envoy_json import EnvoyJsonError, parsed_value
from control_plane.policies.meshproxypatch.jsonpatch import parse_pointer
from control_plane.policies.meshproxypatch.origins import ORIGINS
from control_plane.resources.common import StrictModel

KIND = "MeshProxyPatch"
SECTIONS = Sections(single_item=True)

ADD, REMOVE, PATCH = "Add", "Remove", "Patch"
ADD_FIRST, ADD_LAST, ADD_BEFORE, ADD_AFTER = "AddFirst", "AddLast", "AddBefore", "AddAfter"
WITH_VALUE = frozenset({ADD, ADD_FIRST, ADD_LAST, ADD_BEFORE, ADD_AFTER})  # a new resource or filter
NEXT_TO_MATCH = frozenset({ADD_BEFORE, ADD_AFTER, PATCH})  # filters: need `match.name`
NO_TAGS = "listeners here carry no tags (Kuma's io.kuma.tags metadata): match them by name or origin"


class JsonPatch(StrictModel):
    """One RFC 6902 operation (Kuma allows these five; not `test`)."""

    op: Literal["add", "remove", "replace", "move", "copy"]
    path: str
    value: JsonValue = None
    from_: str | None = Field(None, alias="from")

    @field_validator("path", "from_")
    @classmethod
    def _pointer(cls, pointer: str | None) -> str | None:
        if pointer is not None:
            parse_pointer(pointer)
        return pointer

    @model_validator(mode="after")
    def _fields_fit_the_op(self) -> JsonPatch:
        moves, sets = self.op in ("move", "copy"), self.op in ("add", "replace")
        if moves and self.from_ is None:
            raise ValueError(f"from: must be set for op {self.op}")
        if not moves and self.from_ is not None:
            raise ValueError("from: is only for op move and copy")
        if sets and self.value is None:
            raise ValueError(f"value: must be set for op {self.op}")
        if not sets and self.value is not None:
            raise ValueError("value: is only for op add and replace")
        if self.op == "remove" and self.path in ("", "/"):
            raise ValueError("path: the root cannot be removed")
        return self

    def operation(self) -> dict[str, Any]:
        return {"op": self.op, "path": self.path, "value": self.value, "from": self.from_}


def _origin(value: str) -> str:
    if value not in ORIGINS:
        known = ", ".join(ORIGINS)
        raise ValueError(f"unknown origin {value!r}; the origins of this control plane's resources: {known}")
    return value


def _no_tags(value: dict[str, str]) -> dict[str, str]:
    raise ValueError(NO_TAGS)


Origin = Annotated[str, AfterValidator(_origin)]
ListenerTags = Annotated[dict[str, str], AfterValidator(_no_tags)]


class ClusterMatch(StrictModel):
    origin: Origin | None = None
    name: str | None = None


class ListenerMatch(StrictModel):
    origin: Origin | None = None
    name: str | None = None
    tags: ListenerTags | None = None


class FilterMatch(StrictModel):
    origin: Origin | None = None
    name: str | None = None  # the filter's
    listenerName: str | None = None
    listenerTags: ListenerTags | None = None


class VirtualHostMatch(StrictModel):
    origin: Origin | None = None
    name: str | None = None
    routeConfigurationName: str | None = None


class _Checks(StrictModel):
    """What every modification checks; subclasses declare the fields (match, operation, value,
    jsonPatches: Kuma's order) and the Envoy message their value is."""

    VALUE_TYPE: ClassVar[type[Message]]

    @field_validator("value", check_fields=False)
    @classmethod
    def _value_parses(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                parsed_value(text, cls.VALUE_TYPE)
            except EnvoyJsonError as exc:
                raise ValueError(f"not a valid {cls.VALUE_TYPE.DESCRIPTOR.full_name}: {exc}") from None
        return text

    @field_validator("jsonPatches", check_fields=False)
    @classmethod
    def _patches(cls, patches: list[JsonPatch] | None) -> list[JsonPatch] | None:
        if patches is not None and not patches:
            raise ValueError("must not be empty")
        return patches

    def check_fields_fit_the_operation(self) -> None:
        op, what = getattr(self, "operation"), self.VALUE_TYPE.DESCRIPTOR.name  # noqa: B009
        value, patches = getattr(self, "value"), getattr(self, "jsonPatches")  # noqa: B009
        if op in WITH_VALUE:
            if value is None:
                raise ValueError(f"value: must be set for operation {op} (the {what} to add)")
            if patches is not None:
                raise ValueError(f"jsonPatches: are only for operation Patch, not {op}")
            if not parsed_value(value, self.VALUE_TYPE).name:
                raise ValueError(f"value: the {what} to add needs a name")
        elif op == PATCH:
            if (value is None) == (patches is None):
                raise ValueError(
                    "value: exactly one of value and jsonPatches must be set for operation Patch"
                )
        elif value is not None or patches is not None:
            field = "value" if value is not None else "jsonPatches"
            raise ValueError(f"{field}: must not be set for operation {op}")


class ClusterMod(_Checks):
    VALUE_TYPE: ClassVar[type[Message]] = cluster_pb2.Cluster
    match: ClusterMatch | None = None
    operation: Literal["Add", "Remove", "Patch"]
    value: str | None = None
    jsonPatches: list[JsonPatch] | None = None

    @model_validator(mode="after")
    def _fits(self) -> ClusterMod:
        _resource_checks(self)
        return self


class ListenerMod(_Checks):
    VALUE_TYPE: ClassVar[type[Message]] = listener_pb2.Listener
    match: ListenerMatch | None = None
    operation: Literal["Add", "Remove", "Patch"]
    value: str | None = None
    jsonPatches: list[JsonPatch] | None = None

    @model_validator(mode="after")
    def _fits(self) -> ListenerMod:
        _resource_checks(self)
        return self


def _resource_checks(mod: ClusterMod | ListenerMod) -> None:
    if mod.operation == ADD and mod.match is not None:
        raise ValueError("match: must not be set for operation Add (the value names the new resource)")
    mod.check_fields_fit_the_operation()


class NetworkFilterMod(_Checks):
    VALUE_TYPE: ClassVar[type[Message]] = listener_components_pb2.Filter
    match: FilterMatch | None = None
    operation: Literal["AddFirst", "AddLast", "AddBefore", "AddAfter", "Patch", "Remove"]
    value: str | None = None
    jsonPatches: list[JsonPatch] | None = None

    @model_validator(mode="after")
    def _fits(self) -> NetworkFilterMod:
        _filter_checks(self)
        return self


class HttpFilterMod(_Checks):
    VALUE_TYPE: ClassVar[type[Message]] = hcm.HttpFilter
    match: FilterMatch | None = None
    operation: Literal["AddFirst", "AddLast", "AddBefore", "AddAfter", "Patch", "Remove"]
    value: str | None = None
    jsonPatches: list[JsonPatch] | None = None

    @model_validator(mode="after")
    def _fits(self) -> HttpFilterMod:
        _filter_checks(self)
        return self


def _filter_checks(mod: NetworkFilterMod | HttpFilterMod) -> None:
    if mod.operation in NEXT_TO_MATCH and (mod.match is None or mod.match.name is None):
        which = (
            "to patch" if mod.operation == PATCH else f"to add {mod.operation.removeprefix('Add').lower()}"
        )
        raise ValueError(f"match.name: must be set for operation {mod.operation} (the filter {which})")
    mod.check_fields_fit_the_operation()


class VirtualHostMod(_Checks):
    VALUE_TYPE: ClassVar[type[Message]] = route_components_pb2.VirtualHost
    match: VirtualHostMatch
    operation: Literal["Add", "Remove", "Patch"]
    value: str | None = None
    jsonPatches: list[JsonPatch] | None = None

    @model_validator(mode="after")
    def _fits(self) -> VirtualHostMod:
        if self.operation == ADD and self.match.name is not None:
            raise ValueError(
                "match.name: must not be set for operation Add (the value names the new virtual host)"
            )
        self.check_fields_fit_the_operation()
        return self


MOD_KINDS = ("cluster", "listener", "networkFilter", "httpFilter", "virtualHost")


class Modification(StrictModel):
    cluster: ClusterMod | None = None
    listener: ListenerMod | None = None
    networkFilter: NetworkFilterMod | None = None
    httpFilter: HttpFilterMod | None = None
    virtualHost: VirtualHostMod | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Modification:
        given = [kind for kind in MOD_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                f"exactly one of {', '.join(MOD_KINDS)} must be set in a modification, not {len(given)}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in MOD_KINDS if getattr(self, kind) is not None)

    @property
    def mod(self) -> Any:
        return getattr(self, self.kind)


class Conf(StrictModel):
    appendModifications: list[Modification]

    @field_validator("appendModifications")
    @classmethod
    def _not_empty(cls, modifications: list[Modification]) -> list[Modification]:
        if not modifications:
            raise ValueError("must not be empty")
        return modifications


MeshProxyPatch = policy_model(KIND, Conf, SECTIONS)
