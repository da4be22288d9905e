"""The app's records (datasets, jobs, metrics, adapters) and where their files live."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path

from errors import Missing, UserError
from storage.db import connect, migrate

# The files in a dataset's folder (the names nobody else spells), and the downloads' folder.
ROWS_FILE = "rows.jsonl"
EVAL_FILE = "eval.jsonl"
PROBLEMS_FILE = "problems.json"
DOWNLOADS = "downloads"
COMBINED_FILE = "combined.json"  # in a combined adapter's folder: what it was made of


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class JobKind(StrEnum):
    """What a job does; a sweep runs no process of its own (its trials are jobs)."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    MERGE = "merge"
    COMBINE = "combine"
    SWEEP = "sweep"


_STALE_MESSAGE = (
    "The job stopped sending heartbeats: its worker or the app was stopped while it ran."
)
_NEEDING = ", ".join(f"'{s}'" for s in ("queued", "running", "interrupted"))
_RESUMABLE = ("failed", "cancelled", "interrupted")
_QUEUE_ORDER = "priority DESC, created_at, id"
_ID_PATTERN = re.compile(r"^(ds|job|ad)-[0-9a-f]{12}$")


class NotFound(Missing):
    """A record that does not exist (or an id that cannot be one)."""


class InUse(UserError):
    """A record other records still refer to."""


