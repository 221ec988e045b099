//! The RBD backend's only `unsafe`: librados/librbd's C API, loaded at run
//! time (`dlopen` of Debian's `librados.so.2` and `librbd.so.1`), so the
//! server builds and runs without Ceph installed and needs it only when a
//! volume says `backend = "rbd"`. The signatures are declared by hand from
//! `rados/librados.h` and `rbd/librbd.h` (Ceph 16, Debian 12).
//!
//! Asynchronous I/O: each request is a boxed [`Op`] that owns its buffers
//! (the pool pages of the SGL, whose addresses librbd reads or fills) and
//! the sending half of a oneshot channel. Its raw pointer is librbd's
//! callback argument; the callback (on a librbd thread) takes the box back,
//! reads the return value and sends the buffers and the result to the
//! waiting task, which tokio wakes on its own reactor. No executor thread
//! ever waits for librbd. If the waiter gave up (a timeout), the buffers are
//! freed by the callback instead, after librbd is done with them.
#![allow(unsafe_code)]

use crate::Sgl;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, OnceLock};
use tokio::sync::oneshot;

type RadosT = *mut c_void;
type IoctxT = *mut c_void;
type ImageT = *mut c_void;
type CompletionT = *mut c_void;
type Callback = extern "C" fn(CompletionT, *mut c_void);
type DiffCb = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// The functions used, resolved once.
struct Lib {
    rados_create2: unsafe extern "C" fn(*mut RadosT, *const c_char, *const c_char, u64) -> c_int,
    rados_conf_read_file: unsafe extern "C" fn(RadosT, *const c_char) -> c_int,
    rados_conf_set: unsafe extern "C" fn(RadosT, *const c_char, *const c_char) -> c_int,
    rados_connect: unsafe extern "C" fn(RadosT) -> c_int,
    rados_shutdown: unsafe extern "C" fn(RadosT),
    rados_ioctx_create: unsafe extern "C" fn(RadosT, *const c_char, *mut IoctxT) -> c_int,
    rados_ioctx_destroy: unsafe extern "C" fn(IoctxT),
    rados_ioctx_set_namespace: unsafe extern "C" fn(IoctxT, *const c_char),
    rbd_open: unsafe extern "C" fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int,
    rbd_open_read_only: unsafe extern "C" fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int,
    rbd_close: unsafe extern "C" fn(ImageT) -> c_int,
    rbd_get_size: unsafe extern "C" fn(ImageT, *mut u64) -> c_int,
    rbd_diff_iterate2: unsafe extern "C" fn(ImageT, *const c_char, u64, u64, u8, u8, DiffCb, *mut c_void) -> c_int,
    rbd_aio_create_completion: unsafe extern "C" fn(*mut c_void, Callback, *mut CompletionT) -> c_int,
    rbd_aio_get_return_value: unsafe extern "C" fn(CompletionT) -> isize,
    rbd_aio_release: unsafe extern "C" fn(CompletionT),
    rbd_aio_readv: unsafe extern "C" fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int,
    rbd_aio_writev: unsafe extern "C" fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int,
    rbd_aio_flush: unsafe extern "C" fn(ImageT, CompletionT) -> c_int,
    rbd_aio_discard: unsafe extern "C" fn(ImageT, u64, u64, CompletionT) -> c_int,
    rbd_aio_write_zeroes: unsafe extern "C" fn(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int,
    rbd_aio_compare_and_write:
        unsafe extern "C" fn(ImageT, u64, usize, *const c_char, *const c_char, CompletionT, *mut u64, c_int) -> isize,
}

fn dlopen(name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: `name` is a NUL-terminated string; dlopen has no other
    // preconditions. Ceph's libraries run their static constructors here,
    // which only set up their own globals.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return Err(format!("cannot load {}: {} (install Debian's librbd1)", name.to_string_lossy(), dlerror()));
    }
    Ok(h)
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until
    // the next dl* call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return "unknown error".into();
    }
    // SAFETY: non-null, NUL-terminated (see above).
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

