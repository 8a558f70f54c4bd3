"""Output files named by the user: checked before any work, never silently replaced.

Every command that writes one named file (`dataset --dest`, `fid ref --dest`, `features train --out`,
`generate --npz/--grid`, …) calls `check_output_file` while it validates its arguments, before it reads data or
computes anything:

    from diffspace.io import check_output_file
    dest = check_output_file(args.dest, force=args.force, option="--dest")

It refuses a folder, refuses an existing file unless `force`, and checks that the file can be created in its
folder (or, when the folder does not exist yet, in the nearest existing parent), so that an unwritable
destination is found in a second and not after an hour of work. It creates nothing: the writer later creates the
missing folders and writes the file atomically (`diffspace.io.atomic_write`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diffspace.errors import ConfigError

__all__ = ["check_output_file", "parent_folders", "writable_parent"]


def writable_parent(folder: str | os.PathLike, what: str) -> Path:
    """The nearest existing folder at or above `folder`, after checking that a file can be created in it
    (a probe file is created and removed). ConfigError naming `what` when it is not a folder or not writable."""
    p = Path(folder).expanduser().absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{what}: {p} is a file, not a folder: choose another destination")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what}: cannot create files in {p} ({e.strerror or e}): choose a writable "
                          "destination") from None
    return p


def check_output_file(path: str | os.PathLike, *, force: bool = False, option: str = "--dest") -> Path:
    """Check the single output file `path` before any work and return it as a Path.

    Refuses (ConfigError, naming `option` and the fix) a path that is a folder, an existing file unless `force`
    (then the caller replaces it atomically at the end), and a destination whose folder is not writable.
    Creates nothing.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder: give a file name")
    if p.exists() or p.is_symlink():
        if not force:
            raise ConfigError(f"{option} {p} already exists: pass --force to replace it, or choose another name")
    writable_parent(p.parent, f"{option} {p}")
    return p


@contextlib.contextmanager
def parent_folders(path: str | os.PathLike) -> Iterator[Path]:
    """Create the missing folders above the file `path` for the block, and remove them again (if still empty) when
    the block fails, so a failed write leaves no empty folders behind."""
    p = Path(path)
    created = [q for q in [p.parent, *p.parent.parents] if not q.exists()]  # deepest first
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        yield p
    except BaseException:
        for q in created:
            with contextlib.suppress(OSError):
                q.rmdir()
        raise
