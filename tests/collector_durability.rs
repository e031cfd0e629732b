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
//! PostgreSQL's files are written by the server's own processes, which an in-process VFS cannot
//! reach: there the layer is an `LD_PRELOAD` library under a private server ([`pg_lossy`]).

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

/// Four clients posting batches of 20 interactions to a collector, as agents send them, until
/// the power is cut under them. An answer read before [`Load::stop_claiming`] was sent after its
/// batch's commit, so that commit came before the cut: those events must survive. Answers read
/// after it make no claim.
struct Load {
    was_cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    posts: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn stop_claiming(&self) {
        self.was_cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The events acknowledged before the cut.
    async fn acknowledged(self) -> BTreeSet<String> {
        let mut acknowledged = BTreeSet::new();
        for post in self.posts {
            acknowledged.extend(post.await.unwrap_or_default());
        }
        acknowledged
    }
}

/// A collector on `data` (on PostgreSQL at `database_url` if given), and the [`Load`] on it.
async fn collector_under_load(dir: &Path, data: &Path, database_url: Option<String>) -> (Collector, Load) {
    std::fs::create_dir_all(data).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("tokens"), "durability-token-0123456789abcdef write\n").unwrap_or_else(|e| panic!("{e}"));
    let mut config = CollectorConfig::new("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), data.to_path_buf());
    config.token_file = Some(dir.join("tokens"));
    config.database_url = database_url;
    let collector = Collector::start(config).await.unwrap_or_else(|e| panic!("{e}"));
    let client =
        CollectorClient::new(&format!("http://{}", collector.addr()), Some("durability-token-0123456789abcdef".into()));
    let was_cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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
    (collector, Load { was_cut, posts })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_power_loss_on_sqlite() {
    lossy::install();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    the_layer_tells_a_sync_from_none(dir.path());
    lossy::restore();
    let syncs_before = lossy::syncs();

    let data = dir.path().join("collector");
    let (collector, load) = collector_under_load(dir.path(), &data, None).await;
    // Let batches through for a while, then cut the power under those in flight.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let dropped = lossy::cut();
    load.stop_claiming();
    assert!(lossy::syncs() > syncs_before, "the collector's store wrote through the lossy layer");
    let acknowledged = load.acknowledged().await;
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

/// PostgreSQL under the same claim. Its files are written by the server's own processes, so the
/// layer is an LD_PRELOAD library (`tests/fixtures/lossy/lossy_preload.c`, built here with `cc`)
/// that journals, before each write under the data directory, the bytes it overwrites, and after
/// each fsync, which writes it covered. The "power loss" stops every process of the server, then
/// kills them, and undoes, newest first, every write no sync covered; the server then starts on
/// what is left (crash recovery from its WAL), and every acknowledged event must be there.
mod pg_lossy {
    use std::collections::{BTreeSet, HashMap};
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const WRITE: u32 = 1;
    const SYNC: u32 = 2;
    const SYNC_ALL: u32 = 3;
    const TRUNCATE: u32 = 4;
    const GONE: u32 = 5;
    const MAGIC: u32 = 0x4c4f_5353;
    const HEADER: usize = 4 + 4 + 8 * 7;

    /// The server's binaries: `FLYWHEEL_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
    pub fn bin_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("FLYWHEEL_PG_BIN") {
            return Some(PathBuf::from(dir));
        }
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, bin)| bin)
    }

