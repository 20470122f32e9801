"""Kuma's REST API (port 5681): resources CRUD over the store, with Kuma's paths and error shapes."""

from control_plane.api.app import create_app

__all__ = ["create_app"]
