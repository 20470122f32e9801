"""The process harness the loopback demo, the end-to-end tests and the benchmarks share.

`lab`: the control plane, apps, agents and kumactl as real processes on this machine; `ports`: free
and open loopback ports; `waiting`: polling for a condition. Part of the source tree, like `demo/`,
`tests/` and `bench/`; not shipped in the wheel.
"""
