"""The shared buffer: traces wait in Redis or Redis Cluster, so agents are stateless and interchangeable.

Any agent may receive any span and any agent may decide any trace. A stable hash of the trace ID
picks one of ``shards``; every key of a shard carries the shard's hash tag, so each Lua script
(append, claim, settle) touches one cluster slot and runs atomically. Scripts are loaded once and
called by SHA, pipelined per request; after a server restart or SCRIPT FLUSH (NOSCRIPT) they are
loaded again and only the refused calls run again.

Key layout, per shard ``{n}`` (``ts`` is ``key_prefix``)::

    ts:{n}:s:<trace_id_hex>   STRING  the trace: while buffered or being decided, its fragments as
                                      they arrived, each after its facts record, its resources by
                                      digest (``wire.chain``); once decided, its verdict
                                      (``Verdict.encode``: "1"/"0" first), TTL decision_cache.ttl
    ts:{n}:r:<period>         HASH    digest -> a resource's fields (the appends of one period of
                                      the hold TTL), TTL three periods
    ts:{n}:due                ZSET    trace -> decision deadline (1 = too big, 2 = overflow: decide now)
    ts:{n}:claims             ZSET    trace -> lease deadline of the agent deciding it
    ts:{n}:meta               HASH    tb: bytes stored (trace keys' lengths), eb: bytes of traces
                                      marked for early decision

One key per trace costs each trace one command to append (``SET NX`` for a new trace; a
``GETRANGE`` and an ``APPEND`` for one seen before, whose key may hold its verdict instead), none
to claim (the agent reads the claimed values with one ``MGET`` per shard) and two to settle
(``STRLEN``, against the length claimed, then ``SET`` of the verdict; a ``GETRANGE`` reads what
arrived since the claim, when something did): the sorted sets change once per call, for every
trace of it. Each command a script runs costs Redis several times what the same command costs
sent by a client, and every string that enters Lua is copied and hashed whole, so a trace's bytes
enter Lua once, as one argument of the append, and never pass through a script's reply. The
facts records are merged when a trace is claimed, in the wire core (``wire.unchain``), so the
scripts never read them but for a fragment's length and root bit.

A resource's fields (a service's attributes: often a kilobyte or more, and the same in every
request of that service) are stored once per shard and period, in ``r:<period>`` under their
BLAKE2b digest, and each fragment refers to them by that digest: storing them in every trace sent
under them took a fifth of the buffer's memory. An agent keeps the resources it has sent or read
at hand (``_RESOURCES_CACHED``) and reads those it lacks from the shard's hashes when it claims.
A digest names content, so any agent's copy is right; a resource hash lives three hold periods
after its last write, longer than a trace that refers to it is held.

A claimed trace is leased: the agent renews its leases every lease/3 while deciding and exporting;
an agent that dies stops renewing and another agent reclaims the trace when the lease runs out.
Every key has a TTL, so nothing outlives a fleet that is gone for good.

Commands that time out raise ``BufferUnavailable``; a command that reaches Redis after the agent gave
up on it is refused by the script itself (a fence computed from Redis's clock), so a client's retry
never doubles spans that a paused Redis would otherwise have taken late. A Redis that is away is one
incident in the log (a warning, a reminder now and then, a line when it answers again), however
many operations fail meanwhile.

In a cluster that moves slots or fails a master over, ``redis_routing.Router`` takes each script
to the node serving its shard and sends it again after MOVED, and after ASK, TRYAGAIN or
CLUSTERDOWN until the fence; every script declares ``ts:{n}:absent``, a key that never exists, so
no script runs while a shard's keys are split between two nodes. A shard that failed is probed
(a read-only script) before a request writes to any shard, so a request is refused whole rather
than taken by some shards only while one of them is away. With ``wait_replicas``, an append is
acknowledged only once that many replicas have its writes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import AsyncIterator, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from tailsampler.collector.config import BufferConfig, BufferLimits, DecisionCacheConfig
from tailsampler.collector import wire
from tailsampler.collector.wire import Fragment
from tailsampler.common.incident import Incident
from tailsampler.common.verdict import Verdict

from .base import AppendResult, BufferFull, BufferUnavailable, Claimed, Occupancy, Relief, Settlement, TraceBuffer
from .redis_budget import UNREACHABLE
from .redis_packing import pack_with_hiredis
from .redis_routing import NotReplicated, Routed, Router

log = logging.getLogger(__name__)

# Traces of a fleet that is gone for good are kept at least this long, so agents restarted
# within it still decide them.
_MIN_HOLD = 600.0
# answers that mean "not now" rather than "wrong": the client retries later. ClusterError covers
# CLUSTERDOWN and MASTERDOWN (an election), AskError MOVED and ASK (a slot still moving at the fence)
_TRANSIENT = (OutOfMemoryError, ClusterError, TryAgainError, AskError, BusyLoadingError, NotReplicated)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


class _Scripts:
    """The buffer's Lua scripts (each prefixed with the shared functions) and their SHA1s."""

    NAMES = ("append", "check", "claim", "settle", "renew")

    def __init__(self) -> None:
        common = _read("redis_common.lua")
        self.source = {name: common + _read(f"redis_{name}.lua") for name in self.NAMES}
        self.sha = {name: hashlib.sha1(src.encode()).hexdigest().encode() for name, src in self.source.items()}


