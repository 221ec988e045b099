//! Ceph RBD images as volumes, through librbd's asynchronous API.
//!
//! Every data operation is submitted with `rbd_aio_*` and awaited on a
//! oneshot channel that librbd's completion callback fills (see [`sys`]),
//! so the connection's reactor never blocks on the cluster. READ and WRITE
//! hand librbd iovecs over the SGL's pool pages: no copy on our side.
//! librbd's own cache is turned off (`rbd_cache = false`, forced over any
//! ceph.conf), so librbd completes a write only once every replica's OSD has
//! it: every write is durable when it completes, FUA included, and FLUSH
//! (`rbd_aio_flush`) has nothing left to write back. COMPARE AND WRITE is librbd's compare-and-write,
//! atomic at the OSD, so it stays atomic with other gateways on the image.
//!
//! Bounded waits: with `rbd_timeout` set, librados gives up on OSD and
//! monitor operations after that time (`rados_osd_op_timeout`,
//! `rados_mon_op_timeout`), and the waiter gives up too, whichever is
//! first; the command then fails with an error status instead of hanging
//! the connection. Without it, I/O waits for the cluster to come back.

mod sys;

use crate::metrics::{Op, ProtoIo};
use crate::{AioBackend, Backend, BackendError, BackendInfo, IoFuture, Result, Sgl};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sys::{CephError, Done, Req};

/// Where the image is and how to reach the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdSpec {
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
    /// ceph.conf to read; `None`: librados's default search.
    pub ceph_conf: Option<std::path::PathBuf>,
    /// The cephx user, without `client.` (default `admin`).
    pub client: Option<String>,
    pub keyring: Option<std::path::PathBuf>,
    pub block_size: u32,
    pub read_only: bool,
    /// Bound on every cluster operation; `None` waits.
    pub timeout: Option<Duration>,
}

pub struct RbdBackend {
    info: BackendInfo,
    image: Arc<sys::Image>,
    timeout: Option<Duration>,
    /// Image size as last seen (it may grow while served): updated by the
    /// `rbd-size` thread, which stops when this backend is dropped.
    size: Arc<AtomicU64>,
    _poller: SizePoller,
    /// librbd requests: latency per operation, in flight.
    metrics: ProtoIo,
}

/// How often the image's size is looked at. librbd follows `rbd resize`
/// through its watch on the image header, so `rbd_get_size` is a local
/// read of what it knows (it refreshes the header first if a notification
/// said it changed).
const SIZE_POLL: Duration = Duration::from_secs(1);

/// A thread that keeps `size` current; dropping it stops the thread.
struct SizePoller {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SizePoller {
    fn start(image: Arc<sys::Image>, size: Arc<AtomicU64>, describe: String) -> Result<SizePoller> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rbd-size".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(SIZE_POLL) {
                    match image.size() {
                        Ok(s) => {
                            let old = size.swap(s, Relaxed);
                            if old != s {
                                tracing::info!(image = %describe, old, new = s, "rbd image size changed");
                            }
                        }
                        Err(e) => tracing::debug!(image = %describe, error = %e, "rbd_get_size failed"),
                    }
                }
            })
            .map_err(BackendError::Io)?;
        Ok(SizePoller { stop: Some(tx), thread: Some(thread) })
    }
}

impl Drop for SizePoller {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn err(e: CephError, write: bool) -> BackendError {
    match e.errno {
        libc::ENOENT if e.what.starts_with("cannot load") => BackendError::Open(e.what),
        libc::ENOENT => BackendError::Open(e.to_string()),
        errno => BackendError::from_io(std::io::Error::from_raw_os_error(errno), write),
    }
}

impl RbdBackend {
    pub fn open(spec: &RbdSpec) -> Result<RbdBackend> {
        // discard must read back as zeroes (the Backend contract): librbd
        // then zeroes the partial objects it cannot release
        let mut opts: Vec<(&str, String)> = vec![("rbd_cache", "false".into()), ("rbd_skip_partial_discard", "false".into())];
        if let Some(k) = &spec.keyring {
            opts.push(("keyring", k.display().to_string()));
        }
        if let Some(t) = spec.timeout {
            let secs = t.as_secs().max(1).to_string();
            opts.push(("rados_osd_op_timeout", secs.clone()));
            opts.push(("rados_mon_op_timeout", secs.clone()));
            opts.push(("client_mount_timeout", secs));
        }
        let conf = spec.ceph_conf.as_ref().map(|p| p.display().to_string());
        let id = spec.client.as_deref().unwrap_or("admin");
        let open_err = |e: CephError| BackendError::Open(format!("rbd {}/{}: {e}", spec.pool, spec.image));
        let cluster = sys::Cluster::connect(id, conf.as_deref(), &opts).map_err(open_err)?;
        let image = cluster.open(&spec.pool, spec.namespace.as_deref(), &spec.image, spec.read_only).map_err(open_err)?;
        let size = image.size().map_err(open_err)?;
        let bs = u64::from(spec.block_size);
        if size < bs || size % bs != 0 {
            return Err(BackendError::Open(format!(
                "rbd {}/{}: size {size} is not a positive multiple of block_size {bs}",
                spec.pool, spec.image
            )));
        }
        let ns = spec.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
        let describe = format!("rbd:{}/{ns}{}", spec.pool, spec.image);
        let image = Arc::new(image);
        let size_now = Arc::new(AtomicU64::new(size));
        let poller = SizePoller::start(image.clone(), size_now.clone(), describe.clone())?;
        Ok(RbdBackend {
            info: BackendInfo {
                kind: "rbd",
                size,
                block_size: spec.block_size,
                may_block: true,
                read_only: spec.read_only,
                volatile_cache: false,
                describe,
            },
            image,
            timeout: spec.timeout,
            size: size_now,
            _poller: poller,
            metrics: ProtoIo::default(),
        })
    }

