"""Storage: migrations, round trips, job state transitions, and ids that never become paths."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import pytest

from storage.db import MIGRATIONS, migrate
from storage.store import JobState, NotFound, Store


def test_migrate_is_idempotent_and_sets_wal(tmp_path):
    db = tmp_path / "app.db"
    assert migrate(db) == len(MIGRATIONS)
    assert migrate(db) == len(MIGRATIONS)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"datasets", "jobs", "metrics", "adapters"} <= tables


def _staged(store: Store, text: str = "x"):
    folder = store.tmp_dir()
    (folder / "rows.jsonl").write_text(text)
    return folder


def test_dataset_round_trip(store):
    ds = store.add_dataset(
        _staged(store),
        name="mine",
        format="alpaca",
        rows=3,
        columns=["instruction", "output"],
        warnings=["w"],
        source_file="original.csv",
        content_hash="abc",
    )
    again = store.get_dataset(ds.id)
    assert again == ds
    assert again.columns == ["instruction", "output"] and again.warnings == ["w"]
    assert (store.dataset_dir(ds.id) / "rows.jsonl").read_text() == "x"
    assert store.find_dataset_by_hash("abc") == ds
    assert store.find_dataset_by_hash("other") is None
    assert [d.id for d in store.list_datasets()] == [ds.id]


def test_job_lifecycle(store):
    job = store.add_job("j", {"method": "lora"}, None)
    assert job.state == JobState.QUEUED and job.spec == {"method": "lora"}
    assert store.claim_job(job.id)
    assert not store.claim_job(job.id), "a job is claimed once"
    store.update_job(job.id, step=3, total_steps=10)
    store.add_metric(job.id, step=3, loss=1.5, learning_rate=1e-4)
    assert store.finish_job(job.id, JobState.SUCCEEDED, adapter_id="ad-000000000001")
    assert not store.finish_job(job.id, JobState.FAILED, "late"), "a final state is final"
    done = store.get_job(job.id)
    assert done.state == JobState.SUCCEEDED and done.step == 3 and done.error is None
    assert done.adapter_id == "ad-000000000001" and done.finished_at >= done.started_at
    assert [(m.step, m.loss) for m in store.list_metrics(job.id)] == [(3, 1.5)]


def test_cancel_queued_is_immediate_and_running_is_a_request(store):
    queued = store.add_job("q", {}, None)
    assert store.cancel_job(queued.id) == JobState.CANCELLED
    assert not store.claim_job(queued.id), "a cancelled job is never started"

    running = store.add_job("r", {}, None)
    store.claim_job(running.id)
    assert store.cancel_job(running.id) == JobState.RUNNING
    assert store.heartbeat(running.id) is True, "the child sees the cancel request"


def test_stale_running_jobs_become_interrupted(store):
    fresh, stale = store.add_job("fresh", {}, None), store.add_job("stale", {}, None)
    store.claim_job(fresh.id)
    store.claim_job(stale.id)
    store.update_job(stale.id, heartbeat_at=time.time() - 600)
    assert store.interrupt_stale_jobs(older_than_s=60) == [stale.id]
    assert store.get_job(stale.id).state == JobState.INTERRUPTED
    assert "heartbeat" in store.get_job(stale.id).error
    assert store.get_job(fresh.id).state == JobState.RUNNING


@pytest.mark.parametrize(
    "bad", ["../etc", "ds-../../x", "job-123", "ds-ABCDEF123456", "", None, "ad-0123456789ab/x"]
)
def test_ids_from_users_never_become_paths(store, bad):
    with pytest.raises(NotFound):
        store.dataset_dir(bad)
    with pytest.raises(NotFound):
        store.get_job(bad)


def test_wrong_kind_of_id_is_refused(store):
    with pytest.raises(NotFound, match="not a job id"):
        store.get_job("ds-0123456789ab")
    with pytest.raises(NotFound, match="does not exist"):
        store.get_job("job-0123456789ab")


def test_last_losses_in_one_query(store):
    first, second = store.add_job("a", {}, None), store.add_job("b", {}, None)
    store.add_metric(first.id, step=1, loss=3.0)
    store.add_metric(first.id, step=2, loss=2.0)
    store.add_metric(first.id, step=2, eval_loss=2.5)
    store.add_metric(first.id, step=3, loss=1.0)
    assert store.last_losses() == {first.id: (1.0, 2.5), second.id: (None, None)}
    assert store.last_losses(second.id) == {second.id: (None, None)}


def test_a_reader_does_not_wait_for_a_writer(store):
    """WAL: a read while another connection holds the write lock answers at once."""
    from storage.db import connect

    job = store.add_job("a", {}, None)
    with connect(store.db_path) as writer:
        writer.execute("UPDATE jobs SET step = 7 WHERE id = ?", (job.id,))
        assert store.get_job(job.id).step == 0, "the reader sees the last committed state"
    assert store.get_job(job.id).step == 7


def test_migration_2_upgrades_a_version_1_database(tmp_path):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO datasets VALUES ('ds-000000000001', 'old', 'alpaca', 2, '[]', '[]',"
        " 'original.csv', 'h', 1.0)"
    )
    conn.commit()
    conn.close()
    assert migrate(db) == len(MIGRATIONS)
    old = Store(tmp_path).get_dataset("ds-000000000001")
    assert (old.name, old.mapping, old.eval_rows, old.dropped_rows, old.stats) == (
        "old",
        {},
        0,
        0,
        {},
    )


def test_a_job_for_a_deleted_dataset_is_refused_and_leaves_nothing(store):
    with pytest.raises(NotFound, match="dataset ds-0123456789ab does not exist"):
        store.add_job("j", {}, "ds-0123456789ab")
    assert store.list_jobs() == [] and list((store.data_dir / "jobs").iterdir()) == []


def test_init_sweeps_old_staging_only(store):
    import os

    old, new = store.tmp_dir(), store.tmp_dir()
    (old / "half-written.jsonl").write_text("x")
    day_ago = time.time() - 2 * 86400
    os.utime(old, (day_ago, day_ago))
    store.init()
    assert not old.exists() and new.exists(), "another process may be writing the new one"


def test_the_journal_mode_follows_the_setting(tmp_path):
    """WAL on one machine; the rollback journal for a data dir shared over a network filesystem."""
    store = Store(tmp_path / "data")
    store.init()

    def mode() -> str:
        with contextlib.closing(sqlite3.connect(store.db_path)) as db:
            return db.execute("PRAGMA journal_mode").fetchone()[0]

    assert mode() == "wal"
    store.init("delete")
    assert mode() == "delete"
    with pytest.raises(ValueError, match="ADAPTERLAB_DB_JOURNAL: must be wal or delete"):
        store.init("memory")


@pytest.mark.parametrize("name", ["../app.db.zip", "a/b.zip", ".hidden.zip", "x.tar", ""])
def test_a_download_name_is_ours_or_refused(store, name):
    with pytest.raises(ValueError, match="not a download name"):
        store.download_path(name)
    assert store.download_path("ad-0123456789ab.zip").parent == store.downloads_dir
