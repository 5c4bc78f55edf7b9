"""The built-in exchange simulator (PRODUCT.md §5): Orderly or WOO X on loopback, apart from the proxy.

It imports only `proxy.catalog` / `proxy.shipped` from the rest of the package.
"""

from proxy.simulator.accounts import Account, Credentials, generate_account
from proxy.simulator.faults import Fault
from proxy.simulator.server import Simulator

__all__ = ["Account", "Credentials", "Fault", "Simulator", "generate_account"]
