//! SQLite's own page cache, without its sweep at the end of transactions that split pages.
//!
//! When a B-tree insert splits pages, `balance_nonroot` puts the new pages in ascending
//! order by swapping their numbers through a temporary one: the page holding the lock byte,
//! 1 GiB into the file (page 1 048 577 at 1 KiB). SQLite's default page cache ("pcache1")
//! remembers the largest page number it has ever held, and at the end of every write
//! transaction SQLite drops the cached pages beyond the database's end; with that
//! remembered number 1 GiB away, pcache1 visits every bucket of its hash table and every
//! page in it — though the swapped page left that number long before. In a database under
//! 1 GiB that is every commit in which a page split, inside the commit, before its callers
//! hear of it: 6.4–7 % of the server's CPU samples at 10 000 msgs/s, 1.5 % in the closed
//! loop (docs/benchmarks.md, *The page cache's sweep skipped*).
//!
//! This module installs, once per process and before SQLite's first use, a page cache
//! that is pcache1 itself behind a thin layer: every call is passed on unchanged except
//! the drop of pages beyond a limit (`xTruncate`), which is skipped when the layer knows
//! no page at or above the limit is cached. It keeps an upper bound of the cached page
//! numbers — the largest page fetched, and the numbers pages were moved to above it that
//! they have not been moved away from — so a skipped drop could not have dropped
//! anything. Pages pcache1 evicts or discards on its own only make the bound loose, never
//! wrong: a loose bound passes the drop on, as before.
//!
//! If SQLite was already in use when the store first opened (another connection of the
//! process came first), it keeps its default page cache and nothing else changes.

// SQLite's page-cache interface is a C table of functions over raw pointers: the crate
// denies `unsafe`, and this module is one of the two places it is allowed.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

type Pcache = *mut ffi::sqlite3_pcache;
type Page = *mut ffi::sqlite3_pcache_page;

/// pcache1's methods, as SQLite had them before ours were installed: the ones every page
/// cache has, checked once at install instead of at every call.
struct Base {
    arg: *mut c_void,
    init: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    shutdown: Option<unsafe extern "C" fn(*mut c_void)>,
    create: unsafe extern "C" fn(c_int, c_int, c_int) -> Pcache,
    cachesize: unsafe extern "C" fn(Pcache, c_int),
    pagecount: unsafe extern "C" fn(Pcache) -> c_int,
    fetch: unsafe extern "C" fn(Pcache, c_uint, c_int) -> Page,
    unpin: unsafe extern "C" fn(Pcache, Page, c_int),
    rekey: unsafe extern "C" fn(Pcache, Page, c_uint, c_uint),
    truncate: unsafe extern "C" fn(Pcache, c_uint),
    destroy: unsafe extern "C" fn(Pcache),
    shrink: Option<unsafe extern "C" fn(Pcache)>,
}
// SAFETY: written once, before any other thread can read it (OnceLock), and never again;
// its pointers are SQLite's own functions and its `pArg`, which SQLite's default page
// cache does not use.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

impl Base {
    /// `None` when a method every page cache has is missing.
    fn of(m: &ffi::sqlite3_pcache_methods2) -> Option<Base> {
        Some(Base {
            arg: m.pArg,
            init: m.xInit,
            shutdown: m.xShutdown,
            create: m.xCreate?,
            cachesize: m.xCachesize?,
            pagecount: m.xPagecount?,
            fetch: m.xFetch?,
            unpin: m.xUnpin?,
            rekey: m.xRekey?,
            truncate: m.xTruncate?,
            destroy: m.xDestroy?,
            shrink: m.xShrink,
        })
    }
}

static BASE: OnceLock<Base> = OnceLock::new();