def folder_bytes(folder: Path) -> int:
    """The size of a folder's files on disk, what an adapter's row records."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def check_id(value: object, prefix: str) -> str:
    """Ids come back from users: accept only our own shape before it touches a path or query."""
    if (
        not isinstance(value, str)
        or not _ID_PATTERN.fullmatch(value)
        or not value.startswith(prefix)
    ):
        raise NotFound(f"{value!r} is not a {_KIND[prefix]} id")
    return value


_KIND = {"ds": "dataset", "job": "job", "ad": "adapter"}


def _from_row(cls, row):
    names = {f.name for f in fields(cls)}
    return cls(**{k: row[k] for k in row.keys() if k in names})  # noqa: SIM118 (sqlite3.Row)


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    format: str
    rows: int
    columns: list[str]
    warnings: list[str]
    source_file: str
    content_hash: str
    created_at: float
    mapping: dict
    eval_rows: int
    dropped_rows: int
    sources: list[str]
    stats: dict


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    state: JobState
    spec: dict
    dataset_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    step: int
    total_steps: int | None
    trainable_params: int | None
    total_params: int | None
    cancel_requested: bool
    error: str | None
    error_detail: str | None
    checkpoint: str | None
    adapter_id: str | None
    memory_estimate_mb: float | None = None
    priority: int = 0
    gpus: int = 1
    resume_from: str | None = None
    runs: int = 0
    worker: str | None = None
    kind: JobKind = JobKind.TRAIN
    result: dict | None = None  # what an evaluate, merge or sweep job found
    parent_id: str | None = None  # the sweep job this one is a trial (or the final run) of
    role: str | None = None  # under a parent: "probe", "trial" or "final" (jobs.sweep)
    pid: int | None = None  # the process running it (a forked one's command line names no job)


@dataclass(frozen=True)
class Sample:
    step: int
    prompt_index: int
    prompt: str
    text: str


@dataclass(frozen=True)
class Metric:
    step: int
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    tokens_per_s: float | None
    memory_mb: float | None
    created_at: float


@dataclass(frozen=True)
class Adapter:
    id: str
    job_id: str | None
    name: str
    base_model: str
    method: str
    trainable_params: int | None
    total_params: int | None
    size_bytes: int | None
    created_at: float
    origin: str = "trained"  # trained, combined or imported


_DATASET_JSON = ("columns", "warnings", "mapping", "sources", "stats")


def _dataset(row) -> Dataset:
    d = dict(row)
    for key in _DATASET_JSON:
        d[key] = json.loads(d[key])
    return _from_row(Dataset, d)


def _job(row) -> Job:
    d = dict(row)
    d["state"] = JobState(d["state"])
    d["kind"] = JobKind(d["kind"])
    d["spec"] = json.loads(d["spec"])
    d["cancel_requested"] = bool(d["cancel_requested"])
    d["result"] = json.loads(d["result"]) if d.get("result") else None
    return _from_row(Job, d)


def _insert(db: sqlite3.Connection, table: str, row: dict) -> None:
    # Table and column names come from our code, never from users; values are bound.
    columns, marks = ", ".join(row), ", ".join("?" * len(row))
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))


class Store:
    """All SQL of the app. Opens a short connection per operation; safe across processes."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / "app.db"

    def init(self, journal: str = "wal") -> None:
        for sub in ("datasets", "jobs", "adapters", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        migrate(self.db_path, journal)
        self._sweep_tmp()

    def _sweep_tmp(self, older_than_s: float = 86400.0) -> None:
        """Staging left by a crash mid-write. Only old entries: other processes share tmp/."""
        cutoff = time.time() - older_than_s
        for entry in (self.data_dir / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    # ---- paths: always built from our own ids ----
    def dataset_dir(self, dataset_id: str) -> Path:
        return self.data_dir / "datasets" / check_id(dataset_id, "ds")

    def rows_path(self, dataset_id: str) -> Path:
        """A dataset's normalized training rows (JSONL)."""
        return self.dataset_dir(dataset_id) / ROWS_FILE

    def eval_path(self, dataset_id: str) -> Path:
        """Its own held-out rows, when it was uploaded with an eval file (else an empty file)."""
        return self.dataset_dir(dataset_id) / EVAL_FILE

    def problems_path(self, dataset_id: str) -> Path:
        """The rows its upload dropped, and why."""
        return self.dataset_dir(dataset_id) / PROBLEMS_FILE

    def download_path(self, name: str) -> Path:
        """A built .zip that browsers download (name: our ids only)."""
        if not re.fullmatch(r"[\w.-]+\.zip", name) or name.startswith("."):
            raise ValueError(f"not a download name: {name!r}")
        return self.downloads_dir / name

    @property
    def downloads_dir(self) -> Path:
        return self.data_dir / DOWNLOADS

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / check_id(job_id, "job")

    def adapter_dir(self, adapter_id: str) -> Path:
        return self.data_dir / "adapters" / check_id(adapter_id, "ad")

    def tmp_dir(self) -> Path:
        """A fresh scratch folder inside the data dir (same filesystem, so renames are atomic)."""
        path = self.data_dir / "tmp" / secrets.token_hex(8)
        path.mkdir(parents=True)
        return path

    def _place(self, staged: Path, final: Path, table: str, row: dict) -> None:
        """A folder and its row appear together or not at all."""
        staged.rename(final)
        try:
            with connect(self.db_path) as db:
                _insert(db, table, row)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise

    # ---- datasets ----
    def add_dataset(self, staged: Path, **values) -> Dataset:
        """Move a fully written staging folder into place and record it, all or nothing."""
        dataset_id = new_id("ds")
        row = dict(values, id=dataset_id, created_at=time.time())
        for key in _DATASET_JSON:
            if key in row:
                row[key] = json.dumps(row[key])
        self._place(staged, self.dataset_dir(dataset_id), "datasets", row)
        return self.get_dataset(dataset_id)

    def get_dataset(self, dataset_id: str) -> Dataset:
        check_id(dataset_id, "ds")
        with connect(self.db_path, write=False) as db:
            row = db.execute(
                "SELECT * FROM datasets WHERE id = ? AND deleted_at IS NULL", (dataset_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id} does not exist")
        return _dataset(row)

    def find_dataset_by_hash(self, content_hash: str) -> Dataset | None:
        with connect(self.db_path, write=False) as db:
            row = db.execute(
                "SELECT * FROM datasets WHERE content_hash = ? AND deleted_at IS NULL"
                " ORDER BY created_at LIMIT 1",
                (content_hash,),
            ).fetchone()
        return _dataset(row) if row else None

    def list_datasets(self, include_deleted: bool = False) -> list[Dataset]:
        where = "" if include_deleted else "WHERE deleted_at IS NULL "
        with connect(self.db_path, write=False) as db:
            rows = db.execute(f"SELECT * FROM datasets {where}ORDER BY created_at DESC").fetchall()
        return [_dataset(r) for r in rows]

    def find_dataset(self, dataset_id: str) -> Dataset | None:
        """A dataset's record, deleted or not (finished jobs still name theirs)."""
        with connect(self.db_path, write=False) as db:
            row = db.execute("SELECT * FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        return _dataset(row) if row else None

    def jobs_needing(self, dataset_id: str) -> list[str]:
        """Jobs that may still read the dataset: queued, running, or interrupted (resumable)."""
        with connect(self.db_path, write=False) as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE dataset_id = ? AND state IN ({_NEEDING})"
                " ORDER BY created_at",
                (check_id(dataset_id, "ds"),),
            ).fetchall()
        return [r[0] for r in rows]

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset's files and hide its row, unless a job may still read it.

        The row stays for the finished jobs that name it (their records, their model cards).
        """
        with self._removing(self.dataset_dir(dataset_id)) as db:
            needed = db.execute(
                f"SELECT id FROM jobs WHERE dataset_id = ? AND state IN ({_NEEDING}) LIMIT 1",
                (dataset_id,),
            ).fetchone()
            if needed is not None:
                raise InUse(f"dataset {dataset_id} is needed by job {needed[0]}")
            cur = db.execute(
                "UPDATE datasets SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (time.time(), dataset_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"dataset {dataset_id} does not exist")

    @contextlib.contextmanager
    def _removing(self, folder: Path):
        """A write transaction whose record takes its folder with it: the folder is set aside
        when the transaction is about to commit, put back if it does not, deleted once it has."""
        trash = self.data_dir / "tmp" / f"deleted-{folder.name}"
        moved = False
        try:
            with connect(self.db_path) as db:
                yield db
                if folder.exists():
                    folder.rename(trash)
                    moved = True
        except BaseException:
            if moved:
                trash.rename(folder)
            raise
        shutil.rmtree(trash, ignore_errors=True)

    # ---- jobs ----
    def add_job(
        self,
        name: str,
        spec: dict,
        dataset_id: str | None,
        gpus: int = 1,
        priority: int = 0,
        kind: JobKind = JobKind.TRAIN,
        parent_id: str | None = None,
        role: str | None = None,
    ) -> Job:
        kind = JobKind(kind)  # an unknown kind fails here, before anything is written
        job_id = new_id("job")
        self.job_dir(job_id).mkdir(parents=True)
        row = {
            "id": job_id,
            "name": name,
            "state": JobState.QUEUED,
            "spec": json.dumps(spec),
            "dataset_id": dataset_id,
            "created_at": time.time(),
            "gpus": gpus,
            "priority": priority,
            "kind": kind,
            "parent_id": parent_id,
            "role": role,
        }
        try:
            with connect(self.db_path) as db:
                _insert(db, "jobs", row)
        except sqlite3.IntegrityError:  # the dataset was deleted since the caller looked
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            raise NotFound(f"dataset {dataset_id} does not exist") from None
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> Job:
        check_id(job_id, "job")
        with connect(self.db_path, write=False) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} does not exist")
        return _job(row)

    def list_jobs(self) -> list[Job]:
        with connect(self.db_path, write=False) as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC").fetchall()
        return [_job(r) for r in rows]

    def claim_job(self, job_id: str, worker: str = "") -> bool:
        """queued -> running, atomically; False when the job was cancelled meanwhile."""
        now = time.time()
        with connect(self.db_path) as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, heartbeat_at = ?, runs = runs + 1,"
                " worker = ? WHERE id = ? AND state = ?",
                (JobState.RUNNING, now, now, worker, job_id, JobState.QUEUED),
            )
        return cur.rowcount == 1

    def claim_next(self, devices: int, worker: str = "") -> str | None:
        """The first queued job (priority, then age) that needs at most `devices`, made running."""
        with connect(self.db_path) as db:
            row = db.execute(
                f"SELECT id FROM jobs WHERE state = ? AND gpus <= ? AND kind != 'sweep'"
                f" ORDER BY {_QUEUE_ORDER} LIMIT 1",
                (JobState.QUEUED, max(devices, 1)),
            ).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, heartbeat_at = ?, runs = runs + 1,"
                " worker = ? WHERE id = ?",
                (JobState.RUNNING, now, now, worker, row[0]),
            )
        return row[0]

    def queue_order(self) -> list[str]:
        """Queued job ids in the order workers take them."""
        with connect(self.db_path, write=False) as db:
            rows = db.execute(
                f"SELECT id FROM jobs WHERE state = ? AND kind != 'sweep' ORDER BY {_QUEUE_ORDER}",
                (JobState.QUEUED,),
            ).fetchall()
        return [r[0] for r in rows]

    def set_priority(self, job_id: str, priority: int) -> None:
        """Only a queued job has a place in the queue to change."""
        with connect(self.db_path) as db:
            cur = db.execute(
                "UPDATE jobs SET priority = ? WHERE id = ? AND state = ?",
                (int(priority), check_id(job_id, "job"), JobState.QUEUED),
            )
        if cur.rowcount == 0:
            state = self.get_job(job_id).state.value  # NotFound for an unknown id
            raise UserError(f"Job {job_id} is {state}; only a queued job can be reordered.")

    def reorder(self, job_ids: list[str]) -> None:
        """Queued jobs run in this order (the first gets the highest priority)."""
        with connect(self.db_path) as db:
            for rank, job_id in enumerate(job_ids):
                db.execute(
                    "UPDATE jobs SET priority = ? WHERE id = ? AND state = ?",
                    (len(job_ids) - rank, job_id, JobState.QUEUED),
                )

    def requeue_job(self, job_id: str, resume_from: str | None) -> None:
        """An ended job (not one that succeeded) waits in the queue again, from a checkpoint
        or from the start; its metrics past that checkpoint go when the run begins."""
        check_id(job_id, "job")
        ended = ", ".join(f"'{s}'" for s in _RESUMABLE)
        with connect(self.db_path) as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, finished_at = NULL, heartbeat_at = NULL, error = NULL,"
                " error_detail = NULL, cancel_requested = 0, resume_from = ?"
                f" WHERE id = ? AND state IN ({ended})",
                (JobState.QUEUED, resume_from, job_id),
            )
        if cur.rowcount == 0:
            state = self.get_job(job_id).state.value
            raise UserError(
                f"Job {job_id} is {state}; only an ended job that did not succeed can run again."
            )

    def delete_job(self, job_id: str) -> None:
        """A job that is not running, with its metrics, samples and folder. An adapter it wrote
        stays (it is its own record) and forgets the job."""
        with self._removing(self.job_dir(job_id)) as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            if row[0] == JobState.RUNNING:
                raise InUse(f"Job {job_id} is running: cancel it first.")
            db.execute("UPDATE adapters SET job_id = NULL WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def children(self, parent_id: str) -> list[Job]:
        """The jobs under a sweep job, oldest first."""
        with connect(self.db_path, write=False) as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE parent_id = ? ORDER BY created_at, id", (parent_id,)
            ).fetchall()
        return [_job(r) for r in rows]

    def advance_step(self, job_id: str, expected: int, step: int) -> bool:
        """Set a job's step from `expected`, atomically: two workers settling a sweep's last
        trials at once queue its final run once."""
        with connect(self.db_path) as db:
            cur = db.execute(
                "UPDATE jobs SET step = ? WHERE id = ? AND step = ?", (step, job_id, expected)
            )
        return cur.rowcount == 1

    def update_job(self, job_id: str, **values) -> None:
        """Set columns of a running job (progress, counts, checkpoint); not its state."""
        if not values:
            return
        assert "state" not in values, "use finish_job / cancel_job for state changes"
        sets = ", ".join(f"{k} = ?" for k in values)
        with connect(self.db_path) as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id])

    def heartbeat(self, job_id: str) -> bool:
        """Record that the job is alive; returns whether a cancel was asked for."""
        with connect(self.db_path) as db:
            db.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (time.time(), job_id))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def finish_job(
        self,
        job_id: str,
        state: JobState,
        error: str | None = None,
        error_detail: str | None = None,
        adapter_id: str | None = None,
    ) -> bool:
        """running -> a final state, once. False when the job had already ended."""
        assert state.finished
        with connect(self.db_path) as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_detail = ?,"
                " adapter_id = COALESCE(?, adapter_id) WHERE id = ? AND state = ?",
                (
                    state,
                    time.time(),
                    error,
                    error_detail,
                    adapter_id,
                    job_id,
                    JobState.RUNNING,
                ),
            )
        return cur.rowcount == 1

    def cancel_job(self, job_id: str) -> JobState:
        """Cancel a queued job at once, or ask a running one to stop; returns the state now."""
        check_id(job_id, "job")
        with connect(self.db_path) as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ? WHERE id = ? AND state = ?",
                (JobState.CANCELLED, time.time(), job_id, JobState.QUEUED),
            )
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?",
                (job_id, JobState.RUNNING),
            )
        return self.get_job(job_id).state

    def interrupt_stale_jobs(self, older_than_s: float) -> list[str]:
        """Running jobs whose heartbeat stopped (their process died) become interrupted."""
        cutoff = time.time() - older_than_s
        # (a sweep runs in no process of its own: its trials carry the heartbeats)
        stale_sql = (
            "SELECT id FROM jobs WHERE state = ? AND COALESCE(heartbeat_at, 0) < ?"
            " AND kind != 'sweep'"
        )
        with connect(self.db_path, write=False) as db:  # usually none: then no write lock
            if db.execute(stale_sql, (JobState.RUNNING, cutoff)).fetchone() is None:
                return []
        with connect(self.db_path) as db:
            ids = [r[0] for r in db.execute(stale_sql, (JobState.RUNNING, cutoff)).fetchall()]
            for job_id in ids:
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                    (JobState.INTERRUPTED, time.time(), _STALE_MESSAGE, job_id),
                )
        return ids

    # ---- metrics ----
    def add_metric(self, job_id: str, **values) -> None:
        with connect(self.db_path) as db:
            _insert(db, "metrics", dict(values, job_id=job_id, created_at=time.time()))

    def forget_after(self, job_id: str, step: int) -> None:
        """A resumed run starts again at `step`: what the lost run logged later goes."""
        with connect(self.db_path) as db:
            db.execute("DELETE FROM metrics WHERE job_id = ? AND step > ?", (job_id, step))
            db.execute("DELETE FROM samples WHERE job_id = ? AND step > ?", (job_id, step))

    def set_result_once(self, job_id: str, result: dict) -> bool:
        """Record a result unless the job has one: True for the one caller that did."""
        with connect(self.db_path) as db:
            cur = db.execute(
                "UPDATE jobs SET result = ? WHERE id = ? AND result IS NULL",
                (json.dumps(result), job_id),
            )
        return cur.rowcount == 1

    def set_result(self, job_id: str, result: dict) -> None:
        with connect(self.db_path) as db:
            db.execute("UPDATE jobs SET result = ? WHERE id = ?", (json.dumps(result), job_id))

    def add_evaluations(self, job_id: str, rows: list[dict]) -> None:
        """One row per (model, metric) an evaluation job scored."""
        now = time.time()
        with connect(self.db_path) as db:
            db.execute("DELETE FROM evaluations WHERE job_id = ?", (job_id,))
            for row in rows:
                _insert(db, "evaluations", dict(row, job_id=job_id, created_at=now))

    def job_evaluations(self, job_id: str) -> list[dict]:
        with connect(self.db_path, write=False) as db:
            rows = db.execute("SELECT * FROM evaluations WHERE job_id = ?", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    def latest_evaluations(self, adapter_ids: list[str | None]) -> dict[str | None, dict]:
        """Each adapter's (None: a base model's) newest score per metric and dataset."""
        with connect(self.db_path, write=False) as db:
            rows = db.execute("SELECT * FROM evaluations ORDER BY created_at").fetchall()
        found: dict[str | None, dict] = {}
        for row in rows:
            if row["adapter_id"] in adapter_ids:
                key = (row["metric"], row["dataset_id"])
                found.setdefault(row["adapter_id"], {})[key] = dict(row)
        return found

    def add_samples(self, job_id: str, step: int, prompts: list[str], texts: list[str]) -> None:
        now = time.time()
        with connect(self.db_path) as db:
            db.execute("DELETE FROM samples WHERE job_id = ? AND step = ?", (job_id, step))
            db.executemany(
                "INSERT INTO samples (job_id, step, prompt_index, prompt, text, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (job_id, step, i, p, t, now)
                    for i, (p, t) in enumerate(zip(prompts, texts, strict=True))
                ],
            )

    def list_samples(self, job_id: str) -> list[Sample]:
        check_id(job_id, "job")
        with connect(self.db_path, write=False) as db:
            rows = db.execute(
                "SELECT * FROM samples WHERE job_id = ? ORDER BY step, prompt_index", (job_id,)
            ).fetchall()
        return [_from_row(Sample, r) for r in rows]

    def list_metrics(self, job_id: str) -> list[Metric]:
        check_id(job_id, "job")
        with connect(self.db_path, write=False) as db:
            rows = db.execute(
                "SELECT * FROM metrics WHERE job_id = ? ORDER BY step, created_at",
                (job_id,),
            ).fetchall()
        return [_from_row(Metric, r) for r in rows]

    def last_losses(self, job_id: str | None = None) -> dict[str, tuple[float | None, ...]]:
        """{job id: (last loss, last eval loss)} for one job or all, in one query."""
        last = (
            "(SELECT {col} FROM metrics m WHERE m.job_id = j.id AND {col} IS NOT NULL"
            " ORDER BY step DESC, created_at DESC LIMIT 1)"
        )
        sql = f"SELECT j.id, {last.format(col='loss')}, {last.format(col='eval_loss')} FROM jobs j"
        args: tuple = ()
        if job_id is not None:
            sql, args = sql + " WHERE j.id = ?", (check_id(job_id, "job"),)
        with connect(self.db_path, write=False) as db:
            return {row[0]: (row[1], row[2]) for row in db.execute(sql, args)}

    def throughput(self, base_model: str, limit: int = 5) -> list[float]:
        """The last logged training tokens/s of finished jobs on a base model, newest first."""
        with connect(self.db_path, write=False) as db:
            rows = db.execute(
                "SELECT j.spec, (SELECT tokens_per_s FROM metrics m WHERE m.job_id = j.id"
                " AND tokens_per_s IS NOT NULL ORDER BY step DESC LIMIT 1)"
                " FROM jobs j WHERE j.state = ? ORDER BY j.created_at DESC",
                (JobState.SUCCEEDED,),
            ).fetchall()
        found = [
            tps for spec, tps in rows if tps and json.loads(spec).get("base_model") == base_model
        ]
        return found[:limit]

    # ---- adapters ----
    def add_adapter(self, staged: Path, **values) -> Adapter:
        """Move a fully written adapter folder into place and record it, all or nothing."""
        adapter_id = new_id("ad")
        row = dict(values, id=adapter_id, created_at=time.time())
        self._place(staged, self.adapter_dir(adapter_id), "adapters", row)
        return self.get_adapter(adapter_id)

    def get_adapter(self, adapter_id: str) -> Adapter:
        check_id(adapter_id, "ad")
        with connect(self.db_path, write=False) as db:
            row = db.execute("SELECT * FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
        if row is None:
            raise NotFound(f"adapter {adapter_id} does not exist")
        return _from_row(Adapter, row)

    def list_adapters(self) -> list[Adapter]:
        with connect(self.db_path, write=False) as db:
            rows = db.execute("SELECT * FROM adapters ORDER BY created_at DESC").fetchall()
        return [_from_row(Adapter, r) for r in rows]
