"""The run folder of `diffspace train`: which training state to resume, the lock that keeps two trainings out
of one folder, numbered run folders (EDM's `00000-<desc>`) and `log.txt`.

Rules that protect a user's run:

- `--resume latest` resumes the newest training state that is readable *and belongs to this run* (its
  architecture and identity options equal those of the folder's `config.json`); it starts a fresh run only in a
  folder that holds no run at all, and otherwise refuses with the two ways out.
- Only one process trains in a folder at a time: `train.lock` holds the owner's pid and host and an advisory
  `flock` that the kernel drops when the owner dies, so the lock of a killed run is recognised as stale and taken
  over. Under torchrun only rank 0 takes it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from diffspace.errors import CheckpointError, ConfigError
from diffspace.io import checkpoint as ckpt

__all__ = ["LOCK_NAME", "RunLock", "run_files", "find_resume", "config_difference", "check_tensors_fit",
           "numbered_run_dir", "run_description", "RunLog"]

LOCK_NAME = "train.lock"
_RUN_FILE = re.compile(r"^(config\.json|stats\.jsonl|(network-snapshot|training-state)-\d+\.safetensors)$")


def run_files(folder: str | os.PathLike) -> list[str]:
    """Names of the files of a training run in `folder` (config, stats, snapshots, states), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _RUN_FILE.match(p.name))


# ---------------------------------------------------------------------------------------------------------------
# Which state to resume.

def _identity(config: dict) -> dict:
    from diffspace.train.config import IDENTITY_FIELDS

    train = dict(config.get("train") or {})
    out = {f"--{k.replace('_', '-')}": train[k] for k in IDENTITY_FIELDS if k in train}
    net = (config.get("network") or {})
    for part in ("precond", "network"):
        entry = net.get(part) or {}
        if "class" in entry:
            out[f"{part} class"] = entry["class"]
        if "kwargs" in entry:
            out[f"{part} arguments"] = entry["kwargs"]
    return out