_SCRIPTS = _Scripts()


def connect(url: str, cluster: bool, timeout: float) -> Redis | RedisCluster:
    """An asyncio client (hiredis parses the replies and packs the commands) that fails fast
    instead of retrying: the buffer's callers decide what a failure means (push back, try next tick).

    A cluster client patches its slot map on MOVED and never closes every connection because of
    MOVEDs (``reinitialize_steps=0``): the connections carry other requests' commands, whose
    answers would be lost; a failure is what makes ``Router`` read the whole map again."""
    options: dict[str, object] = dict(
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    client = RedisCluster.from_url(url, reinitialize_steps=0, **options) if cluster else Redis.from_url(url, **options)
    pack_with_hiredis(client)
    return client


def shard_keys(key_prefix: str, index: int) -> tuple[bytes, bytes, bytes, bytes]:
    """The keys every script of shard ``index`` declares: due, claims, meta, and ``absent``,
    which is never written: while the shard's slot is being migrated, a script that declares a
    missing key is refused (TRYAGAIN, or ASK then TRYAGAIN) by both nodes, so none runs with
    the shard's keys split between them."""
    return tuple(f"{key_prefix}:{{{index}}}:{k}".encode() for k in ("due", "claims", "meta", "absent"))  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _Shard:
    """A shard's key prefix and keys, encoded once: redis-py would encode every argument of
    every call again."""

    index: int
    prefix: bytes
    keys: tuple[bytes, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class _Call:
    script: str
    shard: _Shard
    args: Sequence[object]


class RedisTraceBuffer(TraceBuffer):
    shared = True

    def __init__(self, limits: BufferLimits, config: BufferConfig, registry: CollectorRegistry) -> None:
        assert config.shards is not None
        self._timeout = float(config.timeout)
        self._lease = float(config.lease)
        self._wait = limits.decision_wait
        self._wait_after_root = limits.decision_wait_after_root
        self._max_trace_bytes = limits.max_trace_bytes
        self._max_traces = math.ceil(limits.max_traces / config.shards)
        self._max_bytes = math.ceil(limits.max_bytes / config.shards)
        self._backpressure = limits.overflow == "backpressure"
        self._retry_after = max(1.0, self._wait_after_root or limits.tick)
        self._hold_ms = int(max(_MIN_HOLD, 2 * (self._wait + self._lease)) * 1000)
        self._kept_ttl_ms = self._dropped_ttl_ms = 0
        self.set_decision_cache(limits.decision_cache)
        self._shards = [
            _Shard(n, f"{config.key_prefix}:{{{n}}}:".encode(), shard_keys(config.key_prefix, n))
            for n in range(config.shards)
        ]
        # the append script's arguments that never change, encoded once
        self._append_limits = [str(v).encode() for v in (
            self._wait, self._wait_after_root, self._max_traces, self._max_bytes, self._max_trace_bytes,
            0 if self._backpressure else 1, self._hold_ms,
        )]
        self._early_seen = [0] * config.shards
        # resources both ways (fields -> digest, digest -> fields): a fragment refers to its
        # resources by digest, and the resources are stored once per shard and period
        self._digests: dict[bytes, bytes] = {}
        self._resources: dict[bytes, bytes] = {}
        self._client = connect(config.url, config.cluster, self._timeout)
        self._outage = Incident(log, f"redis buffer {where(self._client)}")
        # WAIT answers within half the timeout, the other half being the script's share
        self._router = Router(self._client, self._load_scripts, config.wait_replicas, max(1, int(self._timeout * 500)))
        self._failing: set[int] = set()  # shards whose last command failed: probed before a request writes
        self._clock_offset_ms: float | None = None
        self._clock_checked = False  # False after a failure: Redis may be another server now
        self._held: dict[bytes, tuple[int, int]] = {}  # trace ID -> shard, claimed length
        self._unread: list[tuple[_Shard, list[bytes], bytes, bytes]] = []  # claims whose values are still to read
        self._renewed_at = 0.0
        self._run_ids: dict[str, str] = {}
        self._held_by_shard = [0] * config.shards
        self._reclaimed = Counter(
            "tailsampler_redis_reclaimed_traces", "Traces taken over after their agent's lease ran out",
            registry=registry,
        )
        self._unavailable = Counter(
            "tailsampler_redis_unavailable", "Redis operations that failed because Redis was unreachable",
            ["operation"], registry=registry,
        )
        self._lost = Counter(
            "tailsampler_redis_lost_traces",
            "Buffered traces found gone because a Redis server restarted without them (no persistence)",
            registry=registry,
        )
        self._missing_resources = Counter(
            "tailsampler_redis_missing_resources",
            "Claimed traces that refer to a resource no resource hash of their shard holds any more "
            "(Redis evicted it, or the trace outlived three hold periods): kept as evaluation errors",
            registry=registry,
        )
        self._script_loads = Counter(
            "tailsampler_redis_script_loads", "Times the buffer's scripts were (re)loaded into Redis",
            registry=registry,
        )
        self._refused_but_buffered = Counter(
            "tailsampler_redis_refused_buffered_spans",
            "Spans that shards took of requests then refused because another shard could not take "
            "its part (or, with wait_replicas, its replicas did not acknowledge it): the client's "
            "retry buffers them again",
            registry=registry,
        )

    async def close(self) -> None:
        """Hand this agent's unsettled claims back at once, so other agents need not wait out the lease."""
        if self._held:
            try:
                await self._renew(0.0)
            except (BufferUnavailable, RedisError) as exc:
                log.warning("redis buffer: could not release %d claims (%s); they expire with their lease", len(self._held), exc)
        await self._router.close()
        await self._client.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    async def _sync_clock(self) -> None:
        """Learn Redis's clock relative to ours: the fence of each script is in Redis time."""
        before = time.time()
        seconds, micros = await self._client.time()
        after = time.time()
        self._clock_offset_ms = seconds * 1000 + micros / 1000 - (before + after) * 500
        self._clock_checked = True

    async def _load_scripts(self, node: ClusterNode | None) -> None:
        """Load the scripts where one was missing: a server restarted or flushed, a replica just
        promoted, a master just added."""
        for source in _SCRIPTS.source.values():
            if node is None:
                await self._client.script_load(source)
            else:
                await self._client.execute_command("SCRIPT LOAD", source, target_nodes=node)
        self._script_loads.inc()

    def _fence(self) -> int:
        """Past this Redis time a command is stale: the agent will have stopped waiting for it."""
        assert self._clock_offset_ms is not None
        return int(time.time() * 1000 + self._clock_offset_ms + self._timeout * 500)

    def _deadline(self) -> float:
        """The fence in this agent's monotonic clock: commands refused for a moving slot or an
        election are sent again until then, and no later, since Redis would refuse them."""
        return time.monotonic() + self._timeout / 2

    @asynccontextmanager
    async def _reaching(self, operation: str) -> AsyncIterator[None]:
        try:
            if not self._clock_checked:
                await self._sync_clock()
            yield
        except (*UNREACHABLE, *_TRANSIENT) as exc:
            self._fail(operation, exc)
        except ResponseError as exc:
            if _stale(exc):
                self._fail(operation, exc)
            raise
        self._outage.resolved()

    def _fail(self, operation: str, exc: Exception) -> None:
        self._unavailable.labels(operation).inc()
        self._outage.failed(f"unavailable ({operation}: {exc}); ingest answers retryable errors, decisions wait")
        # Redis may come back as another server (restart, failover) with another clock
        self._clock_checked = False
        raise BufferUnavailable(f"redis {where(self._client)} unavailable during {operation}: {exc}") from exc

    async def _run(self, calls: list[_Call], until: float, replicated: bool = False) -> list[object]:
        """Each call's reply or the exception it ended with; shards are marked failing or not."""
        results = await self._router.run(
            [Routed(call.shard.keys[0], ("EVALSHA", _SCRIPTS.sha[call.script], 4, *call.shard.keys, *call.args)) for call in calls],
            until, replicated,
        )
        for call, result in zip(calls, results):
            if isinstance(result, NotReplicated) or not isinstance(result, Exception):
                self._failing.discard(call.shard.index)  # the shard answered
            else:
                self._failing.add(call.shard.index)
                if _stale(result):  # our idea of Redis's clock may be off: learn it again
                    self._clock_checked = False
        return results

    def _first_failure(self, operation: str, results: list[object], keep: bool = False) -> None:
        """Raise the first failure among ``results``. ``keep``: what the calls that succeeded did
        must reach the caller (claims handed out, late spans returned), so the failures are only
        counted; what failed is tried again later (or, for a settlement, after the lease)."""
        failures = [result for result in results if isinstance(result, Exception)]
        if not failures:
            return
        if keep:
            self._unavailable.labels(operation).inc()
            return
        raise failures[0]

    # -- the TraceBuffer interface ------------------------------------------------------------

    async def append(self, fragments: dict[bytes, Fragment], now: float, relief: Relief | None = None) -> AppendResult:
        digests = self._referred(fragments.values())
        appends = wire.shard_appends(fragments, len(self._shards), digests)
        groups = {index: trace_ids for index, trace_ids, _, _, _ in appends}
        result = AppendResult({})
        # relief's verdict for every trace, should the script find it new (it alone can tell)
        chosen: dict[bytes, Verdict] = {}
        letters: dict[Verdict, bytes] = {}
        decisions = [b"", b"", b""]
        if relief is not None:
            chosen = {tid: relief.choose(tid, fragment) for tid, fragment in fragments.items()}
            letters = {relief.kept: b"k", relief.kept_for_error: b"e", relief.dropped: b"d"}
            decisions = [verdict.encode() for verdict in letters]
        async with self._reaching("append"):
            until = self._deadline()
            if relief is None:  # under relief new traces are not buffered: nothing to refuse them for
                await self._admit(groups, fragments, until)
            fence = self._fence()
            epoch = b"r:%d" % self._epoch(now)
            calls = []
            for index, trace_ids, ids_hex, heads, chains in appends:
                shard = self._shards[index]
                calls.append(_Call("append", shard, [
                    fence, shard.prefix, now, *self._append_limits, ids_hex,
                    b"".join([letters[chosen[t]] for t in trace_ids]) if letters else b"",
                    *decisions, self._kept_ttl_ms, self._dropped_ttl_ms, shard.prefix + epoch, 2 * len(heads),
                    *[part for head in heads for part in (digests[head], head)], *chains,
                ]))
            replies = await self._run(calls, until, replicated=True)
            self._refuse_partly_taken(calls, replies, groups, fragments)
        for call, reply, trace_ids in zip(calls, replies, groups.values()):
            marked, early, statuses, decided = reply  # type: ignore[misc]
            result.early += marked
            self._early_seen[call.shard.index] = early
            if statuses.count(b"0") == len(statuses):  # every trace buffered: the usual answer
                continue
            verdicts = iter(decided)
            for trace_id, status in zip(trace_ids, statuses):
                if status == _BUFFERED:
                    continue
                if status == _DECIDED_NOW:
                    result.decided_now[trace_id] = chosen[trace_id]
                elif status == _RESCUED:
                    assert relief is not None
                    result.late_kept[trace_id] = relief.kept_for_error
                    result.rescued += 1
                elif (verdict := Verdict.decode(next(verdicts))).keep:
                    result.late_kept[trace_id] = verdict
                else:
                    result.late_dropped_spans += fragments[trace_id].span_count
        return result

    def _refuse_partly_taken(
        self, calls: list[_Call], replies: list[object], groups: dict[int, list[bytes]], fragments: dict[bytes, Fragment]
    ) -> None:
        """A request some shards took and another could not is refused: the client keeps its
        spans and sends them again. The spans the other shards took are then buffered twice;
        they are counted, and the failing shard is probed before the next request writes."""
        for reply in replies:
            if isinstance(reply, Exception):
                break
        else:
            return
        taken = 0
        for reply, trace_ids in zip(replies, groups.values()):
            if isinstance(reply, NotReplicated):
                reply = reply.reply
            if not isinstance(reply, Exception):  # a trace answered 0 was buffered, not one already decided
                statuses = reply[2]  # type: ignore[index]
                taken += sum(fragments[t].span_count for t, status in zip(trace_ids, statuses) if status == _BUFFERED)
        self._refused_but_buffered.inc(taken)
        self._first_failure("append", replies)

    def _epoch(self, now: float) -> int:
        """The period of one hold TTL that ``now`` falls in: a shard's resources are kept in one
        hash per period (``r:<period>``), which lives three periods after its last write, so
        resources of traces gone for good leave with it."""
        return int(now * 1000) // self._hold_ms

    def _referred(self, fragments: Iterable[Fragment]) -> dict[bytes, bytes]:
        """The digest of each resource the fragments were sent under, by its fields: the append
        stores them in the shards' resource hashes, the fragments only their digests. Held apart
        from the cache, which may start again while this request's resources are learned."""
        digests: dict[bytes, bytes] = {}
        for head in {head for fragment in fragments for head in fragment.pieces[1::2]}:
            digest = self._digests.get(head)
            if digest is None:
                digest = hashlib.blake2b(head, digest_size=wire.DIGEST_SIZE).digest()
                self._learn(digest, head)
            digests[head] = digest
        return digests

    def _learn(self, digest: bytes, head: bytes) -> None:
        """Remember a resource both ways; a cache past its bound starts again (what it then
        lacks is read back from Redis)."""
        if len(self._resources) >= _RESOURCES_CACHED:
            self._digests.clear()
            self._resources.clear()
        self._digests[head] = digest
        self._resources[digest] = head

    async def _admit(self, groups: dict[int, list[bytes]], fragments: dict[bytes, Fragment], until: float) -> None:
        """Refuse a request that does not fit, or that a shard which failed last time still
        cannot take, before any shard takes part of it.

        With decide_early a request only needs the bounds checked when a shard it touches was
        last seen with as many traces waiting for an early decision as it may hold.
        """
        if not self._backpressure:
            groups = {
                index: ids for index, ids in groups.items()
                if index in self._failing or self._early_seen[index] + len(ids) >= self._max_traces
            }
            if not groups:
                return
        calls = [
            _Call("check", self._shards[index], [
                self._shards[index].prefix, self._max_traces, self._max_bytes,
                sum(map(_SIZE, map(fragments.__getitem__, ids))), b"".join(ids).hex(),
            ])
            for index, ids in groups.items()
        ]
        replies = await self._run(calls, until)
        self._first_failure("append", replies)
        for call, (over_traces, over_bytes, early) in zip(calls, replies):
            self._early_seen[call.shard.index] = early
            if over_traces > 0 or over_bytes > 0:
                if self._backpressure or early >= self._max_traces:
                    what = "num_traces" if over_traces > 0 else "max_bytes"
                    raise BufferFull(
                        f"trace buffer full ({what} reached in shard {call.shard.index})",
                        retry_after=self._retry_after,
                    )

    async def claim_due(self, now: float, limit: int, *, draining: bool = False) -> list[Claimed]:
        """Claim from every shard, starting at a random one so agents spread over the shards;
        shards not asked yet, and shards that filled their quota, share what the others left.

        Draining claims nothing: other agents, or this one after a restart, decide pending
        traces at their deadline with every span in hand. Deciding them now would cut traces
        short for the whole fleet. This agent's own unsettled claims are handed back by ``close``.
        """
        if draining:
            return []
        claimed: list[Claimed] = []
        count = len(self._shards)
        start = random.randrange(count)
        candidates = [self._shards[(start + i) % count] for i in range(count)]
        failures: list[object] = []
        async with self._reaching("claim"):
            if self._unread:  # claims whose values could not be read last time (a slot was moving)
                unread, self._unread = self._unread, []
                await self._read_claimed(unread, claimed, failures)
            while candidates and len(claimed) < limit:
                room = limit - len(claimed)
                quotas = [room // len(candidates) + (1 if i < room % len(candidates) else 0) for i in range(len(candidates))]
                asked = [(shard, quota) for shard, quota in zip(candidates, quotas) if quota > 0]
                unasked = candidates[len(asked):]
                fence = self._fence()
                calls = [
                    _Call("claim", shard, [fence, shard.prefix, now, now + self._lease, quota, self._hold_ms])
                    for shard, quota in asked
                ]
                try:
                    replies = await self._run(calls, self._deadline())
                except (*UNREACHABLE, *_TRANSIENT) as exc:
                    if not claimed:
                        raise
                    failures.append(exc)  # the traces claimed so far are this agent's: hand them out
                    break
                candidates = unasked
                handed: list[tuple[_Shard, list[bytes], bytes, bytes]] = []
                for (shard, quota), reply in zip(asked, replies):
                    if isinstance(reply, Exception):  # this shard waits for the next claim
                        failures.append(reply)
                        continue
                    ids_hex, reasons, deadlines = reply  # type: ignore[misc]
                    if ids_hex:
                        handed.append((shard, _trace_ids(ids_hex), reasons, deadlines))
                    if len(ids_hex) // 32 == quota:
                        candidates.append(shard)
                if handed:
                    await self._read_claimed(handed, claimed, failures)
            self._first_failure("claim", failures, keep=bool(claimed))
        return claimed

    async def _read_claimed(
        self, handed: list[tuple[_Shard, list[bytes], bytes, bytes]], into: list[Claimed], failures: list[object]
    ) -> None:
        """Read the claimed traces' values, one MGET per shard, and hand them out as ``Claimed``.
        The claims are this agent's from the claim on (renewed, released by ``close``); a shard
        whose values cannot be read now (its slot started to move after the claim) is read again
        at the next claim."""
        for shard, ids, _, _ in handed:
            self._held.update(zip(ids, repeat((shard.index, -1))))  # held, not yet read
        values = await self._router.run(
            [Routed(shard.keys[0], ("MGET", *[shard.prefix + b"s:" + tid.hex().encode() for tid in ids]))
             for shard, ids, _, _ in handed],
            self._deadline(),
        )
        for (shard, ids, reasons, deadlines), found in zip(handed, values):
            if isinstance(found, Exception):
                failures.append(found)
                self._unread.append((shard, ids, reasons, deadlines))
                continue
            values = [value if value is not None and value[:1] == _CHAIN else None for value in found]  # type: ignore[union-attr]
            self._take(shard.index, ids, reasons, deadlines, values, await self._unchained(shard, ids, values), into)

    def _take(self, index: int, ids: list[bytes], reasons: bytes, deadlines: bytes, values: list[bytes | None],
              unchained: list[tuple[bytes, bytes] | None], into: list[Claimed]) -> None:
        """Claimed traces as ``Claimed``; one whose key is gone or was decided between the claim
        and the read is left to its lease."""
        lapsed = reasons.count(b"l")
        if lapsed:
            self._reclaimed.inc(lapsed)
        early = reasons.count(b"s") + reasons.count(b"o")
        if early:
            self._early_seen[index] = max(0, self._early_seen[index] - early)
        due = list(map(float, deadlines.split(b",")))
        if None in values:
            kept = [i for i, value in enumerate(values) if value is not None]
            for i in set(range(len(ids))).difference(kept):
                self._held.pop(ids[i], None)
            ids, values, due = [ids[i] for i in kept], [values[i] for i in kept], [due[i] for i in kept]
            unchained = [unchained[i] for i in kept]
            reasons = bytes(reasons[i] for i in kept)
        if not ids:
            return
        datas, facts = zip(*unchained)  # type: ignore[arg-type]
        self._held.update(zip(ids, zip(repeat(index), map(len, values))))  # type: ignore[arg-type]
        into += map(Claimed, ids, datas, facts, map(_REASONS.__getitem__, reasons), due)

    async def _unchained(self, shard: _Shard, ids: list[bytes], values: list[bytes | None]) -> list[tuple[bytes, bytes] | None]:
        """Each value as (its fragments' bytes, their merged facts), ``None`` for none; the
        resources this agent has not seen are read from the shard's resource hashes first."""
        out: list[tuple[bytes, bytes] | bytes | None] = [
            None if value is None else self._unchain(tid, value) for tid, value in zip(ids, values)
        ]
        while missing := {digest for digest in out if isinstance(digest, bytes)}:
            found = await self._read_resources(shard, missing)
            for i, digest in enumerate(out):
                if isinstance(digest, bytes):
                    value = values[i]
                    assert value is not None
                    out[i] = self._unchain(ids[i], value) if digest in found else self._unreadable(ids[i], value, digest)
        return out  # type: ignore[return-value]

    async def _read_resources(self, shard: _Shard, digests: set[bytes]) -> set[bytes]:
        """Read resources from the shard's hashes of this period and the three before it (a
        resource hash lives three periods after its last write); returns the digests found."""
        wanted = list(digests)
        epoch = self._epoch(time.time())
        replies = await self._router.run(
            [Routed(shard.keys[0], ("HMGET", shard.prefix + b"r:%d" % (epoch - back), *wanted)) for back in range(4)],
            self._deadline(),
        )
        self._first_failure("claim", replies)
        found: set[bytes] = set()
        for reply in replies:
            for digest, head in zip(wanted, reply):  # type: ignore[call-overload]
                if head is not None and digest not in found:
                    self._learn(digest, head)
                    found.add(digest)
        return found

    def _unchain(self, trace_id: bytes, value: bytes) -> tuple[bytes, bytes] | bytes:
        """A trace's value as (its bytes, its merged facts), or the digest of a resource it refers
        to that this agent lacks. One this release cannot read (written by another release) is
        handed on as it is, with a record the decision loop refuses to read, so the trace is
        kept as an evaluation error rather than lost."""
        try:
            return wire.unchain(value, self._resources)
        except KeyError as missing:
            return missing.args[0]
        except ValueError as exc:
            log.error("redis buffer: trace %s is not stored as this release stores traces (%s)", trace_id.hex(), exc)
            return value, b""

    def _unreadable(self, trace_id: bytes, value: bytes, digest: bytes) -> tuple[bytes, bytes]:
        self._missing_resources.inc()
        log.error(
            "redis buffer: trace %s refers to resource %s, which no resource hash of its shard holds any more "
            "(evicted, or the trace outlived three hold periods); it is kept as an evaluation error", trace_id.hex(), digest.hex(),
        )
        return value, b""

    async def settle(self, settlements: list[Settlement], now: float) -> dict[bytes, bytes]:
        """Traces are no longer renewed from here on, even if Redis cannot be reached: their
        leases run out and they are decided again (a duplicate at worst, never a trace stuck
        under a lease that this agent renews forever). When only some shards can be reached,
        what the others returned is returned."""
        groups: dict[int, list[tuple[Settlement, int]]] = {}
        pop = self._held.pop
        for settlement, held in zip(settlements, map(pop, map(_TRACE_ID, settlements), repeat(None))):
            if held is not None:
                groups.setdefault(held[0], []).append((settlement, held[1]))
        if not groups:
            return {}
        async with self._reaching("settle"):
            fence = self._fence()
            calls = []
            for index, group in groups.items():
                shard = self._shards[index]
                codes: dict[Verdict, int] = {}
                choices = [codes.setdefault(s.verdict, len(codes)) for s, _ in group]
                calls.append(_Call("settle", shard, [
                    fence, shard.prefix, self._kept_ttl_ms, self._dropped_ttl_ms,
                    b"".join([s.trace_id for s, _ in group]).hex(), ",".join([str(length) for _, length in group]),
                    ",".join(map(str, choices)), *[verdict.encode() for verdict in codes],
                ]))
            replies = await self._run(calls, self._deadline())
            self._first_failure("settle", replies, keep=not all(isinstance(r, Exception) for r in replies))
        stragglers: dict[bytes, bytes] = {}
        for index, group, reply in zip(groups, groups.values(), replies):
            if isinstance(reply, Exception) or not reply:
                continue
            ids = [group[position - 1][0].trace_id for position in reply[::2]]  # type: ignore[index]
            rests = await self._unchained(self._shards[index], ids, reply[1::2])  # type: ignore[index]
            stragglers.update(zip(ids, [rest[0] for rest in rests]))  # type: ignore[index]
        return stragglers

    def set_decision_cache(self, config: DecisionCacheConfig) -> None:
        """Decision keys get this TTL; a size of 0 turns that kind of decision key off (Redis
        bounds the keys by their TTL, not by a count)."""
        ttl_ms = int(float(config.ttl) * 1000)
        self._kept_ttl_ms = ttl_ms if config.sampled_cache_size > 0 else 0
        self._dropped_ttl_ms = ttl_ms if config.non_sampled_cache_size > 0 else 0

    async def occupancy(self) -> Occupancy:
        """The fleet's buffered traces and bytes; also notices a Redis that came back empty."""
        async with self._reaching("occupancy"):
            replies = await self._router.run(
                [
                    Routed(shard.keys[0], args)
                    for shard in self._shards
                    for args in (("ZCARD", shard.keys[0]), ("ZCARD", shard.keys[1]), ("HGET", shard.keys[2], "tb"))
                ],
                self._deadline(),
            )
            self._first_failure("occupancy", replies)
            servers = await self._servers()
        held = [replies[i] + replies[i + 1] for i in range(0, len(replies), 3)]
        self._notice_lost(held, servers)
        return Occupancy(sum(held), sum(int(replies[i + 2] or 0) for i in range(0, len(replies), 3)))

    async def _servers(self) -> dict[str, str]:
        """The ``run_id`` of every server holding shards, by server; it changes when one restarts."""
        if isinstance(self._client, RedisCluster):
            infos = await self._client.info("server", target_nodes=RedisCluster.PRIMARIES)
            return {name: info["run_id"] for name, info in infos.items()}
        return {"": (await self._client.info("server"))["run_id"]}

    def _server_of(self, shard: _Shard) -> str:
        if isinstance(self._client, RedisCluster):
            return self._client.get_node_from_key(shard.keys[0]).name
        return ""

    def _notice_lost(self, held: list[int], servers: dict[str, str]) -> None:
        """A server that restarted (same address, new run_id) without persistence comes back
        empty: the traces its shards held at the last reading are gone, and nothing else would
        say so. A failover is not a restart: the promoted replica is another server, and has the
        data."""
        restarted = {name for name, run_id in servers.items() if self._run_ids.get(name) not in (None, run_id)}
        lost = sum(
            before for shard, before, now in zip(self._shards, self._held_by_shard, held)
            if now == 0 and self._server_of(shard) in restarted
        )
        if lost:
            self._lost.inc(lost)
            log.error(
                "redis buffer: %s restarted and came back without the %d trace(s) it held; "
                "give Redis persistence (appendonly yes, appendfsync always) to keep them",
                ", ".join(sorted(restarted)) or where(self._client), lost,
            )
        self._run_ids, self._held_by_shard = servers, held

    # -- leases -------------------------------------------------------------------------------

    async def renew(self, now: float) -> None:
        """Extend the leases of this agent's unsettled claims once a third of a lease has passed
        since the last time, so a claim never runs out while its agent lives."""
        if not self._held or now < self._renewed_at + self._lease / 3:
            return
        self._renewed_at = now
        try:
            await self._renew(now + self._lease)
        except BufferUnavailable:
            pass  # the outage is on record; renewal goes on at the next tick
        except RedisError as exc:
            self._outage.failed(f"lease renewal failed ({exc}); retrying")

    async def _renew(self, deadline: float) -> None:
        groups: dict[int, list[str]] = {}
        for trace_id, (index, _) in self._held.items():
            groups.setdefault(index, []).append(trace_id.hex())
        calls = [
            _Call("renew", self._shards[index], [self._shards[index].prefix, deadline, self._hold_ms, *ids])
            for index, ids in groups.items()
        ]
        async with self._reaching("renew"):
            self._first_failure("renew", await self._run(calls, self._deadline()))


_BUFFERED, _DECIDED_NOW, _RESCUED = b"012"
_RESOURCES_CACHED = 16384  # resources an agent keeps at hand, both ways: a few MB
_CHAIN = b"\x01"  # the first byte of a buffered trace's value (redis_common.lua)
_REASONS = {ord("l"): "deadline", ord("d"): "deadline", ord("s"): "size", ord("o"): "overflow"}
_SIZE = attrgetter("size")
_TRACE_ID = itemgetter(0)


def _trace_ids(packed_hex: bytes) -> list[bytes]:
    """Trace IDs sent as their hex forms, concatenated."""
    packed = bytes.fromhex(packed_hex.decode())
    return [packed[i : i + 16] for i in range(0, len(packed), 16)]


def _stale(exc: object) -> bool:
    """The fence refused the call: it reached Redis after the agent had stopped waiting for it."""
    return isinstance(exc, ResponseError) and str(exc).startswith("STALE")


def where(client: Redis | RedisCluster) -> str:
    """The server a client talks to, for messages (no credentials)."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        return f"cluster via {node.host}:{node.port}" if node else "cluster"
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
