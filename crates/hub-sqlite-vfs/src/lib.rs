//! `hub-wal`: SQLite's own VFS for the platform ("unix" here), with one change: the frames a
//! transaction appends to its WAL reach the file in one `write` at commit instead of two per page.
//!
//! SQLite writes every WAL frame as two writes, its 24-byte header and then the page. A commit
//! of 25 pages is 50 `pwrite`s, each a trip through the kernel and the file system; measured on
//! the hub's machine, ~1 µs each against ~4 µs for the same bytes in one call. The usage log and
//! the ledger commit before a caller is answered, so those trips are on every call's path.
//!
//! What changes, and why it is safe:
//! - Only files SQLite opens as a WAL (`SQLITE_OPEN_WAL`) are wrapped. The database file, its
//!   shared-memory index and journals are the platform VFS's own objects, untouched.
//! - A WAL file buffers an append only when it is a frame header (24 bytes) or the page that
//!   follows a buffered header, contiguous with what it holds. Anything else (the WAL header at
//!   offset 0, a frame rewritten in place, a write this pattern does not recognise) first writes
//!   out the buffer, then goes to the file as it came.
//! - A *commit* frame's header (SQLite marks it with the database size) is written out together
//!   with everything buffered before it, inside that `xWrite`; its page follows as a write of its
//!   own. So a commit is two writes, and nothing stays buffered once the commit frame is written:
//!   SQLite publishes a commit (the wal-index header other connections read) only after that, so
//!   no connection can learn of a frame that is not in the file, and a failed write fails the
//!   commit as it would have unbuffered (`SQLITE_IOERR_WRITE`, `SQLITE_FULL`). (Writing the
//!   commit header with its page would save one more write, but when SQLite rewrites the
//!   checksums of a transaction that overwrote frames in place, the commit header is rewritten
//!   alone, with no page after it, and would stay buffered past the commit.)
//! - Every other call on the file (read, sync, size, truncate, lock, file control, close) first
//!   writes out the buffer, so the file looks to SQLite exactly as if nothing were buffered.
//!   Frames of a transaction that spills pages before it commits are read back through `xRead`.
//! - Durability is SQLite's: `synchronous=NORMAL` never synced the WAL at commit and still does
//!   not; `FULL` syncs it, after the buffer is written.
//!
//! The files are SQLite's WAL format, byte for byte: any SQLite (the `sqlite3` shell, a
//! connection opened without this VFS) reads and writes the same database.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

/// The name connections open the VFS by (`Connection::open_with_flags_and_vfs`).
pub const NAME: &str = "hub-wal";
const NAME_C: &CStr = c"hub-wal";

/// A frame header's size in SQLite's WAL format.
const FRAME_HEADER: usize = 24;
/// The WAL file's own header, at offset 0.
const WAL_HEADER: i64 = 32;
/// The most the platform VFS writes in one call: the unix VFS masks a write's length to 17 bits.
const MAX_WRITE: usize = 0x1_ffff;
/// Buffered bytes past which the next frame starts a new write (a spilling transaction's frames
/// need not all wait for its commit).
const FLUSH_AT: usize = 1 << 20;
/// A buffer grown past this by a large transaction is given back after it is written.
const KEEP_CAPACITY: usize = 256 << 10;

static WRITES: AtomicU64 = AtomicU64::new(0);
static FRAMES: AtomicU64 = AtomicU64::new(0);

/// Counts since the process started, for tests and diagnostics: writes that reached WAL files
/// through this VFS, and the frames they carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub wal_writes: u64,
    pub wal_frames: u64,
}

pub fn stats() -> Stats {
    Stats {
        wal_writes: WRITES.load(Ordering::Relaxed),
        wal_frames: FRAMES.load(Ordering::Relaxed),
    }
}

/// Whether `conn`'s main database is open through this VFS.
pub fn serves(conn: &rusqlite::Connection) -> bool {
    let Some(Ok(_)) = REGISTERED.get() else {
        return false;
    };
    let mut vfs: *mut ffi::sqlite3_vfs = ptr::null_mut();
    // SAFETY: the handle is valid while `conn` is borrowed; SQLITE_FCNTL_VFS_POINTER writes one
    // pointer to the VFS the main database was opened with.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_VFS_POINTER,
            (&raw mut vfs).cast::<c_void>(),
        )
    };
    // SAFETY: a VFS pointer SQLite returned points to a registered VFS, alive for the process.
    rc == ffi::SQLITE_OK && !vfs.is_null() && unsafe { CStr::from_ptr((*vfs).zName) } == NAME_C
}