def config_difference(a: dict, b: dict) -> str | None:
    """The first identity option (architecture, data, seed …) on which two run configurations differ, as
    "name 'x' vs 'y'", or None when they agree on every option both record."""
    ia, ib = _identity(a), _identity(b)
    for name in ia:
        if name in ib and ia[name] != ib[name]:
            va, vb = ia[name], ib[name]
            if isinstance(va, dict) and isinstance(vb, dict):
                keys = [k for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
                return f"{name}: {keys[0]}={va.get(keys[0])!r} vs {vb.get(keys[0])!r}"
            return f"{name} {va!r} vs {vb!r}"
    return None


def _read_run_config(folder: Path, log) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log(f"warning: {path} is unreadable ({e}); training states cannot be matched to this run")
        return None


def _newest_own_state(folder: Path, run_config: dict | None, log):
    """(found, problems): the newest readable state of `folder` that matches `run_config`, and the reason each
    newer one was passed over."""
    problems = []
    for p in ckpt.list_checkpoints(folder, "training-state"):
        try:
            tensors, state, config = ckpt.load_training_state(p)
        except CheckpointError as e:
            problems.append(f"{p.name}: {e}")
            log(f"warning: skipping {p.name}: {e}")
            continue
        diff = None if run_config is None else config_difference(config, run_config)
        if diff is not None:
            message = f"{p.name} is not from this run ({diff} in {folder / 'config.json'})"
            problems.append(message)
            log(f"warning: skipping {message}")
            continue
        return (p, tensors, state, config), problems
    return None, problems


def find_resume(resume: str | os.PathLike | None, outdir: str | os.PathLike, log=print):
    """Resolve `resume` to (path, tensors, state, config) or None (a fresh run).

    None: a fresh run. 'latest': the newest valid state of `outdir` that belongs to the run described by its
    config.json; a fresh run when the folder holds no run at all; ConfigError when it holds a run but no usable
    state (every state corrupt or foreign, or snapshots without states). A folder: its newest usable state (error
    if none). A file: that state (error when it is broken or another run's than the one in `outdir`).
    """
    if resume is None:
        return None
    outdir = Path(outdir)
    if str(resume) == "latest":
        if not outdir.is_dir():
            return None
        found, problems = _newest_own_state(outdir, _read_run_config(outdir, log), log)
        if found is not None:
            return found
        kept = [n for n in run_files(outdir) if n.startswith(("network-snapshot", "training-state"))]
        if not kept:
            return None
        what = (f"every training state in {outdir} is unusable ({problems[0]})" if problems else
                f"{outdir} holds {kept[0]} but no training state")
        raise ConfigError(f"--resume latest: {what}; nothing was changed: pass --resume PATH of a good "
                          "training-state file, or choose a new --outdir")
    path = Path(resume)
    if path.is_dir():
        found, problems = _newest_own_state(path, _read_run_config(path, log), log)
        if found is None:
            detail = f" ({problems[0]})" if problems else ""
            raise ConfigError(f"--resume {path}: no usable training-state-*.safetensors in that folder{detail}: "
                              "pass --resume PATH of a good training-state file")
        return found
    if not path.exists():
        raise ConfigError(f"--resume {path}: no such file or folder")
    tensors, state, config = ckpt.load_training_state(path)
    run_config = _read_run_config(outdir, log) if outdir.is_dir() else None
    diff = None if run_config is None else config_difference(config, run_config)
    if diff is not None:
        raise ConfigError(f"--resume {path}: that state is not from the run in {outdir} ({diff}): continue it in "
                          "a new --outdir")
    return (path, tensors, state, config)


def check_tensors_fit(path, tensors: dict, net, state_config: dict, net_config: dict) -> None:
    """CheckpointError naming the mismatch when a training state's tensors or recorded architecture do not fit
    the network built for the run."""
    saved = (state_config.get("network") or {})
    for part in ("precond", "network"):
        a, b = (saved.get(part) or {}).get("class"), net_config[part]["class"]
        if a is not None and a != b:
            raise CheckpointError(f"{path}: the state was written by a {a} but this run builds a {b}: resume it "
                                  "with its own configuration or choose a new --outdir")
    want = net.state_dict()
    for prefix in ("net.", "ema."):
        have = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        shape = [k for k in want if k in have and tuple(have[k].shape) != tuple(want[k].shape)]
        if missing or extra or shape:
            cls = net_config["network"]["class"]
            detail = (f"missing {prefix}{missing[0]}" if missing else f"unexpected {prefix}{extra[0]}" if extra else
                      f"{prefix}{shape[0]} has shape {list(have[shape[0]].shape)}, not {list(want[shape[0]].shape)}")
            raise CheckpointError(f"{path}: its tensors do not fit the {cls} its configuration describes ({detail}"
                                  f"; {len(missing)} missing, {len(extra)} unexpected): the file is not a usable "
                                  "state of this run")


# ---------------------------------------------------------------------------------------------------------------
# The lock.

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An advisory lock on a run folder: `train.lock` with {"pid", "host", "started"} and a `flock` held for the
    life of the process. Stale locks (their process is dead: the flock is free, or, where flock is unsupported,
    the pid no longer exists on this host) are taken over with a warning. Lock files of another host whose flock
    cannot be checked are never taken over: the message names the file to delete."""

    def __init__(self, folder: str | os.PathLike, log=print):
        self.path = Path(folder) / LOCK_NAME
        self.log = log
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        for _ in range(5):  # retried when the file was replaced between our open and our flock
            fd = self._try_acquire()
            if fd is not None:
                self.fd = fd
                return self
        raise ConfigError(f"{self.path} keeps changing: another diffspace train is starting in "
                          f"{self.path.parent}; choose another --outdir")

    def _try_acquire(self) -> int | None:
        host, pid = socket.gethostname(), os.getpid()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(f"cannot create {self.path} ({e.strerror or e}): choose a writable --outdir") \
                from None
        try:
            flocked = self._flock(fd)
            if flocked is not False and not self._same_file(fd):
                os.close(fd)
                return None
            old = self._read(fd)
            if flocked is False or (flocked is None and old and old.get("host") == host
                                    and old.get("pid") != pid and _pid_alive(int(old.get("pid", -1)))):
                raise ConfigError(self._busy(old))
            if flocked is None and old and old.get("host") != host:
                raise ConfigError(f"{self._busy(old)}; if that run has ended, delete {self.path}")
            if old and old.get("pid") != pid:
                self.log(f"warning: taking over the stale lock of pid {old.get('pid')} on {old.get('host')} "
                         f"(that process is gone): {self.path}")
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps({"pid": pid, "host": host, "started": time.time()}) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _same_file(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _busy(self, old: dict | None) -> str:
        who = f"pid {old.get('pid')} on {old.get('host')}" if old else "another process"
        return (f"{self.path.parent} is in use by another diffspace train ({who}, lock {self.path.name}): wait for "
                "it to finish or choose another --outdir")

    @staticmethod
    def _read(fd: int) -> dict | None:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            value = json.loads(text) if text.strip() else None
            return value if isinstance(value, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked; False: held by a live process; None: flock unsupported here."""
        try:
            import fcntl
        except ImportError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None


# ---------------------------------------------------------------------------------------------------------------
# Run folder names and the log.

def run_description(cfg, world: int) -> str:
    """EDM's run description: <data>-<cond|uncond>-<arch>-<precond>-gpus<W>-batch<B>-<precision>[-<desc>]."""
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(cfg.data).rstrip("/")).name.removesuffix(".zip")).strip("-")
    desc = (f"{data or 'data'}-{'cond' if cfg.cond else 'uncond'}-{cfg.arch}-{cfg.precond}-gpus{world}-"
            f"batch{cfg.batch}-{cfg.precision}")
    return f"{desc}-{cfg.desc}" if cfg.desc else desc


def numbered_run_dir(parent: str | os.PathLike, desc: str) -> Path:
    """parent/NNNNN-desc with NNNNN one more than the largest number of parent's numbered folders (EDM's rule)."""
    parent = Path(parent)
    ids = [int(m.group()) for p in (parent.iterdir() if parent.is_dir() else ())
           if p.is_dir() and (m := re.match(r"^\d+", p.name))]
    return parent / f"{max(ids, default=-1) + 1:05d}-{desc}"


class RunLog:
    """Everything the training prints, also appended to `log.txt` of the run folder once it exists (messages
    before that are kept and written first). A failing log write (full disk) turns the file logging off."""

    def __init__(self, echo):
        self.echo = echo
        self.pending: list[str] = []
        self.file = None

    def __call__(self, message: str) -> None:
        self.echo(message)
        self.to_file(message)

    def to_file(self, message: str) -> None:
        if self.file is None:
            if self.pending is not None:
                self.pending.append(message)
            return
        try:
            self.file.write(message + "\n")
            self.file.flush()
        except OSError:
            self.close()

    def open(self, path: Path) -> None:
        try:
            self.file = open(path, "a", encoding="utf-8")
        except OSError:
            self.pending = None
            return
        pending, self.pending = self.pending or [], None
        for message in pending:
            self.to_file(message)

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
        self.file, self.pending = None, None