/// Resolves `name` in `h` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be an `unsafe extern "C" fn` type matching the C declaration
/// of `name`.
unsafe fn sym<T: Copy>(h: *mut c_void, name: &CStr) -> Result<T, String> {
    // SAFETY: `h` is a live handle from dlopen (never closed), `name` is
    // NUL-terminated.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) };
    if p.is_null() {
        return Err(format!("librbd lacks {}: {}", name.to_string_lossy(), dlerror()));
    }
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: a non-null symbol address of a function whose C signature
    // the caller promises `T` matches; fn pointers and data pointers have
    // the same size and representation on the platforms Ceph supports.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let rados = dlopen(c"librados.so.2")?;
        let rbd = dlopen(c"librbd.so.1")?;
        // SAFETY: each type below is the hand-declared signature of the
        // symbol of the same name in librados.h / librbd.h (Ceph 16).
        unsafe {
            Ok(Lib {
                rados_create2: sym(rados, c"rados_create2")?,
                rados_conf_read_file: sym(rados, c"rados_conf_read_file")?,
                rados_conf_set: sym(rados, c"rados_conf_set")?,
                rados_connect: sym(rados, c"rados_connect")?,
                rados_shutdown: sym(rados, c"rados_shutdown")?,
                rados_ioctx_create: sym(rados, c"rados_ioctx_create")?,
                rados_ioctx_destroy: sym(rados, c"rados_ioctx_destroy")?,
                rados_ioctx_set_namespace: sym(rados, c"rados_ioctx_set_namespace")?,
                rbd_open: sym(rbd, c"rbd_open")?,
                rbd_open_read_only: sym(rbd, c"rbd_open_read_only")?,
                rbd_close: sym(rbd, c"rbd_close")?,
                rbd_get_size: sym(rbd, c"rbd_get_size")?,
                rbd_diff_iterate2: sym(rbd, c"rbd_diff_iterate2")?,
                rbd_aio_create_completion: sym(rbd, c"rbd_aio_create_completion")?,
                rbd_aio_get_return_value: sym(rbd, c"rbd_aio_get_return_value")?,
                rbd_aio_release: sym(rbd, c"rbd_aio_release")?,
                rbd_aio_readv: sym(rbd, c"rbd_aio_readv")?,
                rbd_aio_writev: sym(rbd, c"rbd_aio_writev")?,
                rbd_aio_flush: sym(rbd, c"rbd_aio_flush")?,
                rbd_aio_discard: sym(rbd, c"rbd_aio_discard")?,
                rbd_aio_write_zeroes: sym(rbd, c"rbd_aio_write_zeroes")?,
                rbd_aio_compare_and_write: sym(rbd, c"rbd_aio_compare_and_write")?,
            })
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A librados error: the negative errno, and what was being done.
#[derive(Debug)]
pub(crate) struct CephError {
    pub errno: i32,
    pub what: String,
}

impl std::fmt::Display for CephError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, std::io::Error::from_raw_os_error(self.errno))
    }
}

fn check(r: c_int, what: impl FnOnce() -> String) -> Result<(), CephError> {
    if r < 0 {
        return Err(CephError { errno: -r, what: what() });
    }
    Ok(())
}

fn cstr(s: &str, what: &str) -> Result<CString, CephError> {
    CString::new(s).map_err(|_| CephError { errno: libc::EINVAL, what: format!("{what} contains a NUL byte") })
}

/// A connected cluster handle (`rados_t`).
pub(crate) struct Cluster {
    lib: &'static Lib,
    h: RadosT,
}