static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the VFS with SQLite (once per process; later calls return the first outcome).
/// Connections then open with [`NAME`] as their VFS.
pub fn register() -> Result<&'static str, String> {
    match REGISTERED.get_or_init(register_once) {
        Ok(_) => Ok(NAME),
        Err(e) => Err(e.clone()),
    }
}

fn register_once() -> Result<(), String> {
    // SAFETY: sqlite3_initialize may be called any number of times from any thread.
    let rc = unsafe { ffi::sqlite3_initialize() };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_initialize failed ({rc})"));
    }
    // SAFETY: a null name asks for the default VFS; the result is null or a static VFS.
    let real = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if real.is_null() {
        return Err("SQLite has no default VFS".into());
    }
    // SAFETY: `real` is a valid, static VFS (checked non-null above).
    let base = unsafe { &*real };
    let Some(real_size) = usize::try_from(base.szOsFile).ok() else {
        return Err("the default VFS reports a negative file size".into());
    };
    let size = std::mem::size_of::<WalFile>() + real_size.next_multiple_of(16);
    let Ok(size) = c_int::try_from(size) else {
        return Err("file object too large".into());
    };
    let vfs = Box::new(ffi::sqlite3_vfs {
        iVersion: base.iVersion,
        szOsFile: size,
        mxPathname: base.mxPathname,
        pNext: ptr::null_mut(),
        zName: NAME_C.as_ptr(),
        pAppData: real.cast::<c_void>(),
        xOpen: Some(x_open),
        xDelete: base.xDelete.map(|_| x_delete as _),
        xAccess: base.xAccess.map(|_| x_access as _),
        xFullPathname: base.xFullPathname.map(|_| x_full_pathname as _),
        xDlOpen: base.xDlOpen.map(|_| x_dl_open as _),
        xDlError: base.xDlError.map(|_| x_dl_error as _),
        xDlSym: base.xDlSym.map(|_| x_dl_sym as _),
        xDlClose: base.xDlClose.map(|_| x_dl_close as _),
        xRandomness: base.xRandomness.map(|_| x_randomness as _),
        xSleep: base.xSleep.map(|_| x_sleep as _),
        xCurrentTime: base.xCurrentTime.map(|_| x_current_time as _),
        xGetLastError: base.xGetLastError.map(|_| x_get_last_error as _),
        xCurrentTimeInt64: base.xCurrentTimeInt64.map(|_| x_current_time_int64 as _),
        // Test hooks for replacing system calls: not offered through this VFS.
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    });
    let vfs = Box::into_raw(vfs); // registered for the life of the process: never freed
    // SAFETY: `vfs` is a valid VFS that lives forever; 0: not the default.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed ({rc})"));
    }
    Ok(())
}

/// The platform VFS behind ours.
///
/// # Safety
/// `vfs` must be this crate's registered VFS.
unsafe fn real_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: our VFS's pAppData is the real VFS (set in register_once).
    unsafe { (*vfs).pAppData.cast::<ffi::sqlite3_vfs>() }
}

/// A WAL file: the platform's file object (in the same allocation, after this struct) and the
/// frames not yet written.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file, // first: SQLite sees a `sqlite3_file*`
    real: *mut ffi::sqlite3_file,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: i64,
    /// `buf` ends with a frame header whose page has not come yet.
    header_pending: bool,
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(w_close),
    xRead: Some(w_read),
    xWrite: Some(w_write),
    xTruncate: Some(w_truncate),
    xSync: Some(w_sync),
    xFileSize: Some(w_file_size),
    xLock: Some(w_lock),
    xUnlock: Some(w_unlock),
    xCheckReservedLock: Some(w_check_reserved_lock),
    xFileControl: Some(w_file_control),
    xSectorSize: Some(w_sector_size),
    xDeviceCharacteristics: Some(w_device_characteristics),
    xShmMap: Some(w_shm_map),
    xShmLock: Some(w_shm_lock),
    xShmBarrier: Some(w_shm_barrier),
    xShmUnmap: Some(w_shm_unmap),
    xFetch: Some(w_fetch),
    xUnfetch: Some(w_unfetch),
};

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls this with our VFS, a file object of our szOsFile bytes (suitably
    // aligned for any type, as malloc's), and its own name and flag pointers.
    unsafe {
        let real = real_vfs(vfs);
        let Some(open) = (*real).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Not a WAL: the platform's file object in place, its own methods, no indirection.
            return open(real, name, file, flags, out_flags);
        }
        let inner = file
            .cast::<u8>()
            .add(std::mem::size_of::<WalFile>())
            .cast::<ffi::sqlite3_file>();
        (*file).pMethods = ptr::null();
        let rc = open(real, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            return rc; // pMethods stays null: SQLite will not call xClose
        }
        ptr::write(
            file.cast::<WalFile>(),
            WalFile {
                base: ffi::sqlite3_file {
                    pMethods: &WAL_METHODS,
                },
                real: inner,
                buf: Vec::new(),
                buf_at: 0,
                header_pending: false,
            },
        );
        ffi::SQLITE_OK
    }
}

