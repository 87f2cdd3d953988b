# -*- test-case-name: tests.daemon.test_daemon -*-
"""The daemon: config loading, service assembly, the twistd tap and the admin pages.

This is the top layer: it may import everything else, and nothing below imports it.
"""
