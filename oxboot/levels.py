"""Compression levels and thread defaults: what the command lines show in
their help, kept apart from oxboot.codec so that ``mkimage --help`` loads
neither the C core nor the codec libraries (codec imports these from here).
"""

from __future__ import annotations

import os

#: Fastest zlib level whose output stays within 0.5% of the original
#: mkimage's (miniz level 9), i.e. <= 1.0091 x stdlib zlib level 9, on the
#: 1 GiB benchmark image (bench/codec_survey.md, 4 MiB chunks, 2 cores):
#: level 5 = 279,074,636 B, x1.0036 of zlib-9's 278,066,851 B, 203 MB/s;
#: level 4 = x1.0203 (over budget, 233 MB/s); level 6 = x0.9977, 176 MB/s.
DEFAULT_ZLIB_LEVEL = 5
DEFAULT_ZSTD_LEVEL = 6
#: zlib levels as the user gives them (see codec._LIBDEFLATE_LEVEL).
ZLIB_LEVELS = range(1, 10)
ZSTD_LEVELS = range(1, 20)


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
