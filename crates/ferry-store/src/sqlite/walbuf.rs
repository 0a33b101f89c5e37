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
//!
//! The writer may also leave a commit's sync owed ([`deferring_syncs`]): the frames are
//! passed on at the commit's sync and the `fdatasync` is done by the writer's syncer
//! thread, which answers no write and lets no read through before it is done (writer.rs,
//! `Durable`).
//!
//! A second VFS ("ferry-ckptbuf", the checkpointer's connection) gathers the database
//! file's writes the same way. A checkpoint copies the newest frame of each page back into
//! the database file one page per `pwrite`, in page order; a closed-loop `ferry bench p2p`
//! changed pages in runs of three consecutive ones on average. SQLite ends the copying
//! with `SQLITE_FCNTL_CKPT_DONE` before it counts the pages copied (`nBackfill`, after
//! which readers take them from the database file), and the buffer is passed on there —
//! and at every read, sync, truncation, size, lock and close. SQLite ignores that call's
//! result, so nothing may fail there: only writes into bytes the file already holds are
//! gathered. A checkpoint that grows the file says so first (`SQLITE_FCNTL_SIZE_HINT`),
//! and the new bytes are written then (zeros, as SQLite's own chunked growth does); pages
//! past what that reached go to the file at once, so a full disk fails the checkpoint at
//! its page, as without this VFS. A flush that fails anyway at the copying's end (the
//! disk itself failing) stops the process: the WAL still holds every page, and the next
//! start copies them again.

// SQLite's VFS is a C interface of raw pointers and function tables: this module is why
// the crate denies `unsafe` instead of forbidding it.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The names the two VFSes are registered under.
const WAL_VFS: &CStr = c"ferry-walbuf";
const CHECKPOINT_VFS: &CStr = c"ferry-ckptbuf";

/// The most bytes kept before they are written out anyway: the default VFS writes at most
/// 128 KiB − 1 in one call (`seekAndWriteFd` masks the length with 0x1ffff, and a longer
/// write fails as SQLITE_FULL). 120 KiB holds 117 frames of 1 KiB pages: one call for
/// them instead of 234.
const CAP: usize = 120 << 10;

/// Which file a VFS of ours gathers the writes of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gathers {
    /// The WAL: the writer's connection.
    Wal,
    /// The database file: the checkpointer's connection.
    Db,
}

/// What a VFS of ours keeps in `pAppData`.
struct VfsData {
    base: *mut ffi::sqlite3_vfs,
    gathers: Gathers,
}

/// Registers the WAL-buffer VFS (once per process); the name to open the writer's
/// connection with.
pub(super) fn vfs() -> Result<&'static str, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    register(&REGISTERED, WAL_VFS, Gathers::Wal)
}

/// Registers the checkpointer's VFS (once per process), which gathers the pages a
/// checkpoint copies into the database file; the name to open its connection with.
pub(super) fn checkpoint_vfs() -> Result<&'static str, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    register(&REGISTERED, CHECKPOINT_VFS, Gathers::Db)
}

fn register(
    once: &OnceLock<Result<(), String>>,
    name: &'static CStr,
    gathers: Gathers,
) -> Result<&'static str, String> {
    once.get_or_init(|| {
        // Registering a VFS starts SQLite, after which its page cache is fixed.
        super::pcache::install();
        // SAFETY: the default VFS lives for the whole process; ours is leaked, so it
        // does too, as sqlite3_vfs_register requires.
        unsafe {
            let base = ffi::sqlite3_vfs_find(ptr::null());
            if base.is_null() {
                return Err("SQLite has no default VFS".into());
            }
            let data = Box::leak(Box::new(VfsData { base, gathers }));
            let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                iVersion: 2,
                szOsFile: (real_offset() + (*base).szOsFile as usize) as c_int,
                mxPathname: (*base).mxPathname,
                pNext: ptr::null_mut(),
                zName: name.as_ptr(),
                pAppData: ptr::from_mut(data).cast(),
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
                rc => Err(format!("registering the {name:?} VFS failed ({rc})")),
            }
        }
    })
    .clone()
    .map(|()| name.to_str().expect("the VFS names are ASCII"))
}

