"""The built-in exchange simulator (README, "Trying it against the simulator"): Orderly or WOO X on
loopback, apart from the proxy.

It imports only `proxy.catalog` / `proxy.shipped` from the rest of the package.
"""

from proxy.simulator.accounts import Account, Credentials, generate_account
from proxy.simulator.faults import Fault
from proxy.simulator.server import Simulator
from proxy.simulator.stream import StreamSettings

__all__ = ["Account", "Credentials", "Fault", "Simulator", "StreamSettings", "generate_account"]
