"""Kuma's policies, one folder each, registered in `registry.py`."""