/// A file whose writes are gathered: SQLite's file header, the buffer, and the default
/// VFS's file after them.
#[repr(C)]
struct GatherFile {
    base: ffi::sqlite3_file,
    pending: Pending,
    /// The database file only: the bytes of the file known to exist. Writes below are
    /// gathered; a write past them goes to the file at once, so an error it meets (a full
    /// disk) fails the checkpoint at that write, as it would without this VFS.
    allocated: i64,
}

/// Bytes written but not yet passed on: `buf` belongs at offset `start` of the file.
struct Pending {
    buf: Vec<u8>,
    start: i64,
}

/// Where the default VFS's file starts inside ours.
const fn real_offset() -> usize {
    let size = std::mem::size_of::<GatherFile>();
    let align = 16;
    size.div_ceil(align) * align
}

/// The default VFS (ours keeps it in `pAppData`).
unsafe fn base_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    (*(*vfs).pAppData.cast::<VfsData>()).base
}

unsafe fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    file.cast::<u8>().add(real_offset()).cast()
}

unsafe fn methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    &*(*real(file)).pMethods
}

unsafe fn gathered<'a>(file: *mut ffi::sqlite3_file) -> &'a mut GatherFile {
    &mut *file.cast::<GatherFile>()
}

unsafe fn pending<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Pending {
    &mut gathered(file).pending
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

/// Keeps `bytes` for `offset` in the buffer: beside or over the buffered ones, or in
/// their place once those are passed on.
unsafe fn gather(file: *mut ffi::sqlite3_file, bytes: &[u8], offset: i64) -> c_int {
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

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let data = &*(*vfs).pAppData.cast::<VfsData>();
    let open = (*data.base).xOpen.expect("a VFS opens files");
    let (kind, io_methods) = match data.gathers {
        Gathers::Wal => (ffi::SQLITE_OPEN_WAL, &WAL_METHODS),
        Gathers::Db => (ffi::SQLITE_OPEN_MAIN_DB, &DB_METHODS),
    };
    if flags & kind == 0 {
        // Not the file this VFS gathers: the default VFS's file in place of ours (ours
        // is larger).
        return open(data.base, name, file, flags, out_flags);
    }
    (*file).pMethods = ptr::null();
    let rc = open(data.base, name, real(file), flags, out_flags);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let ours = file.cast::<GatherFile>();
    ptr::write(
        ptr::addr_of_mut!((*ours).pending),
        Pending {
            buf: Vec::new(),
            start: 0,
        },
    );
    ptr::write(ptr::addr_of_mut!((*ours).allocated), 0);
    (*file).pMethods = io_methods;
    ffi::SQLITE_OK
}

/// Version 1: SQLite maps shared memory and memory-maps pages through the database file
/// only, never the WAL (and with no xFetch every WAL read goes through xRead, which
/// flushes).
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(file_close),
    xRead: Some(file_read),
    xWrite: Some(wal_write),
    xTruncate: Some(file_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(file_size),
    xLock: Some(file_lock),
    xUnlock: Some(file_unlock),
    xCheckReservedLock: Some(file_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(file_sector_size),
    xDeviceCharacteristics: Some(file_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Version 3, as the default VFS's: the database file carries the shared memory of the
/// WAL index and the memory-mapped pages, passed to the default VFS's file (after a
/// flush wherever they could show another connection what was written).
static DB_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(file_close),
    xRead: Some(file_read),
    xWrite: Some(db_write),
    xTruncate: Some(file_truncate),
    xSync: Some(file_sync),
    xFileSize: Some(file_size),
    xLock: Some(file_lock),
    xUnlock: Some(file_unlock),
    xCheckReservedLock: Some(file_check_reserved_lock),
    xFileControl: Some(db_file_control),
    xSectorSize: Some(file_sector_size),
    xDeviceCharacteristics: Some(file_device_characteristics),
    xShmMap: Some(db_shm_map),
    xShmLock: Some(db_shm_lock),
    xShmBarrier: Some(db_shm_barrier),
    xShmUnmap: Some(db_shm_unmap),
    xFetch: Some(db_fetch),
    xUnfetch: Some(db_unfetch),
};

unsafe extern "C" fn file_close(file: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(file);
    let close = methods(file).xClose.expect("a VFS file can be closed");
    let closed = close(real(file));
    ptr::drop_in_place(ptr::addr_of_mut!((*file.cast::<GatherFile>()).pending));
    (*file).pMethods = ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn file_read(
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
    WAL_END.with(|e| e.set(offset.saturating_add(bytes.len() as i64)));
    gather(file, bytes, offset)
}

thread_local! {
    /// Where this thread's last write into a WAL ended.
    static WAL_END: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// How long the WAL this thread writes is, as far as its frames go: where its last write
/// ended. A commit's frames follow the ones before, and after the WAL restarts they begin
/// again at its start, so on the writer's thread, after a commit, this is the length of
/// the WAL in use (the file may be longer: it keeps its length between restarts).
pub(super) fn wal_end() -> u64 {
    WAL_END.with(|e| e.get()).max(0) as u64
}

unsafe extern "C" fn file_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let rc = flushed(file, |m, real| {
        m.xTruncate.expect("a VFS file can be truncated")(real, size)
    });
    let f = gathered(file);
    f.allocated = f.allocated.min(size);
    rc
}

unsafe extern "C" fn file_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed(file, |m, real| {
        m.xSync.expect("a VFS file can be synced")(real, flags)
    })
}

thread_local! {
    /// Set by the writer around a batch's commit ([`deferring_syncs`]).
    static DEFER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The WAL sync a commit left owed ([`take_owed`]).
    static OWED: std::cell::Cell<Option<OwedSync>> = const { std::cell::Cell::new(None) };
}

/// A WAL sync a commit left to be done: the WAL's file and SQLite's flags for it.
#[derive(Clone, Copy)]
pub(super) struct OwedSync {
    file: *mut ffi::sqlite3_file,
    flags: c_int,
}

// SAFETY: the file is the writer connection's WAL, which lives as long as the connection;
// the writer keeps the connection open until every owed sync is done (writer.rs), and a
// sync only reads the default VFS's file (its descriptor) while the writer's thread may
// write through it.
unsafe impl Send for OwedSync {}

impl OwedSync {
    /// Syncs the WAL: every frame written before this call is then on disk.
    pub(super) fn sync(self) -> Result<(), c_int> {
        // SAFETY: see the `Send` impl: the file is open.
        let rc = unsafe {
            methods(self.file).xSync.expect("a VFS file can be synced")(real(self.file), self.flags)
        };
        match rc {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(rc),
        }
    }
}

/// Runs `commit` with the WAL's sync at the commit left owed instead of done: SQLite
/// writes the commit's frames and publishes the commit to other connections without
/// waiting for the disk. Only for the writer, which then holds every reply and every
/// reader's answer until the owed sync is done (writer.rs). The sync of a new WAL's
/// header (the commit's first frame after a restart: its salt must be on disk before any
/// frame that uses it) is still done in place.
pub(super) fn deferring_syncs<T>(commit: impl FnOnce() -> T) -> T {
    DEFER.with(|d| d.set(true));
    let out = commit();
    DEFER.with(|d| d.set(false));
    out
}

/// The sync the last commit in [`deferring_syncs`] left owed, if it left one.
pub(super) fn take_owed() -> Option<OwedSync> {
    OWED.with(|o| o.take())
}

/// The WAL's sync: at a commit in [`deferring_syncs`] the buffered frames are passed on
/// and the sync is left owed.
unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let p = pending(file);
    let header = !p.buf.is_empty() && p.start == 0;
    if header || !DEFER.with(|d| d.get()) {
        return file_sync(file, flags);
    }
    match flush(file) {
        ffi::SQLITE_OK => {
            OWED.with(|o| o.set(Some(OwedSync { file, flags })));
            ffi::SQLITE_OK
        }
        rc => rc,
    }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    let rc = flushed(file, |m, real| {
        m.xFileSize.expect("a VFS file has a size")(real, size)
    });
    if rc == ffi::SQLITE_OK {
        gathered(file).allocated = *size;
    }
    rc
}

unsafe extern "C" fn file_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    flushed(file, |m, real| {
        m.xLock.expect("a VFS file can be locked")(real, level)
    })
}

unsafe extern "C" fn file_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    flushed(file, |m, real| {
        m.xUnlock.expect("a VFS file can be unlocked")(real, level)
    })
}

