"""Golden Envoy config of every policy, from the testdata beside each policy's code.

Each `control_plane/policies/<kind>/testdata/<case>.input.yaml` holds YAML documents: an optional
Mesh, Dataplanes (the first one is the proxy under test; the others make up the mesh) and policies.
The proxy's generated clusters and listeners must equal `<case>.golden.json`, and real Envoy must
accept them (`envoy --mode validate`). A new policy folder with testdata is picked up by itself.

Rewrite the golden files after an intended change: `UPDATE_GOLDEN=1 pytest tests/test_policy_goldens.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from control_plane.policies.core.spec import PolicyResource
from control_plane.policies.loading import mesh_policies
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.mesh import Mesh
from control_plane.resources.registry import parse_resource
from control_plane.xds.generate.snapshot import ProxyContext, Resources, generate_snapshot
from control_plane.xds.names import ENDPOINT_TYPE
from tests.support.envoy_validate import assert_envoy_accepts
from tests.support.mesh_ca import MeshCa
from tests.support.xds_cases import to_json

POLICIES_DIR = Path(__file__).parent.parent / "control_plane" / "policies"
CASES = {
    f"{path.parent.parent.name}/{path.name.removesuffix('.input.yaml')}": path
    for path in sorted(POLICIES_DIR.glob("*/testdata/*.input.yaml"))
}


def generate(path: Path, workdir: str | None = None) -> Resources:
    mesh, dataplanes, policies = None, [], []
    for doc in yaml.safe_load_all(path.read_text()):
        model = parse_resource(doc)
        if isinstance(model, Mesh):
            mesh = model
        elif isinstance(model, Dataplane):
            dataplanes.append(model)
        else:
            assert isinstance(model, PolicyResource)
            policies.append(model)
    proxy = dataplanes[0]
    context = ProxyContext(workdir=workdir or f"/var/run/kuma-dp/{proxy.name}")
    return generate_snapshot(
        proxy, dataplanes, mesh, context=context, policies=mesh_policies(proxy.mesh, policies)
    )


def test_every_policy_has_golden_cases() -> None:
    from control_plane.policies.registry import POLICY_FOLDERS

    with_cases = {case.split("/")[0] for case in CASES}
    assert set(POLICY_FOLDERS) <= with_cases, f"no testdata for {set(POLICY_FOLDERS) - with_cases}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_config_matches_golden_file(case: str, envoy_binary: Path, tmp_path: Path) -> None:
    resources = generate(CASES[case])
    shown = {t: r for t, r in resources.items() if t != ENDPOINT_TYPE}
    got = json.dumps(to_json(shown), indent=2, sort_keys=True) + "\n"
    golden = CASES[case].with_name(CASES[case].name.replace(".input.yaml", ".golden.json"))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(got)
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDEN=1 to create it"
    assert got == golden.read_text(), f"{case}: generated config differs from {golden}"
    # Envoy checks that SDS files exist: validate the config made for a work dir that has them.
    MeshCa().write_sds_files(tmp_path, "validate")
    assert_envoy_accepts(envoy_binary, generate(CASES[case], str(tmp_path)), tmp_path / "bootstrap.json")
