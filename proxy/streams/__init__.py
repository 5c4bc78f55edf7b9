"""The exchange's WebSocket streams through Seawall's proxy listener (docs/design.md, "Streams").

A bot points its stream URL at Seawall exactly as its REST base URL. The proxy listener hands each
stream handshake to aiohttp's WebSocket server (`gate.py`); then:
- a private stream (`private.py`) is one upstream connection per bot, every frame passed untouched both
  ways (Seawall never signs), capped per account id;
- a public stream (`fanout.py`, `link.py`) shares Seawall's few upstream connections: one upstream
  subscription per topic whatever the number of bots, answered and fanned out by Seawall;
- every upstream handshake goes through one connect rate (`dial.py`, `admission.py`), and a lost public
  connection is re-made with jittered backoff while bots stay connected.
"""
