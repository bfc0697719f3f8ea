"""Connecting to Redis and reading stream entry ids; redis-py is imported only in here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybrid_ad.errors import HybridADError

if TYPE_CHECKING:
    import redis


class StreamError(HybridADError):
    """Redis cannot be reached, refuses a command, or holds something other than expected."""


def connect(url: str) -> redis.Redis:
    """A client for `url` (redis://host:port/db) that answers PING, with text responses."""
    try:
        import redis
    except ImportError:  # pragma: no cover - the `stream` extra is installed by make
        raise StreamError("redis-py is not installed: pip install 'hybrid-ad[stream]'") from None
    try:
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
        client.ping()
    except ValueError as exc:
        raise StreamError(f"--redis {url}: not a Redis URL ({exc})") from None
    except redis.RedisError as exc:
        raise StreamError(f"--redis {url}: cannot connect ({first_line(exc)})") from None
    return client


def redis_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a Redis command raises, for callers that turn them into `StreamError`."""
    import redis

    return (redis.RedisError,)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id `ms-seq` as a pair that sorts like Redis sorts ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def later(a: str, b: str | None) -> bool:
    """Whether entry id `a` comes after `b` (everything comes after None)."""
    return b is None or parse_id(a) > parse_id(b)


def stream_length(client: redis.Redis, name: str) -> int:
    return int(client.xlen(name))


def info_groups(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return list(client.xinfo_groups(stream))