// SAFETY: librados cluster handles may be used from any thread; this one is
// only used to create I/O contexts and finally shut down (in Drop, after
// every image made from it is closed: each holds an Arc of it).
unsafe impl Send for Cluster {}
// SAFETY: as above; librados serialises its own state.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// `rados_create2` as `client.<id>`, the settings of `conf` (or the
    /// default search when `None`), then each of `options`, then connect.
    pub(crate) fn connect(id: &str, conf: Option<&str>, options: &[(&str, String)]) -> Result<Arc<Cluster>, CephError> {
        let lib = lib().map_err(|what| CephError { errno: libc::ENOENT, what })?;
        let name = cstr(&format!("client.{id}"), "client")?;
        let mut h: RadosT = std::ptr::null_mut();
        // SAFETY: `h` is a valid out pointer; the names are NUL-terminated
        // and outlive the call (librados copies them).
        check(unsafe { (lib.rados_create2)(&mut h, c"ceph".as_ptr(), name.as_ptr(), 0) }, || "rados_create2".into())?;
        // From here Drop shuts the handle down on any error.
        let c = Cluster { lib, h };
        let path = conf.map(|p| cstr(p, "ceph_conf")).transpose()?;
        // SAFETY: live handle, not yet connected; NULL asks for the default
        // search path, otherwise a NUL-terminated path.
        let r = unsafe { (lib.rados_conf_read_file)(h, path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr())) };
        check(r, || format!("reading {}", conf.unwrap_or("the default ceph.conf")))?;
        for (k, v) in options {
            let (ck, cv) = (cstr(k, "option")?, cstr(v, "option value")?);
            // SAFETY: live, unconnected handle; NUL-terminated strings.
            check(unsafe { (lib.rados_conf_set)(h, ck.as_ptr(), cv.as_ptr()) }, || format!("setting {k} = {v}"))?;
        }
        // SAFETY: live handle, configured above.
        check(unsafe { (lib.rados_connect)(h) }, || "connecting to the cluster".into())?;
        Ok(Arc::new(c))
    }

    /// Opens `pool/[namespace/]image`.
    pub(crate) fn open(self: &Arc<Self>, pool: &str, namespace: Option<&str>, image: &str, read_only: bool) -> Result<Image, CephError> {
        let lib = self.lib;
        let cpool = cstr(pool, "pool")?;
        let cimage = cstr(image, "image")?;
        let mut io: IoctxT = std::ptr::null_mut();
        // SAFETY: connected handle, valid out pointer, NUL-terminated name.
        check(unsafe { (lib.rados_ioctx_create)(self.h, cpool.as_ptr(), &mut io) }, || format!("opening pool {pool:?}"))?;
        let ioctx = Ioctx { lib, io, _cluster: self.clone() };
        if let Some(ns) = namespace {
            let cns = cstr(ns, "namespace")?;
            // SAFETY: live ioctx; librados copies the string.
            unsafe { (lib.rados_ioctx_set_namespace)(io, cns.as_ptr()) };
        }
        let mut img: ImageT = std::ptr::null_mut();
        let open = if read_only { lib.rbd_open_read_only } else { lib.rbd_open };
        // SAFETY: live ioctx, valid out pointer, NUL-terminated name, no
        // snapshot (NULL).
        check(unsafe { open(io, cimage.as_ptr(), &mut img, std::ptr::null()) }, || format!("opening image {pool}/{image}"))?;
        Ok(Image { lib, img, _ioctx: ioctx })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle is live and nothing uses it any more (every
        // ioctx holds an Arc of this cluster).
        unsafe { (self.lib.rados_shutdown)(self.h) }
    }
}

struct Ioctx {
    lib: &'static Lib,
    io: IoctxT,
    _cluster: Arc<Cluster>,
}

impl Drop for Ioctx {
    fn drop(&mut self) {
        // SAFETY: live ioctx; the image opened on it is closed first (the
        // image owns this Ioctx and closes itself before dropping it).
        unsafe { (self.lib.rados_ioctx_destroy)(self.io) }
    }
}

// SAFETY: see `Image`.
unsafe impl Send for Ioctx {}
// SAFETY: see `Image`.
unsafe impl Sync for Ioctx {}

/// An open image (`rbd_image_t`).
pub(crate) struct Image {
    lib: &'static Lib,
    img: ImageT,
    _ioctx: Ioctx,
}

