"""The life of a run folder: claim it, lock it, check a resume before touching it, keep one whole log.

``gens.runs.train_run`` goes through :class:`RunFolder` for everything it writes:

- **New run** (``RunFolder.new(path)``): the folder may exist only if it holds none of a run's files
  (``RUN_FILES``); a folder holding another run's files is refused with one ``ValueError`` line (with its
  last.ckpt: "continue it with --resume"; without: the files are named), so two runs never mix.
  ``RunFolder.new(None, base=...)``: the default timestamped folder, made with an exclusive ``mkdir``;
  if another run took that name (two runs started in the same second) it becomes ``base-2``, ``base-3``...
  A path that is a file, or a folder that cannot be written, is refused before anything is written.
- **Lock**: the folder is locked (``flock`` on the folder itself: no lock file) while the run trains, so
  a second ``gens train`` on it is refused instead of interleaving. DDP worker processes (a non-zero
  rank in the environment) use the folder rank 0 claimed and neither lock nor write config.json.
- **Resume** (``RunFolder.resume(path)`` + :meth:`RunFolder.check_resume`): config.json and
  checkpoints/last.ckpt must exist, and last.ckpt must load weights-only, be of the run's method, fit its
  network, and have epochs (or steps) left to train. All of this is checked before any file in the folder changes, so
  a failed resume leaves the folder exactly as it was.
- **Log** (:meth:`RunFolder.csv_logger`): Lightning's CSVLogger, except that it never deletes metrics.csv
  (Lightning does when the folder is not empty) but appends to it, flushes after every step, and on a
  resume first drops the rows logged after the checkpoint (the batches trained again). A resumed run's
  metrics.csv (and so losses.png) holds every epoch from the first, as an uninterrupted run's would.
- If a new run fails before it wrote anything, the folder it made is removed again.
"""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RUN_FILES", "ResumePoint", "RunFolder", "default_out", "is_worker", "read_json", "write_json"]

# Files and folders a run writes: a folder holding any of them belongs to a run.
RUN_FILES = ("config.json", "checkpoints", "metrics.csv", "metrics.json", "tensorboard", "hparams.yaml",
             "reconstructions.png", "samples.png", "latents.png", "losses.png", "fidelity.png")
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_worker() -> bool:
    """Whether this process is a non-zero rank of a distributed run (it uses rank 0's folder)."""
    return any(os.environ.get(k, "0").strip() not in ("", "0") for k in _RANK_VARIABLES)


def read_json(path, what: str = "config") -> dict:
    """Read a JSON file; a missing or malformed one raises a ValueError naming ``what`` and the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what}: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: {path} is not valid JSON ({err}); the file is damaged") from None


def write_json(path, obj) -> Path:
    """Write JSON atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def default_out(cfg: dict, root="runs") -> Path:
    """``runs/<method>-<data name>-<YYYYmmdd-HHMMSS>`` (``RunFolder.new`` adds ``-2``... if it is taken)."""
    data = str(cfg["data"])
    name = data.split(":")[0] if ":" in data else Path(data).stem or data
    stamp = _now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg['method']}-{''.join(c if c.isalnum() else '_' for c in name)}-{stamp}"


def _now() -> _dt.datetime:
    return _dt.datetime.now()


@dataclass(frozen=True)
class ResumePoint:
    """Where last.ckpt stands: ``batches`` trained in all (the log keeps rows of steps below it)."""

    path: Path
    global_step: int
    batches: int
    epochs_done: int


