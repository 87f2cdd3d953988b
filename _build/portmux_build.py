"""Build backend: setuptools, with editable installs in "compat" mode.

twistd finds plugins by scanning sys.path for twisted/plugins/ directories. The
default (strict/lenient) editable install maps packages through an import hook,
so our twisted/plugins/portmux_plugin.py is never seen; compat mode puts the
project directory on sys.path instead, and ``twistd --help`` lists portmux.
"""

from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the rest of PEP 517/660 unchanged)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    """Build the editable wheel, defaulting ``editable_mode`` to ``compat``."""
    settings = dict(config_settings or {})
    settings.setdefault("editable_mode", "compat")
    return _setuptools.build_editable(wheel_directory, settings, metadata_directory)