    /// The uid and gid of the `postgres` user, when this test runs as root (the server refuses
    /// to run as root).
    fn server_user() -> Option<(u32, u32)> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let found = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "postgres").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        });
        Some(found.unwrap_or_else(|| panic!("running as root, and there is no postgres user to run the server as")))
    }

    /// `program`, as the server's user. Not through `su`/`runuser`: those stop themselves when
    /// their child is stopped, and the power loss stops the server.
    fn as_server_user(program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Some((uid, gid)) = server_user() {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        c
    }

    fn give_to_server_user(path: &Path) {
        if server_user().is_none() {
            return;
        }
        let status = Command::new("chown").args(["-R", "postgres"]).arg(path).status();
        assert!(status.is_ok_and(|s| s.success()), "chown {} to postgres", path.display());
    }

    /// Builds the layer into `dir` (the test's temporary directory), and hands `dir` to the
    /// server's user, which writes its journal there.
    pub fn build_layer(dir: &Path) -> PathBuf {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lossy/lossy_preload.c");
        let out = dir.join("lossy_preload.so");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&source)
            .arg("-ldl")
            .output()
            .unwrap_or_else(|e| panic!("running {cc}: {e}"));
        assert!(built.status.success(), "building the layer: {}", String::from_utf8_lossy(&built.stderr));
        give_to_server_user(dir);
        out
    }

    pub struct Server {
        bin: PathBuf,
        pub data: PathBuf,
        pub port: u16,
        child: Option<Child>,
        /// The layer and its journal, when it runs under one.
        journal: Option<PathBuf>,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    impl Server {
        /// A fresh cluster in `dir/data` whose superuser is `flywheel`, with a database `flywheel`.
        pub fn init(bin: &Path, dir: &Path) -> Server {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
            give_to_server_user(dir);
            let data = dir.join("data");
            let out = as_server_user(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "flywheel", "--auth=trust", "--no-instructions"])
                .output()
                .unwrap_or_else(|e| panic!("initdb: {e}"));
            assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
            let mut server = Server { bin: bin.to_path_buf(), data, port: free_port(), child: None, journal: None };
            server.start(&[], None);
            server.wait_ready();
            server.psql("postgres", "CREATE DATABASE flywheel");
            server.stop();
            server
        }

        pub fn url(&self) -> String {
            format!("postgres://flywheel@127.0.0.1:{}/flywheel", self.port)
        }

        /// Starts the server, with `settings` (`-c name=value`), under the layer if `layer` names it.
        pub fn start(&mut self, settings: &[&str], layer: Option<(&Path, &Path)>) {
            let mut cmd = as_server_user(&self.bin.join("postgres"));
            if let Some((so, journal)) = layer {
                cmd.env("LD_PRELOAD", so).env("FLYWHEEL_LOSSY_ROOT", &self.data).env("FLYWHEEL_LOSSY_LOG", journal);
                self.journal = Some(journal.to_path_buf());
            } else {
                self.journal = None;
            }
            cmd.arg("-D").arg(&self.data).args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ]);
            for s in settings {
                cmd.args(["-c", s]);
            }
            let log = std::fs::File::create(self.data.with_file_name(format!("server-{}.log", self.port)))
                .unwrap_or_else(|e| panic!("{e}"));
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting postgres: {e}"));
            self.child = Some(child);
        }

        pub fn wait_ready(&self) {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let ok = Command::new(self.bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "flywheel", "-d", "postgres"])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    return;
                }
                assert!(Instant::now() < deadline, "postgres on port {} never became ready: {}", self.port, self.log());
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        pub fn log(&self) -> String {
            std::fs::read_to_string(self.data.with_file_name(format!("server-{}.log", self.port))).unwrap_or_default()
        }

        pub fn psql(&self, db: &str, sql: &str) {
            let out = Command::new(self.bin.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "flywheel",
                    "-d",
                    db,
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ])
                .output()
                .unwrap_or_else(|e| panic!("psql: {e}"));
            assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        }

        /// A clean shutdown (a checkpoint: everything synced).
        pub fn stop(&mut self) {
            let out = as_server_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", "fast", "-w"])
                .output()
                .unwrap_or_else(|e| panic!("pg_ctl: {e}"));
            assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
            if let Some(mut c) = self.child.take() {
                let _waited = c.wait();
            }
        }

        /// The power loss: every process of this server stopped where it is (a stopped process
        /// finishes the write it is in, so the journal has no torn record), then killed; then
        /// every write no sync covered undone. Returns the bytes of writes undone.
        pub fn power_loss(&mut self) -> u64 {
            let journal = self.journal.clone().unwrap_or_else(|| panic!("power_loss needs the layer"));
            let marker = format!("FLYWHEEL_LOSSY_LOG={}", journal.display());
            let mut stopped = BTreeSet::new();
            loop {
                let ours = processes_with_env(&marker);
                let fresh: Vec<i32> = ours.iter().copied().filter(|p| !stopped.contains(p)).collect();
                if fresh.is_empty() {
                    break;
                }
                for pid in fresh {
                    // SAFETY: kill has no memory preconditions; pid names a process of this server.
                    unsafe { libc::kill(pid, libc::SIGSTOP) };
                    stopped.insert(pid);
                }
            }
            // Wait until each is stopped, so no write is half done when it dies.
            let deadline = Instant::now() + Duration::from_secs(10);
            for &pid in &stopped {
                while process_state(pid).is_some_and(|s| s != 'T' && s != 't' && s != 'Z') && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            for &pid in &stopped {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(mut c) = self.child.take() {
                let _waited = c.wait();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !processes_with_env(&marker).is_empty() {
                assert!(Instant::now() < deadline, "the server's processes did not die");
                std::thread::sleep(Duration::from_millis(10));
            }
            let undone = undo_unsynced(&journal, &self.data);
            let _removed = std::fs::remove_file(self.data.join("postmaster.pid"));
            undone
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _stopped = as_server_user(&self.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(&self.data)
                    .args(["stop", "-m", "immediate", "-w"])
                    .output();
                let _killed = c.kill();
                let _waited = c.wait();
            }
        }
    }

    fn processes_with_env(marker: &str) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                    && process_state(*pid).is_some_and(|s| s != 'Z')
            })
            .collect()
    }

    fn process_state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
    }

    struct Record {
        at: u64,
        kind: u32,
        file: (u64, u64),
        off: i64,
        len: u64,
        old_size: i64,
        covers: u64,
        pre: Vec<u8>,
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }

    fn parse(journal: &[u8]) -> Vec<Record> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + HEADER <= journal.len() {
            let h = &journal[at..at + HEADER];
            let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            assert_eq!(magic, MAGIC, "journal record at {at} is not one");
            let pre_len = u64_at(h, 56) as usize;
            assert!(at + HEADER + pre_len <= journal.len(), "journal record at {at} is torn");
            out.push(Record {
                at: at as u64,
                kind: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
                file: (u64_at(h, 8), u64_at(h, 16)),
                off: u64_at(h, 24) as i64,
                len: u64_at(h, 32),
                old_size: u64_at(h, 40) as i64,
                covers: u64_at(h, 48),
                pre: journal[at + HEADER..at + HEADER + pre_len].to_vec(),
            });
            at += HEADER + pre_len;
        }
        assert_eq!(at, journal.len(), "the journal ends in a torn record");
        out
    }

    /// Undoes, newest first, every write and size change the syncs in `journal` did not cover.
    /// A file's covered records are those before the last sync of it (or of everything), so the
    /// ones undone are each file's latest: undoing them newest first leaves each file as it was
    /// after its last covered write.
    fn undo_unsynced(journal: &Path, data: &Path) -> u64 {
        let bytes = std::fs::read(journal).unwrap_or_else(|e| panic!("reading the journal: {e}"));
        let records = parse(&bytes);
        let mut covered: HashMap<(u64, u64), u64> = HashMap::new();
        let mut covered_all = 0u64;
        // The journal position after which a file's records name the live inode.
        let mut born: HashMap<(u64, u64), u64> = HashMap::new();
        for r in &records {
            match r.kind {
                SYNC => {
                    let c = covered.entry(r.file).or_default();
                    *c = (*c).max(r.covers);
                }
                SYNC_ALL => covered_all = covered_all.max(r.covers),
                GONE => {
                    born.insert(r.file, r.at);
                }
                _ => {}
            }
        }
        let mut paths: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut stack = vec![data.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
                if meta.is_dir() {
                    stack.push(e.path());
                } else if meta.is_file() {
                    paths.insert((meta.dev(), meta.ino()), e.path());
                }
            }
        }
        let mut undone = 0u64;
        for r in records.iter().rev() {
            if !matches!(r.kind, WRITE | TRUNCATE) {
                continue;
            }
            if r.at < covered.get(&r.file).copied().unwrap_or(0).max(covered_all) {
                continue;
            }
            if born.get(&r.file).is_some_and(|b| r.at < *b) {
                continue; // a file since deleted
            }
            let Some(path) = paths.get(&r.file) else { continue };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            let old_size = r.old_size.max(0) as u64;
            match r.kind {
                WRITE => {
                    file.write_all_at(&r.pre, r.off as u64).unwrap_or_else(|e| panic!("{e}"));
                    if r.off as u64 + r.len > old_size {
                        file.set_len(old_size).unwrap_or_else(|e| panic!("{e}"));
                    }
                    undone += r.len;
                }
                _ => {
                    file.set_len(old_size).unwrap_or_else(|e| panic!("{e}"));
                    file.write_all_at(&r.pre, r.off as u64).unwrap_or_else(|e| panic!("{e}"));
                    undone += r.pre.len() as u64;
                }
            }
        }
        undone
    }
}

