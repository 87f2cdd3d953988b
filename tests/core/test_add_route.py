"""Multiplexer.add_route: a target first, an optional name, bare resources and factories."""

from __future__ import annotations

import warnings

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.static import Data

from portmux import FactoryTarget, Multiplexer, ResourceTarget
from portmux.core.interfaces import as_target
from portmux.testing import RecordingTarget, feed_mux


class AddRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mux = Multiplexer(MemoryReactorClock())

    def test_target_first_with_an_optional_name(self) -> None:
        target = RecordingTarget()
        route = self.mux.add_route(target, name="shell", protocol="ssh")
        self.assertEqual((route.name, route.match.protocol, route.target),
                         ("shell", "ssh", target))

    def test_names_default_to_the_match_and_stay_unique(self) -> None:
        names = [
            self.mux.add_route(RecordingTarget(), **match).name
            for match in ({"protocol": "http"}, {"protocol": "http", "host": "a"},
                          {"protocol": "tcpmux", "service": "echo"}, {"service": "x"},
                          {"default": True}, {"silent": True}, {})
        ]
        self.assertEqual(names, ["http", "http-2", "echo", "x", "default", "silent", "route"])

    def test_old_positional_form_warns_and_still_works(self) -> None:
        target = RecordingTarget()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            route = self.mux.add_route("old", target, protocol="ssh")
        self.assertEqual((route.name, route.target), ("old", target))
        [warning] = caught
        self.assertIs(warning.category, DeprecationWarning)
        self.assertEqual(warning.filename, __file__)

    def test_two_positional_targets_are_an_error(self) -> None:
        self.assertRaises(TypeError, self.mux.add_route, RecordingTarget(), RecordingTarget())

    def test_a_bare_resource_becomes_a_resource_target(self) -> None:
        root = Data(b"hi", "text/plain")
        route = self.mux.add_route(root, protocol="http")
        self.assertIsInstance(route.target, ResourceTarget)
        self.assertIs(route.target.resource, root)  # type: ignore[attr-defined]
        self.mux.startFactory()
        fed = feed_mux(self.mux, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIs(fed.route, route)
        self.assertIn(b"\r\n\r\nhi", fed.written)
        fed.close()  # the Site's channel has a timeout on the global reactor

    def test_a_bare_factory_becomes_a_factory_target(self) -> None:
        factory = Factory.forProtocol(Protocol)
        route = self.mux.add_route(factory, protocol="ssh")
        self.assertIsInstance(route.target, FactoryTarget)
        self.assertIs(route.target.factory, factory)  # type: ignore[attr-defined]

    def test_a_target_is_taken_as_it_is(self) -> None:
        target = RecordingTarget()
        self.assertIs(as_target(target), target)

    def test_anything_else_is_refused(self) -> None:
        self.assertRaises(TypeError, self.mux.add_route, object(), protocol="ssh")
        self.assertEqual(self.mux.router.routes, ())

    def test_remove_route(self) -> None:
        target = RecordingTarget()
        self.mux.startFactory()
        route = self.mux.add_route(target, protocol="ssh")
        self.mux.remove_route(route)
        self.assertEqual(self.mux.router.routes, ())
        self.assertEqual((target.started, target.stopped), (1, 1))
