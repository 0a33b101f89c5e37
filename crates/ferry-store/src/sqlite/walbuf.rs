//! The writer's WAL writes, gathered into a few large `pwrite`s per commit.
//!
//! SQLite writes every WAL frame with two `pwrite` calls (its 24-byte header, then the
//! page), and a batch of sends changes 3.4–4.9 pages a message (WAL frames counted at
//! 20 000 and 2 000 msgs/s): seven to ten system calls per message, each paying the
//! kernel's whole buffered-write path (page-cache look-up, ext4's write_begin/write_end,
//! dirtying) for a kilobyte or less. In a closed-loop `ferry bench
//! p2p` those calls were 17 % of the server's CPU and a third of the writer thread's — the
//! one serial thread every durable message goes through (docs/benchmarks.md, *The WAL's
//! writes gathered*).
//!
//! This module is a thin SQLite VFS over the default one ("unix") that only changes the
//! WAL file: consecutive writes are kept in a buffer of up to 120 KiB and reach the file
//! in one call when SQLite syncs the WAL (every commit, at `synchronous=FULL`), reads it
//! back, asks its size, truncates it, or closes it — or when the buffer is full, or a
//! write does not follow the buffered ones.
//! Every other file, and every other call, goes to the default VFS unchanged.
//!
//! It must only be used by a connection at `synchronous=FULL`: there, SQLite syncs the
//! WAL before a commit becomes visible to other connections (`walFrames` syncs before
//! `walIndexWriteHdr`), so no other connection can read a frame still in the buffer. At
//! `NORMAL` a commit is published without a sync, and frames still buffered would be
//! read as garbage by other connections.
//!
//! A write error the buffer defers (a full disk: `SQLITE_FULL`) is returned by the call
//! that flushes — the commit's sync — so the commit fails as it would have at the write.

// SQLite's VFS is a C interface of raw pointers and function tables: this module is why
// the crate denies `unsafe` instead of forbidding it.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the VFS is registered under.
const VFS_NAME: &CStr = c"ferry-walbuf";

/// The most bytes kept before they are written out anyway: the default VFS writes at most
/// 128 KiB − 1 in one call (`seekAndWriteFd` masks the length with 0x1ffff, and a longer
/// write fails as SQLITE_FULL). 120 KiB holds 117 frames of 1 KiB pages: one call for
/// them instead of 234.
const CAP: usize = 120 << 10;

/// Registers the VFS (once per process); the name to open the writer's connection with.
pub(super) fn vfs() -> Result<&'static str, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // Registering a VFS starts SQLite, after which its page cache is fixed.
            super::pcache::install();
            // SAFETY: the default VFS lives for the whole process; ours is leaked, so it
            // does too, as sqlite3_vfs_register requires.
            unsafe {
                let base = ffi::sqlite3_vfs_find(ptr::null());
                if base.is_null() {
                    return Err("SQLite has no default VFS".into());
                }
                let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                    iVersion: 2,
                    szOsFile: (real_offset() + (*base).szOsFile as usize) as c_int,
                    mxPathname: (*base).mxPathname,
                    pNext: ptr::null_mut(),
                    zName: VFS_NAME.as_ptr(),
                    pAppData: base.cast(),
                    xOpen: Some(x_open),
                    xDelete: Some(x_delete),
                    xAccess: Some(x_access),
                    xFullPathname: Some(x_full_pathname),
                    xDlOpen: Some(x_dl_open),
                    xDlError: Some(x_dl_error),
                    xDlSym: Some(x_dl_sym),
                    xDlClose: Some(x_dl_close),
                    xRandomness: Some(x_randomness),
                    xSleep: Some(x_sleep),
                    xCurrentTime: Some(x_current_time),
                    xGetLastError: Some(x_get_last_error),
                    xCurrentTimeInt64: Some(x_current_time_int64),
                    xSetSystemCall: None,
                    xGetSystemCall: None,
                    xNextSystemCall: None,
                }));
                match ffi::sqlite3_vfs_register(vfs, 0) {
                    ffi::SQLITE_OK => Ok(()),
                    rc => Err(format!("registering the WAL-buffer VFS failed ({rc})")),
                }
            }
        })
        .clone()
        .map(|()| VFS_NAME.to_str().expect("the VFS name is ASCII"))
}

