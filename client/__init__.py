"""Clients of a voxline server over the wire: the one realtime WebSocket client (``realtime``)
and the durable jobs client (``jobs``).

Used by the demo, the benchmark and the tests alike; it depends on ``pipeline`` (audio helpers,
errors) only, never on the server it talks to.
"""
