"""Build the adapter configured for a partner; the only place adapters are named (STYLE "The house").

=========  ======================================================================
mode       adapter
=========  ======================================================================
push       :class:`chs_adapters.push.PushAdapter` (``url``, ``ca``, ``timeout``)
spool      :class:`chs_adapters.spool.SpoolAdapter` (``outbox``, ``acks``)
adapter    ``adapter`` names it: ``"package.module:Class"``, or a short name
           ``NAME`` for the module ``chs_adapters.NAME``, whose ``ADAPTER`` is used
pull       none: the partner fetches from the mailbox (``gsem.mailbox``)
=========  ======================================================================

An adapter class is built with ``Class.from_config(options, context)`` when it has that
class method, else ``Class(**options)``.  For push and spool *options* is the partner's
configuration without ``retry`` (the service's); for ``adapter`` it is the partner's
``options`` table (text values, ``gsem partners delivery … --option KEY=VALUE``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chs_adapters.base import ChsAdapter

__all__ = ["AdapterContext", "AdapterConfigError", "load_adapter", "SERVICE_KEYS"]

#: Keys of a partner's delivery configuration that belong to the service, not the adapter.
SERVICE_KEYS = frozenset({"adapter", "retry", "options"})
_SHORT_NAME = re.compile(r"[a-z][a-z0-9_]*")


class AdapterConfigError(ValueError):
    """A partner's delivery configuration names no usable adapter; the message says why."""


@dataclass(frozen=True)
class AdapterContext:
    """What the hub gives every adapter it builds."""

    reactor: Any
    hub_cert: Path
    hub_key: Path
    data_dir: Path | None = None


def _resolve(name: str) -> Any:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
    elif _SHORT_NAME.fullmatch(name):
        module_name, attribute = f"chs_adapters.{name}", "ADAPTER"
    else:
        raise AdapterConfigError(f"adapter {name!r} is neither 'package.module:Class' nor a short name "
                                 "of a module in chs_adapters")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AdapterConfigError(f"adapter {name!r}: cannot import {module_name} ({e})") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise AdapterConfigError(f"adapter {name!r}: {module_name} has no {attribute}") from None


def _build(factory: Any, options: dict[str, Any], context: AdapterContext) -> ChsAdapter:
    from_config = getattr(factory, "from_config", None)
    if from_config is not None:
        return from_config(options, context)
    return factory(**options)


def load_adapter(partner_id: str, mode: str, config: dict[str, Any], context: AdapterContext) -> ChsAdapter:
    """The adapter that delivers to *partner_id* by *mode* with its *config*.

    Raises :class:`AdapterConfigError` naming the partner when the configuration is
    unusable (the delivery service logs it and holds the partner's deliveries).
    """
    options = {k: v for k, v in config.items() if k not in SERVICE_KEYS}
    try:
        if mode == "push":
            from chs_adapters.push import PushAdapter

            return PushAdapter.from_config(options, context)
        if mode == "spool":
            from chs_adapters.spool import SpoolAdapter

            return SpoolAdapter.from_config(options, context)
        if mode == "adapter":
            name = config.get("adapter")
            if not isinstance(name, str) or not name:
                raise AdapterConfigError("delivery mode 'adapter' needs 'adapter' (e.g. \"memory\" "
                                         "or \"package.module:Class\")")
            extra = config.get("options", {})
            if not isinstance(extra, dict):
                raise AdapterConfigError("'options' must be a table of names to text")
            return _build(_resolve(name), {**options, **extra}, context)
    except AdapterConfigError as e:
        raise AdapterConfigError(f"partner {partner_id}: {e}") from None
    except (ValueError, TypeError, OSError) as e:
        raise AdapterConfigError(f"partner {partner_id}: {mode} delivery misconfigured: {e}") from None
    raise AdapterConfigError(f"partner {partner_id}: delivery mode {mode!r} has no adapter "
                             "(pull partners fetch from the mailbox)")
