"""Failures that are not about an image (oxboot.errors) are their own
exceptions, and every command still prints each as one ``Error:`` line."""

from __future__ import annotations

import argparse
import errno

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
