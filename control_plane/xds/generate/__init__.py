"""Pure generators: Dataplane + its mesh + the mesh's policies → Envoy listeners, clusters and load
assignments (`snapshot.generate_snapshot` is the entry point)."""
