"""The DNS records of a mesh as the agent receives them (see kuma_common/dp_contract.py): each
service's names and its virtual IP, built once per mesh change and served by every proxy's Envoy."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_NAME = 253


def service_hostnames(service: str, domain: str) -> list[str]:
    """`<service>.<domain>` and Kuma's variant with `_` turned into `.` (a Kubernetes service
    `backend_kuma-demo_svc_8080` is also `backend.kuma-demo.svc.8080.mesh`), lower case; names
    that are not valid DNS names (e.g. a service with `/` or a space) are left out."""
    own, variant = _candidates(service, domain)
    return [name for name in dict.fromkeys((own, variant)) if _is_dns_name(name)]


def _candidates(service: str, domain: str) -> tuple[str, str]:
    return f"{service}.{domain}".lower(), f"{service.replace('_', '.')}.{domain}".lower()


def _is_dns_name(name: str) -> bool:
    return len(name) <= _MAX_NAME and all(_LABEL.fullmatch(label) for label in name.split("."))


@dataclass(frozen=True)
class DnsRecords:
    """The JSON body the agent polls, and its etag (changes when the body does)."""

    body: bytes
    etag: str
    names: Mapping[str, str]  # name → VIP

    @classmethod
    def of(cls, vips: Mapping[str, str], domain: str) -> DnsRecords:
        """`vips`: service → virtual IP. Two services claiming one name (`a_b` and `a.b`): the
        name is the service's own (`<service>.<domain>`) before it is a variant, then the first."""
        names: dict[str, str] = {}
        variants: dict[str, str] = {}
        for service, ip in sorted(vips.items()):
            own, variant = _candidates(service, domain)
            if _is_dns_name(own):
                names.setdefault(own, ip)
            if _is_dns_name(variant):
                variants.setdefault(variant, ip)
        for name, ip in variants.items():
            names.setdefault(name, ip)
        records = [{"name": name, "ips": [ip]} for name, ip in sorted(names.items())]
        body = json.dumps({"domain": domain, "records": records}, separators=(",", ":")).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        return cls(body, etag, dict(sorted(names.items())))


@dataclass(frozen=True)
class MeshNames:
    """What proxies of a mesh are given of its service names."""

    vips: Mapping[str, str]  # service → virtual IP
    vip_port: int  # Kuma's serviceVipPort: each VIP takes it besides its service's own ports
    records: DnsRecords

    @classmethod
    def of(cls, vips: Mapping[str, str], domain: str, vip_port: int) -> MeshNames:
        return cls(dict(vips), vip_port, DnsRecords.of(vips, domain))