unsafe extern "C" fn file_check_reserved_lock(
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

/// The database file's writes: only a checkpoint's, in the checkpointer's connection (in
/// WAL mode nothing else writes the database file), page after page in page order.
unsafe extern "C" fn db_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), amount.max(0) as usize);
    if offset + bytes.len() as i64 > gathered(file).allocated {
        // Past what the file is known to hold: to the file now, its error seen now.
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let rc = write_through(file, bytes, offset);
        if rc == ffi::SQLITE_OK {
            let f = gathered(file);
            f.allocated = f.allocated.max(offset + bytes.len() as i64);
        }
        return rc;
    }
    gather(file, bytes, offset)
}

/// Writes zeros over `from..to` of the real file, 120 KiB a call; returns how far it got
/// (a failed write ends it: the pages past go to the file one by one, and fail there).
unsafe fn zero_fill(file: *mut ffi::sqlite3_file, from: i64, to: i64) -> i64 {
    static ZEROS: [u8; CAP] = [0; CAP];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CAP);
        if write_through(file, &ZEROS[..n], at) != ffi::SQLITE_OK {
            break;
        }
        at += n as i64;
    }
    at
}

unsafe extern "C" fn db_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        if op == ffi::SQLITE_FCNTL_CKPT_DONE {
            // SQLite ignores this call's result: it would count the pages copied and
            // readers would take them from the database file. The writes gathered are
            // into bytes the file already held (a full disk cannot refuse them), so this
            // is a failing disk; stop before anything reads stale pages. Nothing is lost:
            // the WAL still holds every page, and the next start copies them again.
            tracing::error!(
                code = rc,
                "store: a checkpoint's writes to the database file failed; stopping"
            );
            std::process::abort();
        }
        return rc;
    }
    if op == ffi::SQLITE_FCNTL_SIZE_HINT {
        // A checkpoint that grows the file says how large first: the new bytes are
        // written (zeros) now, so that a full disk fails this checkpoint at its first
        // page past them rather than at a flush SQLite does not hear of.
        let want = *arg.cast::<i64>();
        let mut have = 0;
        if methods(file).xFileSize.expect("a VFS file has a size")(real(file), &mut have)
            == ffi::SQLITE_OK
        {
            gathered(file).allocated = zero_fill(file, have, want);
        }
    }
    methods(file).xFileControl.expect("a VFS file has controls")(real(file), op, arg)
}

