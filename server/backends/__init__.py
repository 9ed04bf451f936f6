"""Backends that run the deploy graph."""
