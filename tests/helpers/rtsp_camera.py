"""A live camera for tests: GStreamer's RTSP server (Debian's gst-rtsp-server through python3-gi)
serving a folder of JPEG frames in a loop as H.264 at 25 fps, on rtsp://127.0.0.1:PORT/cam.

Run by Debian's /usr/bin/python3 (which has `gi`), as `python3 rtsp_camera.py PORT FOLDER`; the
test starts it as a child process, kills it and starts it again to break the stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"


def start(port: int, folder: Path, log: Path) -> subprocess.Popen[bytes]:
    """The camera as a child process; its output appended to `log`."""
    from tests.helpers.processes import die_with_this_process

    with log.open("ab") as sink:
        return subprocess.Popen([SYSTEM_PYTHON, __file__, str(port), str(folder)], stdout=sink,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_this_process)


def _serve(port: int, folder: Path) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( multifilesrc location={folder}/%03d.jpg index=0 loop=true caps=image/jpeg,framerate=25/1 "
        "! jpegdec ! videoconvert ! video/x-raw,format=I420 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! rtph264pay name=pay0 pt=96 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), Path(sys.argv[2]))
