"""Failures that are not about an image (oxboot.errors) are their own
exceptions, and every command still prints each as one ``Error:`` line."""

from __future__ import annotations

import argparse
import errno
import os

import pytest

from oxboot.cli.common import Parser, UsageError, run
from oxboot.errors import BootError, LinkError
from oxboot.format import ImageError


@pytest.mark.parametrize("error", [
    ImageError("wrong magic: 0 != expected 1deb0075"),
    BootError("no HELLO within 1 seconds"),
    LinkError(errno.ENODEV, "no such network interface: eth9"),
    UsageError("which image file do you want to inspect?"),
])
def test_each_failure_is_one_error_line(error: Exception,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    def body(args: argparse.Namespace) -> int:
        raise error

    assert run(Parser(prog="t"), body, []) == 1
    out, err = capsys.readouterr()
    text = error.strerror if isinstance(error, OSError) else str(error)
    assert out == "" and err == f"Error: {text}\n"


def test_boot_failures_are_not_image_errors() -> None:
    from oxboot.privileges import drop_privileges

    with pytest.raises(BootError, match="no such user: oxboot-no-such-user") as e:
        drop_privileges("oxboot-no-such-user")
    assert not isinstance(e.value, ImageError)


class _FullQueue:
    """A socket whose device queue is full for its first `fails` sends."""

    def __init__(self, fails: int, code: int = errno.ENOBUFS) -> None:
        self.fails, self.code, self.sent = fails, code, []

    def send(self, frame: bytes) -> int:
        if self.fails:
            self.fails -= 1
            raise OSError(self.code, os.strerror(self.code))
        self.sent.append(frame)
        return len(frame)


def _link(sock: _FullQueue) -> object:
    from oxboot.link import RawLink

    link = RawLink.__new__(RawLink)  # no real socket: only send() is used
    link.sock, link.ifname = sock, "test0"  # type: ignore[assignment]
    return link


@pytest.mark.net
@pytest.mark.parametrize("code", [errno.ENOBUFS, errno.EAGAIN])
def test_send_backs_off_while_the_device_queue_is_full(
        code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """RawLink.send waits between tries, longer each time up to a bound,
    and gives up with a LinkError after SEND_PATIENCE seconds."""
    from oxboot import link as link_module

    clock = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(link_module.time, "sleep", sleep)
    monkeypatch.setattr(link_module.time, "monotonic", lambda: clock[0])
    first, longest = link_module.SEND_BACKOFF
    sock = _FullQueue(20, code)
    _link(sock).send(b"frame")  # type: ignore[attr-defined]
    assert sock.sent == [b"frame"] and len(naps) == 20
    assert naps[0] == first and max(naps) == longest
    assert naps == sorted(naps)
    naps.clear()
    with pytest.raises(LinkError, match="test0: cannot send") as e:
        _link(_FullQueue(10**9, code)).send(b"frame")  # type: ignore[attr-defined]
    assert e.value.errno == code
    assert link_module.SEND_PATIENCE <= sum(naps) < link_module.SEND_PATIENCE + longest
