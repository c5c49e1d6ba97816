"""Dropping root once the sockets and images are open.

The boot server needs CAP_NET_RAW for its raw sockets and nothing else. Run
as root with ``--user NAME`` it opens everything it needs, then becomes
NAME for good (no way back); sockets already open keep working. Run instead
under ``setpriv``/systemd with only CAP_NET_RAW, it never had root at all.
"""

from __future__ import annotations

import os
import pwd

from oxboot.errors import BootError


def drop_privileges(user: str) -> None:
    """Become `user` (name or numeric uid), with its primary group only."""
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise BootError(f"no such user: {user}") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return
        raise BootError(f"--user {user} needs the server to start as root")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.geteuid() == 0 or os.getuid() == 0:  # pragma: no cover - kernel guarantees
        raise BootError("could not drop root privileges")
