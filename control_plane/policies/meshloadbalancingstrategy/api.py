"""MeshLoadBalancingStrategy's schema (Kuma's names; every field optional, Envoy's defaults apply
to what is unset, as in Kuma).

```yaml
type: MeshLoadBalancingStrategy
mesh: default
name: sticky-backend
spec:
  targetRef: {kind: Mesh}                 # which callers (absent: every proxy)
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      loadBalancer:
        type: RingHash                    # RoundRobin | LeastRequest | RingHash | Random | Maglev
        ringHash:
          hashFunction: XXHash            # XXHash (Envoy's default) | MurmurHash2
          minRingSize: 1024               # 1..8000000, Envoy's default 1024
          maxRingSize: 8000000            # 1..8000000, Envoy's default 8M
          hashPolicies:                   # what a request is hashed on, in order
          - type: Header                  # or Cookie, Connection, SourceIP, QueryParameter, FilterState
            header: {name: x-user}
            terminal: true                # stop at this policy when it produced a hash
        # leastRequest: {choiceCount: 2, activeRequestBias: "1.0"}
        # maglev: {tableSize: 65537, hashPolicies: [...]}   # a prime up to 5000011
      # hashPolicies: [...]               # Kuma's newer place for hash policies (not both)
```
Hash policy fields: header{name}, cookie{name, ttl, path}, connection{sourceIP},
queryParameter{name}, filterState{key}; each type needs its own field and no other (SourceIP is
Kuma's older spelling of Connection with sourceIP: true).

`localityAwareness` (Kuma's zone-aware load balancing and cross-zone failover) needs zones, which
this control plane does not have yet (no multi-zone): it is refused rather than accepted and
ignored.

What one entry may say is stricter than what merging entries yields: a Mesh entry with
`{type: RingHash, ringHash: {...}}` merged with a MeshService entry `{type: LeastRequest}` keeps
the stale `ringHash` (Kuma's merge-patch; the plugin reads only the block of the chosen type). So
the checks across fields (a block must match the type, ring bounds in order, hash policies in one
place) belong to `Conf`, the entry's model; the plugin reads the merge with `Merged`, which has
every field and no such check.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictInt, field_validator, model_validator

from control_plane.policies.core.fields import Duration, NonNegativeDecimal
from control_plane.policies.core.spec import TO_KINDS, Sections, policy_model
from control_plane.resources.common import StrictModel

KIND = "MeshLoadBalancingStrategy"
SECTIONS = Sections(to=TO_KINDS)

ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV = (
    "RoundRobin",
    "LeastRequest",
    "RingHash",
    "Random",
    "Maglev",
)
# The block of `loadBalancer` that goes with each type (RoundRobin and Random have empty ones).
TYPE_BLOCKS = {
    ROUND_ROBIN: "roundRobin",
    LEAST_REQUEST: "leastRequest",
    RING_HASH: "ringHash",
    RANDOM: "random",
    MAGLEV: "maglev",
}
HEADER, COOKIE, CONNECTION, SOURCE_IP, QUERY_PARAMETER, FILTER_STATE = (
    "Header",
    "Cookie",
    "Connection",
    "SourceIP",
    "QueryParameter",
    "FilterState",
)
# The field of a hash policy that goes with each type (SourceIP needs none).
HASH_FIELDS = {
    HEADER: "header",
    COOKIE: "cookie",
    CONNECTION: "connection",
    SOURCE_IP: None,
    QUERY_PARAMETER: "queryParameter",
    FILTER_STATE: "filterState",
}
MAX_RING_SIZE = 8_000_000
MAX_MAGLEV_TABLE_SIZE = 5_000_011

NonEmpty = Annotated[str, Field(min_length=1)]


def _prime(value: int) -> int:
    if value < 2 or any(value % d == 0 for d in range(2, int(value**0.5) + 1)):
        raise ValueError(f"{value} is not a prime number; a Maglev table size must be prime (e.g. 65537)")
    return value


RingSize = Annotated[StrictInt, Field(ge=1, le=MAX_RING_SIZE)]
TableSize = Annotated[StrictInt, Field(ge=1, le=MAX_MAGLEV_TABLE_SIZE), AfterValidator(_prime)]


# --- hash policies: lists are replaced whole by a merge, so each item is checked as written ----
class Header(StrictModel):
    name: NonEmpty


class Cookie(StrictModel):
    name: NonEmpty
    ttl: Duration | None = None
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} must be an absolute path (starting with '/')")
        return value


class Connection(StrictModel):
    sourceIP: bool | None = None


class QueryParameter(StrictModel):
    name: NonEmpty


class FilterState(StrictModel):
    key: NonEmpty


class HashPolicy(StrictModel):
    type: Literal["Header", "Cookie", "Connection", "SourceIP", "QueryParameter", "FilterState"]
    terminal: bool | None = None
    header: Header | None = None
    cookie: Cookie | None = None
    connection: Connection | None = None
    queryParameter: QueryParameter | None = None
    filterState: FilterState | None = None

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> HashPolicy:
        wanted = HASH_FIELDS[self.type]
        if wanted is not None and getattr(self, wanted) is None:
            raise ValueError(f"{wanted}: is required with type {self.type}")
        for other in HASH_FIELDS.values():
            if other not in (None, wanted) and getattr(self, other) is not None:
                raise ValueError(f"{other}: must not be set with type {self.type}")
        if self.type == CONNECTION and not (self.connection and self.connection.sourceIP):
            raise ValueError(
                "connection.sourceIP: must be true: the source IP is the only connection property "
                "Envoy hashes on (false would hash nothing)"
            )
        if self.type == SOURCE_IP and self.connection is not None and self.connection.sourceIP is False:
            raise ValueError("connection.sourceIP: type SourceIP hashes on the source IP; it cannot be false")
        return self


HashPolicies = Annotated[list[HashPolicy], Field(min_length=1)]


# --- load balancers: every field, no check across fields (what a merge may yield) --------------
class RoundRobin(StrictModel):
    pass


class Random(StrictModel):
    pass


class LeastRequest(StrictModel):
    choiceCount: Annotated[StrictInt, Field(ge=2, le=2**32 - 1)] | None = None
    activeRequestBias: NonNegativeDecimal | None = None


class RingHash(StrictModel):
    hashFunction: Literal["XXHash", "MurmurHash2"] | None = None
    minRingSize: RingSize | None = None
    maxRingSize: RingSize | None = None
    hashPolicies: HashPolicies | None = None


class Maglev(StrictModel):
    tableSize: TableSize | None = None
    hashPolicies: HashPolicies | None = None


class MergedLoadBalancer(StrictModel):
    type: Literal["RoundRobin", "LeastRequest", "RingHash", "Random", "Maglev"]
    roundRobin: RoundRobin | None = None
    leastRequest: LeastRequest | None = None
    ringHash: RingHash | None = None
    random: Random | None = None
    maglev: Maglev | None = None


class Merged(StrictModel):
    """The merged `default`s of the entries that apply to one service, as the plugin reads them."""

    loadBalancer: MergedLoadBalancer | None = None
    hashPolicies: HashPolicies | None = None

    def hash_policies(self) -> list[HashPolicy]:
        """Kuma's choice: the top-level list, else the one of the chosen hashing balancer."""
        if self.hashPolicies is not None:
            return self.hashPolicies
        lb = self.loadBalancer
        block = getattr(lb, TYPE_BLOCKS[lb.type]) if lb is not None else None
        return list(getattr(block, "hashPolicies", None) or [])


