"""MeshTLS's schema: how the selected proxies' inbounds take the mesh's mTLS (Kuma order 300).

```yaml
type: MeshTLS
mesh: default
name: tls
spec:
  targetRef: {kind: Mesh}            # Mesh, MeshSubset or Dataplane (absent: the whole mesh)
  rules:                             # or `from: [{targetRef: {kind: Mesh}, default: {...}}]`
  - default:
      mode: Strict                   # Strict | Permissive; unset: the Mesh's mTLS backend mode
      tlsVersion: {min: TLS12, max: TLS13}   # TLSAuto | TLS10 | TLS11 | TLS12 | TLS13
      tlsCiphers: [ECDHE-ECDSA-AES256-GCM-SHA384]
```
- `mode` per inbound: `Strict` serves only the mesh's mTLS chain; `Permissive` also serves
  plaintext (and mesh peers keep mTLS). Only with the Mesh's mTLS on: without it every inbound is
  plaintext already and MeshTLS changes nothing (it is accepted, so it applies once mTLS is on).
- `tlsVersion`, `tlsCiphers`: the TLS of every mesh connection (inbound and outbound), so, as in
  Kuma, only a policy whose top-level targetRef is `Mesh` may set them. Unset: Envoy's defaults
  (TLS 1.2 to 1.3, BoringSSL's ciphers). Ciphers apply to TLS 1.2 and below (TLS 1.3's suites are
  not configurable in BoringSSL).
As Kuma, `from` entries count as rules for all callers (`from[].targetRef` is kind Mesh only) and
`rules` have no `matches`: the conf is per inbound, not per caller.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from control_plane.policies.core.spec import Sections, policy_model
from control_plane.policies.core.targetref import DATAPLANE, MESH, MESH_SUBSET
from control_plane.resources.common import StrictModel

KIND = "MeshTLS"
SECTIONS = Sections(top=(MESH, MESH_SUBSET, DATAPLANE), from_=(MESH,), rules=True)

STRICT = "Strict"
PERMISSIVE = "Permissive"
TLS_AUTO = "TLSAuto"
VERSION_ORDER = ("TLS10", "TLS11", "TLS12", "TLS13")  # TLSAuto: Envoy's default, unordered
TlsVersion = Literal["TLSAuto", "TLS10", "TLS11", "TLS12", "TLS13"]
# Kuma's allowed ciphers (api/common/v1alpha1/tls), all BoringSSL names.
TlsCipher = Literal[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
]


class Version(StrictModel):
    min: TlsVersion | None = None
    max: TlsVersion | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Version:
        low, high = self.min, self.max
        if not low or not high or TLS_AUTO in (low, high):
            return self
        if VERSION_ORDER.index(low) > VERSION_ORDER.index(high):
            raise ValueError(f"min: {low} is above max {high}")
        return self


class Conf(StrictModel):
    mode: Literal["Strict", "Permissive"] | None = None
    tlsVersion: Version | None = None
    tlsCiphers: list[TlsCipher] | None = None

    @field_validator("tlsCiphers")
    @classmethod
    def _no_repeats(cls, ciphers: list[str] | None) -> list[str] | None:
        repeated = sorted({c for c in ciphers or [] if ciphers.count(c) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return ciphers


MESH_WIDE_FIELDS = ("tlsVersion", "tlsCiphers")


def _check_spec(spec: Any) -> None:
    """TLS versions and ciphers are the mesh's (outbound clusters use them too): Mesh only."""
    if spec.targetRef.kind == MESH:
        return
    for section, name in (("from_", "from"), ("rules", "rules")):
        for index, entry in enumerate(spec.entries(section)):
            for field in MESH_WIDE_FIELDS:
                if getattr(entry.default, field) is not None:
                    raise ValueError(
                        f"{name}[{index}].default.{field}: can only be set by a policy whose top-level "
                        f"targetRef is kind Mesh (it applies to every mTLS connection of the mesh, "
                        f"inbound and outbound); this one is {spec.targetRef.kind}"
                    )


MeshTLS = policy_model(KIND, Conf, SECTIONS, spec_check=_check_spec)