unsafe extern "C" fn db_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    methods(file)
        .xShmMap
        .expect("the default VFS maps shared memory")(real(file), region, size, extend, out)
}

unsafe extern "C" fn db_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    flushed(file, |m, real| {
        m.xShmLock.expect("the default VFS locks shared memory")(real, offset, n, flags)
    })
}

/// Not a flush: a barrier orders the shared memory's loads and stores and cannot report
/// an error, and a flush that failed here would lose the pages unheard of.
unsafe extern "C" fn db_shm_barrier(file: *mut ffi::sqlite3_file) {
    methods(file)
        .xShmBarrier
        .expect("the default VFS has barriers")(real(file))
}

unsafe extern "C" fn db_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    methods(file)
        .xShmUnmap
        .expect("the default VFS unmaps shared memory")(real(file), delete)
}

unsafe extern "C" fn db_fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    flushed(file, |m, real| {
        m.xFetch.expect("the default VFS maps pages")(real, offset, amount, out)
    })
}

unsafe extern "C" fn db_unfetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    page: *mut c_void,
) -> c_int {
    methods(file).xUnfetch.expect("the default VFS maps pages")(real(file), offset, page)
}

unsafe extern "C" fn file_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let sector = methods(file)
        .xSectorSize
        .expect("a VFS file has a sector size");
    sector(real(file))
}

