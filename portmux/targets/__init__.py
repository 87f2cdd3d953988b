"""Targets take classified connections: resource, factory, proxy, handoff, tls."""
