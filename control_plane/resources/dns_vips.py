"""DnsVips as a resource: a mesh's table of service virtual IPs (control_plane/dns/vips.py), so
that `kumactl export` / `apply` can move it and services keep the addresses clients resolved.

One per mesh, named `kuma-<mesh>-dns-vips` (Kuma's name for the same table); its shape is exactly
what the allocator stores: `vips: {<service>: {ip, releaseAfter?}}` and an optional `cursor`.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from control_plane.dns.vips import vips_record_name
from control_plane.resources.common import MeshScopedResource, StrictModel


class VipEntry(StrictModel):
    ip: str
    releaseAfter: str | None = None

    @field_validator("ip")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None
        return value

    @field_validator("releaseAfter")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{value!r} is not an RFC 3339 time") from None
        return value


class DnsVips(MeshScopedResource):
    type: Literal["DnsVips"] = "DnsVips"
    vips: dict[str, VipEntry] = Field(default_factory=dict)
    cursor: str | None = None

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 address") from None
        return value

    @model_validator(mode="after")
    def _one_per_mesh(self) -> DnsVips:
        if self.name != vips_record_name(self.mesh):
            raise ValueError(f"name: the table of mesh {self.mesh!r} is named {vips_record_name(self.mesh)}")
        owners: dict[str, str] = {}
        for service, entry in self.vips.items():
            if entry.ip in owners:
                raise ValueError(f"vips: {entry.ip} is given to both {owners[entry.ip]!r} and {service!r}")
            owners[entry.ip] = service
        return self
