"""The tests over real kernel networking: each needs the network core and
root (marked here, once for the folder); fixtures: a lab (namespaces
removed after each test, even on failure) and a set of images to serve."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.lab import raw_image

from oxboot import Codec, build_image
from oxboot.netlab import Lab, lingering_namespaces


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    d = tmp_path_factory.mktemp("netimages")
    out = {}
    for name, size, seed, codec in (
        ("plain", 2 << 20, 1, Codec.NONE),
        ("zlib", 2 << 20, 2, Codec.ZLIB),
        ("zstd", 2 << 20, 3, Codec.ZSTD),
        ("other1", 1 << 20, 4, Codec.NONE),
        ("other2", 3 << 20, 5, Codec.NONE),
        ("small", 1 << 20, 6, Codec.NONE),
        ("big", 24 << 20, 7, Codec.NONE),
    ):
        raw = raw_image(size, seed)
        (d / f"{name}.raw").write_bytes(raw)
        build_image(d / f"{name}.raw", d / f"{name}.img", codec=codec, target_size=64 << 20,
                    image_name=name)
        out[name] = (d / f"{name}.img", raw)
    return out


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
        assert lingering_namespaces() == []


HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before the root conftest skips net tests without the core
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Without root a run skips them, but not in CI, which runs as root:
    # there a missing privilege is a failure to see.
    root = os.geteuid() == 0 or os.environ.get("CI") == "true"
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.net)
            if not root:
                item.add_marker(pytest.mark.skip(reason="network namespaces need root"))
