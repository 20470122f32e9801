"""Which SPIFFE IDs the agent asks for: one per `kuma.io/service` of its Dataplane. Pure."""

from __future__ import annotations

import json
from typing import Any

from kuma_common.dp_contract import spiffe_id
from kuma_dp.constants import SERVICE_TAG


def services_of(dataplane_json: str | None) -> list[str]:
    """The `kuma.io/service` tags of the Dataplane's inbounds (and gateway), in order, once each.

    Without a resource (a Dataplane applied with kumactl) the list is empty; the CSR then names no
    URI and the control plane signs every service the token and the stored Dataplane allow.
    """
    if not dataplane_json:
        return []
    document = json.loads(dataplane_json)
    networking: dict[str, Any] = document.get("networking") or {}
    tag_sets = [inbound.get("tags") or {} for inbound in networking.get("inbound") or []]
    if networking.get("gateway"):
        tag_sets.append(networking["gateway"].get("tags") or {})
    services = [tags[SERVICE_TAG] for tags in tag_sets if isinstance(tags.get(SERVICE_TAG), str)]
    return list(dict.fromkeys(services))


def spiffe_ids(mesh: str, dataplane_json: str | None) -> list[str]:
    return [spiffe_id(mesh, service) for service in services_of(dataplane_json)]
