"""`seawall demo`: the built-in simulator, Seawall and a misbehaving bot fleet, side by side."""
