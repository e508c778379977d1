"""The run directory's rules: one writer at a time, never overwritten, resumable after a crash.

* **Lock**: a training holds an exclusive ``flock`` on ``RUN/.lock`` for its
  whole life; a second process on the same directory is refused. The kernel
  drops the lock when its process dies (even by SIGKILL), so a crashed run
  never blocks its own resume. The file keeps the holder's pid for the message.
* **Never overwrite**: a directory holding a run (``last.pt``) is only
  continued with ``resume``; an explicitly named one is otherwise an error, the
  default one moves on to ``runs/demo-2``, ``runs/demo-3``, ...
* **Crash leftovers**: temporary files of killed writes are removed; when
  ``last.pt`` is torn or missing, ``prev.pt`` (the checkpoint before it) is used.
* **Metrics**: on resume, ``metrics.jsonl`` is cut back to the checkpoint's
  iteration, so that the iterations run again after it are not logged twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import LINK_REFUSED, open_nofollow, write_text_atomic

LOCK_NAME = ".lock"
LAST, PREV = "last.pt", "prev.pt"


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir/.lock`` (released on close or death)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False when another one does."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PedcrowdError(f"{self.path.parent}: cannot create the run directory ({e.strerror or e})") from None
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)  # a planted link is refused
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk: let go of the lock, say what happened
            os.close(fd)
            raise PedcrowdError(f"{self.path}: cannot write the lock file ({e.strerror or e})") from None
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid written by the process holding the lock ("?" if unknown)."""
        with contextlib.suppress(OSError):
            return self.path.read_text().strip() or "?"
        return "?"

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def locked_output(folder: Path) -> Iterator[RunLock]:
    """``folder`` locked as a run directory while inside (``pedcrowd infer --out``): a
    second writer is refused instead of mixing its files with this one's."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PedcrowdError(f"{folder}: --out names a file; give a folder")
    created = not folder.exists()
    lock = RunLock(folder)
    if not lock.acquire():
        raise PedcrowdError(
            f"{folder}: another pedcrowd process (pid {lock.holder()}) is writing into this "
            "folder; wait for it to finish or choose another --out"
        )
    try:
        yield lock
    finally:
        # nothing written: remove the folder while still holding the lock, so that no other
        # process can lock a .lock that is then unlinked under it
        with contextlib.suppress(OSError):
            if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                lock.path.unlink()
                folder.rmdir()
        lock.release()


def claim_run_dir(run_dir: Path, explicit: bool, resume: bool) -> tuple[Path, RunLock]:
    """The run directory to train into, locked.

    Args:
        explicit: the user named the directory (else it is the config's default,
            which moves on to the first free ``NAME-2``, ``NAME-3``, ... instead
            of overwriting an earlier run).

    Raises:
        PedcrowdError: another process trains there; it holds a run and
            ``resume`` is off (explicit directory); ``resume`` without a checkpoint.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise PedcrowdError(f"{run_dir}: names a file, not a run directory; choose another --out")
    candidate, n = run_dir, 2
    while True:
        lock = RunLock(candidate)
        if not lock.acquire():
            if explicit or resume:
                raise PedcrowdError(
                    f"{candidate}: another training (pid {lock.holder()}) is using this run "
                    "directory; wait for it to finish or choose another --out"
                )
        else:
            has_run = any((candidate / name).is_file() for name in (LAST, PREV))
            if resume and not has_run:
                lock.release()
                raise PedcrowdError(f"{candidate}: --resume given but there is no last.pt to resume from")
            if resume or not has_run:
                return candidate, lock
            lock.release()
            if explicit:
                raise PedcrowdError(
                    f"{candidate}: already holds a run (last.pt); pass --resume to continue it "
                    "or choose another --out"
                )
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
        n += 1


def load_resume_checkpoint(run_dir: Path, map_location: Any) -> tuple[dict[str, Any], Path, str | None]:
    """``last.pt``, or ``prev.pt`` when ``last.pt`` is torn or missing; with a warning then.

    A ``last.pt`` that is refused as unsafe is never skipped over: that error stands.
    """
    from pedcrowd.engine.checkpoint import load_checkpoint  # torch: only when one is read

    last, prev = run_dir / LAST, run_dir / PREV
    try:
        return load_checkpoint(last, map_location=map_location), last, None
    except PedcrowdError as e:
        if "refused" in str(e) or not prev.is_file():
            raise
        ckpt = load_checkpoint(prev, map_location=map_location)
        return ckpt, prev, (
            f"{e}; resuming from the checkpoint before it, {prev} (iteration {ckpt.get('iteration')})"
        )