# --- one entry's `default`: the same fields, checked across fields ------------------------------
class LoadBalancer(MergedLoadBalancer):
    @model_validator(mode="after")
    def _blocks_fit_the_type(self) -> LoadBalancer:
        wanted = TYPE_BLOCKS[self.type]
        for block in TYPE_BLOCKS.values():
            if block != wanted and getattr(self, block) is not None:
                raise ValueError(
                    f"{block}: must not be set with type {self.type} (its settings go in '{wanted}')"
                )
        ring = self.ringHash
        if ring and ring.minRingSize and ring.maxRingSize and ring.minRingSize > ring.maxRingSize:
            raise ValueError(
                f"ringHash.minRingSize: {ring.minRingSize} is larger than maxRingSize {ring.maxRingSize}"
            )
        return self


class Conf(Merged):
    loadBalancer: LoadBalancer | None = None
    localityAwareness: Any = None

    @field_validator("localityAwareness")
    @classmethod
    def _no_zones(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "locality-aware load balancing needs multi-zone (zones to prefer and to fail over "
                "between), which this control plane does not support yet; remove localityAwareness"
            )
        return value

    @model_validator(mode="after")
    def _something(self) -> Conf:
        if self.loadBalancer is None and self.hashPolicies is None:
            raise ValueError("at least one of 'loadBalancer', 'hashPolicies' has to be defined")
        lb = self.loadBalancer
        if self.hashPolicies is not None and lb is not None:
            for block in ("ringHash", "maglev"):
                if getattr(getattr(lb, block), "hashPolicies", None) is not None:
                    raise ValueError(
                        f"loadBalancer.{block}.hashPolicies: hash policies are already set at the top "
                        "level ('hashPolicies'); keep one of the two"
                    )
        return self


MeshLoadBalancingStrategy = policy_model(KIND, Conf, SECTIONS)