class RunFolder:
    """A run folder held by this process (see the module docstring). Use as a context manager."""

    def __init__(self, path, *, created: bool = False, worker: bool = False):
        self.path = Path(path)
        self.created = created  # made by this process (removed again if the run fails before writing)
        self.worker = worker
        self._lock_fd = None

    # ---- opening ---------------------------------------------------------------------------------------
    @classmethod
    def new(cls, path=None, *, base=None) -> RunFolder:
        """Claim a folder for a new run: ``path`` (made if missing), or a fresh one named after ``base``."""
        if is_worker():
            return cls(path if path is not None else base, worker=True)
        if path is None:
            folder = cls._unique(Path(base))
        else:
            path = Path(path)
            if path.exists() and not path.is_dir():
                raise ValueError(f"out: {path} is a file, not a folder; give a folder for the run")
            created = not path.exists()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"out: cannot make the folder {path} ({err.strerror or err})") from None
            folder = cls(path, created=created)
        try:
            folder._lock()
            folder._check_unused()
            folder._check_writable()
        except BaseException:
            folder.release(failed=True)
            raise
        return folder

    @classmethod
    def _unique(cls, base: Path) -> RunFolder:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"out: cannot make the folder {base.parent} ({err.strerror or err})") from None
        for i in range(1, 10000):
            path = base if i == 1 else base.with_name(f"{base.name}-{i}")
            try:
                path.mkdir()  # exclusive: exactly one process makes a given folder
            except FileExistsError:
                continue
            except OSError as err:
                raise ValueError(f"out: cannot make the folder {path} ({err.strerror or err})") from None
            return cls(path, created=True)
        raise ValueError(f"out: every folder name {base}-N is taken; give --out")

    @classmethod
    def resume(cls, path) -> RunFolder:
        """Open an existing run to continue it (no file is touched)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"resume: {path} is not a run folder (no config.json)")
        last = path / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ValueError(f"resume: {last} does not exist; nothing to resume (the run stopped before its "
                             "first checkpoint: train it again in a new folder)")
        folder = cls(path, worker=is_worker())
        if not folder.worker:
            folder._lock()
        return folder

    # ---- locking ---------------------------------------------------------------------------------------
    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the claim checks still hold
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(f"out: {self.path} is in use by another running `gens train`; wait for it or "
                                 "choose another folder") from None
            return  # a file system without locks
        self._lock_fd = fd

    def release(self, failed: bool = False) -> None:
        """Unlock; after a failure, remove the folder if this process made it and nothing was written."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None
        if failed and self.created and not self.worker:
            try:
                self.path.rmdir()  # only if empty
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)

    # ---- checks ----------------------------------------------------------------------------------------
    def _check_unused(self) -> None:
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if not found:
            return
        if (self.path / "checkpoints" / "last.ckpt").is_file():
            raise ValueError(f"out: {self.path} already holds a run; continue it with --resume {self.path} or "
                             "choose another --out")
        ckpts = sorted(p.name for p in (self.path / "checkpoints").glob("*.ckpt")) if "checkpoints" in found else []
        listed = ", ".join([n for n in found if n != "checkpoints"] + [f"checkpoints/{c}" for c in ckpts])
        raise ValueError(f"out: {self.path} already holds another run's files ({listed or 'checkpoints/'}) but no "
                         "last.ckpt to resume; delete them or choose another --out")

    def _check_writable(self) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".gens-write-test.")
        except OSError as err:
            raise ValueError(f"out: cannot write in {self.path} ({err.strerror or err})") from None
        os.close(fd)
        os.unlink(tmp)

    def check_resume(self, cfg: dict, module) -> ResumePoint:
        """Check that checkpoints/last.ckpt continues run ``cfg`` with ``module``'s network; reads only."""
        from gens.checkpoint import load_checkpoint

        last = self.path / "checkpoints" / "last.ckpt"
        ckpt = load_checkpoint(last)  # UnsafeCheckpointError (ValueError) for crafted or damaged files
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
            raise ValueError(f"resume: {last} is not a checkpoint of a `gens train` run")
        tagged = (ckpt.get("gens") or {}).get("method")
        if tagged is not None and tagged != cfg["method"]:
            raise ValueError(f"resume: {last} holds a {tagged!r} model, but {self.path / 'config.json'} is a "
                             f"{cfg['method']!r} run; the folder mixes two runs")
        mismatch = _state_mismatch(module.state_dict(), ckpt["state_dict"])
        if mismatch:
            raise ValueError(f"resume: {last} does not fit the network of {self.path / 'config.json'} ({mismatch})")
        loop = ckpt["loops"]["fit_loop"]
        epochs, batches = loop["epoch_progress"]["total"], loop["epoch_loop.batch_progress"]
        # epochs trained: the last one counts once its last batch is (gens.checkpoint.LastCheckpoint writes an
        # epoch's end with the loop state after its last batch, where Lightning has not yet counted it processed)
        done = int(epochs["processed"])
        done += int(bool(batches.get("is_last_batch")) and done < int(epochs["started"]))
        point = ResumePoint(last, int(ckpt.get("global_step", 0)), int(batches["total"]["ready"]), done)
        finished = (self.path / "metrics.json").is_file()
        # the budget: epochs and/or steps (a config.json from before steps existed has epochs alone)
        for opt, limit, have in (("epochs", cfg.get("epochs"), done), ("steps", cfg.get("steps"), point.global_step)):
            if limit is not None and (limit < have or (limit == have and finished)):
                raise ValueError(f"resume: {self.path} has already trained {have} {opt}"
                                 + (" and is finished" if limit == have else "")
                                 + f"; give --{opt} N with N > {have} to train it further")
        return point

    # ---- writing ---------------------------------------------------------------------------------------
    def write_config(self, cfg: dict) -> None:
        if not self.worker:
            write_json(self.path / "config.json", cfg)

    def csv_logger(self, point: ResumePoint | None = None):
        """The run's CSVLogger: appends to metrics.csv (after dropping rows from ``point`` on)."""
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.loggers.csv_logs import ExperimentWriter
        from lightning.pytorch.loggers.logger import rank_zero_experiment

        keep_below = None if point is None else point.batches

        class AppendingWriter(ExperimentWriter):
            _trim = keep_below

            def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
                pass

            def save(self) -> None:
                if self.metrics and self._trim is not None:
                    self.metrics_keys = _trim_metrics(Path(self.metrics_file_path), self._trim)
                    self._trim = None
                super().save()

        class AppendingCSVLogger(CSVLogger):
            @property
            @rank_zero_experiment
            def experiment(self):
                if self._experiment is None:
                    self._fs.makedirs(self.root_dir, exist_ok=True)
                    self._experiment = AppendingWriter(log_dir=self.log_dir)
                return self._experiment

        return AppendingCSVLogger(self.path, name="", version="", flush_logs_every_n_steps=1)


def _state_mismatch(have: dict, saved: dict) -> str:
    """'' when ``saved`` has the keys and shapes of ``have``, else what differs (short)."""
    missing = [k for k in have if k not in saved]
    unexpected = [k for k in saved if k not in have]
    shapes = [k for k in have if k in saved and tuple(have[k].shape) != tuple(getattr(saved[k], "shape", ()))]
    parts = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]
    return "; ".join(parts)


def _trim_metrics(path: Path, keep_below: int) -> list[str]:
    """Drop the rows of metrics.csv whose step is >= ``keep_below``; return its header (in file order)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if _step(r) < keep_below]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return header


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
