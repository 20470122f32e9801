"""The agent's access-log streamer with a real FIFO and real TCP collectors (no Envoy here: the
test writes into the FIFO as Envoy's file logger does, with blocking writes): lines reach their
collector; a dead collector, or one that accepts and never reads, never blocks the writer and
keeps the agent's buffer bounded (drops counted); a collector coming back gets new lines."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from kuma_common.accesslog import access_log_socket_path, parse_line
from kuma_dp.accesslogs.sender import SenderLimits
from kuma_dp.accesslogs.streamer import AccessLogStreamer, start_access_log_streamer
from labkit.ports import free_port
from labkit.waiting import eventually

pytestmark = pytest.mark.timeout(60)

LIMITS = SenderLimits(max_buffered_bytes=64 * 1024, backoff_initial_s=0.05, backoff_max_s=0.2)


class Collector:
    """A TCP collector: keeps every byte it receives (or, `reading=False`, accepts and never reads)."""

    def __init__(self, port: int, reading: bool = True) -> None:
        self.port, self.reading = port, reading
        self.data = bytearray()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Collector:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if not self.reading:
            if self._server is not None:
                self._server.close()  # leave the accepted connection stuck, as a hung collector
            await asyncio.Event().wait()
        while chunk := await reader.read(65536):
            self.data += chunk

    @property
    def lines(self) -> list[str]:
        return self.data.decode().splitlines()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()  # the collector dies: its connections are reset


def envoy_line(address: str, message: str | dict) -> bytes:
    return json.dumps({"address": address, "message": message}).encode() + b"\n"


def write_like_envoy(path: Path, lines: list[bytes]) -> float:
    """Blocking open and writes, as Envoy's file logger: returns the seconds it took."""
    started = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        for line in lines:
            os.write(fd, line)
    finally:
        os.close(fd)
    return time.monotonic() - started


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    return Path(access_log_socket_path(str(tmp_path), "web-1", "default"))


def test_socket_path_is_kumas_and_fits_a_unix_socket(tmp_path: Path) -> None:
    assert access_log_socket_path("/tmp/w", "web-1", "default") == "/tmp/w/kuma-al-web-1-default.sock"
    long = access_log_socket_path("/tmp/" + "d" * 90, "web-1", "default")
    assert len(long) == 98 + len(".sock") and long.endswith(".sock")


def test_lines_are_parsed_as_kuma_writes_them() -> None:
    assert parse_line(envoy_line("127.0.0.1:5000", "GET / 200\n")) == ("127.0.0.1:5000", b"GET / 200\n")
    assert parse_line(envoy_line("c:1", {"status": 200, "path": "/"})) == (
        "c:1",
        b'{"status":200,"path":"/"}\n',
    )
    assert parse_line(b"10.0.0.1:5000;legacy line\n") == ("10.0.0.1:5000", b"legacy line\n")
    assert parse_line(b"no separator\n") is None


async def test_lines_reach_their_collectors_in_order(fifo: Path) -> None:
    streamer = AccessLogStreamer(fifo, LIMITS)
    first, second = await Collector(free_port()).start(), await Collector(free_port()).start()
    task = asyncio.create_task(streamer.run())
    try:
        lines = [envoy_line(f"127.0.0.1:{first.port}", f"first {i}\n") for i in range(100)]
        lines += [envoy_line(f"127.0.0.1:{second.port}", {"n": i}) for i in range(50)]
        await asyncio.to_thread(write_like_envoy, fifo, lines)
        await eventually(lambda: len(first.lines) == 100 and len(second.lines) == 50, timeout=10)
        assert first.lines == [f"first {i}" for i in range(100)]
        assert [json.loads(line) for line in second.lines] == [{"n": i} for i in range(50)]
        # Envoy reopening the FIFO (a restart) finds the reader still there.
        await asyncio.to_thread(write_like_envoy, fifo, [envoy_line(f"127.0.0.1:{first.port}", "again\n")])
        await eventually(lambda: first.lines[-1:] == ["again"], timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await first.stop()
        await second.stop()
    assert not fifo.exists()


@pytest.mark.parametrize("collector", ["nothing listening", "accepts, never reads"])
async def test_a_dead_collector_never_blocks_the_writer_and_the_buffer_stays_bounded(
    fifo: Path, collector: str
) -> None:
    streamer = AccessLogStreamer(fifo, LIMITS)
    port = free_port()
    hung = await Collector(port, reading=False).start() if collector == "accepts, never reads" else None
    task = asyncio.create_task(streamer.run())
    try:
        # 20 MiB of lines: far more than the pipe, the socket buffers and the agent's bound together.
        line = envoy_line(f"127.0.0.1:{port}", "x" * 1000 + "\n")
        took = await asyncio.to_thread(write_like_envoy, fifo, [line] * 20_000)
        assert took < 20, f"the writer was held up {took:.1f}s"  # generous: normally well under 1 s
        sender = streamer.senders[f"127.0.0.1:{port}"]
        await eventually(lambda: sender.dropped + sender.sent + len(sender._lines) == 20_000, timeout=10)
        assert sender.buffered_bytes <= LIMITS.max_buffered_bytes
        assert sender.dropped > 15_000
        if hung is not None:
            await hung.stop()
        # The collector comes back: new lines reach it.
        back = await Collector(port).start()
        await asyncio.to_thread(write_like_envoy, fifo, [envoy_line(f"127.0.0.1:{port}", "fresh\n")])
        await eventually(lambda: "fresh" in back.lines, timeout=15, what="the collector back gets new lines")
        await back.stop()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_writer_never_waits_for_a_reader_that_is_there_from_the_start(fifo: Path) -> None:
    """Envoy opens the FIFO for writing without O_NONBLOCK: it must find the reader already open."""
    streamer = AccessLogStreamer(fifo, LIMITS)
    try:
        done = threading.Event()

        def opener() -> None:
            os.close(os.open(fifo, os.O_WRONLY))
            done.set()

        thread = threading.Thread(target=opener, daemon=True)
        thread.start()
        thread.join(10)
        assert done.is_set()
    finally:
        streamer.close()


def test_a_stale_file_at_the_path_is_replaced(fifo: Path) -> None:
    fifo.write_text("left over")
    streamer = AccessLogStreamer(fifo, LIMITS)
    try:
        assert stat.S_ISFIFO(fifo.stat().st_mode)
        assert stat.S_IMODE(fifo.stat().st_mode) == 0o600
    finally:
        streamer.close()


def test_without_a_fifo_the_path_leads_nowhere_instead_of_a_growing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: object, mode: int = 0o666) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mkfifo", refuse)
    assert start_access_log_streamer(tmp_path, "web-1", "default") is None
    path = Path(access_log_socket_path(str(tmp_path), "web-1", "default"))
    assert path.resolve() == Path(os.devnull)


async def test_a_collector_name_no_resolver_takes_is_retried_and_said(
    fifo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 64-character DNS label fails in the IDNA codec (UnicodeError, not OSError): the sender
    used to die of it silently, with its lines buffered for nobody."""
    streamer = AccessLogStreamer(fifo, LIMITS)
    task = asyncio.create_task(streamer.run())
    address = "a" * 64 + ".example:9"
    try:
        await asyncio.to_thread(write_like_envoy, fifo, [envoy_line(address, "x\n")])
        await eventually(lambda: f"access-log collector {address} unreachable" in caplog.text, timeout=10)
        assert "idna" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "never retrieved" not in caplog.text
