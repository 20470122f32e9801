"""The policy engine every policy plugs into: targetRef matching, ordering, merging, the plugin
protocol and the parts plugins edit. It never names a particular policy (see docs/policies.md)."""
