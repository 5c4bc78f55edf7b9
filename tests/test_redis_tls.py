"""Shared state over TLS (`rediss://`) with a password: a real `redis-server` that only speaks TLS and asks
for a password, a throw-away CA named in the URL (`?ssl_ca_certs=`), two replicas sharing dedup through
it; the password never shows, and a wrong one is an outage said plainly, not a crash.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures_proxy import StartSeawall, wait_until
from fixtures_redis import _free_port, _poll
from fixtures_simulator import SimFactory
from redis_scenarios import bots, fleet, orders_per_client_order_id, redis_state

PASSWORD = "hunter2-tls"
MARKET_BUY = {"symbol": "PERP_ETH_USDC", "order_type": "MARKET", "order_quantity": 0.01, "side": "BUY"}


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder(
            name("ca"), name("ca"), ca_key.public_key(), 1, now, now + datetime.timedelta(1)
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder(
            ca.subject, name("127.0.0.1"), key.public_key(), 2, now, now + datetime.timedelta(1)
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(its TLS port, the CA that signed its certificate): TLS only, a password, no persistence."""
    ca, cert, key = _certificates(tmp_path)
    port = _free_port()
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        options = {"password": PASSWORD, "ssl": True, "ssl_ca_certs": str(ca), "socket_timeout": 1}
        try:
            with redis.Redis(host="127.0.0.1", port=port, **options) as client:
                return bool(client.ping())
        except (OSError, redis.RedisError):
            return False

    try:
        _poll(answers, 10, "redis-server answers over TLS")
        yield port, ca
    finally:
        process.terminate()
        process.wait(10)


async def test_replicas_share_state_over_tls_and_the_password_never_shows(
    tls_redis: tuple[int, Path],
    sim_factory: SimFactory,
    sim_http: aiohttp.ClientSession,
    start_seawall: StartSeawall,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    sim = await sim_factory("orderly")
    with caplog.at_level(logging.INFO, logger="seawall"):
        a, b = await fleet(start_seawall, "orderly", sim.base_url, 2, **redis_state(url))
        via_a, via_b = bots(sim_http, sim, [a, b])
        order = {**MARKET_BUY, "client_order_id": "tls-1"}
        placed = await via_a.orderly("POST", "/v1/order", order)
        twin = await via_b.orderly("POST", "/v1/order", order)
    assert (placed.status, twin.headers["X-Seawall"], twin.body) == (200, "dedup-replay", placed.body)
    assert orders_per_client_order_id(sim)["tls-1"] == 1
    assert a.shared is not None and a.shared.healthy and a.shared.call_errors == 0
    shown = " ".join(str(record.__dict__) for record in caplog.records) + str(a.status())
    assert "shared state (redis) is up" in shown and PASSWORD not in shown


async def test_a_wrong_password_is_an_outage_said_plainly(
    tls_redis: tuple[int, Path], start_seawall: StartSeawall, caplog: pytest.LogCaptureFixture
) -> None:
    port, ca = tls_redis
    url = f"rediss://:not-{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    with caplog.at_level(logging.WARNING, logger="seawall"):
        (replica,) = await fleet(start_seawall, "orderly", "http://127.0.0.1:9", 1, **redis_state(url))
        await wait_until(lambda: replica.shared is not None and not replica.shared.up)
    down = [r for r in caplog.records if "shared state (redis) is down" in r.getMessage()]
    assert down and down[0].__dict__["fields"]["reason"] == "AuthenticationError"
    assert PASSWORD not in " ".join(str(record.__dict__) for record in caplog.records)
