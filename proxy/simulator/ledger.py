"""Settlement, withdrawal and liquidation claims: the causes of -1008/-1009 and -1201/-1202.

These exist so every code of the seed table has a realistic cause (the table's own texts name them):
- -1009 "Can not request withdrawal settlement, you need to deposit other arrears first": any holding
  below zero blocks withdrawals and PnL settlement;
- -1008 "The quantity of settlement is too high than you can request": asking for more than is free;
- liquidation claims (Orderly `POST /v1/liquidation`): ratio checks (-1005 with the table's three
  texts), unknown or healthy liquidations (-1202), a notional under 10000 claimed partially (-1201), a
  liquidation already being processed (-1012 "Another liquidation is in process").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from proxy.simulator.book import Book
from proxy.simulator.errors import SimError


@dataclass(slots=True)
class Liquidation:
    liquidation_id: int
    symbol: str
    total_notional: Decimal
    needed: bool = True
    claimed_by: str | None = None


def default_liquidations() -> dict[int, Liquidation]:
    """One small (must be taken whole), one large, one that recovered (no liquidation needed)."""
    rows = [
        Liquidation(1, "PERP_ETH_USDC", Decimal(5_000)),
        Liquidation(2, "PERP_BTC_USDC", Decimal(50_000)),
        Liquidation(3, "PERP_ETH_USDC", Decimal(20_000), needed=False),
    ]
    return {row.liquidation_id: row for row in rows}


class Ledger:
    def __init__(self, book: Book) -> None:
        self.book = book
        self.liquidations = default_liquidations()

    def reset(self) -> None:
        self.liquidations = default_liquidations()

    def _no_arrears(self, account_id: str) -> None:
        if any(amount < 0 for amount in self.book.account(account_id).holdings.values()):
            raise SimError(-1009)

    def withdraw(self, account_id: str, token: str, amount: Decimal) -> Decimal:
        """Take `amount` of `token` out; returns what remains."""
        holdings = self.book.account(account_id).holdings
        if token not in holdings:
            raise SimError(-1005, "The token is not supported")
        if amount <= 0:
            raise SimError(-1005, "amount must be a positive number")
        self._no_arrears(account_id)
        free = holdings[token] - self.book.frozen(account_id).get(token, Decimal(0))
        if amount > free:
            raise SimError(-1008)
        holdings[token] -= amount
        return holdings[token]

    def settle_pnl(self, account_id: str) -> None:
        self._no_arrears(account_id)

    def claim_liquidation(
        self, account_id: str, liquidation_id: int, ratio_qty_request: Decimal, extra_ratio: Decimal
    ) -> Liquidation:
        if not 0 <= ratio_qty_request <= 1:
            raise SimError(-1005, "ratio_qty_request should be in range 0-1.")
        if not 0 <= extra_ratio <= 1:
            raise SimError(-1005, "extra_liquidation_ratio should be in range 0-1.")
        if extra_ratio > 0 and ratio_qty_request != 1:
            raise SimError(-1005, "if you set extra_liquidation_ratio > 0, ratio_qty_request must be 1.")
        liquidation = self.liquidations.get(liquidation_id)
        if liquidation is None:
            raise SimError(-1202, "Can not find given liquidationId.")
        if not liquidation.needed:
            raise SimError(-1202, "No need to liquidation because user margin is enough.")
        if liquidation.claimed_by is not None:
            raise SimError(-1012, "Another liquidation is in process")
        if liquidation.total_notional < 10_000 and ratio_qty_request != 1:
            raise SimError(-1201, "total notional < 10000, least req ratio should = 1")
        liquidation.claimed_by = account_id
        return liquidation
