"""Fuzz benchmark: N seeded ttRPC frames against the real agent, then the Go ttRPC peer.

Usage: bench_fuzz.py [--frames N] [--seed S] [--batch B] [--no-peer] [--only-batch I]
(as root: the agent runs as a root process)

The agent runs under ``unshare --mount --propagation private --net`` with a fresh tmpfs on
/run/kata-containers: whatever it mounts or creates there stays in its own mount namespace,
and network RPCs see an empty network namespace. Its socket is a unix socket path in a
temporary directory (abstract sockets belong to a network namespace). RPCs that would reach
the host anyway are never sent: SetGuestDateTime (the clock), OnlineCPUMem and
MemHotplugByProbe (host CPUs and memory), ReseedRandomDev (the host's /dev/random), AddSwap
and AddSwapPath (swapon on the host's disks), DestroySandbox (the agent exits by design);
CreateSandbox's ``kernel_modules`` is left empty (modprobe on the host kernel). Container
cgroups go below /kata in the host's hierarchies, as for every integration test, and are
removed by the agent's teardown.

Frames, in batches of B (each batch generated from ``seed`` and its index, so any batch can
be replayed alone with ``--only-batch``):
- raw: 1-512 random bytes on a connection of their own, then a half-close;
- envelope: a valid header around a byte-mutated ttRPC ``Request`` (random service/method
  among the allowed ones, random payload, edge timeouts);
- contract: for a random AgentService method, a message built from its descriptor with
  random field values (paths with ``..``, ``/``, NUL, names of 255/256/4096/70 000 bytes,
  integers at their edges, NaN/inf), byte-mutated (one in four left valid).

After each batch a Health.Check on a fresh connection must answer within 5 s (else: a hang);
an agent that exited is a crash (the batch is reported and the agent restarted). The same
frames then go to containerd's Go ttRPC server (``go-ttrpc-peer serve``), which serves
grpc.Health only: every AgentService frame it gets is answered UNIMPLEMENTED, so the peer
figure compares framing and envelope robustness (crashes, hangs, answers), not handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import platform
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from pykata.protocols import agent_pb2, health_pb2, ttrpc_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import Code

HEADER = struct.Struct(">IIBB")
TESTS_DIR = str(Path(__file__).resolve().parents[1])
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
NEVER_SENT = {
    "SetGuestDateTime",
    "OnlineCPUMem",
    "MemHotplugByProbe",
    "ReseedRandomDev",
    "AddSwap",
    "AddSwapPath",
    "DestroySandbox",
}
METHODS = [m for m in AGENT_SERVICE.methods if m.name not in NEVER_SENT]
HANG_TIMEOUT = 5.0
ANSWER_WAIT = 10.0  # after a batch is written, how long its requests may take to answer
RAW_WAIT = 0.25  # how long a raw connection waits for the agent to answer or hang up
RAW_CONCURRENCY = 128
# Go ttrpc answers INTERNAL with this text for a payload that does not parse; so do we.
UNMARSHAL = "ttrpc: error unmarshalling payload"
SAMPLED = {"INTERNAL", "UNKNOWN", "UNDECODABLE"}  # messages kept for the report
LONG_POLLS = {"GetOOMEvent"}  # answered only when an OOM happens
WRITE_WINDOW = 256  # requests in flight on a batch's connection at most


# --- generation -----------------------------------------------------------------------

INT_EDGES = {
    FieldDescriptor.TYPE_INT32: [0, 1, -1, 2**31 - 1, -(2**31)],
    FieldDescriptor.TYPE_SINT32: [0, 1, -1, 2**31 - 1, -(2**31)],
    FieldDescriptor.TYPE_SFIXED32: [0, 1, -1, 2**31 - 1, -(2**31)],
    FieldDescriptor.TYPE_INT64: [0, 1, -1, 2**63 - 1, -(2**63), 2**31],
    FieldDescriptor.TYPE_SINT64: [0, 1, -1, 2**63 - 1, -(2**63)],
    FieldDescriptor.TYPE_SFIXED64: [0, 1, -1, 2**63 - 1, -(2**63)],
    FieldDescriptor.TYPE_UINT32: [0, 1, 2**31, 2**32 - 1],
    FieldDescriptor.TYPE_FIXED32: [0, 1, 2**32 - 1],
    FieldDescriptor.TYPE_UINT64: [0, 1, 2**63, 2**64 - 1, 2**32],
    FieldDescriptor.TYPE_FIXED64: [0, 1, 2**64 - 1],
}
FLOATS = [0.0, -1.0, 1e308, -1e-308, math.inf, -math.inf, math.nan]


def random_string(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.45:
        return rng.choice(
            [
                "",
                ".",
                "..",
                "/",
                "//",
                "../../../etc/passwd",
                "/etc/shadow",
                "/run/kata-containers",
                "/run/kata-containers/..",
                "/run/kata-containers/shared/containers",
                "/run/kata-containers/shared/containers/fz/rootfs",
                "/run/kata-containers/shared/containers/../../../etc",
                "/run/kata-containers/sandbox/storage/x",
                "/dev/shm",
                "sandbox",
                "shared",
                "-x",
                "fz",
                "a\x00b",
                "/run/kata-containers/\x00/x",
                "bind",
                "rbind,rw",
                "tmpfs",
                "virtio-fs",
                "overlayfs",
                "ephemeral",
                "local",
                "watchable-bind",
                "/kubepods/pod/c",
                "system.slice:x:y",
                "\u00e9\u4e2d\U0001f600",
            ]
        )
    if pick < 0.6:
        # Huge lengths: a name limit, a path limit, beyond both; rarely 1 MiB.
        size = rng.choice([255, 256, 4095, 4096, 70_000])
        if rng.random() < 0.01:
            size = 1 << 20
        return rng.choice(["x", "/", "../", "a/"]) * (size // 2 + 1)
    alphabet = "abcxyz019./-_:\x00 \n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))


def random_scalar(rng: random.Random, fd: FieldDescriptor) -> Any:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return random_string(rng)
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 16, 300, 5000]))
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        value = rng.choice(FLOATS)
        return max(min(value, 3e38), -3e38) if t == FieldDescriptor.TYPE_FLOAT else value
    if t == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in fd.enum_type.values]
        return rng.choice([*values, 99, -1])
    edges = INT_EDGES[t]
    if rng.random() < 0.7:
        return rng.choice(edges)
    return rng.randint(min(0, *edges), max(edges))


def fill(rng: random.Random, message: Message, depth: int) -> None:
    """Set a random subset of ``message``'s fields to random values."""
    for fd in message.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4:
                continue
            if fd.message_type.GetOptions().map_entry:
                container = getattr(message, fd.name)
                key_fd, value_fd = (
                    fd.message_type.fields_by_name["key"],
                    fd.message_type.fields_by_name["value"],
                )
                for _ in range(rng.randint(0, 3)):
                    key = random_scalar(rng, key_fd)
                    if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                        fill(rng, container[key], depth + 1)
                    else:
                        container[key] = random_scalar(rng, value_fd)
            elif fd.is_repeated:
                for _ in range(rng.randint(0, 3)):
                    fill(rng, getattr(message, fd.name).add(), depth + 1)
            else:
                fill(rng, getattr(message, fd.name), depth + 1)
                getattr(message, fd.name).SetInParent()
        elif fd.is_repeated:
            getattr(message, fd.name).extend(
                random_scalar(rng, fd) for _ in range(rng.randint(0, 4))
            )
        else:
            setattr(message, fd.name, random_scalar(rng, fd))


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice([0x00, 0xFF, 0x80, 0x7F, 0x0A, 0x12])
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 4:
            del buf[pos:]
        else:
            chunk = buf[pos : pos + rng.randint(1, 32)]
            buf[pos:pos] = chunk
    return bytes(buf)


