"""Which files and streams a caller may make the orchestrator read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.errors import InvalidInput, PermissionDenied
from services.orchestrator.confinement import SourcePolicy, redact


def policy(tmp_path: Path, media_roots: str = "", stream_hosts: str = "", host: str = "0.0.0.0",
           data_dir: str = "") -> SourcePolicy:
    return SourcePolicy.from_settings(media_roots, stream_hosts, host, data_dir)


def test_files_only_under_the_roots_and_never_through_a_way_out(tmp_path: Path) -> None:
    media, elsewhere = tmp_path / "media", tmp_path / "elsewhere"
    (media / "cam").mkdir(parents=True)
    elsewhere.mkdir()
    (media / "cam" / "a.mp4").write_bytes(b"")
    (media / "escape").symlink_to(elsewhere)  # a link inside the root that leads out of it
    confined = policy(tmp_path, media_roots=str(media))
    assert confined.check_path(str(media / "cam" / "a.mp4")) == media / "cam" / "a.mp4"
    for refused in (elsewhere / "b.mp4", media / "escape" / "b.mp4", Path("/etc/passwd")):
        with pytest.raises(PermissionDenied, match="outside the media folders"):
            confined.check_path(str(refused))
    with pytest.raises(InvalidInput, match=r"may not contain '\.\.'"):
        confined.check_path(f"{media}/cam/../cam/a.mp4")


def test_system_folders_are_refused_whatever_the_roots(tmp_path: Path) -> None:
    for anything in (policy(tmp_path, media_roots="/"), policy(tmp_path, host="127.0.0.1")):
        for path in ("/proc/self/environ", "/sys/kernel", "/dev/zero", f"/proc/{os.getpid()}/cmdline"):
            with pytest.raises(PermissionDenied, match="system folder"):
                anything.check_path(path)


def test_without_roots_a_networked_orchestrator_reads_only_its_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert policy(tmp_path, data_dir=str(data)).check_path(str(data / "x.mp4")) == data / "x.mp4"
    with pytest.raises(PermissionDenied, match="outside the media folders"):
        policy(tmp_path, data_dir=str(data)).check_path(str(tmp_path / "x.mp4"))
    with pytest.raises(PermissionDenied, match=r"reads no files .* set --media-roots"):
        policy(tmp_path).check_path(str(tmp_path / "x.mp4"))
    assert policy(tmp_path, host="127.0.0.1").check_path(str(tmp_path / "x.mp4"))  # one machine: any path


@pytest.mark.parametrize("uri", ["rtsp://127.0.0.1:8554/cam", "http://169.254.169.254/latest/meta-data",
                                 "rtsp://[::1]/cam", "http://0.0.0.0:80/x", "rtsp://localhost/cam",
                                 "rtsp://[::ffff:127.0.0.1]/cam", "rtsp://224.0.0.1/cam"])
def test_local_and_metadata_hosts_are_refused_from_the_network(tmp_path: Path, uri: str) -> None:
    with pytest.raises(PermissionDenied, match="list it in --stream-hosts"):
        policy(tmp_path).check_stream(uri)
    policy(tmp_path, host="127.0.0.1").check_stream(uri)  # a loopback-bound orchestrator's own machine
    policy(tmp_path, stream_hosts="127.0.0.0/8,::1,169.254.169.254,0.0.0.0,localhost,::ffff:127.0.0.1,"
                                  "224.0.0.0/4").check_stream(uri)  # listed explicitly


def test_the_stream_allowlist_takes_names_wildcards_and_ranges(tmp_path: Path) -> None:
    allowed = policy(tmp_path, stream_hosts="cam1.site, *.cams.example, 10.1.0.0/16")
    for uri in ("rtsp://cam1.site/live", "rtsp://user:pw@door.cams.example:554/1", "rtsp://10.1.2.3/x"):
        allowed.check_stream(uri)
    for uri in ("rtsp://cam2.site/live", "rtsp://10.2.0.1/x", "rtsp://cams.example/x"):
        with pytest.raises(PermissionDenied, match="not among those this orchestrator may read"):
            allowed.check_stream(uri)
    policy(tmp_path).check_stream("rtsp://10.0.0.5/cam")  # private camera networks are the normal case


def test_a_url_must_be_a_stream_and_its_password_is_never_shown(tmp_path: Path) -> None:
    for uri in ("file:///etc/passwd", "ftp://user:hunter2@10.0.0.1/x", "concat:a|b", "rtsp:///nohost"):
        with pytest.raises(InvalidInput) as refused:
            policy(tmp_path).check_stream(uri)
        assert "hunter2" not in str(refused.value)
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/Streaming/1?x=a@b") == \
        "rtsp://admin:***@10.0.0.5:554/Streaming/1?x=a@b"
    assert redact("rtsp://10.0.0.5/a@b") == "rtsp://10.0.0.5/a@b"  # an @ in the path is not a password
    assert redact("postgresql://user:secret@db:5432/x") == "postgresql://user:***@db:5432/x"