/// A WAL file: SQLite's file header, the buffer, and the default VFS's file after them.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    pending: Pending,
}

/// Bytes written but not yet passed on: `buf` belongs at offset `start` of the file.
struct Pending {
    buf: Vec<u8>,
    start: i64,
}

/// Where the default VFS's file starts inside ours.
const fn real_offset() -> usize {
    let size = std::mem::size_of::<WalFile>();
    let align = 16;
    size.div_ceil(align) * align
}

/// The default VFS (ours keeps it in `pAppData`).
unsafe fn base_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    (*vfs).pAppData.cast()
}

unsafe fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    file.cast::<u8>().add(real_offset()).cast()
}

unsafe fn methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    &*(*real(file)).pMethods
}

unsafe fn pending<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Pending {
    &mut (*file.cast::<WalFile>()).pending
}

#[cfg(test)]
thread_local! {
    /// Writes passed on to the file by this thread (tests count them).
    pub(super) static PASSED_ON: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Writes `bytes` at `offset` of the real file.
unsafe fn write_through(file: *mut ffi::sqlite3_file, bytes: &[u8], offset: i64) -> c_int {
    #[cfg(test)]
    PASSED_ON.with(|n| n.set(n.get() + 1));
    let write = methods(file).xWrite.expect("a VFS file can be written");
    write(
        real(file),
        bytes.as_ptr().cast(),
        bytes.len() as c_int,
        offset,
    )
}

/// Passes the buffered bytes on to the file; empty afterwards even when that failed (the
/// commit they belong to then fails, and SQLite ignores frames of an unfinished commit).
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let p = pending(file);
    if p.buf.is_empty() {
        return ffi::SQLITE_OK;
    }
    let rc = write_through(file, &p.buf, p.start);
    p.buf.clear();
    rc
}

/// Passes the buffered bytes on, then `call`s the default VFS's file: whatever SQLite
/// asks of the file next sees it as SQLite wrote it.
unsafe fn flushed(
    file: *mut ffi::sqlite3_file,
    call: impl FnOnce(&ffi::sqlite3_io_methods, *mut ffi::sqlite3_file) -> c_int,
) -> c_int {
    match flush(file) {
        ffi::SQLITE_OK => call(methods(file), real(file)),
        rc => rc,
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = base_vfs(vfs);
    let open = (*base).xOpen.expect("a VFS opens files");
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not the WAL: the default VFS's file in place of ours (ours is larger).
        return open(base, name, file, flags, out_flags);
    }
    (*file).pMethods = ptr::null();
    let rc = open(base, name, real(file), flags, out_flags);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    ptr::write(
        ptr::addr_of_mut!((*file.cast::<WalFile>()).pending),
        Pending {
            buf: Vec::new(),
            start: 0,
        },
    );
    (*file).pMethods = &WAL_METHODS;
    ffi::SQLITE_OK
}