/// Installs the page cache (once per process). True when it is in use: SQLite had not
/// been used yet by this process when it was first called.
pub(super) fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: SQLITE_CONFIG_GETPCACHE2 fills the table it is given, and PCACHE2
        // copies the one it is given; both are refused (SQLITE_MISUSE) once SQLite is
        // initialized, which leaves its default in place.
        unsafe {
            let mut methods: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
            let base = match ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_GETPCACHE2,
                &mut methods as *mut ffi::sqlite3_pcache_methods2,
            ) {
                ffi::SQLITE_OK => Base::of(&methods),
                _ => None,
            };
            let Some(base) = base else {
                tracing::debug!("SQLite was in use already: its default page cache stays");
                return false;
            };
            let _ = BASE.set(base);
            let ours = ffi::sqlite3_pcache_methods2 {
                iVersion: methods.iVersion,
                pArg: std::ptr::null_mut(),
                xInit: Some(x_init),
                xShutdown: Some(x_shutdown),
                xCreate: Some(x_create),
                xCachesize: Some(x_cachesize),
                xPagecount: Some(x_pagecount),
                xFetch: Some(x_fetch),
                xUnpin: Some(x_unpin),
                xRekey: Some(x_rekey),
                xTruncate: Some(x_truncate),
                xDestroy: Some(x_destroy),
                xShrink: Some(x_shrink),
            };
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &ours as *const ffi::sqlite3_pcache_methods2,
            ) == ffi::SQLITE_OK
        }
    })
}

fn base() -> &'static Base {
    BASE.get()
        .expect("the page cache is used only once installed")
}

/// Numbers moved to above [`Cache::fetched`] kept before the bound is simply raised.
const MOVED_MAX: usize = 8;

/// One page cache (one per connection): pcache1's and the bound of its page numbers.
struct Cache {
    base: &'static Base,
    inner: Pcache,
    /// No cached page has a number above this one, except the numbers in `moved`.
    fetched: c_uint,
    /// Numbers above `fetched` that a page was moved to (`xRekey`) and has not been moved
    /// away from since.
    moved: Vec<c_uint>,
}

impl Cache {
    /// Whether a page numbered `limit` or above may be cached.
    fn may_hold_from(&self, limit: c_uint) -> bool {
        self.fetched >= limit || self.moved.iter().any(|&k| k >= limit)
    }
}

unsafe fn cache<'a>(p: Pcache) -> &'a mut Cache {
    &mut *p.cast::<Cache>()
}

