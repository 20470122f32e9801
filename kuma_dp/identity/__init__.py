"""The workload identity: own key, CSR to the control plane, SDS files for Envoy, renewal."""
