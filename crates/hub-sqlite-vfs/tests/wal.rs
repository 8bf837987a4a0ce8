//! The VFS against real SQLite: commits reach the file in two writes whatever their size, every
//! connection sees what was committed, a database survives the process losing its connections
//! without a checkpoint, and the files stay readable by SQLite without this VFS.
//!
//! The write counters are process-wide, so every test holds `SERIAL` (one at a time).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, params};

static SERIAL: Mutex<()> = Mutex::new(());

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn open(path: &Path) -> R<Connection> {
    let vfs = hub_sqlite_vfs::register()?;
    let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;",
    )?;
    Ok(c)
}

fn schema(c: &Connection) -> R {
    c.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB);
         CREATE INDEX t_v ON t (v);",
    )?;
    Ok(())
}

/// Inserts `n` rows with random-ish keys (so each touches pages all over both b-trees).
fn insert(c: &Connection, from: i64, n: i64) -> R {
    let tx = c.unchecked_transaction()?;
    {
        let mut st = tx.prepare_cached("INSERT INTO t (id, k, v) VALUES (?1, ?2, ?3)")?;
        for i in from..from + n {
            let k = format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            st.execute(params![i, k, vec![(i % 251) as u8; 300]])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn count(c: &Connection) -> R<i64> {
    Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
}

/// A test's start: the others waited out (the counters are process-wide), a fresh directory, and
/// a connection through the VFS to a new database there with the schema.
fn fresh(
    name: &str,
) -> R<(
    MutexGuard<'static, ()>,
    tempfile::TempDir,
    PathBuf,
    Connection,
)> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(name);
    let c = open(&path)?;
    schema(&c)?;
    Ok((serial, dir, path, c))
}

fn assert_intact(c: &Connection) -> R {
    let ok: String = c.query_row("PRAGMA integrity_check", [], |x| x.get(0))?;
    assert_eq!(ok, "ok");
    Ok(())
}

#[test]
fn a_commit_of_many_pages_is_two_writes() -> R {
    let (_serial, _dir, _path, c) = fresh("a.db")?;
    insert(&c, 0, 2000)?; // grow the b-trees first
    let before = hub_sqlite_vfs::stats();
    insert(&c, 2000, 12)?;
    let after = hub_sqlite_vfs::stats();
    let frames = after.wal_frames - before.wal_frames;
    let writes = after.wal_writes - before.wal_writes;
    // 12 random keys land on pages all over the b-trees; the frames still fit in one write.
    assert!(
        (8..=30).contains(&frames),
        "the commit should span 8 to 30 pages, wrote {frames} frames"
    );
    // Unbuffered, SQLite writes two per frame; here the commit frame's header closes the one
    // write of everything before it and its page is the second.
    assert_eq!(writes, 2, "{frames} frames went out in {writes} writes");

    // A commit larger than the platform's largest write goes out in as few writes as fit.
    let before = hub_sqlite_vfs::stats();
    insert(&c, 3000, 100)?;
    let after = hub_sqlite_vfs::stats();
    let frames = after.wal_frames - before.wal_frames;
    let writes = after.wal_writes - before.wal_writes;
    let bytes = frames * (24 + 4096);
    assert!(frames > 40 && bytes < 1 << 20, "wrote {frames} frames"); // one buffer's worth
    assert_eq!(
        writes,
        bytes.div_ceil(0x1_ffff) + 1,
        "{frames} frames in {writes} writes"
    );
    Ok(())
}

#[test]
fn other_connections_see_each_commit_at_once_and_integrity_holds() -> R {
    let (_serial, _dir, path, w) = fresh("b.db")?;
    let r = open(&path)?;
    let plain = Connection::open(&path)?; // SQLite's own VFS
    for round in 0..50 {
        insert(&w, round * 37, 37)?;
        let want = (round + 1) * 37;
        assert_eq!(count(&r)?, want, "reader through the VFS, round {round}");
        assert_eq!(
            count(&plain)?,
            want,
            "reader without the VFS, round {round}"
        );
        if round % 10 == 9 {
            // A checkpoint by another connection, then the writer restarts the log.
            plain.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
    }
    assert_intact(&r)
}

#[test]
fn a_transaction_larger_than_the_page_cache_spills_rewrites_and_commits_intact() -> R {
    let (_serial, _dir, path, c) = fresh("c.db")?;
    c.execute_batch("PRAGMA cache_size=10;")?; // force spills mid-transaction
    let tx = c.unchecked_transaction()?;
    {
        let mut st = tx.prepare("INSERT INTO t (id, k, v) VALUES (?1, ?2, ?3)")?;
        for i in 0..3000i64 {
            let k = format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            st.execute(params![i, k, vec![1u8; 500]])?;
        }
        // Pages written by a spill are changed again in the same transaction (rewritten in place).
        tx.execute("UPDATE t SET v = zeroblob(400) WHERE id % 3 = 0", [])?;
    }
    tx.commit()?;
    let sp = c.unchecked_transaction()?;
    sp.execute("DELETE FROM t WHERE id < 1000", [])?;
    sp.rollback()?; // frames of a rolled-back transaction are never published
    drop(c);
    let plain = Connection::open(&path)?;
    assert_eq!(count(&plain)?, 3000);
    let zeroed: i64 = plain.query_row("SELECT COUNT(*) FROM t WHERE length(v) = 400", [], |r| {
        r.get(0)
    })?;
    assert_eq!(zeroed, 1000);
    assert_intact(&plain)
}

#[test]
fn committed_frames_are_in_the_wal_file_without_close_or_checkpoint() -> R {
    let (_serial, dir, _path, c) = fresh("d.db")?;
    insert(&c, 0, 500)?;
    // A copy of the database and its WAL while the writer is still open, as a crash would leave them:
    // SQLite's recovery on the copy rebuilds the index from the WAL's frames and checksums.
    let copy = dir.path().join("copy.db");
    for (from, to) in [("d.db", "copy.db"), ("d.db-wal", "copy.db-wal")] {
        std::fs::copy(dir.path().join(from), dir.path().join(to))?;
    }
    let recovered = Connection::open(&copy)?;
    assert_eq!(count(&recovered)?, 500);
    drop(c);
    Ok(())
}

#[test]
fn synchronous_full_still_commits_and_reads_back() -> R {
    let (_serial, _dir, path, c) = fresh("e.db")?;
    c.execute_batch("PRAGMA synchronous=FULL;")?;
    for i in 0..20 {
        insert(&c, i * 10, 10)?;
    }
    assert_eq!(count(&open(&path)?)?, 200);
    Ok(())
}
