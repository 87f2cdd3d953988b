# -*- test-case-name: tests.protocols.test_nmf_routing,tests.test_layers -*-
"""The library kernel: preamble values, interfaces, routing and the sniffing multiplexer.

Layers (enforced by tests/test_layers.py): ``preamble``, ``interfaces``, ``refusal``
(status words) and ``deadlines`` import nothing from portmux; ``portmux.protocols``
builds on them; ``routing``, ``stats`` and ``mux`` build on the protocols. Nothing
here imports a target, the control side, TLS, the client or the daemon: targets are
handed in, never looked up by name.
"""
