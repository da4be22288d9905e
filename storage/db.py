"""SQLite connection (WAL, busy timeout) and the numbered schema migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Append only: each entry is one migration, applied once, in order. Never edit a shipped one.
MIGRATIONS: list[str] = [
    # 1: datasets, jobs, metrics, adapters
    """
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        format TEXT NOT NULL,
        rows INTEGER NOT NULL,
        columns TEXT NOT NULL,          -- JSON list of the source columns
        warnings TEXT NOT NULL,         -- JSON list of strings
        source_file TEXT NOT NULL,      -- file name inside the dataset folder
        content_hash TEXT NOT NULL,     -- sha256 of the uploaded bytes
        created_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,             -- the validated job spec as JSON
        dataset_id TEXT REFERENCES datasets(id),
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        heartbeat_at REAL,
        step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER,
        trainable_params INTEGER,
        total_params INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        error TEXT,                     -- one plain sentence
        error_detail TEXT,              -- traceback / log tail
        checkpoint TEXT,                -- folder name inside the job folder
        adapter_id TEXT
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE metrics (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        epoch REAL,
        loss REAL,
        eval_loss REAL,
        learning_rate REAL,
        tokens_per_s REAL,
        memory_mb REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX metrics_job ON metrics(job_id, step);
    CREATE TABLE adapters (
        id TEXT PRIMARY KEY,
        job_id TEXT REFERENCES jobs(id),
        name TEXT NOT NULL,
        base_model TEXT NOT NULL,
        method TEXT NOT NULL,
        trainable_params INTEGER,
        total_params INTEGER,
        size_bytes INTEGER,
        created_at REAL NOT NULL
    );
    """,
    # 2: what a dataset was made from and how: schema mapping, eval split, dropped rows, stats
    """
    ALTER TABLE datasets ADD COLUMN mapping TEXT NOT NULL DEFAULT '{}';   -- JSON field -> column
    ALTER TABLE datasets ADD COLUMN eval_rows INTEGER NOT NULL DEFAULT 0; -- rows in eval.jsonl
    ALTER TABLE datasets ADD COLUMN dropped_rows INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE datasets ADD COLUMN sources TEXT NOT NULL DEFAULT '[]';   -- JSON: names shown
    ALTER TABLE datasets ADD COLUMN stats TEXT NOT NULL DEFAULT '{}';     -- JSON, model-free
    CREATE INDEX jobs_dataset ON jobs(dataset_id);
    """,
    # 3: a deleted dataset keeps its row (finished jobs refer to it) but not its files
    """
    ALTER TABLE datasets ADD COLUMN deleted_at REAL;
    """,
    # 4: the pre-flight memory estimate, shown beside the measured peak
    """
    ALTER TABLE jobs ADD COLUMN memory_estimate_mb REAL;
    """,
    # 5: the queue's order, resuming from a checkpoint (jobs.checkpoint is now a path relative
    # to the job folder: trainer/checkpoint-N), who runs a job, and live sample answers
    """
    ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;  -- higher runs first
    ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 1;      -- devices the job needs
    ALTER TABLE jobs ADD COLUMN resume_from TEXT;  -- checkpoint the next run starts from
    ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;      -- times it was started
    ALTER TABLE jobs ADD COLUMN worker TEXT;       -- host, pid and devices of its worker
    CREATE INDEX jobs_queue ON jobs(state, priority, created_at);
    CREATE TABLE samples (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,           -- 0: the base model, before training
        prompt_index INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX samples_job ON samples(job_id, step);
    """,
    # 6: where an adapter came from (trained here, combined from others, imported); jobs that
    # do not train (evaluate, merge) and what they found; evaluation scores per adapter
    """
    ALTER TABLE adapters ADD COLUMN origin TEXT NOT NULL DEFAULT 'trained';
    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train';  -- train, evaluate, merge
    ALTER TABLE jobs ADD COLUMN result TEXT;  -- JSON: what an evaluate or merge job found
    CREATE TABLE evaluations (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        adapter_id TEXT,                 -- null: the base model
        base_model TEXT NOT NULL,
        dataset_id TEXT NOT NULL,
        metric TEXT NOT NULL,            -- exact_match, accuracy, rougeL, perplexity, ...
        value REAL,
        rows INTEGER NOT NULL,
        seconds REAL,                    -- answering all rows
        created_at REAL NOT NULL
    );
    CREATE INDEX evaluations_adapter ON evaluations(adapter_id, created_at);
    """,
    # 7: settings searches: trials (and the final run) are jobs under a parent job (kind sweep);
    # the pid of the process that runs a job
    """
    ALTER TABLE jobs ADD COLUMN parent_id TEXT REFERENCES jobs(id);
    ALTER TABLE jobs ADD COLUMN role TEXT;  -- under a parent: probe, trial or final
    ALTER TABLE jobs ADD COLUMN pid INTEGER;  -- the process running it (its worker's child)
    CREATE INDEX jobs_parent ON jobs(parent_id);
    """,
]


@contextmanager
def connect(path: Path, write: bool = True) -> Iterator[sqlite3.Connection]:
    """One connection for one unit of work: committed on success, rolled back on error.

    Writers take the write lock up front (no upgrade deadlocks); readers take none, so in WAL
    mode the UI's polling never waits behind, or holds up, a training job's writes.
    """
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    try:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


JOURNAL_MODES = ("wal", "delete")


def migrate(path: Path, journal: str = "wal") -> int:
    """Create or upgrade the database; returns the schema version now in force.

    journal: wal (readers never wait for writers; every process must be on one host) or delete
    (the rollback journal, for a database on a network filesystem shared by several machines).
    """
    if journal not in JOURNAL_MODES:
        raise ValueError(f"ADAPTERLAB_DB_JOURNAL: must be wal or delete, got {journal!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode = {journal.upper()}")
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
        return len(MIGRATIONS)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
