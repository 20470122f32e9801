"""MeshHTTPRoute's schema (Kuma's names): how calls to a service are routed, by request.

```yaml
type: MeshHTTPRoute
mesh: default
name: backend-canary
spec:
  targetRef: {kind: Mesh}                        # the callers (absent: every proxy)
  to:
  - targetRef: {kind: MeshService, name: backend}  # calls to this service
    rules:
    - matches:                                   # any of these (each: all of its fields)
      - path: {type: PathPrefix, value: /v2}     # Exact | PathPrefix | RegularExpression
        method: GET
        headers: [{type: Exact, name: x-user, value: alice}]
        queryParams: [{type: Exact, name: debug, value: "1"}]
      default:
        backendRefs:                             # absent: the service itself
        - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 80}
        - {kind: MeshService, name: backend, weight: 20}
        filters:
        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-canary, value: "1"}]}}
        - {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}
        - {type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}
        - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}
        - {type: RequestMirror, requestMirror: {backendRef: {kind: MeshService, name: audit}, percentage: 10}}
```
A Dataplane's inbound tags beyond `kuma.io/service` (e.g. `version: v2`) make the subsets that
MeshServiceSubset backendRefs select. Rules of several policies merge by their `matches`: the
same matches in a higher-priority policy override field by field; different matches add routes;
routes are ordered by Gateway API precedence (exact path, longer prefix, method, more headers, more
query parameters), ties by priority. Requests no rule matches go to the service as without a route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from control_plane.policies.core.fields import Percentage
from control_plane.policies.core.http import HeaderMatch, HeaderName, check_regex
from control_plane.policies.core.spec import Sections, policy_model
from control_plane.policies.core.targetref import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
)
from control_plane.resources.common import SERVICE_TAG, StrictModel, validate_tags

KIND = "MeshHTTPRoute"
SECTIONS = Sections(top=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET), to=(MESH_SERVICE,))


class PathMatch(StrictModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"]
    value: str

    @model_validator(mode="after")
    def _value_fits_type(self) -> PathMatch:
        if self.type == "RegularExpression":
            try:
                check_regex(self.value)
            except ValueError as exc:
                raise ValueError(f"value: {exc}") from None
            return self
        if not self.value.startswith("/"):
            raise ValueError(f"value: {self.value!r} must be an absolute path (starting with '/')")
        if self.type == "PathPrefix" and self.value != "/" and self.value.endswith("/"):
            raise ValueError(f"value: {self.value!r}: a prefix other than '/' must not end with '/'")
        return self


class QueryParamsMatch(StrictModel):
    type: Literal["Exact", "RegularExpression"]
    name: Annotated[str, Field(min_length=1)]
    value: str

    @model_validator(mode="after")
    def _regex(self) -> QueryParamsMatch:
        if self.type == "RegularExpression":
            try:
                check_regex(self.value)
            except ValueError as exc:
                raise ValueError(f"value: {exc}") from None
        return self


class Match(StrictModel):
    path: PathMatch | None = None
    method: Literal["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"] | None = (
        None
    )
    queryParams: list[QueryParamsMatch] | None = None
    headers: list[HeaderMatch] | None = None


class BackendRef(StrictModel):
    """A service (MeshService) or its endpoints with some tags (MeshServiceSubset)."""

    kind: Literal["MeshService", "MeshServiceSubset"]
    name: Annotated[str, Field(min_length=1)]
    tags: dict[str, str] | None = None
    weight: Annotated[StrictInt, Field(ge=0)] | None = None  # default 1

    @model_validator(mode="after")
    def _tags_fit_kind(self) -> BackendRef:
        if self.kind == "MeshService" and self.tags is not None:
            raise ValueError("tags: must not be set with kind MeshService (use MeshServiceSubset)")
        if self.kind == "MeshServiceSubset":
            if not self.tags:
                raise ValueError("tags: is required with kind MeshServiceSubset")
            validate_tags(self.tags, require_service=False)
            if SERVICE_TAG in self.tags:
                raise ValueError(f"tags: {SERVICE_TAG} is the backend's `name`, not a tag here")
        return self

    def subset(self) -> dict[str, str]:
        return dict(self.tags or {})


class HeaderKeyValue(StrictModel):
    name: HeaderName
    value: str


class HeaderModifier(StrictModel):
    set: list[HeaderKeyValue] | None = None
    add: list[HeaderKeyValue] | None = None
    remove: list[HeaderName] | None = None

    @model_validator(mode="after")
    def _something(self) -> HeaderModifier:
        if not (self.set or self.add or self.remove):
            raise ValueError("at least one of 'set', 'add', 'remove' has to be defined")
        return self


class PathRewrite(StrictModel):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replaceFullPath: str | None = None
    replacePrefixMatch: str | None = None

    @model_validator(mode="after")
    def _value_fits_type(self) -> PathRewrite:
        wanted, other = (
            ("replaceFullPath", "replacePrefixMatch")
            if self.type == "ReplaceFullPath"
            else ("replacePrefixMatch", "replaceFullPath")
        )
        value = getattr(self, wanted)
        if value is None:
            raise ValueError(f"{wanted}: is required with type {self.type}")
        if getattr(self, other) is not None:
            raise ValueError(f"{other}: must not be set with type {self.type}")
        if not value.startswith("/"):
            raise ValueError(f"{wanted}: {value!r} must be an absolute path (starting with '/')")
        return self


Hostname = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")]


class RequestRedirect(StrictModel):
    scheme: Literal["http", "https"] | None = None
    hostname: Hostname | None = None
    path: PathRewrite | None = None
    port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    statusCode: Literal[301, 302, 303, 307, 308] | None = None  # default 302


class URLRewrite(StrictModel):
    hostname: Hostname | None = None
    path: PathRewrite | None = None
    hostToBackendHostname: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> URLRewrite:
        if self.hostname is None and self.path is None and not self.hostToBackendHostname:
            raise ValueError("at least one of 'hostname', 'path', 'hostToBackendHostname' has to be defined")
        if self.hostname is not None and self.hostToBackendHostname:
            raise ValueError("hostToBackendHostname: cannot be true when 'hostname' is set")
        return self


class RequestMirror(StrictModel):
    backendRef: BackendRef
    percentage: Percentage | None = None  # default 100

    @model_validator(mode="after")
    def _whole_service(self) -> RequestMirror:
        if self.backendRef.kind != "MeshService":
            raise ValueError(
                "backendRef.kind: a mirror copies requests to a whole service (MeshService); "
                "Envoy's mirror policy cannot pick a subset"
            )
        return self


FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
}


class Filter(StrictModel):
    type: Literal[
        "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "RequestMirror"
    ]
    requestHeaderModifier: HeaderModifier | None = None
    responseHeaderModifier: HeaderModifier | None = None
    requestRedirect: RequestRedirect | None = None
    urlRewrite: URLRewrite | None = None
    requestMirror: RequestMirror | None = None

    @model_validator(mode="after")
    def _block_fits_type(self) -> Filter:
        wanted = FILTER_FIELDS[self.type]
        if getattr(self, wanted) is None:
            raise ValueError(f"{wanted}: is required with type {self.type}")
        for other in FILTER_FIELDS.values():
            if other != wanted and getattr(self, other) is not None:
                raise ValueError(f"{other}: must not be set with type {self.type}")
        return self

    @property
    def block(self) -> Any:
        return getattr(self, FILTER_FIELDS[self.type])


class RuleConf(StrictModel):
    filters: list[Filter] | None = None
    backendRefs: list[BackendRef] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RuleConf:
        kinds = [f.type for f in self.filters or []]
        if "RequestRedirect" in kinds and self.backendRefs:
            raise ValueError("backendRefs: a redirect answers the caller itself; it has no backends")
        if "RequestRedirect" in kinds and "URLRewrite" in kinds:
            raise ValueError("filters: RequestRedirect and URLRewrite cannot be combined")
        if self.backendRefs and not any(
            (b.weight if b.weight is not None else 1) > 0 for b in self.backendRefs
        ):
            raise ValueError("backendRefs: at least one weight must be greater than zero")
        return self


class Rule(StrictModel):
    matches: Annotated[list[Match], Field(min_length=1)]
    default: RuleConf

    @model_validator(mode="after")
    def _prefix_rewrite_needs_a_prefix(self) -> Rule:
        paths = [f.urlRewrite.path if f.urlRewrite else None for f in self.default.filters or []]
        paths += [f.requestRedirect.path if f.requestRedirect else None for f in self.default.filters or []]
        prefix_rewrite = any(p is not None and p.type == "ReplacePrefixMatch" for p in paths)
        if prefix_rewrite and any(m.path is None or m.path.type != "PathPrefix" for m in self.matches):
            raise ValueError(
                "matches: ReplacePrefixMatch replaces the matched prefix: every match needs a "
                "path of type PathPrefix"
            )
        return self


class To(StrictModel):
    """A `to` entry: the service's calls routed by `rules` (Kuma's hostnames are for gateways)."""

    rules: Annotated[list[Rule], Field(min_length=1)]
    hostnames: Any = None

    @field_validator("hostnames")
    @classmethod
    def _no_hostnames(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("are for MeshGateway routes; there are no gateways here")
        return value


class Merged(StrictModel):
    """What the plugin reads: the merged, ordered rules for one service."""

    rules: list[Rule] = Field(default_factory=list)


MeshHTTPRoute = policy_model(KIND, RuleConf, SECTIONS, to_entry=To)
