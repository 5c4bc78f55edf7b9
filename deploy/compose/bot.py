"""A stand-in trading bot for the compose stack: it only knows its exchange base URL.

Replace this container with your own bot and point its base URL at the sidecar (`EXCHANGE_BASE_URL`).
It polls public endpoints and now and then bursts past the exchange's 10/s public limit, so the
dashboard has something to show: Seawall queues the burst instead of letting the exchange answer -1003.
Standard library only, so it runs on the plain python:3.11-slim image.
"""

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

BASE_URL = os.environ.get("EXCHANGE_BASE_URL", "http://127.0.0.1:8080").rstrip("/")
BURST = int(os.environ.get("BOT_BURST", "25"))
PAUSE = float(os.environ.get("BOT_PAUSE_SECONDS", "5"))


def call(path: str) -> str:
    try:
        with urllib.request.urlopen(BASE_URL + path, timeout=10) as answer:
            return str(answer.status)
    except urllib.error.HTTPError as error:
        payload = json.loads(error.read() or b"{}")
        return f"{error.code} {payload.get('code')} via {error.headers.get('X-Seawall', 'exchange')}"
    except OSError as error:  # Seawall not up yet, or restarting: the sidecar is the only way out
        return f"unreachable ({error})"


def main() -> None:
    print(f"bot: trading through {BASE_URL}", flush=True)
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        while True:
            started = time.monotonic()
            answers = list(pool.map(call, ["/v1/public/info"] * BURST))
            summary = {answer: answers.count(answer) for answer in set(answers)}
            print(f"bot: burst of {BURST} took {time.monotonic() - started:.2f}s: {summary}", flush=True)
            time.sleep(PAUSE)


if __name__ == "__main__":
    main()
