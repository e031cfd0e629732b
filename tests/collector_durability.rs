//! The collector's durability claim against a file layer that loses what was not synced.
//!
//! A process killed with SIGKILL keeps its writes in the page cache, so a kill test cannot tell
//! an fsync from none. Here SQLite runs on an interposed VFS ([`lossy`]) that holds every write
//! in memory until the file is synced (as a page cache would hold it until a power loss) and,
//! at the "power loss", drops what was not synced. What is on disk then is exactly what was
//! synced; the database is copied from there and opened again (recovery from its WAL), and every
//! event the collector acknowledged must be in it. The same layer shows it can tell: a database
//! written with `synchronous=OFF` loses committed rows at the same cut, one with `FULL` none.
//!
//! PostgreSQL is not covered by this layer: its files are written by the server's processes,
//! which an in-process VFS cannot reach (see `docs/BENCHMARKS.md`).

use std::collections::BTreeSet;
use std::path::Path;

use flywheel::collector::client::{CollectorClient, Ingest};
use flywheel::collector::{Collector, CollectorConfig, ItemOutcome};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

/// A VFS over SQLite's default one that keeps writes in memory until `xSync`.
mod lossy {
    use std::collections::HashMap;
    use std::os::raw::{c_char, c_int, c_void};
    use std::sync::{Mutex, OnceLock, PoisonError};

    use rusqlite::ffi;

    /// What a file was asked to do and has not synced yet.
    enum Op {
        Write(i64, Vec<u8>),
        Truncate(i64),
    }

    #[derive(Default)]
    struct State {
        /// After the cut: writes and syncs go nowhere.
        cut: bool,
        pending: HashMap<u64, Vec<Op>>,
        next: u64,
        /// Bytes dropped at the last cut.
        dropped: usize,
        /// Syncs that reached the disk.
        syncs: usize,
    }

    fn state() -> std::sync::MutexGuard<'static, State> {
        static STATE: OnceLock<Mutex<State>> = OnceLock::new();
        STATE.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Our file: SQLite's header, then the default VFS's file and our id.
    #[repr(C)]
    struct File {
        base: ffi::sqlite3_file,
        real: *mut ffi::sqlite3_file,
        id: u64,
    }

    struct Real(*mut ffi::sqlite3_vfs);
    // SAFETY: the default VFS is a static of SQLite's, valid and thread-safe for the process's life.
    unsafe impl Send for Real {}
    unsafe impl Sync for Real {}
    static REAL: OnceLock<Real> = OnceLock::new();

    fn real_vfs() -> *mut ffi::sqlite3_vfs {
        REAL.get().map_or(std::ptr::null_mut(), |r| r.0)
    }

    unsafe fn parts(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, *const ffi::sqlite3_io_methods, u64) {
        let f = file.cast::<File>();
        unsafe { ((*f).real, (*(*f).real).pMethods, (*f).id) }
    }

    /// Apply `ops` to the real file.
    unsafe fn flush(real: *mut ffi::sqlite3_file, m: *const ffi::sqlite3_io_methods, ops: Vec<Op>) -> c_int {
        for op in ops {
            let rc = match op {
                Op::Write(off, data) => unsafe {
                    ((*m).xWrite.expect("xWrite"))(real, data.as_ptr().cast(), data.len() as c_int, off)
                },
                Op::Truncate(size) => unsafe { ((*m).xTruncate.expect("xTruncate"))(real, size) },
            };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        ffi::SQLITE_OK
    }

    unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
        let (real, m, id) = unsafe { parts(file) };
        let ops = {
            let mut s = state();
            let ops = s.pending.remove(&id).unwrap_or_default();
            if s.cut { Vec::new() } else { ops }
        };
        // A clean close leaves the data to the page cache, which keeps it: written through.
        let rc = unsafe { flush(real, m, ops) };
        let closed = unsafe { ((*m).xClose.expect("xClose"))(real) };
        unsafe { ffi::sqlite3_free(real.cast()) };
        if rc != ffi::SQLITE_OK { rc } else { closed }
    }

    unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, off: i64) -> c_int {
        let (real, m, id) = unsafe { parts(file) };
        let rc = unsafe { ((*m).xRead.expect("xRead"))(real, buf, amt, off) };
        if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ {
            return rc;
        }
        let mut size = 0i64;
        if unsafe { ((*m).xFileSize.expect("xFileSize"))(real, &mut size) } != ffi::SQLITE_OK {
            return ffi::SQLITE_IOERR_READ;
        }
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), amt as usize) };
        let s = state();
        for op in s.pending.get(&id).into_iter().flatten() {
            match op {
                Op::Write(at, data) => {
                    let (start, end) = ((*at).max(off), (*at + data.len() as i64).min(off + i64::from(amt)));
                    if start < end {
                        out[(start - off) as usize..(end - off) as usize]
                            .copy_from_slice(&data[(start - at) as usize..(end - at) as usize]);
                    }
                    size = size.max(*at + data.len() as i64);
                }
                Op::Truncate(to) => {
                    if *to < off + i64::from(amt) {
                        out[(*to - off).max(0) as usize..].fill(0);
                    }
                    size = *to;
                }
            }
        }
        if off + i64::from(amt) > size {
            out[(size - off).max(0) as usize..].fill(0);
            return ffi::SQLITE_IOERR_SHORT_READ;
        }
        ffi::SQLITE_OK
    }

    unsafe extern "C" fn x_write(file: *mut ffi::sqlite3_file, buf: *const c_void, amt: c_int, off: i64) -> c_int {
        let (_, _, id) = unsafe { parts(file) };
        let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), amt as usize) }.to_vec();
        let mut s = state();
        if !s.cut {
            s.pending.entry(id).or_default().push(Op::Write(off, data));
        }
        ffi::SQLITE_OK
    }

    unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
        let (_, _, id) = unsafe { parts(file) };
        let mut s = state();
        if !s.cut {
            s.pending.entry(id).or_default().push(Op::Truncate(size));
        }
        ffi::SQLITE_OK
    }

    unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
        let (real, m, id) = unsafe { parts(file) };
        let ops = {
            let mut s = state();
            if s.cut {
                return ffi::SQLITE_OK;
            }
            s.syncs += 1;
            s.pending.remove(&id).unwrap_or_default()
        };
        let rc = unsafe { flush(real, m, ops) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        unsafe { ((*m).xSync.expect("xSync"))(real, flags) }
    }

    unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, out: *mut i64) -> c_int {
        let (real, m, id) = unsafe { parts(file) };
        let mut size = 0i64;
        let rc = unsafe { ((*m).xFileSize.expect("xFileSize"))(real, &mut size) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        for op in state().pending.get(&id).into_iter().flatten() {
            match op {
                Op::Write(at, data) => size = size.max(*at + data.len() as i64),
                Op::Truncate(to) => size = *to,
            }
        }
        unsafe { *out = size };
        ffi::SQLITE_OK
    }

    macro_rules! pass {
        ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
            unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
                let (real, m, _) = unsafe { parts(file) };
                unsafe { ((*m).$field.expect(stringify!($field)))(real $(, $arg)*) }
            }
        };
    }
    pass!(x_lock, xLock, (level: c_int) -> c_int);
    pass!(x_unlock, xUnlock, (level: c_int) -> c_int);
    pass!(x_check_reserved_lock, xCheckReservedLock, (out: *mut c_int) -> c_int);
    pass!(x_file_control, xFileControl, (op: c_int, arg: *mut c_void) -> c_int);
    pass!(x_sector_size, xSectorSize, () -> c_int);
    pass!(x_device_characteristics, xDeviceCharacteristics, () -> c_int);
    pass!(x_shm_map, xShmMap, (region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int);
    pass!(x_shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int) -> c_int);
    pass!(x_shm_unmap, xShmUnmap, (delete: c_int) -> c_int);

    unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
        let (real, m, _) = unsafe { parts(file) };
        unsafe { ((*m).xShmBarrier.expect("xShmBarrier"))(real) }
    }

    /// Version 2: no memory-mapped reads, which would go around the pending writes.
    static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
        iVersion: 2,
        xClose: Some(x_close),
        xRead: Some(x_read),
        xWrite: Some(x_write),
        xTruncate: Some(x_truncate),
        xSync: Some(x_sync),
        xFileSize: Some(x_file_size),
        xLock: Some(x_lock),
        xUnlock: Some(x_unlock),
        xCheckReservedLock: Some(x_check_reserved_lock),
        xFileControl: Some(x_file_control),
        xSectorSize: Some(x_sector_size),
        xDeviceCharacteristics: Some(x_device_characteristics),
        xShmMap: Some(x_shm_map),
        xShmLock: Some(x_shm_lock),
        xShmBarrier: Some(x_shm_barrier),
        xShmUnmap: Some(x_shm_unmap),
        xFetch: None,
        xUnfetch: None,
    };

    unsafe extern "C" fn x_open(
        _vfs: *mut ffi::sqlite3_vfs,
        name: *const c_char,
        file: *mut ffi::sqlite3_file,
        flags: c_int,
        out_flags: *mut c_int,
    ) -> c_int {
        let real_vfs = real_vfs();
        let size = unsafe { (*real_vfs).szOsFile };
        let real = unsafe { ffi::sqlite3_malloc(size) }.cast::<ffi::sqlite3_file>();
        if real.is_null() {
            return ffi::SQLITE_NOMEM;
        }
        unsafe { std::ptr::write_bytes(real.cast::<u8>(), 0, size as usize) };
        let rc = unsafe { ((*real_vfs).xOpen.expect("xOpen"))(real_vfs, name, real, flags, out_flags) };
        let f = file.cast::<File>();
        if rc != ffi::SQLITE_OK {
            unsafe {
                ffi::sqlite3_free(real.cast());
                (*f).base.pMethods = std::ptr::null();
            }
            return rc;
        }
        let id = {
            let mut s = state();
            s.next += 1;
            s.next
        };
        unsafe {
            (*f).real = real;
            (*f).id = id;
            (*f).base.pMethods = &METHODS;
        }
        ffi::SQLITE_OK
    }

    /// Register the layer as SQLite's default VFS (once per process).
    pub fn install() {
        static DONE: OnceLock<()> = OnceLock::new();
        DONE.get_or_init(|| unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            assert!(!real.is_null(), "no default VFS");
            let _set = REAL.set(Real(real));
            let mut ours: ffi::sqlite3_vfs = std::ptr::read(real);
            ours.iVersion = ours.iVersion.min(2);
            ours.szOsFile = std::mem::size_of::<File>() as c_int;
            ours.pNext = std::ptr::null_mut();
            ours.zName = c"lossy".as_ptr();
            ours.xOpen = Some(x_open);
            let ours = Box::leak(Box::new(ours));
            assert_eq!(ffi::sqlite3_vfs_register(ours, 1), ffi::SQLITE_OK);
        });
    }

    /// The power loss: what was not synced is gone, and nothing reaches the disk after it.
    /// Returns how many bytes were dropped.
    pub fn cut() -> usize {
        let mut s = state();
        s.cut = true;
        let dropped: usize = s
            .pending
            .values()
            .flatten()
            .map(|op| match op {
                Op::Write(_, d) => d.len(),
                Op::Truncate(_) => 0,
            })
            .sum();
        s.pending.clear();
        s.dropped = dropped;
        dropped
    }

    /// Syncs that reached the disk so far.
    pub fn syncs() -> usize {
        state().syncs
    }

    /// Power back on, for what opens files next.
    pub fn restore() {
        state().cut = false;
    }
}

