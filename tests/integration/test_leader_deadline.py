"""Leader election (``rdsiam.operator.leader``) against the Kubernetes API emulator over real sockets, with
the timings scaled down (Lease 3 s, so a renew deadline of 2 s; renew every 0.5 s):

- a leader whose API calls stall (a TCP relay that holds its bytes) stops acting at its renew deadline,
  before the standby takes the Lease: the two replicas never act at once;
- a malformed Lease ends neither replica's election and never makes two leaders;
- another holder's Lease expires by the time this replica last saw it change, not by its renewTime, so a
  holder whose clock is behind keeps its Lease and a dead one whose clock was ahead loses it on time;
- an unexpected exception makes the replica step down and try again instead of ending the election.

Every replica's ``active`` Event records its transitions, so "never both at once" is checked exactly, not
by sampling.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rdsiam.operator.kubeapi import KubeApi
from rdsiam.operator.leader import LeaderElector
from rdsiam.testing.kube import KubeEmulator

LEASE, LEASE_SECONDS, RENEW_EVERY = "rdsiam-operator", 3, 0.5  # the 15 s / 5 s defaults scaled by 1/5
RENEW_DEADLINE = LEASE_SECONDS * 2 / 3  # the elector's default, as the 10 s of the 15 s Lease
SLACK = 0.5  # event-loop and emulator latency allowed on top of a computed instant (a busy CI machine)


class Recorder(asyncio.Event):
    """An Event that logs ``(loop time, replica, is set)`` for each change, into a log shared by replicas."""

    def __init__(self, who: str, log: list[tuple[float, str, bool]]) -> None:
        super().__init__()
        self.who, self.log = who, log

    def set(self) -> None:
        if not self.is_set():
            self.log.append((asyncio.get_running_loop().time(), self.who, True))
        super().set()

    def clear(self) -> None:
        if self.is_set():
            self.log.append((asyncio.get_running_loop().time(), self.who, False))
        super().clear()


def overlaps(log: list[tuple[float, str, bool]]) -> list[float]:
    """The instants at which more than one replica was active."""
    active: set[str] = set()
    out = []
    for when, who, is_set in log:
        (active.add if is_set else active.discard)(who)
        if len(active) > 1:
            out.append(when)
    return out


class StallingRelay:
    """A TCP relay to the emulator; while stalled it forwards nothing in either direction and keeps the
    connections open (a hung API server or a network partition on this replica's path only)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> StallingRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            for w in (writer, *([up_writer] if "up_writer" in locals() else [])):
                w.close()
                self._writers.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self.flowing.wait()
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def stop(self) -> None:
        self.resume()
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()


def client(url: str, kube: KubeEmulator) -> KubeApi:
    return KubeApi(url, headers={"Authorization": f"Bearer {kube.token}"})


async def wait_until(what: str, check: Callable[[], bool], timeout: float) -> float:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return loop.time()


class Replicas:
    """Electors on one Lease, each with a recorded ``active``; stopped (and their clients closed) at the end."""

    def __init__(self, kube: KubeEmulator, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.log: list[tuple[float, str, bool]] = []
        self.active: dict[str, Recorder] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.clients: list[KubeApi] = []
        self.admin = self.client(kube.url)

    def client(self, url: str) -> KubeApi:
        api = client(url, self.kube)
        self.clients.append(api)
        return api

    def start(self, identity: str, api: KubeApi | None = None) -> asyncio.Task[None]:
        self.active[identity] = Recorder(identity, self.log)
        elector = LeaderElector(api or self.client(self.kube.url), self.active[identity], namespace=self.namespace,
                                name=LEASE, identity=identity, lease_seconds=LEASE_SECONDS, renew_every=RENEW_EVERY)
        self.tasks[identity] = asyncio.create_task(elector.run(), name=f"elector {identity}")
        return self.tasks[identity]

    def alive(self) -> dict[str, str]:
        """Each replica's task: "running", or how it ended."""
        return {who: "running" if not t.done() else repr(t.exception()) if not t.cancelled() else "cancelled"
                for who, t in self.tasks.items()}

    def when(self, who: str, is_set: bool) -> list[float]:
        return [t for t, w, s in self.log if w == who and s == is_set]

    async def lease(self) -> dict[str, Any]:
        lease = await self.admin.get_lease(self.namespace, LEASE)
        assert lease is not None
        return lease

    async def write(self, spec: Any) -> None:
        """Replace the Lease's spec as another party would (guarded by its resourceVersion)."""
        lease = await self.admin.get_lease(self.namespace, LEASE)
        body = lease or {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": LEASE, "namespace": self.namespace}}
        body["spec"] = spec
        if lease is None:
            await self.admin.create_lease(self.namespace, body)
        else:
            await self.admin.replace_lease(self.namespace, LEASE, body)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for api in self.clients:
            await api.close()


@pytest.fixture
async def replicas(kube: KubeEmulator, namespace: str) -> AsyncIterator[Replicas]:
    group = Replicas(kube, namespace)
    try:
        yield group
    finally:
        await group.close()


def stamp(offset: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_stalled_leader_steps_down_at_its_renew_deadline_before_the_standby_takes_over(
    kube: KubeEmulator, replicas: Replicas,
) -> None:
    relay = await StallingRelay(kube.host, kube.port).start()
    try:
        loop = asyncio.get_running_loop()
        replicas.start("a", replicas.client(relay.url))  # the client's own timeout stays 10 s
        await wait_until("a leading", lambda: replicas.active["a"].is_set(), timeout=5)
        replicas.start("b")
        await asyncio.sleep(2 * RENEW_EVERY)
        assert not replicas.active["b"].is_set() and (await replicas.lease())["spec"]["holderIdentity"] == "a"

        relay.stall()  # a's Lease calls now hang (a GET or a PUT in flight, or the next one)
        stalled = loop.time()
        taken = await wait_until("b leading", lambda: replicas.active["b"].is_set(), timeout=LEASE_SECONDS + 3)
        stepped_down = replicas.when("a", False)
        assert stepped_down, f"a still active {taken - stalled:.2f} s into the stall, when b took over"
        # a renewed at most RENEW_EVERY before the stall; it stops RENEW_DEADLINE after that renewal was sent.
        assert stepped_down[0] - stalled <= RENEW_DEADLINE + SLACK
        assert not overlaps(replicas.log), f"both active at {overlaps(replicas.log)}; log {replicas.log}"
        # b saw a's last renewal after a sent it, and took over LEASE_SECONDS later; a had stopped
        # RENEW_DEADLINE after sending it.
        assert taken - stepped_down[0] >= LEASE_SECONDS - RENEW_DEADLINE - SLACK
        assert (await replicas.lease())["spec"]["holderIdentity"] == "b"

        relay.resume()  # a's held requests now arrive late (a stale PUT gets 409); a stays a standby
        await asyncio.sleep(4 * RENEW_EVERY)
        assert not replicas.active["a"].is_set() and replicas.active["b"].is_set()
        assert not overlaps(replicas.log)
        assert (await replicas.lease())["spec"]["holderIdentity"] == "b"
        assert replicas.alive() == {"a": "running", "b": "running"}
    finally:
        relay.resume()  # before a's graceful release goes through it
        await replicas.close()
        await relay.stop()


CORRUPTIONS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "renewTime not a time": lambda spec: {**spec, "renewTime": "not-a-time"},
    "renewTime a number": lambda spec: {**spec, "renewTime": 7},
    "leaseDurationSeconds a string": lambda spec: {**spec, "leaseDurationSeconds": "x"},
    "spec not an object": lambda spec: "garbage",
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
async def test_a_malformed_lease_ends_no_election_and_makes_no_second_leader(
    replicas: Replicas, corrupt: str,
) -> None:
    replicas.start("a")
    await wait_until("a leading", lambda: replicas.active["a"].is_set(), timeout=5)
    replicas.start("b")
    await asyncio.sleep(2 * RENEW_EVERY)

    await replicas.write(CORRUPTIONS[corrupt]((await replicas.lease())["spec"]))
    await asyncio.sleep(LEASE_SECONDS + 4 * RENEW_EVERY)  # long enough for a takeover, had it been one

    assert replicas.alive() == {"a": "running", "b": "running"}
    assert not overlaps(replicas.log), f"both active at {overlaps(replicas.log)}; log {replicas.log}"
    leaders = [who for who, event in replicas.active.items() if event.is_set()]
    spec = (await replicas.lease())["spec"]
    assert leaders == [spec["holderIdentity"]]  # one leader again, holding a well-formed Lease
    assert isinstance(parse(spec["renewTime"]), datetime.datetime)
    assert spec["leaseDurationSeconds"] == LEASE_SECONDS and isinstance(spec["leaseTransitions"], int)
    if corrupt != "spec not an object":  # the holder still names a: it just renews over the damage
        assert replicas.when("a", False) == [] and replicas.when("b", True) == []


async def test_a_dead_holders_malformed_lease_is_taken_after_it_is_seen_unchanged_for_the_lease_duration(
    replicas: Replicas,
) -> None:
    await replicas.write({"holderIdentity": "ghost", "renewTime": "not-a-time", "leaseDurationSeconds": LEASE_SECONDS,
                          "leaseTransitions": "many"})
    started = asyncio.get_running_loop().time()
    replicas.start("a")
    taken = await wait_until("a leading", lambda: replicas.active["a"].is_set(), timeout=LEASE_SECONDS + 3)
    assert taken - started >= LEASE_SECONDS - 0.05  # not before: the ghost might still be alive
    assert taken - started <= LEASE_SECONDS + SLACK  # and it looked again as the Lease ran out
    spec = (await replicas.lease())["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 1  # a malformed count restarts
    assert replicas.alive() == {"a": "running"}


@pytest.mark.parametrize("skew", [-3600.0, 3600.0], ids=["holder clock behind", "holder clock ahead"])
async def test_another_holders_lease_expires_by_when_it_was_last_seen_to_change_not_by_its_renew_time(
    replicas: Replicas, skew: float,
) -> None:
    """A live holder whose clock is an hour behind keeps its Lease (it changes every renewal); once it dies,
    or when its clock is an hour ahead and it is dead, the Lease is taken LEASE_SECONDS after its last change."""
    loop = asyncio.get_running_loop()
    last_change = 0.0

    async def renew() -> None:
        nonlocal last_change
        await replicas.write({"holderIdentity": "skewed", "renewTime": stamp(skew),
                              "leaseDurationSeconds": LEASE_SECONDS})
        last_change = loop.time()

    async def holder() -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            await renew()

    await renew()
    renewing = asyncio.create_task(holder()) if skew < 0 else None
    try:
        replicas.start("a")
        if renewing is not None:
            await asyncio.sleep(2 * LEASE_SECONDS)
            assert replicas.when("a", True) == [], "a took the Lease of a live holder"
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
        taken = await wait_until("a leading", lambda: replicas.active["a"].is_set(), timeout=LEASE_SECONDS + 3)
        # a looks every RENEW_EVERY, so it saw the last change up to RENEW_EVERY after it was made.
        assert LEASE_SECONDS - SLACK <= taken - last_change <= LEASE_SECONDS + RENEW_EVERY + SLACK
        assert replicas.alive() == {"a": "running"}
    finally:
        if renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)


class Flaky(KubeApi):
    """The real client, whose next Lease read fails with an exception no API error explains (a bug)."""

    fail_next = False

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.fail_next:
            self.fail_next = False
            raise KeyError("a bug")
        return await super().get_lease(namespace, name)


async def test_an_unexpected_exception_steps_down_and_the_election_goes_on(
    kube: KubeEmulator, replicas: Replicas,
) -> None:
    api = Flaky(kube.url, headers={"Authorization": f"Bearer {kube.token}"})
    replicas.clients.append(api)
    replicas.start("a", api)
    await wait_until("a leading", lambda: replicas.active["a"].is_set(), timeout=5)
    api.fail_next = True
    await wait_until("a stepping down", lambda: not replicas.active["a"].is_set(), timeout=2 * RENEW_EVERY + SLACK)
    await wait_until("a leading again", lambda: replicas.active["a"].is_set(), timeout=5)
    assert replicas.alive() == {"a": "running"}
    assert (await replicas.lease())["spec"]["holderIdentity"] == "a"


def test_the_renew_deadline_must_fall_between_the_renew_period_and_the_lease_duration() -> None:
    active = asyncio.Event()
    kwargs: dict[str, Any] = {"namespace": "n", "name": "l", "identity": "a", "lease_seconds": 15}
    assert LeaderElector(None, active, **kwargs).renew_deadline == 10  # client-go's defaults: 15 s / 10 s
    for bad in ({"renew_deadline": 15}, {"renew_deadline": 4, "renew_every": 5.0}):
        with pytest.raises(ValueError, match="renew_deadline"):
            LeaderElector(None, active, **{**kwargs, **bad})
