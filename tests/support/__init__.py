"""What the tests share, each module named for what it provides (imported as `tests.support.<module>`;
processes, ports and waiting come from the top-level `labkit` package, which the demo and the
benchmarks use too):

- `agent_process`: `kuma-dp run` as a subprocess, a test app, and the test_agent_* fixtures
- `fake_control_plane`: an HTTPS `/bootstrap` fake that hands out a static Envoy bootstrap
- `fake_identity`: the fake's `/certificate`, a CSR-signing CA and a token-checking ADS server
- `xds_control_plane`: our xDS server in process, a raw ADS client, real Envoys bootstrapped by it
- `xds_cases`: the Dataplanes of the xDS golden files, a MeshTrafficPermission, `to_json`
- `envoy_validate`: `envoy --mode validate` on generated resources
- `mesh_ca`: a mesh CA writing a proxy's SDS files as the agent does
- `kumactl_api`: the REST API in a thread and kumactl run in-process against it
- `netns_lab`: throwaway network namespaces; `tproxy_probes`: servers and clients inside them
- `transparent_mesh`: two namespaces with kuma-cp, kumactl, kuma-dp and apps (end to end)
- `transparent_envoy`: two namespaces with bare Envoys fed by our xDS server
- `cni_runtime`: what a container runtime does with a CNI chain
"""