/// Version 1: SQLite maps shared memory and memory-maps pages through the database file
/// only, never the WAL (and with no xFetch every WAL read goes through xRead, which
/// flushes).
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(file);
    let close = methods(file).xClose.expect("a VFS file can be closed");
    let closed = close(real(file));
    ptr::drop_in_place(ptr::addr_of_mut!((*file.cast::<WalFile>()).pending));
    (*file).pMethods = ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn wal_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    flushed(file, |m, real| {
        m.xRead.expect("a VFS file can be read")(real, buf, amount, offset)
    })
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), amount.max(0) as usize);
    let p = pending(file);
    let end = p.start + p.buf.len() as i64;
    if !p.buf.is_empty() && offset >= p.start && offset + bytes.len() as i64 <= end {
        // A frame SQLite writes again within the same transaction.
        let at = (offset - p.start) as usize;
        p.buf[at..at + bytes.len()].copy_from_slice(bytes);
        return ffi::SQLITE_OK;
    }
    if !p.buf.is_empty() && offset == end && p.buf.len() + bytes.len() <= CAP {
        p.buf.extend_from_slice(bytes);
        return ffi::SQLITE_OK;
    }
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    if bytes.len() > CAP {
        return write_through(file, bytes, offset);
    }
    let p = pending(file);
    if p.buf.capacity() == 0 {
        p.buf.reserve(CAP);
    }
    p.start = offset;
    p.buf.extend_from_slice(bytes);
    ffi::SQLITE_OK
}

unsafe extern "C" fn wal_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flushed(file, |m, real| {
        m.xTruncate.expect("a VFS file can be truncated")(real, size)
    })
}

unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed(file, |m, real| {
        m.xSync.expect("a VFS file can be synced")(real, flags)
    })
}

unsafe extern "C" fn wal_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flushed(file, |m, real| {
        m.xFileSize.expect("a VFS file has a size")(real, size)
    })
}

unsafe extern "C" fn wal_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let lock = methods(file).xLock.expect("a VFS file can be locked");
    lock(real(file), level)
}

unsafe extern "C" fn wal_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let unlock = methods(file).xUnlock.expect("a VFS file can be unlocked");
    unlock(real(file), level)
}

unsafe extern "C" fn wal_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    let check = methods(file)
        .xCheckReservedLock
        .expect("a VFS file has locks");
    check(real(file), out)
}

unsafe extern "C" fn wal_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    flushed(file, |m, real| {
        m.xFileControl.expect("a VFS file has controls")(real, op, arg)
    })
}

unsafe extern "C" fn wal_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let sector = methods(file)
        .xSectorSize
        .expect("a VFS file has a sector size");
    sector(real(file))
}

unsafe extern "C" fn wal_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let device = methods(file)
        .xDeviceCharacteristics
        .expect("a VFS file has device characteristics");
    device(real(file))
}