def contract_request(rng: random.Random) -> tuple[str, bytes]:
    method = rng.choice(METHODS)
    message = GetMessageClass(method.input_type)()
    fill(rng, message, 0)
    if method.name == "CreateSandbox":
        message.ClearField("kernel_modules")  # type: ignore[arg-type]
    payload = message.SerializeToString()
    if rng.random() < 0.75:
        payload = mutate(rng, payload)
    envelope = ttrpc_pb2.Request(service="grpc.AgentService", method=method.name, payload=payload)
    return method.name, envelope.SerializeToString()


def envelope_request(rng: random.Random) -> tuple[str, bytes]:
    if rng.random() < 0.9:
        service, method = "grpc.AgentService", rng.choice(METHODS).name
    else:
        service, method = "grpc.Health", rng.choice(["Check", "Version"])
    envelope = ttrpc_pb2.Request(
        service=service,
        method=method,
        payload=rng.randbytes(rng.randint(0, 256)),
        timeout_nano=rng.choice([0, 0, 1, 10**9, 2**63 - 1, -1]),
    )
    for _ in range(rng.randint(0, 2)):
        envelope.metadata.add(key=random_string(rng)[:64], value=random_string(rng)[:64])
    return method, mutate(rng, envelope.SerializeToString())


@dataclass
class Batch:
    raw: list[bytes] = field(default_factory=list)
    requests: list[tuple[str, bytes]] = field(default_factory=list)  # (label, envelope)


