"""An orchestrator reachable from the network reads only what it is allowed to, through a real
stack: files under its data dir (no --media-roots), no local or metadata stream hosts unless
listed, and a camera's password in no error message and no monitor shown back."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from anyanomaly.v1 import monitors_pb2, monitors_pb2_grpc, orchestrator_pb2
from services.common.clients import open_channel
from tests.conftest import scripted_stack
from tests.helpers.detect import detect, frame_folder, split

CAMERA = "rtsp://admin:hunter2@127.0.0.1:9/Streaming/1"  # nothing listens on port 9


async def refused(address: str, source: orchestrator_pb2.VideoSource) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await detect(address, source, ["bicycle"])
    return caught.value


async def test_a_networked_orchestrator_reads_its_data_dir_and_no_local_streams(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = frame_folder(tmp_path, 24)
    async with scripted_stack(host="0.0.0.0", data_dir=str(data), stream_timeout_seconds=2.0) as stack:
        error = await refused(stack.address, orchestrator_pb2.VideoSource(frame_folder=str(outside)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "outside the media folders" in (error.details() or "")
        inside = data / "media" / "frames"
        shutil.copytree(outside, inside)
        assert len(split(await detect(stack.address, orchestrator_pb2.VideoSource(frame_folder=str(inside)),
                                      ["bicycle"]))[1]) == 1
        error = await refused(stack.address, orchestrator_pb2.VideoSource(frame_folder="/proc/self"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

        error = await refused(stack.address, orchestrator_pb2.VideoSource(uri=CAMERA))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "--allow-hosts" in (error.details() or "")
        async with open_channel(stack.address) as channel:
            monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=monitors_pb2.MonitorSpec(
                    source=orchestrator_pb2.VideoSource(uri=CAMERA), texts=["bicycle"])))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "hunter2" not in (error.details() or "") + (caught.value.details() or "")


async def test_a_listed_stream_host_is_read_and_its_password_never_shown(tmp_path: Path) -> None:
    async with scripted_stack(host="0.0.0.0", data_dir=str(tmp_path / "data"), allow_hosts="127.0.0.1",
                              stream_timeout_seconds=2.0, reconnect_min_seconds=0.05) as stack:
        error = await refused(stack.address, orchestrator_pb2.VideoSource(uri=CAMERA))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # allowed, tried, and nothing answers
        assert "rtsp://admin:***@127.0.0.1:9/Streaming/1" in (error.details() or "")
        assert "hunter2" not in (error.details() or "")
        async with open_channel(stack.address) as channel:
            monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
            created = await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=monitors_pb2.MonitorSpec(
                source=orchestrator_pb2.VideoSource(uri=CAMERA), texts=["bicycle"])))
            shown = await monitors.GetMonitor(monitors_pb2.GetMonitorRequest(monitor_id=created.monitor_id))
            assert shown.spec.source.uri == "rtsp://admin:***@127.0.0.1:9/Streaming/1"
            spec = shown.spec  # sent back as shown, with a new text: the stored password stays
            spec.texts.append("person running")
            updated = await monitors.UpdateMonitor(monitors_pb2.UpdateMonitorRequest(
                monitor_id=created.monitor_id, spec=spec))
            assert list(updated.spec.texts) == ["bicycle", "person running"]
            assert "hunter2" not in str(updated) + str(shown) + str(created)


class Recorder(BaseHTTPRequestHandler):
    """An HTTP server that answers every GET with `reply(path)` and counts what it was asked."""

    def do_GET(self) -> None:
        self.server.asked.append(self.path)  # type: ignore[attr-defined]
        status, headers, body = self.server.reply(self.path)  # type: ignore[attr-defined]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def http_server(reply: Callable[[str], tuple[int, dict[str, str], bytes]]) -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.asked, server.reply = [], reply  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


async def test_a_stream_url_cannot_lead_to_another_host_by_redirect_or_playlist(tmp_path: Path) -> None:
    """The host of the URL is what was checked: a redirect or an HLS playlist naming another host
    is not followed (here the other host is local, but it could be cloud metadata)."""
    with http_server(lambda path: (200, {"Content-Type": "video/mp2t"}, b"\x47" * 188)) as elsewhere:
        other = f"http://127.0.0.1:{elsewhere.server_address[1]}"
        playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{other}/segment.ts\n#EXT-X-ENDLIST\n").encode()
        with http_server(lambda path: (302, {"Location": f"{other}/latest"}, b"") if path == "/redirect" else
                         (200, {"Content-Type": "application/vnd.apple.mpegurl"}, playlist)) as first:
            async with scripted_stack(stream_timeout_seconds=2.0) as stack:
                for path in ("/redirect", "/live.m3u8"):
                    uri = f"http://127.0.0.1:{first.server_address[1]}{path}"
                    error = await refused(stack.address, orchestrator_pb2.VideoSource(uri=uri))
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert first.asked == ["/redirect", "/live.m3u8"]
    assert elsewhere.asked == []
