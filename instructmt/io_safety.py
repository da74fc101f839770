"""Safe writing: every command that writes goes through here.

- `check_output_path` refuses an output that would destroy something the user did not ask us to
  write (a model / run / checkpoint directory, the input tasks, an existing file, a foreign folder).
- `output_lock` is an advisory lock on an output path, so a second concurrent writer fails at once
  with one line instead of colliding with the first.
- `atomic_write_text` / `atomic_replace_dir` write under per-process unique temporary names and
  rename into place: a failure (disk full, read-only, permission denied) leaves what was there before.
- `user_io_error` turns an OSError into an `OutputError` naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import InstructMTError
from .rundir import RUN_META

# A report directory we wrote holds this marker; only such a directory is ever replaced.
REPORT_MARKER = ".instructmt-report"
REPORT_FILES = {"predictions.jsonl", "metrics.json", "report.md", "categories.png", REPORT_MARKER}
CHECKPOINT_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^(\.tmp-)?step-\d+$")
# What a training run directory holds (besides reports); none of it may be an eval output.
RUN_PARTS = ("model", "checkpoints", "tb", "config.yaml", "logs.jsonl", "rank_checksums.json")
_LOCK_SUFFIX = ".instructmt-lock"


class OutputError(InstructMTError):
    """A path cannot be read or written (or must not be): the message names it and says what to do."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or choose another --output",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --output",
    errno.EROFS: "the file system is read-only: choose a writable --output",
    errno.EACCES: "permission denied: choose a directory you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a directory you can write, or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "is a directory where a file was expected",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
}


def user_io_error(err: OSError, path: str | Path | None = None, action: str = "write") -> OutputError:
    """One-line error for an OSError: the path, what failed, and what to do about it."""
    where = path if path is not None else err.filename
    advice = _ADVICE.get(err.errno, err.strerror or str(err))
    return OutputError(f"cannot {action}: {advice}", where)


# --- what a directory is -------------------------------------------------------------------------
def is_model_dir(p: Path) -> bool:
    if not p.is_dir():
        return False
    if (p / RUN_META).exists() or (p / "adapter_config.json").exists():
        return True
    return (p / "config.json").exists() and any(p.glob("*.safetensors"))


def is_checkpoint_dir(p: Path) -> bool:
    """A checkpoint (trainer_state.json, or step-N under checkpoints/) or a run's checkpoints/ folder."""
    return p.is_dir() and ((p / CHECKPOINT_STATE).exists()
                           or (bool(_STEP_DIR.match(p.name)) and p.parent.name == "checkpoints")
                           or (p.name == "checkpoints" and (p.parent / "config.yaml").exists()))


def is_run_dir(p: Path) -> bool:
    """A training run directory: holds a model/, checkpoints/ or a run's config + log."""
    if not p.is_dir():
        return False
    return ((p / "model" / RUN_META).exists() or (p / "checkpoints").is_dir()
            or ((p / "config.yaml").exists() and (p / "logs.jsonl").exists()))


def is_report_dir(p: Path) -> bool:
    """One of our report directories: it holds the marker, or (older reports) only report files."""
    if not p.is_dir():
        return False
    if (p / REPORT_MARKER).exists():
        return True
    names = {c.name for c in p.iterdir()}
    return bool(names) and names <= REPORT_FILES and "metrics.json" in names


def _kind(p: Path) -> str | None:
    if is_run_dir(p):
        return "a training run directory"
    if is_model_dir(p):
        return "a model directory"
    if is_checkpoint_dir(p):
        return "a checkpoint directory"
    return None


def _contains_protected(root: Path, limit: int = 2000) -> tuple[Path, str] | None:
    """A model / run / checkpoint directory at or below `root` (bounded walk)."""
    seen = 0
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        kind = _kind(d)
        if kind:
            return d, kind
        seen += 1
        if seen > limit:
            return None
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
    return None