/// The WAL file behind SQLite's pointer, and the platform methods of its inner file.
///
/// # Safety
/// `f` must be a file opened by `x_open` as a WAL (its methods are `WAL_METHODS`).
unsafe fn parts<'a>(f: *mut ffi::sqlite3_file) -> (&'a mut WalFile, &'a ffi::sqlite3_io_methods) {
    // SAFETY: per the contract, `f` points to a live WalFile whose inner file is open (its
    // pMethods set by the platform VFS, which outlives it).
    unsafe {
        let w = &mut *f.cast::<WalFile>();
        let m = &*(*w.real).pMethods;
        (w, m)
    }
}

/// Writes out what is buffered (in one write). The buffer is emptied whatever the outcome: on
/// an error the transaction those frames belong to fails and SQLite rewrites what it needs.
///
/// # Safety
/// As `parts`.
unsafe fn flush(w: &mut WalFile, m: &ffi::sqlite3_io_methods) -> c_int {
    if w.buf.is_empty() {
        return ffi::SQLITE_OK;
    }
    let mut rc = ffi::SQLITE_OK;
    let mut at = w.buf_at;
    for chunk in w.buf.chunks(MAX_WRITE) {
        rc = match m.xWrite {
            // SAFETY: the inner file is open; the chunk is valid for its length (< 2^17).
            Some(write) => unsafe {
                write(w.real, chunk.as_ptr().cast(), chunk.len() as c_int, at)
            },
            None => ffi::SQLITE_IOERR_WRITE,
        };
        WRITES.fetch_add(1, Ordering::Relaxed);
        if rc != ffi::SQLITE_OK {
            break;
        }
        at += chunk.len() as i64;
    }
    w.buf.clear();
    if w.buf.capacity() > KEEP_CAPACITY {
        w.buf.shrink_to(KEEP_CAPACITY);
    }
    w.header_pending = false;
    rc
}

