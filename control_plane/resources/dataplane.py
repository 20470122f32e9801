"""The Dataplane resource in Kuma's universal form."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from control_plane.resources.common import (
    SERVICE_TAG,
    MeshScopedResource,
    Port,
    StrictModel,
    validate_tags,
)
from kuma_common import defaults


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    return value


IpAddress = Annotated[str, AfterValidator(_check_ip)]
ServiceTags = Annotated[dict[str, str], AfterValidator(lambda v: validate_tags(v, require_service=True))]


class _ServicePort(StrictModel):
    """A port of the proxy tied to one service (its `kuma.io/service` tag)."""

    port: Port
    address: IpAddress | None = None
    tags: ServiceTags

    @property
    def service(self) -> str:
        return self.tags[SERVICE_TAG]


class Inbound(_ServicePort):
    name: str | None = None  # Kuma's inbound name: what a policy's `sectionName` can select
    servicePort: Port | None = None
    serviceAddress: IpAddress | None = None

    @property
    def workload_port(self) -> int:
        """The port the application itself listens on."""
        return self.servicePort or self.port


class Outbound(_ServicePort):
    pass


class TransparentProxying(StrictModel):
    redirectPortInbound: Port = defaults.REDIRECT_PORT_INBOUND
    redirectPortOutbound: Port = defaults.REDIRECT_PORT_OUTBOUND
    ipFamilyMode: Literal["dualstack", "ipv4", "ipv6"] | None = None
    directAccessServices: list[str] | None = None
    reachableServices: list[str] | None = None


class Admin(StrictModel):
    port: Port = defaults.ENVOY_ADMIN_PORT


class Networking(StrictModel):
    address: IpAddress
    advertisedAddress: IpAddress | None = None
    inbound: list[Inbound] = Field(default_factory=list)
    outbound: list[Outbound] = Field(default_factory=list)
    transparentProxying: TransparentProxying | None = None
    admin: Admin | None = None

    @model_validator(mode="after")
    def _ports_unique(self) -> Networking:
        if not self.inbound:
            raise ValueError("inbound: a Dataplane needs at least one inbound")
        seen: set[tuple[str, int]] = set()
        for inbound in self.inbound:
            key = (inbound.address or self.address, inbound.port)
            if key in seen:
                raise ValueError(f"inbound: port {inbound.port} is declared twice")
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _no_outbounds_with_transparent_proxying(self) -> Networking:
        # Services are reached through the redirect listeners; a listed outbound would be a second,
        # conflicting way in (Kuma itself has no such check; we refuse rather than guess).
        if self.transparentProxying is not None and self.outbound:
            raise ValueError("outbound: can't be defined when transparent proxying is enabled")
        return self


class Dataplane(MeshScopedResource):
    type: Literal["Dataplane"] = "Dataplane"
    networking: Networking

    def inbound_address(self, inbound: Inbound) -> str:
        return inbound.address or self.networking.address

    def outbound_address(self, outbound: Outbound) -> str:
        return outbound.address or "127.0.0.1"

    @property
    def services(self) -> list[str]:
        """The distinct kuma.io/service values of the inbounds, in declaration order."""
        return list(dict.fromkeys(i.service for i in self.networking.inbound))
