"""xDS for Envoy: generators (mesh → Envoy config), a versioned snapshot cache, the ADS server.

The server knows the protocol and nothing of meshes; the cache holds content-hashed per-node
snapshots; `generate/` holds pure functions; the reconciler and lifecycle tie them to the store.
"""