/// The server's binaries, or `None` (the test skips) where PostgreSQL is not installed and
/// `FLYWHEEL_REQUIRE_POSTGRES` does not ask for it.
fn postgres_binaries() -> Option<std::path::PathBuf> {
    let bin = pg_lossy::bin_dir();
    if bin.is_none() {
        assert!(
            std::env::var_os("FLYWHEEL_REQUIRE_POSTGRES").is_none(),
            "no PostgreSQL server binaries (set FLYWHEEL_PG_BIN) but FLYWHEEL_REQUIRE_POSTGRES asks for PostgreSQL"
        );
        eprintln!("skipped: no PostgreSQL server binaries under /usr/lib/postgresql (set FLYWHEEL_PG_BIN)");
    }
    bin
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// The layer tells a sync from none on PostgreSQL too: rows committed with
/// `synchronous_commit = off` (acknowledged before their WAL is flushed) are lost at the cut,
/// rows committed with `on` are all there after crash recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_tells_a_sync_from_none_on_postgres() {
    let Some(bin) = postgres_binaries() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let layer = pg_lossy::build_layer(dir.path());
    let mut server = pg_lossy::Server::init(&bin, &dir.path().join("pg"));
    for (mode, must_lose) in [("off", true), ("on", false)] {
        let journal = dir.path().join(format!("journal-{mode}"));
        // The WAL writer would flush asynchronous commits within 200 ms: slower, so the cut
        // finds them unflushed.
        server.start(&["wal_writer_delay=10000"], Some((&layer, &journal)));
        server.wait_ready();
        let client = pg_client(&server.url()).await;
        let table = format!("t_{mode}");
        client
            .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY); CHECKPOINT"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.batch_execute(&format!("SET synchronous_commit = {mode}")).await.unwrap_or_else(|e| panic!("{e}"));
        for i in 0..200 {
            client.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&i]).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let undone = server.power_loss();
        server.start(&[], None);
        server.wait_ready();
        let after = pg_client(&server.url()).await;
        let rows: i64 = after
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or_else(|e| panic!("after recovery: {e}\n{}", server.log()));
        eprintln!(
            "synchronous_commit={mode}: {rows} of 200 committed rows after the cut, {undone} unsynced bytes undone"
        );
        if must_lose {
            assert!(
                rows < 200 && undone > 0,
                "synchronous_commit={mode}: {rows} of 200 rows survived, {undone} bytes undone"
            );
        } else {
            assert_eq!(rows, 200, "synchronous_commit={mode}: every committed row survives ({undone} bytes undone)");
        }
        server.stop();
    }
}

