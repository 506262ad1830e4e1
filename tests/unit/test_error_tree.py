"""One error tree and one shape per name: every exception class the gateway defines is a
`GatewayError` (so it says temporary or permanent, and its status), and the intake's message to
queue no longer shares its name with the pipeline's protected copy (`Outgoing`)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import gateway
from gateway.errors import GatewayError, is_temporary

#: Not errors of the gateway: a command-line usage mistake, caught inside its command (exit 2).
OUTSIDE_THE_TREE = {("gateway.commands.legacy", "_Usage")}


def _classes() -> list[tuple[str, str, type]]:
    found = []
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        module = importlib.import_module(info.name)
        found += [(module.__name__, name, cls) for name, cls in vars(module).items()
                  if inspect.isclass(cls) and cls.__module__ == module.__name__]
    return found


def test_every_exception_class_is_a_gateway_error() -> None:
    strays = [(module, name) for module, name, cls in _classes()
              if issubclass(cls, BaseException) and not issubclass(cls, GatewayError)]
    assert set(strays) <= OUTSIDE_THE_TREE, strays


def test_a_dns_lookup_that_may_heal_is_temporary() -> None:
    from gateway.delivery.mx import _Temporary

    error = _Temporary("Timeout for x.example MX")
    assert is_temporary(error) and error.status == "4.4.3"


def test_outgoing_means_one_thing() -> None:
    owners = {module for module, name, _ in _classes() if name == "Outgoing"}
    assert owners == {"gateway.pipeline"}
