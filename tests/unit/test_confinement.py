"""Which files and streams a caller may make the orchestrator read."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from services.common.errors import InvalidInput, PermissionDenied
from services.common.urls import redact
from services.orchestrator.confinement import SourcePolicy


def policy(tmp_path: Path, media_roots: str = "", allow_hosts: str = "", host: str = "0.0.0.0",
           data_dir: str = "") -> SourcePolicy:
    return SourcePolicy.from_settings(media_roots, allow_hosts, host, data_dir)


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


@pytest.mark.parametrize("uri", ["rtsp://127.0.0.1:8554/cam", "http://169.254.1.1/snapshot",
                                 "rtsp://[::1]/cam", "http://0.0.0.0:80/x", "rtsp://localhost/cam",
                                 "rtsp://[::ffff:127.0.0.1]/cam", "rtsp://224.0.0.1/cam"])
def test_local_and_metadata_hosts_are_refused_from_the_network(tmp_path: Path, uri: str) -> None:
    with pytest.raises(PermissionDenied, match="list it in --allow-hosts"):
        policy(tmp_path).check_stream(uri)
    policy(tmp_path, host="127.0.0.1").check_stream(uri)  # a loopback-bound orchestrator's own machine
    policy(tmp_path, allow_hosts="127.0.0.0/8,::1,169.254.0.0/16,0.0.0.0,localhost,::ffff:127.0.0.1,"
                                  "224.0.0.0/4").check_stream(uri)  # listed explicitly


def test_the_stream_allowlist_takes_names_wildcards_and_ranges(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    names = {"cam1.site": "10.1.0.7", "door.cams.example": "10.1.0.8", "evil.cams.example": "169.254.169.254"}
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], 0))])  # this site's DNS
    allowed = policy(tmp_path, allow_hosts="cam1.site, *.cams.example, 10.1.0.0/16")
    for uri in ("rtsp://cam1.site/live", "rtsp://user:pw@door.cams.example:554/1", "rtsp://10.1.2.3/x"):
        allowed.check_stream(uri)
    for uri in ("rtsp://cam2.site/live", "rtsp://10.2.0.1/x", "rtsp://cams.example/x"):
        with pytest.raises(PermissionDenied, match="not among those this orchestrator may read"):
            allowed.check_stream(uri)
    policy(tmp_path).check_stream("rtsp://10.0.0.5/cam")  # private camera networks are the normal case
    with pytest.raises(PermissionDenied, match="metadata"):  # a listed name that resolves to metadata
        allowed.check_stream("rtsp://evil.cams.example/x")


def test_a_url_must_be_a_stream_and_its_password_is_never_shown(tmp_path: Path) -> None:
    for uri in ("file:///etc/passwd", "ftp://user:hunter2@10.0.0.1/x", "concat:a|b", "rtsp:///nohost"):
        with pytest.raises(InvalidInput) as refused:
            policy(tmp_path).check_stream(uri)
        assert "hunter2" not in str(refused.value)
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/Streaming/1?x=a@b") == \
        "rtsp://admin:***@10.0.0.5:554/Streaming/1?x=a@b"
    assert redact("rtsp://10.0.0.5/a@b") == "rtsp://10.0.0.5/a@b"  # an @ in the path is not a password
    assert redact("postgresql://user:secret@db:5432/x") == "postgresql://user:***@db:5432/x"


def test_odd_paths_are_refused_cleanly_and_links_inside_folders_are_checked(tmp_path: Path) -> None:
    media, outside = tmp_path / "media", tmp_path / "outside"
    (media / "frames").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"\x89PNG")
    (media / "frames" / "0001.png").symlink_to(outside / "secret.png")  # a frame that leads out of the roots
    (media / "loop").symlink_to(media / "loop")
    confined = policy(tmp_path, media_roots=str(media))
    with pytest.raises(PermissionDenied, match="outside the media folders"):
        confined.check_member(media / "frames" / "0001.png")
    for odd in ("\x00", str(media / "loop")):
        with pytest.raises(InvalidInput, match="is not a usable path"):
            confined.check_path(odd)
    with pytest.raises(PermissionDenied):  # "~" is the server's own path, not expanded
        confined.check_path("~root/x.mp4")


@pytest.mark.parametrize("uri", ["http://[fd00:ec2::254]/latest", "http://100.100.100.200/latest",
                                 "http://[64:ff9b::a9fe:a9fe]/latest", "http://[::ffff:169.254.169.254]/"])
def test_metadata_addresses_are_refused_even_from_loopback_and_listed_names(tmp_path: Path, uri: str) -> None:
    for anyone in (policy(tmp_path), policy(tmp_path, host="127.0.0.1")):
        with pytest.raises(PermissionDenied, match="metadata"):
            anyone.check_stream(uri)


@pytest.mark.parametrize("uri", ["rtsp://[64:ff9b::7f00:1]/cam", "rtsp://[::127.0.0.1]/cam"])
def test_ipv4_carried_in_ipv6_is_unwrapped(tmp_path: Path, uri: str) -> None:
    with pytest.raises(PermissionDenied, match="loopback"):
        policy(tmp_path).check_stream(uri)


@pytest.mark.parametrize("uri", ["rtsp://admin:pw@[::1/cam", "ht\ttp://cam1.site/x.mp4", "rtsp://cam /x"])
def test_malformed_stream_uris_are_invalid_not_internal(tmp_path: Path, uri: str) -> None:
    with pytest.raises(InvalidInput):
        policy(tmp_path).check_stream(uri)


def test_passwords_with_slashes_and_secret_query_values_are_masked() -> None:
    assert redact("rtsp://admin:pa/ss@cam/x") == "rtsp://admin:***@cam/x"
    assert redact("rtsp://only-a-token@cam/x") == "rtsp://***@cam/x"
    assert redact("http://cam/snap.cgi?user=admin&pwd=s3cret&x=1") == "http://cam/snap.cgi?user=admin&pwd=***&x=1"