#[cfg(test)]
thread_local! {
    /// On this thread: drops skipped, drops passed on, pages moved above the largest
    /// number fetched (tests count them).
    static COUNTS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

#[cfg(test)]
fn count(skipped: u64, passed: u64, moved: u64) {
    COUNTS.with(|n| {
        let (a, b, c) = n.get();
        n.set((a + skipped, b + passed, c + moved))
    });
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    let b = base();
    b.init.map_or(ffi::SQLITE_OK, |init| init(b.arg))
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {
    let b = base();
    if let Some(shutdown) = b.shutdown {
        shutdown(b.arg)
    }
}

unsafe extern "C" fn x_create(sz_page: c_int, sz_extra: c_int, purgeable: c_int) -> Pcache {
    let base = base();
    let inner = (base.create)(sz_page, sz_extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    Box::into_raw(Box::new(Cache {
        base,
        inner,
        fetched: 0,
        moved: Vec::new(),
    }))
    .cast()
}

unsafe extern "C" fn x_cachesize(p: Pcache, n: c_int) {
    let c = cache(p);
    (c.base.cachesize)(c.inner, n)
}

unsafe extern "C" fn x_pagecount(p: Pcache) -> c_int {
    let c = cache(p);
    (c.base.pagecount)(c.inner)
}

unsafe extern "C" fn x_fetch(p: Pcache, key: c_uint, create: c_int) -> Page {
    let c = cache(p);
    let page = (c.base.fetch)(c.inner, key, create);
    if !page.is_null() && key > c.fetched {
        c.fetched = key;
    }
    page
}

unsafe extern "C" fn x_unpin(p: Pcache, page: Page, discard: c_int) {
    let c = cache(p);
    (c.base.unpin)(c.inner, page, discard)
}

unsafe extern "C" fn x_rekey(p: Pcache, page: Page, old: c_uint, new: c_uint) {
    let c = cache(p);
    (c.base.rekey)(c.inner, page, old, new);
    c.moved.retain(|&k| k != old);
    if new > c.fetched {
        #[cfg(test)]
        count(0, 0, 1);
        if c.moved.len() < MOVED_MAX {
            c.moved.push(new);
        } else {
            c.fetched = new;
        }
    }
}

unsafe extern "C" fn x_truncate(p: Pcache, limit: c_uint) {
    let c = cache(p);
    if !c.may_hold_from(limit) {
        #[cfg(test)]
        count(1, 0, 0);
        return;
    }
    #[cfg(test)]
    count(0, 1, 0);
    (c.base.truncate)(c.inner, limit);
    c.fetched = c.fetched.min(limit.saturating_sub(1));
    c.moved.retain(|&k| k < limit);
}

unsafe extern "C" fn x_destroy(p: Pcache) {
    let c = Box::from_raw(p.cast::<Cache>());
    (c.base.destroy)(c.inner);
}

unsafe extern "C" fn x_shrink(p: Pcache) {
    let c = cache(p);
    if let Some(shrink) = c.base.shrink {
        shrink(c.inner)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{params, Connection};

    use super::*;

    /// A table whose inserts land all over its B-tree (a pseudo-random key), so pages
    /// split in the middle and `balance_nonroot` renumbers them, as the inbox and the
    /// idempotency index do.
    fn open(dir: &Path) -> Connection {
        assert!(
            install(),
            "SQLite was used before the page cache was installed"
        );
        let conn = Connection::open(dir.join("t.db")).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -512;
             CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )
        .unwrap();
        conn
    }

    fn key(i: u64) -> i64 {
        (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 1) as i64
    }

    /// What another connection (a fresh cache) reads: rows and the sum of their keys'
    /// low bits, and whether the file is sound.
    fn contents(dir: &Path) -> (i64, i64, String) {
        let c = Connection::open(dir.join("t.db")).unwrap();
        let (n, sum) = c
            .query_row(
                "SELECT count(*), coalesce(sum(k & 65535), 0) FROM t",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        (n, sum, ok)
    }

    fn counts() -> (u64, u64, u64) {
        COUNTS.with(|n| n.get())
    }

    /// Inserts the rows of `keys` with `len` bytes of `fill` each in one transaction,
    /// committed or rolled back; the sum of their keys' low bits.
    fn insert(
        conn: &mut Connection,
        keys: std::ops::Range<u64>,
        fill: u8,
        len: usize,
        commit: bool,
    ) -> i64 {
        let txn = conn.transaction().unwrap();
        let mut sum = 0;
        for i in keys {
            txn.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![key(i), vec![fill; len]],
            )
            .unwrap();
            sum += key(i) & 65535;
        }
        if commit {
            txn.commit().unwrap();
        } else {
            txn.rollback().unwrap();
        }
        sum
    }

    #[test]
    fn commits_that_split_pages_skip_the_sweep_and_keep_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path());
        let before = counts();
        let sum: i64 = (0..100u64)
            .map(|b| insert(&mut conn, b * 40..(b + 1) * 40, 7, 60, true))
            .sum();
        let (skipped, passed, moved) = counts();
        let (skipped, passed, moved) = (skipped - before.0, passed - before.1, moved - before.2);
        // Pages were renumbered above every page fetched (the swap through the lock-byte
        // page) — the case pcache1 swept its whole cache for — and the drops at the
        // commits' ends were skipped.
        assert!(moved > 0, "no page was renumbered: the test lost its point");
        assert!(
            skipped >= 50,
            "only {skipped} of the commits' drops skipped ({passed} passed on)"
        );
        drop(conn);
        assert_eq!(contents(dir.path()), (4000, sum, "ok".to_string()));
    }

    /// A transaction that grew the file and rolled back leaves pages beyond the
    /// database's end in the cache: their drop is passed on, and what the file holds
    /// afterwards is only what was committed.
    #[test]
    fn a_rolled_back_growth_is_dropped_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path());
        let mut sum = insert(&mut conn, 0..200, 1, 60, true);
        let passed_before = counts().1;
        insert(&mut conn, 1_000..3_000, 2, 200, false);
        assert!(
            counts().1 > passed_before,
            "the rollback's drop was skipped"
        );
        sum += insert(&mut conn, 5_000..5_300, 3, 100, true);
        let seen: i64 = conn
            .query_row(
                "SELECT count(*) FROM t WHERE v = ?1",
                params![vec![2u8; 200]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seen, 0);
        drop(conn);
        assert_eq!(contents(dir.path()), (500, sum, "ok".to_string()));
    }
}