def make_batch(seed: int, index: int, size: int) -> Batch:
    rng = random.Random(seed * 1_000_003 + index)
    batch = Batch()
    for _ in range(size):
        kind = rng.random()
        if kind < 0.2:
            batch.raw.append(rng.randbytes(rng.randint(1, 512)))
        elif kind < 0.5:
            batch.requests.append(envelope_request(rng))
        else:
            batch.requests.append(contract_request(rng))
    return batch


# --- sending --------------------------------------------------------------------------


@dataclass
class Tally:
    frames: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    unanswered: collections.Counter[str] = field(default_factory=collections.Counter)
    crashes: list[int] = field(default_factory=list)  # batch indexes
    hangs: list[int] = field(default_factory=list)
    connections_closed_by_server: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)  # "CODE Method" -> messages


def socket_path(address: str) -> str:
    return address.removeprefix("unix://")


def decode_status(body: bytes) -> tuple[str, str]:
    """(code name, message) of a response frame."""
    try:
        status = ttrpc_pb2.Response.FromString(body).status
    except Exception:
        return "UNDECODABLE", ""
    try:
        return Code(status.code).name, status.message
    except ValueError:
        return f"code {status.code}", status.message


def code_name(body: bytes) -> str:
    return decode_status(body)[0]


async def read_frames(reader: asyncio.StreamReader, on_frame: Callable[[int, bytes], None]) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, OSError):
        while True:
            length, stream_id, _kind, _flags = HEADER.unpack(await reader.readexactly(HEADER.size))
            on_frame(stream_id, await reader.readexactly(length))


async def send_raw(address: str, data: bytes, tally: Tally, limit: asyncio.Semaphore) -> None:
    async with limit:
        try:
            reader, writer = await asyncio.open_unix_connection(socket_path(address))
        except OSError:
            tally.codes["raw: connect refused"] += 1
            return
        answered = 0

        def on_frame(_stream: int, body: bytes) -> None:
            nonlocal answered
            answered += 1
            tally.codes[code_name(body)] += 1

        try:
            writer.write(data)
            writer.write_eof()
            # A partial frame: the server may wait for the rest; we hang up after RAW_WAIT.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read_frames(reader, on_frame), RAW_WAIT)
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not answered:
            tally.codes["raw: no answer"] += 1