/// What is on disk now: the database and its WAL copied to `to` (no shared-memory index, so the
/// copy recovers from the WAL as after a reboot), opened with SQLite's own VFS.
fn reopen_from_disk(db: &Path, to: &Path) -> Connection {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    let name = db.file_name().unwrap_or_default().to_string_lossy().to_string();
    for suffix in ["", "-wal"] {
        let from = db.with_file_name(format!("{name}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, to.join(format!("{name}{suffix}"))).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    Connection::open_with_flags_and_vfs(to.join(&name), OpenFlags::default(), "unix").unwrap_or_else(|e| panic!("{e}"))
}

/// The layer tells a sync from none: rows committed with `synchronous=OFF` are lost at the cut
/// (they were never synced), rows committed with `FULL` are all there.
fn the_layer_tells_a_sync_from_none(dir: &Path) {
    for (mode, must_lose) in [("OFF", true), ("FULL", false)] {
        lossy::restore();
        let db = dir.join(format!("control-{mode}")).join("t.db");
        std::fs::create_dir_all(db.parent().unwrap_or(dir)).unwrap_or_else(|e| panic!("{e}"));
        let conn = Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));
        conn.pragma_update(None, "journal_mode", "WAL").unwrap_or_else(|e| panic!("{e}"));
        conn.pragma_update(None, "synchronous", mode).unwrap_or_else(|e| panic!("{e}"));
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", []).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..200 {
            conn.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [i]).unwrap_or_else(|e| panic!("{e}"));
        }
        let dropped = lossy::cut();
        let after = reopen_from_disk(&db, &dir.join(format!("after-{mode}")));
        let rows: i64 = after.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap_or(0);
        if must_lose {
            assert!(
                rows < 200 && dropped > 0,
                "synchronous={mode}: {rows} of 200 rows survived, {dropped} bytes dropped"
            );
        } else {
            assert_eq!(rows, 200, "synchronous={mode}: every committed row survives ({dropped} bytes dropped)");
        }
        drop(after);
        std::mem::forget(conn); // its process "lost power": nothing of it may reach the disk
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_power_loss_on_sqlite() {
    lossy::install();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    the_layer_tells_a_sync_from_none(dir.path());
    lossy::restore();
    let syncs_before = lossy::syncs();

    let data = dir.path().join("collector");
    std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("tokens"), "durability-token-0123456789abcdef write\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut config = CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), data.clone());
    config.token_file = Some(dir.path().join("tokens"));
    let collector = Collector::start(config).await.unwrap_or_else(|e| panic!("{e}"));
    let client =
        CollectorClient::new(&format!("http://{}", collector.addr()), Some("durability-token-0123456789abcdef".into()));
    // Batches from four concurrent clients, as agents send them; the cut comes while they post.
    // An answer read before the cut was sent after its batch's commit, so that commit came before
    // the cut: those must be on disk. Answers read after it make no claim.
    let was_cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut acknowledged = BTreeSet::new();
    let mut posts = Vec::new();
    for worker in 0..4 {
        let client = client.clone();
        let was_cut = was_cut.clone();
        posts.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for batch in 0.. {
                let items: Vec<_> = (0..20)
                    .map(|i| {
                        json!({"id": format!("i-{worker}-{batch}-{i}"), "namespace": "ns", "deployment": "md",
                               "version": "v1", "prompt": "a question", "answer": "an answer"})
                    })
                    .collect();
                let answered = client.ingest(Ingest::Interactions, &items).await;
                if was_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(answer) = answered {
                    for (item, result) in items.iter().zip(&answer.results) {
                        if result.outcome == Some(ItemOutcome::Created) {
                            acked.push(item["id"].as_str().unwrap_or_default().to_string());
                        }
                    }
                }
            }
            acked
        }));
    }
    // Let batches through for a while, then cut the power under those in flight.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let dropped = lossy::cut();
    was_cut.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(lossy::syncs() > syncs_before, "the collector's store wrote through the lossy layer");
    for post in posts {
        acknowledged.extend(post.await.unwrap_or_default());
    }
    // Every event acknowledged before the cut must be on disk.
    let after = reopen_from_disk(&data.join("collector.db"), &dir.path().join("after"));
    let mut stmt = after.prepare("SELECT id FROM interactions").unwrap_or_else(|e| panic!("{e}"));
    let stored: BTreeSet<String> =
        stmt.query_map([], |r| r.get::<_, String>(0)).unwrap_or_else(|e| panic!("{e}")).flatten().collect();
    let missing: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(*id)).take(5).collect();
    eprintln!(
        "{} acknowledged before the cut, {} on disk after it, {dropped} unsynced bytes dropped at the cut",
        acknowledged.len(),
        stored.len()
    );
    assert!(!acknowledged.is_empty(), "some batches were acknowledged before the cut");
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?} (of {})", acknowledged.len());
    std::mem::forget(collector);
}