// The rest of the VFS: the default one's, called with the default VFS.

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync: c_int,
) -> c_int {
    let base = base_vfs(vfs);
    (*base).xDelete.expect("a VFS deletes files")(base, name, sync)
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let base = base_vfs(vfs);
    (*base).xAccess.expect("a VFS checks access")(base, name, flags, out)
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base_vfs(vfs);
    (*base).xFullPathname.expect("a VFS resolves paths")(base, name, n, out)
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    let base = base_vfs(vfs);
    match (*base).xDlOpen {
        Some(open) => open(base, name),
        None => ptr::null_mut(),
    }
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    let base = base_vfs(vfs);
    if let Some(error) = (*base).xDlError {
        error(base, n, out);
    }
}

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> Option<DlSym> {
    let base = base_vfs(vfs);
    (*base).xDlSym.and_then(|sym| sym(base, handle, symbol))
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    let base = base_vfs(vfs);
    if let Some(close) = (*base).xDlClose {
        close(base, handle);
    }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let base = base_vfs(vfs);
    (*base).xRandomness.expect("a VFS has randomness")(base, n, out)
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let base = base_vfs(vfs);
    (*base).xSleep.expect("a VFS sleeps")(base, micros)
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let base = base_vfs(vfs);
    (*base).xCurrentTime.expect("a VFS has a clock")(base, out)
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base_vfs(vfs);
    match (*base).xGetLastError {
        Some(last) => last(base, n, out),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    let base = base_vfs(vfs);
    (*base)
        .xCurrentTimeInt64
        .expect("the default VFS has a millisecond clock")(base, out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{params, Connection, OpenFlags};

    use super::*;

    /// A connection as the store's writer opens it: this VFS, WAL, `synchronous=FULL`.
    fn writer(dir: &Path) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(
            dir.join("t.db"),
            OpenFlags::default(),
            vfs().unwrap(),
        )
        .unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB NOT NULL);
             CREATE INDEX t_v ON t (v);",
        )
        .unwrap();
        conn
    }

    fn insert(conn: &Connection, from: i64, to: i64) {
        let txn = conn.unchecked_transaction().unwrap();
        for id in from..to {
            txn.execute(
                "INSERT INTO t (id, v, pad) VALUES (?1, ?2, zeroblob(300))",
                params![id, (id * 7919) % 1000],
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }

    fn frames(dir: &Path) -> u64 {
        let len = std::fs::metadata(dir.join("t.db-wal")).unwrap().len();
        (len - 32) / (1024 + 24)
    }

    /// A commit of many pages reaches the file in one write per 120 KiB, not two per frame.
    #[test]
    fn a_commit_reaches_the_wal_in_few_writes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        insert(&conn, 1, 2);
        let before = PASSED_ON.with(|n| n.get());
        let frames_before = frames(dir.path());
        insert(&conn, 2, 400);
        let written = PASSED_ON.with(|n| n.get()) - before;
        let new_frames = frames(dir.path()) - frames_before;
        assert!(new_frames > 100, "the commit wrote {new_frames} frames");
        let bytes = new_frames as usize * (1024 + 24);
        assert!(
            written as usize <= bytes.div_ceil(CAP) + 1,
            "{new_frames} frames in {written} writes"
        );
        // Another connection (the default VFS) reads what was committed.
        let reader = Connection::open(dir.path().join("t.db")).unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 399);
    }

    /// What the files hold after each commit — what a crash of the process or the machine
    /// leaves — opens as the database committed, also when a transaction too large for the
    /// page cache spilled frames and then wrote some of them again (SQLite then rewrites
    /// frames in place and recomputes their checksums).
    #[test]
    fn the_files_after_a_commit_hold_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        conn.execute_batch("PRAGMA cache_size = 8").unwrap();
        for round in 0..6i64 {
            let txn = conn.unchecked_transaction().unwrap();
            for id in round * 300..(round + 1) * 300 {
                txn.execute(
                    "INSERT INTO t (id, v, pad) VALUES (?1, 0, zeroblob(200))",
                    params![id],
                )
                .unwrap();
            }
            // Every row of the round again: pages spilled earlier in the transaction.
            txn.execute(
                "UPDATE t SET v = id + ?1 WHERE id >= ?2",
                params![round, round * 300],
            )
            .unwrap();
            txn.commit().unwrap();

            let copy = tempfile::tempdir().unwrap();
            for name in ["t.db", "t.db-wal"] {
                std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
            }
            let crashed = Connection::open(copy.path().join("t.db")).unwrap();
            let check: String = crashed
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok");
            let (n, sum): (i64, i64) = crashed
                .query_row("SELECT count(*), sum(v - id) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            assert_eq!(n, (round + 1) * 300);
            assert_eq!(sum, (0..=round).map(|r| r * 300).sum::<i64>());
        }
    }

    /// Readers on other connections, reading while the writer commits, only ever see
    /// whole commits: nothing still in the buffer is visible to them.
    #[test]
    fn readers_see_only_whole_commits() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        let path = dir.path().join("t.db");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let done = done.clone();
            std::thread::spawn(move || {
                let conn =
                    Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                    let (n, max): (i64, Option<i64>) = conn
                        .query_row("SELECT count(*), max(id) FROM t", [], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .unwrap();
                    // Every commit adds 50 rows with the next ids.
                    assert_eq!(n % 50, 0);
                    assert_eq!(max.unwrap_or(0), n);
                    reads += 1;
                }
                reads
            })
        };
        for round in 0..200 {
            insert(&conn, 1 + round * 50, 1 + (round + 1) * 50);
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        assert!(reader.join().unwrap() > 0);
    }
}