async def send_requests(address: str, requests: list[tuple[str, bytes]], tally: Tally) -> None:
    """Pipelined on one connection; long polls (GetOOMEvent) are not waited for."""
    pending: dict[int, str] = {}
    window = asyncio.Semaphore(WRITE_WINDOW)
    settled = asyncio.Event()
    state = {"sent_all": False, "waiting": 0}
    reader, writer = await asyncio.open_unix_connection(socket_path(address))

    def check_settled() -> None:
        if state["sent_all"] and not state["waiting"]:
            settled.set()

    def on_frame(stream_id: int, body: bytes) -> None:
        label = pending.pop(stream_id, None)
        if label is not None:
            code, message = decode_status(body)
            tally.codes[code] += 1
            if code in SAMPLED and not message.startswith(UNMARSHAL):
                samples = tally.samples.setdefault(f"{code} {label}", [])
                short = message[:160]
                if short not in samples and len(samples) < 3:
                    samples.append(short)
            if label not in LONG_POLLS:
                window.release()
                state["waiting"] -= 1
            check_settled()

    reading = asyncio.create_task(read_frames(reader, on_frame))
    try:
        for n, (label, envelope) in enumerate(requests):
            if label not in LONG_POLLS:
                await window.acquire()
                state["waiting"] += 1
            if reading.done():
                break
            stream_id = 2 * n + 1
            pending[stream_id] = label
            writer.write(HEADER.pack(len(envelope), stream_id, 1, 0) + envelope)
            await writer.drain()
        state["sent_all"] = True
        check_settled()
        waiter = asyncio.create_task(settled.wait())
        await asyncio.wait([reading, waiter], timeout=ANSWER_WAIT, return_when="FIRST_COMPLETED")
        waiter.cancel()
    except OSError:
        pass
    finally:
        if reading.done():
            tally.connections_closed_by_server += 1
        for label in pending.values():
            if label in LONG_POLLS:
                tally.codes["long poll pending (GetOOMEvent)"] += 1
            else:
                tally.unanswered[label] += 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def health_check(address: str) -> bool:
    try:
        async with asyncio.timeout(HANG_TIMEOUT):
            async with await Client.connect(address, timeout=HANG_TIMEOUT) as client:
                resp = await client.call(
                    "grpc.Health",
                    "Check",
                    health_pb2.CheckRequest(),
                    health_pb2.HealthCheckResponse,
                    timeout=HANG_TIMEOUT,
                )
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except (OSError, TimeoutError, Exception):
        return False