/// Every event the collector acknowledged survives a power loss on PostgreSQL. The server is
/// set to `synchronous_commit = off`, as one tuned for throughput may be: the collector asks for
/// `on` in its own sessions, since it acknowledges an event as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_power_loss_on_postgres() {
    let Some(bin) = postgres_binaries() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let layer = pg_lossy::build_layer(dir.path());
    let mut server = pg_lossy::Server::init(&bin, &dir.path().join("pg"));
    let journal = dir.path().join("journal");
    server.start(&["synchronous_commit=off", "wal_writer_delay=10000"], Some((&layer, &journal)));
    server.wait_ready();

    let data = dir.path().join("collector");
    let (collector, load) = collector_under_load(dir.path(), &data, Some(server.url())).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Answers read from here on make no claim; one read before was sent after its commit, and
    // so after the sync that commit waited for.
    load.stop_claiming();
    let undone = tokio::task::block_in_place(|| server.power_loss());
    let acknowledged = load.acknowledged().await;
    collector.shutdown().await;

    server.start(&[], None);
    server.wait_ready();
    let after = pg_client(&server.url()).await;
    let stored: BTreeSet<String> = after
        .query("SELECT id FROM interactions", &[])
        .await
        .unwrap_or_else(|e| panic!("after recovery: {e}\n{}", server.log()))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let missing: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(*id)).take(5).collect();
    eprintln!(
        "{} acknowledged before the cut, {} on disk after it, {undone} unsynced bytes undone at the cut",
        acknowledged.len(),
        stored.len()
    );
    assert!(!acknowledged.is_empty(), "some batches were acknowledged before the cut");
    assert!(undone > 0, "the cut undid writes no sync covered");
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?} (of {})", acknowledged.len());
    server.stop();
}
