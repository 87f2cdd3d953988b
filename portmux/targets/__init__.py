# -*- test-case-name: tests.targets.test_proxy,tests.targets.test_proxy_transport,tests.test_layers -*-
"""Targets take classified connections: resource, factory, proxy, handoff, tls."""
