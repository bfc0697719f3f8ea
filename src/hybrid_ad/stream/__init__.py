"""Real time on Redis Streams: `publish` replays an event file as a stream, `stream` scores one.

Thin adapters over the scoring core: every event goes through the live scorer's micro-batch
path. redis-py is imported here only (lazily), so the rest of the package never needs it.
"""