unsafe extern "C" fn w_write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    at: i64,
) -> c_int {
    // SAFETY: SQLite calls xWrite on a file this VFS opened as a WAL, with `amt` readable bytes.
    unsafe {
        let (w, m) = parts(f);
        let Ok(len) = usize::try_from(amt) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
        let end = w.buf_at + w.buf.len() as i64;
        let follows = w.buf.is_empty() || at == end;
        if len == FRAME_HEADER && at >= WAL_HEADER && follows && !w.header_pending {
            // A frame header: hold it for its page.
            if w.buf.len() >= FLUSH_AT {
                let rc = flush(w, m);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            if w.buf.is_empty() {
                w.buf_at = at;
            }
            w.buf.extend_from_slice(bytes);
            FRAMES.fetch_add(1, Ordering::Relaxed);
            // Bytes 4..8: the database size after a commit frame, zero for any other frame.
            if bytes[4..8] != [0, 0, 0, 0] {
                // The commit frame: everything goes out now, before SQLite can publish it.
                return flush(w, m);
            }
            w.header_pending = true;
            return ffi::SQLITE_OK;
        }
        if w.header_pending && at == end {
            // The page of the buffered header.
            w.buf.extend_from_slice(bytes);
            w.header_pending = false;
            return ffi::SQLITE_OK;
        }
        // Anything else goes to the file as it came, after what is buffered.
        let rc = flush(w, m);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        WRITES.fetch_add(1, Ordering::Relaxed);
        match m.xWrite {
            Some(write) => write(w.real, data, amt, at),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

/// Declares a WAL method that writes out the buffer, then forwards to the platform's.
macro_rules! flushing {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(f: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: SQLite calls the method on a file this VFS opened as a WAL.
            unsafe {
                let (w, m) = parts(f);
                let rc = flush(w, m);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                match m.$field {
                    Some(real) => real(w.real $(, $arg)*),
                    None => $missing,
                }
            }
        }
    };
}

flushing!(w_read, xRead, (buf: *mut c_void, amt: c_int, at: i64), ffi::SQLITE_IOERR_READ);
flushing!(w_truncate, xTruncate, (size: i64), ffi::SQLITE_IOERR_TRUNCATE);
flushing!(w_sync, xSync, (flags: c_int), ffi::SQLITE_IOERR_FSYNC);
flushing!(w_file_size, xFileSize, (size: *mut i64), ffi::SQLITE_IOERR_FSTAT);
flushing!(w_lock, xLock, (level: c_int), ffi::SQLITE_IOERR_LOCK);
flushing!(w_unlock, xUnlock, (level: c_int), ffi::SQLITE_IOERR_UNLOCK);
flushing!(w_check_reserved_lock, xCheckReservedLock, (out: *mut c_int), ffi::SQLITE_IOERR_CHECKRESERVEDLOCK);
flushing!(w_file_control, xFileControl, (op: c_int, arg: *mut c_void), ffi::SQLITE_NOTFOUND);
flushing!(w_shm_map, xShmMap, (page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void), ffi::SQLITE_IOERR_SHMMAP);
flushing!(w_shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int), ffi::SQLITE_IOERR_SHMLOCK);
flushing!(w_shm_unmap, xShmUnmap, (delete: c_int), ffi::SQLITE_OK);
flushing!(w_fetch, xFetch, (at: i64, amt: c_int, out: *mut *mut c_void), {
    // No mapping (`out` is SQLite's out-pointer): SQLite reads instead.
    *out = ptr::null_mut();
    ffi::SQLITE_OK
});
flushing!(w_unfetch, xUnfetch, (at: i64, page: *mut c_void), ffi::SQLITE_OK);

unsafe extern "C" fn w_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file this VFS opened as a WAL, once; the WalFile is dropped here
    // and SQLite frees its memory afterwards.
    unsafe {
        let (w, m) = parts(f);
        let flushed = flush(w, m);
        let closed = match m.xClose {
            Some(close) => close(w.real),
            None => ffi::SQLITE_OK,
        };
        ptr::drop_in_place(&mut w.buf);
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn w_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as for every WAL method.
    unsafe {
        let (w, m) = parts(f);
        m.xSectorSize.map_or(4096, |real| real(w.real))
    }
}

unsafe extern "C" fn w_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as for every WAL method.
    unsafe {
        let (w, m) = parts(f);
        m.xDeviceCharacteristics.map_or(0, |real| real(w.real))
    }
}

unsafe extern "C" fn w_shm_barrier(f: *mut ffi::sqlite3_file) {
    // SAFETY: as for every WAL method. (SQLite calls the barrier on the database file, not the
    // WAL; this forwards it all the same.)
    unsafe {
        let (w, m) = parts(f);
        let _ = flush(w, m);
        if let Some(real) = m.xShmBarrier {
            real(w.real);
        }
    }
}

// The VFS-level methods: the platform's, called with the platform's VFS.

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync: c_int,
) -> c_int {
    // SAFETY: forwarded as SQLite called it, to the platform VFS (which has the method: we only
    // install this forwarder when it does).
    unsafe {
        let r = real_vfs(vfs);
        (*r).xDelete
            .map_or(ffi::SQLITE_IOERR_DELETE, |x| x(r, name, sync))
    }
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xAccess
            .map_or(ffi::SQLITE_IOERR_ACCESS, |x| x(r, name, flags, out))
    }
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xFullPathname
            .map_or(ffi::SQLITE_CANTOPEN, |x| x(r, name, n, out))
    }
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xDlOpen.map_or(ptr::null_mut(), |x| x(r, name))
    }
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        if let Some(x) = (*r).xDlError {
            x(r, n, out);
        }
    }
}

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)> {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xDlSym.and_then(|x| x(r, handle, symbol))
    }
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        if let Some(x) = (*r).xDlClose {
            x(r, handle);
        }
    }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xRandomness.map_or(0, |x| x(r, n, out))
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xSleep.map_or(0, |x| x(r, micros))
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xCurrentTime.map_or(ffi::SQLITE_ERROR, |x| x(r, out))
    }
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xGetLastError.map_or(0, |x| x(r, n, out))
    }
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    // SAFETY: as x_delete.
    unsafe {
        let r = real_vfs(vfs);
        (*r).xCurrentTimeInt64
            .map_or(ffi::SQLITE_ERROR, |x| x(r, out))
    }
}