    /// Submits and waits (without blocking the thread) for one request,
    /// bounded by the timeout; counts it in the metrics.
    async fn run(&self, op: Op, req: Req, write: bool) -> Result<Done> {
        let t0 = Instant::now();
        let m = &self.metrics;
        m.in_flight.fetch_add(1, Relaxed);
        let r = self.run_inner(req, write).await;
        m.in_flight.fetch_sub(1, Relaxed);
        let bytes = match &r {
            Ok(Done { req: Req::Read { sgl, .. } | Req::Write { sgl, .. }, .. }) => sgl.len() as u64,
            _ => 0,
        };
        m.complete(op, bytes, r.is_ok(), t0.elapsed());
        r
    }

    async fn run_inner(&self, req: Req, write: bool) -> Result<Done> {
        let rx = self.image.submit(req).map_err(|e| err(e, write))?;
        let done = match self.timeout {
            None => rx.await,
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(d) => d,
                Err(_) => {
                    tracing::warn!(volume = %self.info.describe, timeout_ms = t.as_millis() as u64, "rbd request timed out");
                    return Err(BackendError::Io(std::io::Error::from_raw_os_error(libc::ETIMEDOUT)));
                }
            },
        };
        let done = done.map_err(|_| BackendError::Io(std::io::Error::other("librbd dropped a completion")))?;
        if done.ret < 0 && !matches!(done.req, Req::CompareAndWrite { .. } if done.ret == -i64::from(libc::EILSEQ)) {
            let errno = i32::try_from(-done.ret).unwrap_or(libc::EIO);
            let e = std::io::Error::from_raw_os_error(errno);
            tracing::warn!(volume = %self.info.describe, error = %e, "rbd request failed");
            return Err(BackendError::from_io(e, write));
        }
        Ok(done)
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        // The synchronous Backend calls run on the blocking pool (may_block);
        // the protocols use the async path ([`Backend::aio`]).
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(BackendError::Io)?;
        rt.block_on(f)
    }
}

impl AioBackend for RbdBackend {
    fn read(&self, offset: u64, sgl: Sgl) -> IoFuture<'_, Sgl> {
        Box::pin(async move {
            self.check_range(offset, sgl.len() as u64)?;
            if sgl.is_empty() {
                return Ok(sgl);
            }
            match self.run(Op::Read, Req::Read { off: offset, sgl }, false).await?.req {
                Req::Read { sgl, .. } => Ok(sgl),
                _ => unreachable!("a read request comes back as itself"),
            }
        })
    }

    fn write(&self, offset: u64, sgl: Sgl, fua: bool) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.check_range(offset, sgl.len() as u64)?;
            if self.info.read_only {
                return Err(BackendError::ReadOnly);
            }
            if sgl.is_empty() {
                return Ok(());
            }
            // FUA: durable on completion (no librbd cache; see the module docs)
            let _ = fua;
            self.run(Op::Write, Req::Write { off: offset, sgl }, true).await.map(drop)
        })
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move { self.run(Op::Flush, Req::Flush, true).await.map(drop) })
    }

    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool, fua: bool) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.check_range(offset, len)?;
            if self.info.read_only {
                return Err(BackendError::ReadOnly);
            }
            if len > 0 {
                // librbd's write-zeroes deallocates whole objects and zeroes
                // partial ones: both read back as zeroes.
                let _ = (deallocate, fua);
                self.run(Op::Other, Req::WriteZeroes { off: offset, len }, true).await?;
            }
            Ok(())
        })
    }

    fn discard(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.check_range(offset, len)?;
            if self.info.read_only {
                return Err(BackendError::ReadOnly);
            }
            if len == 0 {
                return Ok(());
            }
            self.run(Op::Other, Req::Discard { off: offset, len }, true).await.map(drop)
        })
    }

    fn compare_and_write(&self, offset: u64, cmp: Vec<u8>, data: Vec<u8>, fua: bool) -> IoFuture<'_, Option<u64>> {
        Box::pin(async move {
            self.check_range(offset, data.len() as u64)?;
            if self.info.read_only {
                return Err(BackendError::ReadOnly);
            }
            if cmp.len() != data.len() {
                return Err(BackendError::Io(std::io::Error::from_raw_os_error(libc::EINVAL)));
            }
            if data.is_empty() {
                return Ok(None);
            }
            let done = self.run(Op::Write, Req::CompareAndWrite { off: offset, cmp, data }, true).await?;
            if done.ret == -i64::from(libc::EILSEQ) {
                // librbd reports the absolute image offset of the first
                // differing byte
                return Ok(Some(done.mismatch.saturating_sub(offset)));
            }
            let _ = fua; // durable on completion
            Ok(None)
        })
    }

    fn atomic_compare_and_write(&self, offset: u64, len: u64) -> bool {
        // librbd's compare-and-write covers one 512-byte sector at most
        // (what VMware's ATS uses); longer ranges fail with EINVAL
        len > 0 && offset % 512 + len <= 512
    }

    fn metrics(&self) -> &ProtoIo {
        &self.metrics
    }

    fn current_size(&self) -> u64 {
        self.size.load(Relaxed)
    }
}