def truncate_metrics(run_dir: Path, iteration: int, eval_done: bool = True) -> int:
    """Drop the ``metrics.jsonl`` lines logged after ``iteration`` (and torn lines).

    Args:
        eval_done: the checkpoint was written after its epoch's evaluation (an
            epoch-end one); else an evaluation logged at ``iteration`` is dropped too
            (the resumed run does it again).

    Returns the number of lines removed.
    """
    path = run_dir / "metrics.jsonl"
    if path.is_symlink():
        raise PedcrowdError(f"{path}: {LINK_REFUSED}")
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            it = int(record["iter"])
            ok = it < iteration or (it == iteration and (eval_done or record.get("kind") != "eval"))
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False  # a line torn by a kill
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped


# Sections and fields that shape the training trajectory: a resume may not change them.
_FROZEN_SECTIONS = ("model", "loss", "optim", "schedule", "synth")
_FROZEN_TRAIN = ("batch_size", "seed", "amp")
_FREE_DATA = ("root", "num_workers")


def check_resume_config(
    saved: dict[str, Any], new: dict[str, Any], epochs_done: int, source: Path
) -> list[str]:
    """Refuse a resume whose config changes the run's trajectory; return warnings.

    Refused: any change under ``model``, ``loss``, ``optim``, ``schedule``,
    ``synth``, ``data`` (except ``root``, ``num_workers`` and each ``data.train`` set's
    ``root``), and
    ``train.batch_size``/``seed``/``amp``; any change of ``train.epochs`` with
    the cosine schedule (its curve depends on the total length), or fewer
    epochs than already done. Allowed with a warning: another ``train.epochs``
    with the step schedule (the learning rate of every iteration is unchanged), and
    another ``train.threads`` (the run continues, not bit for bit).
    Everything else (device, logging, evaluation, checkpoint frequency) is free.
    """

    def diff(section: str, keys: set[str]) -> list[str]:
        old, cur = saved.get(section) or {}, new.get(section) or {}
        if not isinstance(old, dict) or not isinstance(cur, dict):
            return [f"{section}: {old!r} -> {cur!r}"] if old != cur else []
        return [f"{section}.{k}: {old.get(k)!r} -> {cur.get(k)!r}"
                for k in sorted(keys) if old.get(k) != cur.get(k)]

    def keys(section: str) -> set[str]:
        old, cur = saved.get(section), new.get(section)
        return set(old if isinstance(old, dict) else {}) | set(cur if isinstance(cur, dict) else {})

    changed = [c for sec in _FROZEN_SECTIONS for c in diff(sec, keys(sec))]
    changed += diff("data", keys("data") - set(_FREE_DATA) - {"train"})
    old_sets, new_sets = ((d.get("data") or {}).get("train") or [] for d in (saved, new))
    if [_without_root(s) for s in old_sets] != [_without_root(s) for s in new_sets]:
        changed.append("data.train: the training sets changed (only their roots may move)")
    changed += diff("train", set(_FROZEN_TRAIN))
    if changed:
        raise PedcrowdError(
            f"{source}: resuming with a changed config would not continue the same run: "
            + "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
            + f"; resume with its own config, or start a new run from it with --set model.weights={source}"
        )
    warnings = []
    if saved["train"].get("threads") != new["train"].get("threads"):
        warnings.append(f"train.threads {saved['train'].get('threads')} -> {new['train'].get('threads')}: "
                        "the run continues, but not bit for bit as it would have (CPU float rounding)")
    old_epochs, new_epochs = saved["train"]["epochs"], new["train"]["epochs"]
    if new_epochs == old_epochs:
        return warnings
    if new_epochs < epochs_done:
        raise PedcrowdError(
            f"{source}: train.epochs={new_epochs} but the run has already finished {epochs_done} epochs"
        )
    if new["schedule"]["name"] != "step":
        raise PedcrowdError(
            f"{source}: resuming with train.epochs {old_epochs} -> {new_epochs} would change the "
            f"{new['schedule']['name']} schedule of the iterations already run; only a step schedule's "
            "length may change on resume"
        )
    return [*warnings, f"train.epochs {old_epochs} -> {new_epochs} (step schedule: the learning "
            "rate of every iteration is unchanged)"]


def _without_root(train_set: Any) -> Any:
    """A ``data.train`` entry without its ``root`` (a moved folder continues the same run)."""
    return {k: v for k, v in train_set.items() if k != "root"} if isinstance(train_set, dict) else train_set
