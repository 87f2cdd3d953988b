# -*- test-case-name: tests.control.test_registry,tests.control.test_server -*-
"""What a register frame names, read into a ``Match``: the keys of a config route's ``match``.

Control protocol 2 sends ``"match": {"protocol": "http", "host": "*", "path": "/"}``.
Protocol 1's ``"address": {"kind": ...}`` is translated here, in ``translate_address``,
and nowhere else. See docs/control-protocol.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from portmux.control._registry import RegistrationError
from portmux.core.routing import Match, parse_networks
from portmux.protocols.nmf import parse_base_address

REGISTRATION_KEYS = ("protocol", "host", "path", "sni", "alpn", "service", "via", "network")
"""The match keys a worker may register with (a config route's, less silent/default)."""
ADDRESS_KEYS = ("service", "host", "path", "sni", "via")
"""A registration names at least one of these, so no worker can take every connection."""
KINDS = ("tcpmux", "http", "tls", "nettcp")
"""Control protocol 1's address kinds."""
_HOST_MODES = {"strong": "+", "weak": "*"}


def known_protocols() -> frozenset[str]:
    """Every probe's name: the values ``protocol`` may take."""
    from portmux.protocols import all_probes

    with warnings.catch_warnings():  # twisted.plugin's path-cache chatter
        warnings.simplefilter("ignore")
        return frozenset(str(probe.name) for probe in all_probes())


def parse_match(data: Any, code: str = "BadMatch", protocols: frozenset[str] | None = None) -> Match:
    """Validate a register frame's ``match`` object; raise RegistrationError(code) why not.

    ``protocols`` is the set ``known_protocols()`` returns; pass it when validating many
    (finding the probe plugins scans the disk).
    """
    if not isinstance(data, Mapping):
        raise RegistrationError(code, f"match must be an object with some of {', '.join(REGISTRATION_KEYS)}")
    unknown = sorted(set(data) - set(REGISTRATION_KEYS))
    if unknown:
        raise RegistrationError(code, f"unknown match key {unknown[0]!r}; use {', '.join(REGISTRATION_KEYS)}")
    if not any(key in data for key in ADDRESS_KEYS):
        raise RegistrationError(code, f"a registration needs one of {', '.join(ADDRESS_KEYS)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "network":
            texts = [value] if isinstance(value, str) else value
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise RegistrationError(code, "network must be a CIDR string or a list of them")
            try:
                values[key] = parse_networks(texts)
            except ValueError as error:
                raise RegistrationError(code, f"network: {error}") from None
        elif not isinstance(value, str) or not value:
            raise RegistrationError(code, f"match key {key!r} must be a non-empty string")
        else:
            values[key] = value
    if "path" in values and not values["path"].startswith("/"):
        raise RegistrationError(code, "path must start with '/'")
    protocol = values.get("protocol")
    if protocol is not None:
        known = known_protocols() if protocols is None else protocols
        if protocol.lower() not in known:
            raise RegistrationError(code, f"unknown protocol {protocol!r}; known: {', '.join(sorted(known))}")
    try:
        return Match(**values).canonical()
    except ValueError as error:  # a malformed service name or via base address
        raise RegistrationError(code, str(error)) from None


def translate_address(data: Any) -> dict[str, Any]:
    """Control protocol 1's ``address`` ({"kind": ...}) as the match keys that replace it."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise RegistrationError("BadAddress", "address must be an object with a 'kind'; "
                                f"protocol 2 registers a 'match' with {', '.join(REGISTRATION_KEYS)}")
    kind = data["kind"]
    fields = {key: value for key, value in data.items() if key != "kind"}
    if kind == "tcpmux":
        return {"protocol": "tcpmux", "service": fields.get("service", "")}
    if kind == "http":
        return {"protocol": "http", "host": fields.get("host") or "*", "path": fields.get("path") or "/"}
    if kind == "tls":
        return {"protocol": "tls", "sni": fields.get("sni", "")}
    if kind == "nettcp":
        return {"protocol": "nmf", "via": _legacy_via(fields.get("via", ""), fields.get("host_mode", ""))}
    raise RegistrationError("BadAddress", f"unknown address kind {kind!r} (protocol 1 knew {', '.join(KINDS)}); "
                            f"protocol 2 registers a 'match' with {', '.join(REGISTRATION_KEYS)}")


def _legacy_via(via: Any, host_mode: Any) -> str:
    """A protocol-1 net.tcp base URI with its ``host_mode`` folded into the host (+, * or a name)."""
    if not isinstance(via, str) or not isinstance(host_mode, str):
        raise RegistrationError("BadAddress", "via and host_mode must be strings")
    try:
        base = parse_base_address(via)
    except ValueError as error:
        raise RegistrationError("BadAddress", str(error)) from None
    if base.scheme != "net.tcp":
        raise RegistrationError("BadAddress", f"{via!r} is not a net.tcp://host/path/ base URI")
    if host_mode in _HOST_MODES:
        return str(replace(base, host=_HOST_MODES[host_mode]))
    if host_mode == "exact" and base.rank != 1:
        raise RegistrationError("BadAddress", "exact host mode needs a host name, not + or *")
    if host_mode not in ("", "exact"):
        raise RegistrationError("BadAddress", "host_mode must be one of strong, exact, weak")
    return via


def registration_match(
    message: Mapping[str, Any], protocols: frozenset[str] | None = None
) -> tuple[Match, str | None]:
    """The Match a register/unregister frame names, and a deprecation note for protocol 1."""
    if "match" in message:
        return parse_match(message["match"], protocols=protocols), None
    keys = translate_address(message.get("address"))
    match = parse_match(keys, code="BadAddress", protocols=protocols)
    note = (f"'address' with 'kind' is control protocol 1 and deprecated; "
            f"register with \"match\": {match.to_keys()}")
    return match, note
