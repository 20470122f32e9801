"""The Mesh resource (universal form)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from control_plane.resources.common import NamedResource, StrictModel, check_mesh_name
from kuma_common.durations import DurationError, parse_duration

DEFAULT_CERT_LIFETIME_S = 24 * 3600.0


class Rotation(StrictModel):
    expiration: str = "24h"

    @field_validator("expiration")
    @classmethod
    def _positive_duration(cls, value: str) -> str:
        try:
            seconds = parse_duration(value)
        except DurationError:
            raise ValueError(f"{value!r} is not a duration (e.g. 24h, 30m, 90s)") from None
        if seconds < 1:
            raise ValueError(f"{value!r} is too short: certificates must live at least 1s")
        return value


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

    def certificate_lifetime_s(self) -> float:
        """How long workload certificates live: the enabled backend's rotation, or 24 h."""
        backend = self.enabled
        return parse_duration(backend.dpCert.rotation.expiration) if backend else DEFAULT_CERT_LIFETIME_S


class Networking(StrictModel):
    outbound: dict[str, Any] | None = None


class Mesh(NamedResource):
    type: Literal["Mesh"] = "Mesh"

    @field_validator("name")
    @classmethod
    def _no_dot(cls, value: str) -> str:
        return check_mesh_name(value)

    mtls: Mtls | None = None
    networking: Networking | None = None
    # Kuma's: which of the policies a new Mesh gets not to create, by kind ("*": none of them).
    skipCreatingInitialPolicies: list[str] | None = None
    metrics: dict[str, Any] | None = None
    logging: dict[str, Any] | None = None
    tracing: dict[str, Any] | None = None

    @field_validator("skipCreatingInitialPolicies")
    @classmethod
    def _known_kinds(cls, value: list[str] | None) -> list[str] | None:
        from control_plane.policies.registry import POLICY_TYPES  # the registry imports resources

        known = sorted(t.kind for t in POLICY_TYPES if t.initial is not None)
        for entry in value or []:
            if entry != "*" and entry not in known:
                raise ValueError(
                    f"{entry!r} is not a policy kind a new Mesh gets; use '*' or some of: {', '.join(known)}"
                )
        return value