unsafe extern "C" fn file_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
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

    /// After each commit the writer's thread knows how far its WAL goes (the checkpointer
    /// passes sooner when it is long): the end of the commit's frames, back near the start
    /// once the WAL restarts, though the file keeps its length.
    #[test]
    fn the_writer_knows_how_long_its_wal_is() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        let frame = 1024 + 24;
        insert(&conn, 1, 2);
        let first = wal_end();
        assert_eq!(
            first,
            32 + frames(dir.path()) * frame,
            "a WAL header and its frames"
        );
        insert(&conn, 2, 400);
        let long = wal_end();
        assert_eq!(long, 32 + frames(dir.path()) * frame);
        assert!(long > first + 100 * frame, "{first} → {long}");
        // Everything copied back and the WAL restarted: the next commit writes from its
        // start, over a file that keeps its length.
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
        insert(&conn, 400, 402);
        let restarted = wal_end();
        assert!(
            restarted < first + 10 * frame,
            "{restarted} after the restart"
        );
        assert_eq!(
            frames(dir.path()) * frame + 32,
            long,
            "the file kept its length"
        );
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

    /// A connection as the store's checkpointer opens it: the checkpointer's VFS.
    fn checkpointer(dir: &Path) -> Connection {
        Connection::open_with_flags_and_vfs(
            dir.join("t.db"),
            OpenFlags::default(),
            checkpoint_vfs().unwrap(),
        )
        .unwrap()
    }

    /// `PRAGMA wal_checkpoint(PASSIVE)`: (frames in the WAL, frames copied back).
    fn pass(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
    }

    /// The rows and their checksum as a connection of the default VFS reads them, and the
    /// database's integrity check.
    fn read_back(dir: &Path) -> (i64, i64, String) {
        let conn = Connection::open(dir.join("t.db")).unwrap();
        let (n, sum) = conn
            .query_row("SELECT count(*), coalesce(sum(v), 0) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let check = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        (n, sum, check)
    }

    fn sum_v(from: i64, to: i64) -> i64 {
        (from..to).map(|id| (id * 7919) % 1000).sum()
    }

    /// A checkpoint's pages reach the database file a run of consecutive pages per write,
    /// and what it copied is what readers then find there (the WAL restarted first, so
    /// nothing is read from it).
    #[test]
    fn a_checkpoint_reaches_the_database_in_few_writes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        insert(&conn, 1, 2);
        let ckpt = checkpointer(dir.path());
        assert_eq!(pass(&ckpt).unwrap().0, pass(&ckpt).unwrap().1);
        // Appended rows: consecutive new pages at the file's end (grown first), and the
        // index's pages spread through it.
        insert(&conn, 2, 2000);
        let before = PASSED_ON.with(|n| n.get());
        let (log, copied) = pass(&ckpt).unwrap();
        let written = PASSED_ON.with(|n| n.get()) - before;
        assert!(
            copied > 300 && copied == log,
            "{copied} of {log} frames copied"
        );
        assert!(
            written * 10 < copied as u64,
            "{copied} frames copied back in {written} writes"
        );
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let len = std::fs::metadata(dir.path().join("t.db-wal"))
            .unwrap()
            .len();
        assert_eq!(len, 0);
        assert_eq!(read_back(dir.path()), (1999, sum_v(1, 2000), "ok".into()));
    }

    /// Checkpoints while commits keep coming and readers hold old snapshots (so passes
    /// copy only part of the WAL): every reader sees whole commits, and at the end the
    /// database file alone holds them all.
    #[test]
    fn checkpoints_beside_writes_and_readers_copy_every_page() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        insert(&conn, 1, 2);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spawn_reader = || {
            let done = done.clone();
            let path = dir.path().join("t.db");
            std::thread::spawn(move || {
                let conn =
                    Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                    let (n, max, sum): (i64, i64, i64) = conn
                        .query_row("SELECT count(*), max(id), sum(v) FROM t", [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .unwrap();
                    assert_eq!((max, sum), (n, sum_v(1, n + 1)));
                    reads += 1;
                }
                reads
            })
        };
        let readers = [spawn_reader(), spawn_reader()];
        let checkpoints = {
            let done = done.clone();
            let path = dir.path().to_owned();
            std::thread::spawn(move || {
                let ckpt = checkpointer(&path);
                let mut passes = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) || passes == 0 {
                    pass(&ckpt).unwrap();
                    passes += 1;
                }
                passes
            })
        };
        for round in 0..150 {
            insert(&conn, 2 + round * 40, 2 + (round + 1) * 40);
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert!(checkpoints.join().unwrap() > 0);
        let ckpt = checkpointer(dir.path());
        let (log, copied) = pass(&ckpt).unwrap();
        assert_eq!(log, copied);
        drop(ckpt);
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        assert_eq!(read_back(dir.path()), (6001, sum_v(1, 6002), "ok".into()));
    }

    /// The child of [`a_checkpoint_the_disk_cannot_grow_for_copies_nothing`]: a
    /// checkpoint that must grow the database file while no file may grow
    /// (`RLIMIT_FSIZE`, as a full disk), then again once it may.
    fn checkpoint_without_room(dir: &Path) {
        let conn = writer(dir);
        insert(&conn, 1, 2);
        let ckpt = checkpointer(dir);
        pass(&ckpt).unwrap();
        insert(&conn, 2, 3000);
        // The file may grow, but not by its last 32 pages: the checkpoint's last run of
        // pages, gathered below the limit and refused past it.
        let pages: u64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let grown = pages * 1024;
        assert!(grown > std::fs::metadata(dir.join("t.db")).unwrap().len() + 4 * CAP as u64);
        // SAFETY: plain libc calls; this process runs only this test.
        unsafe {
            assert_ne!(libc::signal(libc::SIGXFSZ, libc::SIG_IGN), libc::SIG_ERR);
            let mut limit: libc::rlimit = std::mem::zeroed();
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
            let full = limit;
            limit.rlim_cur = grown - 32 * 1024;
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            let failed = pass(&ckpt);
            assert!(failed.is_err(), "a checkpoint past the limit: {failed:?}");
            // Nothing counted copied: readers still take the pages from the WAL.
            assert_eq!(read_back(dir), (2999, sum_v(1, 3000), "ok".into()));
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &full), 0);
        }
        let (log, copied) = pass(&ckpt).unwrap();
        assert_eq!(log, copied);
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        assert_eq!(read_back(dir), (2999, sum_v(1, 3000), "ok".into()));
    }

    /// A checkpoint the disk cannot take fails and counts nothing copied — the pages it
    /// gathered are never the ones refused. Run in a process of its own: the file-size
    /// limit it sets holds for every thread.
    #[test]
    fn a_checkpoint_the_disk_cannot_grow_for_copies_nothing() {
        const CHILD: &str = "WALBUF_TEST_CHILD_DIR";
        if let Some(dir) = std::env::var_os(CHILD) {
            return checkpoint_without_room(Path::new(&dir));
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sqlite::walbuf::tests::a_checkpoint_the_disk_cannot_grow_for_copies_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{:?}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