impl Backend for RbdBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn read(&self, offset: u64, sgl: &mut Sgl) -> Result<()> {
        let taken = std::mem::replace(sgl, Sgl::empty(sgl.direction()));
        *sgl = self.block_on(AioBackend::read(self, offset, taken))?;
        Ok(())
    }
    fn write(&self, _offset: u64, _sgl: &Sgl, _fua: bool) -> Result<()> {
        // Writes own their SGL on the async path; the borrowed form is
        // never used for an aio backend (Volume routes to `aio()`).
        Err(BackendError::Io(std::io::Error::other("rbd writes go through the async path")))
    }
    fn flush(&self) -> Result<()> {
        self.block_on(AioBackend::flush(self))
    }
    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> Result<()> {
        self.block_on(AioBackend::write_zeroes(self, offset, len, deallocate, false))
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.block_on(AioBackend::discard(self, offset, len))
    }
    fn aio(&self) -> Option<&dyn AioBackend> {
        Some(self)
    }
    fn allocation(&self, offset: u64, max_len: u64) -> Result<(bool, u64)> {
        // (runs on a blocking thread: may_block)
        self.check_range(offset, max_len)?;
        if max_len == 0 {
            return Ok((true, 0));
        }
        let extents = self.image.allocated(offset, max_len).map_err(|e| err(e, false))?;
        Ok(first_run(offset, max_len, &extents))
    }
    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        // the image may have grown since it was opened
        let size = self.size.load(Relaxed);
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BackendError::OutOfRange { offset, len, size }),
        }
    }
}

/// Whether `offset` is allocated and for how many bytes (at most `len`),
/// from the sorted allocated extents of `[offset, offset + len)`.
fn first_run(offset: u64, len: u64, extents: &[(u64, u64)]) -> (bool, u64) {
    let end = offset + len;
    let mut at = offset;
    let mut mapped = None;
    for &(o, l) in extents {
        let (o, e) = (o.max(offset), (o + l).min(end));
        if e <= o || e <= at {
            continue;
        }
        match mapped {
            None if o > at => return (false, o - at),
            None => mapped = Some(true),
            Some(_) if o > at => break,
            Some(_) => {}
        }
        at = e;
    }
    match mapped {
        Some(_) => (true, at - offset),
        None => (false, len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_runs() {
        assert_eq!(first_run(0, 100, &[]), (false, 100));
        assert_eq!(first_run(0, 100, &[(0, 10), (10, 20), (40, 5)]), (true, 30));
        assert_eq!(first_run(5, 100, &[(0, 10)]), (true, 5));
        assert_eq!(first_run(0, 100, &[(30, 10)]), (false, 30));
        assert_eq!(first_run(0, 100, &[(0, 500)]), (true, 100));
    }

    /// An unreachable cluster is an open error within `rbd_timeout`, not a
    /// hang (librbd1 must be installed: scripts/install-test-deps.sh).
    #[test]
    fn unreachable_cluster_fails_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("ceph.conf");
        // a port nothing listens on: bound, never listening
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        std::fs::write(&conf, format!("[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\nlog file = /dev/null\nadmin socket = \n")).unwrap();
        let spec = RbdSpec {
            pool: "rbd".into(),
            namespace: None,
            image: "nope".into(),
            ceph_conf: Some(conf),
            client: None,
            keyring: None,
            block_size: 4096,
            read_only: false,
            timeout: Some(Duration::from_secs(2)),
        };
        let t0 = Instant::now();
        let e = RbdBackend::open(&spec).err().expect("no cluster there");
        let took = t0.elapsed();
        assert!(matches!(e, BackendError::Open(_)), "{e}");
        assert!(e.to_string().contains("connecting to the cluster"), "{e}");
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }
}
