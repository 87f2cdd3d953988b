# -*- test-case-name: tests.protocols.test_redis,tests.protocols.test_matrix -*-
"""Redis probe: a RESP array whose first bulk string is a known command.

``*N\\r\\n$M\\r\\nCOMMAND\\r\\n`` (RESP2 and RESP3 clients send requests the same way).
Inline commands (``PING\\r\\n``) are left to the TCPMUX probe, which sees a service
name there: a TCPMUX route named ``ping`` wins, and a Redis route cannot match them.
"""

from __future__ import annotations

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult, Verdict
from portmux.protocols.base import FunctionProbe

__all__ = ["COMMANDS", "MAX_ARGUMENTS", "PROBE", "probe_redis"]

COMMANDS = frozenset(
    """
    ACL APPEND AUTH BGREWRITEAOF BGSAVE BITCOUNT BITFIELD BITOP BITPOS BLMOVE BLPOP BRPOP
    BZPOPMAX BZPOPMIN CLIENT CLUSTER COMMAND CONFIG COPY DBSIZE DECR DECRBY DEL DISCARD
    DUMP ECHO EVAL EVALSHA EVAL_RO EVALSHA_RO EXEC EXISTS EXPIRE EXPIREAT FCALL FLUSHALL
    FLUSHDB FUNCTION GEOADD GEODIST GEOHASH GEOPOS GEOSEARCH GET GETDEL GETEX GETRANGE
    GETSET HDEL HELLO HEXISTS HGET HGETALL HINCRBY HKEYS HLEN HMGET HMSET HSCAN HSET
    HSETNX HVALS INCR INCRBY INCRBYFLOAT INFO KEYS LASTSAVE LATENCY LINDEX LINSERT LLEN
    LMOVE LMPOP LPOP LPUSH LRANGE LREM LSET LTRIM MEMORY MGET MIGRATE MODULE MONITOR MOVE
    MSET MSETNX MULTI OBJECT PERSIST PEXPIRE PFADD PFCOUNT PFMERGE PING PSETEX PSUBSCRIBE
    PSYNC PTTL PUBLISH PUBSUB PUNSUBSCRIBE QUIT RANDOMKEY READONLY READWRITE RENAME
    RENAMENX REPLCONF REPLICAOF RESET RESTORE ROLE RPOP RPUSH SADD SAVE SCAN SCARD SCRIPT
    SDIFF SELECT SENTINEL SET SETEX SETNX SETRANGE SHUTDOWN SINTER SISMEMBER SLAVEOF
    SLOWLOG SMEMBERS SMOVE SORT SPOP SRANDMEMBER SREM SSCAN SSUBSCRIBE STRLEN SUBSCRIBE
    SUNION SWAPDB SYNC TIME TOUCH TTL TYPE UNLINK UNSUBSCRIBE UNWATCH WAIT WATCH XACK XADD
    XAUTOCLAIM XCLAIM XDEL XGROUP XINFO XLEN XPENDING XRANGE XREAD XREADGROUP XREVRANGE
    XTRIM ZADD ZCARD ZCOUNT ZINCRBY ZRANGE ZRANK ZREM ZREVRANGE ZSCAN ZSCORE
    """.split()  # noqa: SIM905 - a word list reads better than 180 quoted strings
)
"""Commands a client may open a connection with; anything else is NO."""

MAX_ARGUMENTS = 1024 * 1024
_LONGEST = max(len(c) for c in COMMANDS)
_PREFIXES = frozenset(
    (len(c), c[:i].encode("ascii")) for c in COMMANDS for i in range(len(c) + 1)
)
"""(command length, upper-case prefix) of every known command."""
_DIGITS = frozenset(b"0123456789")


def probe_redis(data: bytes) -> ProbeResult:
    """Match once the first bulk string (the command name) and its CRLF are here."""
    header = _number(data, 0, b"*", MAX_ARGUMENTS)
    if not isinstance(header, tuple):
        return header
    position = header[1]  # the element count itself only has to be 1..MAX_ARGUMENTS
    header = _number(data, position, b"$", _LONGEST)
    if not isinstance(header, tuple):
        return header
    size, position = header
    name = data[position : position + size].upper()
    if (size, name) not in _PREFIXES:
        return NO
    ending = data[position + size : position + size + 2]
    if ending != b"\r\n"[: len(ending)]:
        return NO
    if len(name) < size or len(ending) < 2:
        return NEED_MORE
    return Preamble(protocol="redis", command=name.decode("ascii"))


def _number(data: bytes, start: int, marker: bytes, largest: int) -> tuple[int, int] | Verdict:
    """Parse ``<marker><1..largest>\\r\\n`` at ``start``: (number, next offset) or a verdict."""
    if len(data) <= start:
        return NEED_MORE
    if data[start : start + 1] != marker:
        return NO
    index = start + 1
    width = len(str(largest))
    while index < len(data) and data[index] in _DIGITS:
        index += 1
        if index - start - 1 > width:
            return NO
    digits = data[start + 1 : index]
    if digits[:1] == b"0":
        return NO  # no leading zeros, and zero elements or bytes is not a command
    ending = data[index : index + 2]
    if ending != b"\r\n"[: len(ending)] or (ending and not digits):
        return NO
    if len(ending) < 2:
        return NEED_MORE
    number = int(digits)
    return (number, index + 2) if number <= largest else NO


PROBE = FunctionProbe("redis", probe_redis)