# --- the servers ----------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Target:
    """A server under fuzz: started, restarted after a crash, stopped."""

    name = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.address = f"unix://{tmp}/{self.name}.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.address))
        self.starts += 1
        log = self.tmp / f"{self.name}-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: ASYNC220
                self.command(), env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 30
        while not await health_check(self.address):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not come up; see {log}:\n{log.read_text()}")
            await asyncio.sleep(0.1)
        await self.setup()

    async def setup(self) -> None:
        pass

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Agent(Target):
    name = "agent"

    def command(self) -> list[str]:
        # Fresh tmpfs for the agent's trees and the runtime's state: nothing lands on the host.
        script = (
            "mount -t tmpfs -o mode=0755 pykata-fuzz /run/kata-containers && "
            "mkdir -p /run/kata-agent && mount -t tmpfs -o mode=0700 pykata-fuzz /run/kata-agent "
            '&& exec "$@"'
        )
        return [
            "unshare", "--mount", "--propagation", "private", "--net",
            "sh", "-c", script, "sh", sys.executable, "-m", "pykata.agent",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("INVOCATION_ID", None)
        env.update({"KATA_AGENT_SERVER_ADDR": self.address, "KATA_AGENT_LOG_LEVEL": "warn"})
        return env

    async def setup(self) -> None:
        async with await Client.connect(self.address) as client:
            agent: Any = client.stub(AGENT_SERVICE)
            await agent.CreateSandbox(agent_pb2.CreateSandboxRequest(hostname="fuzz"), timeout=30)


class GoPeer(Target):
    name = "go-peer"

    def __init__(self, tmp: Path, binary: Path) -> None:
        super().__init__(tmp)
        self.binary = binary

    def command(self) -> list[str]:
        return [str(self.binary), "serve", "--addr", self.address]


async def fuzz(
    target: Target,
    frames: int,
    seed: int,
    batch_size: int,
    only_batch: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Send ``frames`` seeded frames to ``target`` (started and stopped here); the figures."""
    tally = Tally()
    batches = math.ceil(frames / batch_size)
    indexes = range(batches) if only_batch is None else [only_batch]
    await target.start()
    rss_before = rss_kib(target.pid)
    t0 = time.perf_counter()
    limit = asyncio.Semaphore(RAW_CONCURRENCY)
    try:
        for index in indexes:
            size = min(batch_size, frames - index * batch_size)
            batch = make_batch(seed, index, size)
            raw = [
                asyncio.create_task(send_raw(target.address, d, tally, limit)) for d in batch.raw
            ]
            try:
                await send_requests(target.address, batch.requests, tally)
            except OSError:
                tally.codes["connect refused"] += len(batch.requests)
            await asyncio.gather(*raw)
            tally.frames += size
            if not target.alive():
                tally.crashes.append(index)
                await target.start()
            elif not await health_check(target.address):
                if not target.alive():
                    tally.crashes.append(index)
                else:
                    tally.hangs.append(index)
                target.stop()
                await target.start()
            if progress and index % 20 == 19:
                print(f"  {target.name}: {tally.frames} frames", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t0
        rss_after = rss_kib(target.pid)
    finally:
        target.stop()
    return {
        "frames": tally.frames,
        "responses_by_code": dict(tally.codes.most_common()),
        "unanswered_by_method": dict(tally.unanswered.most_common()),
        "connections_closed_by_server": tally.connections_closed_by_server,
        "samples": tally.samples,
        "crashes": len(tally.crashes),
        "crash_batches": tally.crashes,
        "hangs": len(tally.hangs),
        "hang_batches": tally.hangs,
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "elapsed_s": round(elapsed, 2),
        "frames_per_s": round(tally.frames / elapsed, 1),
    }


PEER_NOTE = (
    "go-ttrpc-peer serves grpc.Health only (containerd's ttrpc has no AgentService handlers "
    "here): its AgentService frames are answered UNIMPLEMENTED, so the comparison covers "
    "framing and envelopes (crashes, hangs, answers), not the agent's handlers"
)


async def run(
    frames: int,
    seed: int,
    batch_size: int,
    peer: bool,
    tmp: Path,
    only_batch: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The fuzz run against the agent, then (``peer``) the same frames to the Go peer."""
    result: dict[str, Any] = {"seed": seed, "batch": batch_size}
    result["agent"] = await fuzz(Agent(tmp), frames, seed, batch_size, only_batch, progress)
    if not peer:
        return result
    try:
        sys.path.insert(0, TESTS_DIR)
        from peers.go_ttrpc import peer_binary

        binary = peer_binary()
    except Exception as exc:
        result["peer"] = None
        result["peer_note"] = f"Go peer unavailable: {str(exc).splitlines()[0]}"
        return result
    result["peer"] = await fuzz(GoPeer(tmp, binary), frames, seed, batch_size, only_batch, progress)
    result["peer_note"] = PEER_NOTE
    result["elapsed_ratio_agent_over_peer"] = round(
        result["agent"]["elapsed_s"] / max(result["peer"]["elapsed_s"], 1e-9), 2
    )
    return result


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result))
    print(
        f"\nfuzz: {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, seed {result['seed']}, batches of {result['batch']}"
    )
    targets = [("agent", result["agent"])]
    if result.get("peer"):
        targets.append(("go peer", result["peer"]))
    print(f"  {'':<26}" + "".join(f"{name:>14}" for name, _ in targets))
    rows = [
        ("frames sent", lambda r: r["frames"]),
        ("crashes", lambda r: r["crashes"]),
        ("hangs", lambda r: r["hangs"]),
        ("unanswered requests", lambda r: sum(r["unanswered_by_method"].values())),
        ("conns closed by server", lambda r: r["connections_closed_by_server"]),
        ("RSS before MiB", lambda r: f"{r['rss_kib_before'] / 1024:.1f}"),
        ("RSS after MiB", lambda r: f"{r['rss_kib_after'] / 1024:.1f}"),
        ("elapsed s", lambda r: r["elapsed_s"]),
        ("frames/s", lambda r: r["frames_per_s"]),
    ]
    codes = sorted({c for _, r in targets for c in r["responses_by_code"]})
    rows += [(f"  {c}", lambda r, c=c: r["responses_by_code"].get(c, 0)) for c in codes]
    for label, get in rows:
        print(f"  {label:<26}" + "".join(f"{get(r)!s:>14}" for _, r in targets))
    if "elapsed_ratio_agent_over_peer" in result:
        print(f"  elapsed agent / peer: {result['elapsed_ratio_agent_over_peer']}")
    print(f"  peer: {result.get('peer_note')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--only-batch", type=int, help="replay one batch (a reproducer)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_fuzz.py runs the agent as root (mount namespace, cgroups)")
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        result = asyncio.run(
            run(
                args.frames,
                args.seed,
                args.batch,
                not args.no_peer,
                Path(tmp),
                args.only_batch,
                True,
            )
        )
    report(result)


if __name__ == "__main__":
    main()