def _resolved(p: str | Path) -> Path:
    return Path(os.path.abspath(Path(p).expanduser()))


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_path(output: str | Path, *, purpose: str, inputs: Iterable[str | Path] = (),
                      replace_report: bool = False, allow_run: bool = False,
                      allow_nonempty: bool = False) -> Path:
    """Refuse an output path that would destroy what the user did not ask us to write.

    purpose: the flag, for the message ("--output").
    inputs: input paths (task files, the model being evaluated) the output may not be, hold or lie in.
    replace_report: an existing report directory of ours (marker file) may be replaced.
    allow_run: the output may be an existing run directory (train --resume).
    allow_nonempty: an existing directory that is none of the protected kinds may be written into
        (commands that add their own files to a folder, e.g. `qfa search`, `retrieve train`).
    """
    out = _resolved(output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{purpose} is an existing file, not a directory: choose a new path "
                          "(nothing was changed)", output)
    for ancestor in out.parents:
        if ancestor.exists() and not ancestor.is_dir():
            raise OutputError(f"{purpose}: {ancestor} is a file, not a directory", output)
        kind = _kind(ancestor) if ancestor.is_dir() else None
        if kind in ("a model directory", "a checkpoint directory"):
            raise OutputError(f"{purpose} lies inside {kind} ({ancestor}); choose a path outside it", output)
        if kind == "a training run directory" and out.relative_to(ancestor).parts[0] in RUN_PARTS:
            raise OutputError(f"{purpose} would overwrite part of the training run {ancestor}; "
                              "choose a new path (e.g. RUN/eval)", output)
    kind = _kind(out) if out.is_dir() else None
    if kind and not (allow_run and kind == "a training run directory"):
        raise OutputError(f"{purpose} is {kind}; writing there would destroy it. Choose a new path", output)
    for src in inputs:
        s = _resolved(src)
        if _overlaps(out, s):
            raise OutputError(f"{purpose} overlaps the input {src}; choose a path outside it", output)
    if not out.exists():
        return out
    if (allow_run and kind) or allow_nonempty:
        return out
    found = _contains_protected(out)
    if found:
        raise OutputError(f"{purpose} holds {found[1]} ({found[0]}); writing there would destroy it. "
                          "Choose a new path", output)
    if replace_report and is_report_dir(out):
        return out
    if any(out.iterdir()):
        what = "an instructmt report directory" if replace_report else "empty"
        raise OutputError(f"{purpose} exists and is not {what}; choose a new path or remove it first", output)
    return out


# --- advisory locks ------------------------------------------------------------------------------
def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}{_LOCK_SUFFIX}"


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (or a plain process): the one that guards and locks."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def output_lock(target: str | Path, *, purpose: str = "--output") -> Iterator[None]:
    """Hold an exclusive advisory lock on `target` (via a lock file beside it). A second writer
    fails at once with one line; nothing of the first is touched. Only the main process of a
    distributed launch locks (the others write nothing of their own)."""
    if not is_main_process():
        yield
        return
    import fcntl
    target = _resolved(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise user_io_error(e, target.parent, "create the output's parent directory") from None
    lock = _lock_path(target)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise user_io_error(e, target, "lock the output") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another instructmt process is writing {purpose} {target} "
                                  "(lock held); wait for it to finish or choose another path", target) from None
            raise user_io_error(e, target, "lock the output") from None
        # the previous holder may have removed the lock file after we opened it: lock the live one
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


# --- atomic writes -------------------------------------------------------------------------------
def unique_temp_name(final: Path, tag: str = "tmp") -> Path:
    """A hidden sibling of `final` that no other process will pick."""
    return final.parent / f".{tag}-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_dead_temps(final: Path) -> None:
    """Remove temp / moved-aside copies of `final` left by a process that was killed (its pid is
    gone); a live writer's are left alone."""
    if not final.parent.is_dir():
        return
    for tag in ("tmp", "old"):
        for p in final.parent.glob(f".{tag}-{final.name}-*-*"):
            try:
                pid = int(p.name.rsplit("-", 2)[-2])
                os.kill(pid, 0)
            except ValueError:
                continue  # not one of ours
            except ProcessLookupError:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
            except OSError:
                continue  # exists but not ours to signal: alive


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a unique temp file + fsync + rename. On any failure the
    previous content of `path` is unchanged and no temp file is left behind."""
    final = Path(path)
    tmp = unique_temp_name(final)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise user_io_error(e, final) from None
    return final


def atomic_replace_dir(final: str | Path, write: Callable[[Path], None], *, marker: str | None = None) -> Path:
    """Run `write(tmp_dir)` in a unique temporary directory, then rename it to `final` (replacing
    an existing `final` only after the new one is complete). A failed write leaves `final` as it
    was. `marker`: a file name created in the new directory (says the directory is ours)."""
    final = Path(final)
    tmp = unique_temp_name(final)
    remove_dead_temps(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise user_io_error(e, final) from None
    try:
        write(tmp)
        if marker:
            (tmp / marker).write_text("written by instructmt; this directory may be replaced by it\n",
                                      encoding="utf-8")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise user_io_error(e, final) from None
        raise
    try:
        if final.exists():
            old = unique_temp_name(final, "old")
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except OSError:
                os.rename(old, final)  # put the previous one back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise user_io_error(e, final) from None
    return final