// SAFETY: librbd image handles are thread-safe: any thread may submit aio
// on one concurrently (librbd queues requests under its own locks); rbd_close
// happens in Drop, when no other reference exists.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// What one request carries to librbd and back.
pub(crate) enum Req {
    Read { off: u64, sgl: Sgl },
    Write { off: u64, sgl: Sgl },
    Flush,
    Discard { off: u64, len: u64 },
    WriteZeroes { off: u64, len: u64 },
    CompareAndWrite { off: u64, cmp: Vec<u8>, data: Vec<u8> },
}

/// A finished request: librbd's return value (a negative errno on
/// failure), the buffers back, and for compare-and-write the offset of the
/// first differing byte.
pub(crate) struct Done {
    pub ret: i64,
    pub req: Req,
    pub mismatch: u64,
}

struct Op {
    lib: &'static Lib,
    req: Req,
    /// iovecs into `req`'s SGL pages (read/write only).
    iov: Vec<libc::iovec>,
    mismatch: u64,
    tx: oneshot::Sender<Done>,
}

extern "C" fn complete(c: CompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<Op>` leaked by `Image::submit` for this
    // completion; librbd calls back exactly once per completion, so the box
    // is taken back exactly once.
    let op = unsafe { Box::from_raw(arg.cast::<Op>()) };
    // SAFETY: `c` is this request's live completion; after reading its
    // value it is released and never used again.
    let ret = unsafe { (op.lib.rbd_aio_get_return_value)(c) } as i64;
    // SAFETY: as above: released once, here.
    unsafe { (op.lib.rbd_aio_release)(c) };
    let Op { req, mismatch, tx, iov, .. } = *op;
    drop(iov);
    // A closed receiver (the waiter timed out) just drops the buffers here,
    // now that librbd no longer touches them.
    let _ = tx.send(Done { ret, req, mismatch });
}

impl Image {
    pub(crate) fn size(&self) -> Result<u64, CephError> {
        let mut s = 0u64;
        // SAFETY: live image, valid out pointer.
        check(unsafe { (self.lib.rbd_get_size)(self.img, &mut s) }, || "rbd_get_size".into())?;
        Ok(s)
    }

    /// The allocated extents (offset, length) within `[off, off + len)`,
    /// in order: `rbd_diff_iterate2` from the image's creation.
    /// Synchronous (it reads object maps or lists objects): callers run it
    /// on a blocking thread.
    pub(crate) fn allocated(&self, off: u64, len: u64) -> Result<Vec<(u64, u64)>, CephError> {
        extern "C" fn cb(o: u64, l: usize, exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the `&mut Vec` passed below, alive and not
            // otherwise borrowed for the duration of the synchronous call.
            let v = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
            if exists != 0 {
                v.push((o, l as u64));
            }
            0
        }
        let mut v: Vec<(u64, u64)> = Vec::new();
        // SAFETY: live image; no snapshot (NULL: from creation); the
        // callback and its argument are valid for the whole call, which
        // returns only after the last callback.
        let r = unsafe {
            (self.lib.rbd_diff_iterate2)(self.img, std::ptr::null(), off, len, 1, 0, cb, (&mut v as *mut Vec<(u64, u64)>).cast())
        };
        check(r, || "rbd_diff_iterate2".into())?;
        v.sort_unstable();
        Ok(v)
    }

    /// Starts `req`; the receiver yields it back when librbd completes it.
    /// A request librbd refuses at submission comes back as an error with
    /// its buffers dropped.
    pub(crate) fn submit(&self, req: Req) -> Result<oneshot::Receiver<Done>, CephError> {
        let lib = self.lib;
        let (tx, rx) = oneshot::channel();
        let mut op = Box::new(Op { lib, req, iov: Vec::new(), mismatch: 0, tx });
        // iovecs over the SGL's pages: the pages are pool memory that does
        // not move when the Sgl value (its Vec of segments) moves into the
        // box, and the box owns the Sgl until the callback runs.
        match &mut op.req {
            Req::Read { sgl, .. } => {
                op.iov = sgl
                    .io_slices_mut()
                    .into_iter()
                    .map(|mut s| libc::iovec { iov_base: s.as_mut_ptr().cast(), iov_len: s.len() })
                    .collect()
            }
            Req::Write { sgl, .. } => {
                op.iov = sgl
                    .io_slices()
                    .into_iter()
                    .map(|s| libc::iovec { iov_base: s.as_ptr() as *mut c_void, iov_len: s.len() })
                    .collect()
            }
            _ => {}
        }
        let iovcnt = c_int::try_from(op.iov.len()).map_err(|_| CephError { errno: libc::EINVAL, what: "too many segments".into() })?;
        let iov = op.iov.as_ptr();
        let mismatch: *mut u64 = &mut op.mismatch;
        // Raw pointers into the request, taken before the box is leaked.
        let (kind, off, len, p1, p2) = match &op.req {
            Req::Read { off, sgl } => (0, *off, sgl.len() as u64, std::ptr::null(), std::ptr::null()),
            Req::Write { off, sgl } => (1, *off, sgl.len() as u64, std::ptr::null(), std::ptr::null()),
            Req::Flush => (2, 0, 0, std::ptr::null(), std::ptr::null()),
            Req::Discard { off, len } => (3, *off, *len, std::ptr::null(), std::ptr::null()),
            Req::WriteZeroes { off, len } => (4, *off, *len, std::ptr::null(), std::ptr::null()),
            Req::CompareAndWrite { off, cmp, data } => {
                debug_assert_eq!(cmp.len(), data.len());
                (5, *off, data.len() as u64, cmp.as_ptr().cast::<c_char>(), data.as_ptr().cast::<c_char>())
            }
        };
        let arg = Box::into_raw(op).cast::<c_void>();
        let mut c: CompletionT = std::ptr::null_mut();
        // SAFETY: valid out pointer; `arg` stays valid until the callback
        // (it is the leaked box).
        let r = unsafe { (lib.rbd_aio_create_completion)(arg, complete, &mut c) };
        if r < 0 {
            // SAFETY: no completion exists, so no callback will take the box.
            drop(unsafe { Box::from_raw(arg.cast::<Op>()) });
            return Err(CephError { errno: -r, what: "rbd_aio_create_completion".into() });
        }
        let img = self.img;
        // SAFETY: live image and completion; every buffer pointer (iovecs,
        // cmp/data, mismatch) points into the leaked box, which lives until
        // the callback, and covers `len` bytes; the offsets were range
        // checked by the caller (librbd checks them again).
        let r = unsafe {
            match kind {
                0 => (lib.rbd_aio_readv)(img, iov, iovcnt, off, c) as isize,
                1 => (lib.rbd_aio_writev)(img, iov, iovcnt, off, c) as isize,
                2 => (lib.rbd_aio_flush)(img, c) as isize,
                3 => (lib.rbd_aio_discard)(img, off, len, c) as isize,
                4 => (lib.rbd_aio_write_zeroes)(img, off, len as usize, c, 0, 0) as isize,
                _ => (lib.rbd_aio_compare_and_write)(img, off, len as usize, p1, p2, c, mismatch, 0),
            }
        };
        if r < 0 {
            // SAFETY: librbd refused the request, so it will not call back:
            // the completion and the box are still ours to free.
            unsafe {
                (lib.rbd_aio_release)(c);
                drop(Box::from_raw(arg.cast::<Op>()));
            }
            return Err(CephError { errno: -(r as i32), what: "submitting to librbd".into() });
        }
        Ok(rx)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: live image, no other reference; rbd_close waits for the
        // image's in-flight requests, whose callbacks free their boxes.
        let r = unsafe { (self.lib.rbd_close)(self.img) };
        if r < 0 {
            tracing::warn!(error = %std::io::Error::from_raw_os_error(-r), "rbd_close failed");
        }
    }
}
