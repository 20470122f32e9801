"""The Mesh resource (universal form)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from control_plane.resources.common import NamedResource, StrictModel


class Rotation(StrictModel):
    expiration: str = "24h"


class DpCert(StrictModel):
    rotation: Rotation = Field(default_factory=Rotation)


class MtlsBackend(StrictModel):
    name: str
    type: Literal["builtin", "provided"] = "builtin"
    mode: Literal["STRICT", "PERMISSIVE"] = "STRICT"
    dpCert: DpCert = Field(default_factory=DpCert)
    conf: dict[str, Any] | None = None


class Mtls(StrictModel):
    enabledBackend: str | None = None
    backends: list[MtlsBackend] = Field(default_factory=list)

    @model_validator(mode="after")
    def _enabled_backend_exists(self) -> Mtls:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError("backends: names must be unique")
        if self.enabledBackend and self.enabledBackend not in names:
            raise ValueError(f"enabledBackend: {self.enabledBackend!r} is not one of the backends")
        return self

    @property
    def enabled(self) -> MtlsBackend | None:
        return next((b for b in self.backends if b.name == self.enabledBackend), None)


class Networking(StrictModel):
    outbound: dict[str, Any] | None = None


class Mesh(NamedResource):
    type: Literal["Mesh"] = "Mesh"

    @field_validator("name")
    @classmethod
    def _no_dot(cls, value: str) -> str:
        # Envoy node ids are `<mesh>.<name>` and are split on the first dot.
        if "." in value:
            raise ValueError("a mesh name cannot contain '.'")
        return value

    mtls: Mtls | None = None
    networking: Networking | None = None
    metrics: dict[str, Any] | None = None
    logging: dict[str, Any] | None = None
    tracing: dict[str, Any] | None = None
