//! The `/metrics` endpoint: OpenMetrics text encoded by the
//! `prometheus-client` crate and served over HTTP/1.1 by `hyper`, so an
//! operator sees which data path each I/O took, what the page pool is
//! doing, each volume's commands by protocol and operation (counts, bytes,
//! errors, latency histograms, commands in flight) and the hosts connected.
//!
//! The hot paths only bump atomics that already exist per volume
//! ([`pinion_backends::metrics`]); the exposition is built from them at
//! scrape time by a [`Collector`], so no I/O allocates or takes a lock for
//! metrics.

use crate::iscsi::IscsiServer;
use crate::nvme::subsys::Registry as NvmeRegistry;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use pinion_backends::metrics::{Op, PathCounter, Protocol, METRICS};
use pinion_backends::{PagePool, Volume};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Failed authentications, by protocol (iSCSI CHAP; NVMe DH-HMAC-CHAP).
pub struct AuthFailures {
    pub iscsi: std::sync::atomic::AtomicU64,
    pub nvme: std::sync::atomic::AtomicU64,
}

pub static AUTH_FAILURES: AuthFailures = AuthFailures { iscsi: std::sync::atomic::AtomicU64::new(0), nvme: std::sync::atomic::AtomicU64::new(0) };

/// Everything the endpoint reports on.
#[derive(Clone)]
pub struct Sources {
    pub pool: PagePool,
    pub volumes: crate::reload::Volumes,
    /// NVMe subsystems and their controllers (connected hosts).
    pub nvme: Arc<NvmeRegistry>,
    /// iSCSI targets and their sessions (connected hosts).
    pub iscsi: Arc<IscsiServer>,
    pub reactors: crate::reactor::Loads,
}

/// A label set: `(name, value)` pairs in exposition order.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one counter family (`_total` is added by the encoder).
fn counter<'a>(enc: &mut DescriptorEncoder, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels<'a>, u64)>) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in samples {
        m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

fn gauge<'a>(enc: &mut DescriptorEncoder, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels<'a>, u64)>) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in samples {
        m.encode_family(&l)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// The collector behind the registry: reads every source at scrape time.
struct Exposition(Sources);

impl fmt::Debug for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exposition").field("volumes", &self.0.volumes.get().len()).finish()
    }
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        process_totals(&mut enc, &self.0)?;
        per_volume_paths(&mut enc, &self.0)?;
        per_volume_commands(&mut enc, &self.0)?;
        backend_requests(&mut enc, &self.0)?;
        connected_hosts(&mut enc, &self.0)?;
        reloads(&mut enc)
    }
}

/// Configuration reloads (`pinion reload`, SIGHUP): how many, and the last one's result.
fn reloads(enc: &mut DescriptorEncoder) -> fmt::Result {
    let r = &crate::reload::RELOADS;
    counter(
        enc,
        "pinion_reloads",
        "Configuration reloads, by result (applied, or rejected with the previous configuration kept).",
        [(vec![("result", "applied")], r.ok.load(Relaxed)), (vec![("result", "rejected")], r.failed.load(Relaxed))],
    )?;
    let last = r.last_ok.load(Relaxed);
    if last >= 0 {
        gauge(enc, "pinion_reload_last_success", "1 when the last reload was applied, 0 when it was rejected.", [(vec![], last as u64)])?;
        gauge(enc, "pinion_reload_last_timestamp_seconds", "When the last reload ran (Unix time).", [(vec![], r.last_time.load(Relaxed))])?;
    }
    Ok(())
}

/// The process-wide data-path families, the pool and the range locks.
fn process_totals(enc: &mut DescriptorEncoder, src: &Sources) -> fmt::Result {
    let m = &*METRICS;
    let paths: [(&str, &PathCounter); 6] = [
        ("splice", &m.splice),
        ("direct", &m.direct),
        ("copy", &m.copy),
        ("copy_mapped", &m.mapped),
        ("zerocopy", &m.zerocopy),
        ("send_copy", &m.send_copy),
    ];
    counter(
        enc,
        "pinion_io",
        "I/Os by data path: READs spliced, read with O_DIRECT or copied (copy_mapped: of those, copied by the send from a mapping of the file); payloads sent with MSG_ZEROCOPY or by copy.",
        paths.iter().map(|(p, c)| (vec![("path", *p)], c.get().0)),
    )?;
    counter(enc, "pinion_io_bytes", "Bytes by data path.", paths.iter().map(|(p, c)| (vec![("path", *p)], c.get().1)))?;
    let w = [("direct", m.write_direct.get()), ("buffered", m.write_buffered.get())];
    counter(enc, "pinion_write", "WRITEs by path.", w.iter().map(|(p, v)| (vec![("path", *p)], v.0)))?;
    counter(enc, "pinion_write_bytes", "WRITE bytes by path.", w.iter().map(|(p, v)| (vec![("path", *p)], v.1)))?;
    let one = |v: u64| [(Labels::new(), v)];
    counter(enc, "pinion_write_durable", "WRITEs made durable before completing (FUA or write cache off): RWF_DSYNC.", one(m.write_durable.get().0))?;
    counter(enc, "pinion_sync", "fdatasync calls on file and block volumes (FLUSH, SYNCHRONIZE CACHE, write cache turned off).", one(m.syncs.load(Relaxed)))?;
    gauge(enc, "pinion_io_engine_uring", "1 when file and block volumes do their I/O on io_uring, 0 when on the blocking thread pool.", one(m.io_engine_uring.load(Relaxed)))?;
    counter(enc, "pinion_io_uring_ops", "File and block volume operations submitted to io_uring.", one(m.uring_ops.load(Relaxed)))?;
    counter(enc, "pinion_io_uring_submits", "io_uring_enter calls that submitted them (operations of one turn go together).", one(m.uring_enters.load(Relaxed)))?;
    counter(enc, "pinion_io_uring_deferred_runs", "Times a reactor's reaper ran the completion work its ring defers to it (DEFER_TASKRUN; 0 on kernels before 6.1).", one(m.uring_deferred_runs.load(Relaxed)))?;
    counter(enc, "pinion_io_engine_fallbacks", "Times file I/O could not use io_uring (unavailable, turned off, or a thread's ring failed) and used the blocking thread pool.", one(m.io_engine_fallbacks.load(Relaxed)))?;
    counter(enc, "pinion_zerocopy_completions", "Zero-copy send completions read from the error queue.", one(m.zerocopy_completions.load(Relaxed)))?;
    counter(enc, "pinion_zerocopy_copied", "Zero-copy completions reporting that the kernel copied anyway.", one(m.zerocopy_copied.load(Relaxed)))?;
    counter(
        enc,
        "pinion_zerocopy_disabled",
        "Connections that fell back to plain sends because the kernel copied.",
        one(m.zerocopy_disabled.load(Relaxed)),
    )?;
    let fallbacks = [
        ("data_digest", &m.fallback_data_digest),
        ("no_pipe", &m.fallback_no_pipe),
        ("unaligned", &m.fallback_unaligned),
        ("local_peer", &m.fallback_local_peer),
        ("zerocopy_copied", &m.zerocopy_disabled),
    ];
    counter(
        enc,
        "pinion_path_fallback",
        "I/Os that could not take the cheaper path, by reason.",
        fallbacks.iter().map(|(r, c)| (vec![("reason", *r)], c.load(Relaxed))),
    )?;
    counter(enc, "pinion_close_waits", "Connection closes that waited for the kernel to release pages.", one(m.close_waits.load(Relaxed)))?;
    counter(
        enc,
        "pinion_close_resets",
        "Connection closes that reset the connection because pages stayed referenced.",
        one(m.close_resets.load(Relaxed)),
    )?;
    let c = &crate::limits::CONN_STATS;
    gauge(
        enc,
        "pinion_connections",
        "Open connections by protocol.",
        [(vec![("proto", "nvme_tcp")], c.open_nvme_tcp.load(Relaxed)), (vec![("proto", "iscsi")], c.open_iscsi.load(Relaxed))],
    )?;
    counter(
        enc,
        "pinion_connections_refused",
        "Connections closed at accept because a [limits] cap was reached, by limit.",
        [
            (vec![("limit", "max_connections")], c.refused_total.load(Relaxed)),
            (vec![("limit", "max_connections_per_host")], c.refused_per_host.load(Relaxed)),
        ],
    )?;
    counter(
        enc,
        "pinion_auth_failures",
        "Failed authentications (wrong or missing secret), by protocol.",
        [(vec![("protocol", "iscsi")], AUTH_FAILURES.iscsi.load(Relaxed)), (vec![("protocol", "nvme")], AUTH_FAILURES.nvme.load(Relaxed))],
    )?;
    let t = &crate::nvme::tls::STATS;
    counter(
        enc,
        "pinion_nvme_tls_sessions",
        "NVMe/TCP TLS 1.3 sessions established, by how records are handled: ktls (the kernel; splice and zero-copy kept) or relay (userspace copy, no kTLS in this kernel).",
        [(vec![("handoff", "ktls")], t.ktls.load(Relaxed)), (vec![("handoff", "relay")], t.relay.load(Relaxed))],
    )?;
    counter(
        enc,
        "pinion_nvme_tls_refused",
        "NVMe/TCP connections refused at the TLS step: failed handshakes (unknown identity, wrong key, timeout) and plain connections to listeners that require TLS.",
        [(vec![("reason", "handshake")], t.failed.load(Relaxed)), (vec![("reason", "plain")], t.plain_refused.load(Relaxed))],
    )?;
    let p = src.pool.stats();
    gauge(
        enc,
        "pinion_pool_pages",
        "Page pool: budget, in use now, high-water mark.",
        [
            (vec![("state", "budget")], p.budget_pages as u64),
            (vec![("state", "in_use")], p.in_use as u64),
            (vec![("state", "high_water")], p.high_water as u64),
        ],
    )?;
    gauge(enc, "pinion_pool_waiting", "Allocations waiting for pool pages now.", one(p.waiting as u64))?;
    counter(enc, "pinion_pool_waits", "Allocations that had to wait for pool pages.", one(p.waits as u64))?;
    let vols = &*src.volumes.get();
    gauge(
        enc,
        "pinion_range_lock_waiting",
        "Commands waiting for a range lock now (a write behind an unsent page-cache payload).",
        vols.iter().map(|v| (vec![("volume", v.name.as_str())], v.range_locks().waiting.load(Relaxed))),
    )?;
    counter(
        enc,
        "pinion_range_lock_waits",
        "Range lock requests that had to wait.",
        vols.iter().map(|v| (vec![("volume", v.name.as_str())], v.range_locks().waits.load(Relaxed))),
    )?;
    gauge(
        enc,
        "pinion_range_locks_held",
        "Range locks held now.",
        vols.iter().map(|v| (vec![("volume", v.name.as_str())], v.range_locks().held() as u64)),
    )?;
    let loads = src.reactors.get();
    let ids: Vec<String> = (0..loads.len()).map(|i| i.to_string()).collect();
    gauge(
        enc,
        "pinion_reactor_connections",
        "Live connections on each reactor (the thread that runs them).",
        ids.iter().zip(&loads).map(|(i, n)| (vec![("reactor", i.as_str())], *n as u64)),
    )?;
    reactor_busy_poll(enc, src, &ids)
}

/// `[runtime] busy_poll_us`: what each reactor's spinning cost and caught
/// (no families when busy polling is off).
fn reactor_busy_poll(enc: &mut DescriptorEncoder, src: &Sources, ids: &[String]) -> fmt::Result {
    let b = src.reactors.busy_poll();
    if b.is_empty() {
        return Ok(());
    }
    let per = |f: fn(&crate::busy_poll::Counters) -> u64| ids.iter().zip(b).map(move |(i, c)| (vec![("reactor", i.as_str())], f(c)));
    counter(enc, "pinion_reactor_busy_poll_spins", "Spins a reactor started after connection activity.", per(|c| c.spins.load(Relaxed)))?;
    counter(
        enc,
        "pinion_reactor_busy_poll_caught",
        "Connection activity a spinning reactor picked up without parking.",
        per(|c| c.caught.load(Relaxed)),
    )?;
    counter(enc, "pinion_reactor_busy_poll_microseconds", "Time reactors spent spinning.", per(|c| c.spin_us.load(Relaxed)))?;
    gauge(enc, "pinion_reactor_busy_poll_budget_microseconds", "Each reactor's adaptive spin budget now.", per(|c| c.budget_us.load(Relaxed)))?;
    gauge(enc, "pinion_reactor_busy_poll_spinning", "1 while a reactor spins, 0 once it has parked.", per(|c| u64::from(c.spinning.load(Relaxed))))
}

/// Each volume's data paths, so an operator sees which path each volume's
/// I/O takes (the unlabelled families above are the process totals).
fn per_volume_paths(enc: &mut DescriptorEncoder, src: &Sources) -> fmt::Result {
    let vols = &*src.volumes.get();
    let reads = |bytes: bool| {
        vols.iter().flat_map(move |v| {
            let m = &v.metrics;
            [("splice", &m.read_splice), ("direct", &m.read_direct), ("copy", &m.read_copy)]
                .map(|(p, c)| (vec![("volume", v.name.as_str()), ("path", p)], if bytes { c.get().1 } else { c.get().0 }))
        })
    };
    let writes = |bytes: bool| {
        vols.iter().flat_map(move |v| {
            let m = &v.metrics;
            [("direct", &m.write_direct), ("buffered", &m.write_buffered)]
                .map(|(p, c)| (vec![("volume", v.name.as_str()), ("path", p)], if bytes { c.get().1 } else { c.get().0 }))
        })
    };
    counter(enc, "pinion_volume_read", "READs of each volume by data path: spliced, O_DIRECT, copied.", reads(false))?;
    counter(enc, "pinion_volume_read_bytes", "READ bytes of each volume by data path.", reads(true))?;
    counter(enc, "pinion_volume_write", "WRITEs of each volume by path.", writes(false))?;
    counter(enc, "pinion_volume_write_bytes", "WRITE bytes of each volume by path.", writes(true))?;
    counter(
        enc,
        "pinion_volume_path_fallback",
        "I/Os of each volume that could not take the cheaper path, by reason.",
        vols.iter().flat_map(|v| {
            let m = &v.metrics;
            [
                ("data_digest", &m.fallback_data_digest),
                ("no_pipe", &m.fallback_no_pipe),
                ("unaligned", &m.fallback_unaligned),
                ("local_peer", &m.fallback_local_peer),
            ]
            .map(|(r, c)| (vec![("volume", v.name.as_str()), ("reason", r)], c.load(Relaxed)))
        }),
    )
}

/// Every (volume, protocol, op) combination, in a stable order.
fn combos(vols: &[Arc<Volume>]) -> impl Iterator<Item = (&Arc<Volume>, Protocol, Op)> {
    vols.iter().flat_map(|v| Protocol::ALL.into_iter().flat_map(move |p| Op::ALL.into_iter().map(move |o| (v, p, o))))
}

fn vpo<'a>(v: &'a Volume, p: Protocol, o: Op) -> Labels<'a> {
    vec![("volume", v.name.as_str()), ("protocol", p.label()), ("op", o.label())]
}

/// Commands as the hosts see them, per volume, protocol and operation.
fn per_volume_commands(enc: &mut DescriptorEncoder, src: &Sources) -> fmt::Result {
    let vols = &*src.volumes.get();
    fn op(v: &Volume, p: Protocol, o: Op) -> &pinion_backends::metrics::OpIo {
        &v.metrics.proto(p).ops[o as usize]
    }
    counter(
        enc,
        "pinion_volume_commands",
        "Commands completed, by volume, protocol (nvme, iscsi) and operation (read, write, flush, other).",
        combos(vols).map(|(v, p, o)| (vpo(v, p, o), op(v, p, o).cmds.load(Relaxed))),
    )?;
    counter(
        enc,
        "pinion_volume_command_errors",
        "Commands completed with an error status (NVMe status, SCSI CHECK CONDITION or other non-GOOD status).",
        combos(vols).map(|(v, p, o)| (vpo(v, p, o), op(v, p, o).errors.load(Relaxed))),
    )?;
    counter(
        enc,
        "pinion_volume_bytes",
        "Data bytes moved by successful commands, by volume, protocol and operation.",
        combos(vols).map(|(v, p, o)| (vpo(v, p, o), op(v, p, o).bytes.load(Relaxed))),
    )?;
    {
        let mut m = enc.encode_descriptor(
            "pinion_volume_latency",
            "Command latency from arrival to completion, by volume, protocol and operation.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (v, p, o) in combos(vols) {
            let (snap, sum_ns) = op(v, p, o).latency.snapshot();
            let buckets: Vec<(f64, u64)> =
                snap.iter().map(|(le, n)| (le.map_or(f64::INFINITY, |ns| ns as f64 / 1e9), *n)).collect();
            let count = buckets.iter().map(|b| b.1).sum();
            let l = vpo(v, p, o);
            m.encode_family(&l)?.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)?;
        }
    }
    gauge(
        enc,
        "pinion_volume_in_flight",
        "Commands received and not yet completed, by volume and protocol.",
        vols.iter().flat_map(|v| {
            Protocol::ALL.map(|p| (vec![("volume", v.name.as_str()), ("protocol", p.label())], v.metrics.proto(p).in_flight.load(Relaxed)))
        }),
    )
}

/// Requests of asynchronous backends (RBD) as the storage sees them: each
/// librbd request (a FUA write is a write and a flush), its latency from
/// submission to completion, and those in flight, per volume and operation.
fn backend_requests(enc: &mut DescriptorEncoder, src: &Sources) -> fmt::Result {
    let vols = src.volumes.get();
    let aio: Vec<(&str, &pinion_backends::metrics::ProtoIo)> =
        vols.iter().filter_map(|v| v.backend().aio().map(|a| (v.name.as_str(), a.metrics()))).collect();
    let vo = |name, o: Op| vec![("volume", name), ("op", o.label())];
    let each = || aio.iter().flat_map(|&(n, m)| Op::ALL.map(move |o| (n, m, o)));
    counter(
        enc,
        "pinion_rbd_requests",
        "librbd requests completed, by volume and operation (read, write, flush, other: discard and write zeroes).",
        each().map(|(n, m, o)| (vo(n, o), m.ops[o as usize].cmds.load(Relaxed))),
    )?;
    counter(
        enc,
        "pinion_rbd_request_errors",
        "librbd requests that failed or timed out (rbd_timeout), by volume and operation.",
        each().map(|(n, m, o)| (vo(n, o), m.ops[o as usize].errors.load(Relaxed))),
    )?;
    {
        let mut m = enc.encode_descriptor(
            "pinion_rbd_latency",
            "librbd request latency from submission to completion, by volume and operation.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (n, io, o) in each() {
            let (snap, sum_ns) = io.ops[o as usize].latency.snapshot();
            let buckets: Vec<(f64, u64)> =
                snap.iter().map(|(le, c)| (le.map_or(f64::INFINITY, |ns| ns as f64 / 1e9), *c)).collect();
            let count = buckets.iter().map(|b| b.1).sum();
            m.encode_family(&vo(n, o))?.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)?;
        }
    }
    gauge(
        enc,
        "pinion_rbd_in_flight",
        "librbd requests submitted and not yet completed, by volume.",
        aio.iter().map(|&(n, m)| (vec![("volume", n)], m.in_flight.load(Relaxed))),
    )
}

/// Connected hosts: NVMe controllers per subsystem (the discovery
/// subsystem included), iSCSI sessions per target (discovery sessions under
/// `target="discovery"`).
fn connected_hosts(enc: &mut DescriptorEncoder, src: &Sources) -> fmt::Result {
    let mut subs: Vec<_> = src.nvme.subsystems.values().collect();
    subs.sort_by(|a, b| a.nqn.cmp(&b.nqn));
    subs.push(src.nvme.discovery.clone());
    let mut samples: Vec<(Labels, u64)> = Vec::new();
    for s in &subs {
        samples.push((vec![("protocol", "nvme"), ("target", s.nqn.as_str())], s.controllers().len() as u64));
    }
    let sessions = src.iscsi.all_sessions();
    let targets = src.iscsi.targets();
    for t in targets.iter() {
        let n = sessions.iter().filter(|s| s.target.as_ref().is_some_and(|x| x.name == t.name)).count();
        samples.push((vec![("protocol", "iscsi"), ("target", t.name.as_str())], n as u64));
    }
    if !targets.is_empty() {
        samples.push((vec![("protocol", "iscsi"), ("target", "discovery")], sessions.iter().filter(|s| s.target.is_none()).count() as u64));
    }
    gauge(enc, "pinion_connected_hosts", "Connected hosts: NVMe controllers per subsystem, iSCSI sessions per target.", samples)
}

/// The registry the endpoint encodes.
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    pub fn new(src: Sources) -> Exporter {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(src)));
        Exporter { registry }
    }

    /// The exposition, in OpenMetrics text format (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The exposition of `src`, in OpenMetrics text format.
pub fn render(src: &Sources) -> String {
    Exporter::new(src.clone()).render()
}

fn respond(exp: &Exporter, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let plain = |code: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = code;
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(exp.render())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        (&Method::GET, _) => plain(StatusCode::NOT_FOUND, "try /metrics\n"),
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
    }
}

/// Serves the endpoint until the task is dropped: one request per
/// connection (scrapers reconnect anyway, and a client that reads to the end
/// of the stream, such as a shell's `/dev/tcp`, needs the close), each
/// connection bounded to 10 s.
pub async fn serve(l: TcpListener, src: Sources) {
    let exp = Arc::new(Exporter::new(src));
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let exp = exp.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let r = respond(&exp, &req);
                        async move { Ok::<_, std::convert::Infallible>(r) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().keep_alive(false).serve_connection(hyper_util::rt::TokioIo::new(s), svc);
                    match tokio::time::timeout(Duration::from_secs(10), conn).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                        Err(_) => tracing::debug!(%peer, "metrics request timed out"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One command on one volume, from arrival to completion: counts it in
/// flight while it lives, and records its latency, bytes and outcome once
/// [`CmdTimer::done`] is called. Dropping it without `done` (an aborted
/// task) only ends the in-flight count. Costs a clock read and a few
/// relaxed atomics; no allocation.
pub struct CmdTimer {
    volume: Arc<Volume>,
    proto: Protocol,
    start: Instant,
}

impl fmt::Debug for CmdTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmdTimer").field("volume", &self.volume.name).field("proto", &self.proto).finish()
    }
}

impl CmdTimer {
    pub fn start(volume: &Arc<Volume>, proto: Protocol) -> CmdTimer {
        volume.metrics.proto(proto).in_flight.fetch_add(1, Relaxed);
        CmdTimer { volume: volume.clone(), proto, start: Instant::now() }
    }

    /// The command completed (its response is queued for the host).
    pub fn done(&self, op: Op, bytes: u64, ok: bool) {
        self.volume.metrics.proto(self.proto).complete(op, bytes, ok, self.start.elapsed());
    }
}

impl Drop for CmdTimer {
    fn drop(&mut self) {
        self.volume.metrics.proto(self.proto).in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::IscsiSettings;
    use crate::nvme::subsys::{Limits, Subsystem};
    use std::collections::HashMap;

    fn sources() -> Sources {
        let pool = PagePool::new(4 << 20, false);
        let b: Arc<dyn pinion_backends::Backend> = Arc::new(pinion_backends::null::NullBackend::new(1 << 20, 4096));
        let v = Arc::new(Volume::new("v\"1", b, pool.clone()));
        let sub = Arc::new(Subsystem::new_nvm("nqn.a", None, None, vec![v.clone()], vec!["*".into()]));
        let nvme = Arc::new(NvmeRegistry {
            subsystems: HashMap::from([(sub.nqn.clone(), sub)]).into(),
            discovery: Arc::new(Subsystem::new_discovery()),
            listeners: Vec::new().into(),
            listener_tls: Default::default(),
            limits: Limits { max_queue_size: 128, max_io_queues: 8, inline_data_size: 16384, mdts: 8, write_budget: 8 << 20, connect_timeout: std::time::Duration::from_secs(15) },
            genctr: 1.into(),
            ana: Default::default(),
        });
        let t = Arc::new(IscsiServer::target("iqn.t", vec![v.clone()], &["*".to_string()]));
        let iscsi = Arc::new(IscsiServer::new(vec![t], IscsiSettings::default(), pool.clone()));
        Sources { pool, volumes: crate::reload::Volumes::new(vec![v]), nvme, iscsi, reactors: Default::default() }
    }

    #[test]
    fn exposition_has_every_family() {
        let src = sources();
        let v = src.volumes.get()[0].clone();
        let t = CmdTimer::start(&v, Protocol::Iscsi);
        t.done(Op::Write, 8192, true);
        let open = CmdTimer::start(&v, Protocol::Iscsi);
        drop(t);
        let text = render(&src);
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "pinion_io_total{path=\"splice\"} ",
            "pinion_zerocopy_completions_total ",
            "pinion_pool_pages{state=\"in_use\"} 0",
            "pinion_range_locks_held{volume=\"v\\\"1\"} 0",
            "pinion_volume_read_total{volume=\"v\\\"1\",path=\"splice\"} 0",
            "pinion_volume_commands_total{volume=\"v\\\"1\",protocol=\"iscsi\",op=\"write\"} 1",
            "pinion_volume_bytes_total{volume=\"v\\\"1\",protocol=\"iscsi\",op=\"write\"} 8192",
            "pinion_volume_latency_seconds_count{volume=\"v\\\"1\",protocol=\"iscsi\",op=\"write\"} 1",
            "pinion_volume_latency_seconds_bucket{le=\"+Inf\",volume=\"v\\\"1\",protocol=\"nvme\",op=\"read\"} 0",
            "pinion_volume_in_flight{volume=\"v\\\"1\",protocol=\"iscsi\"} 1",
            "pinion_connected_hosts{protocol=\"nvme\",target=\"nqn.a\"} 0",
            "pinion_connected_hosts{protocol=\"iscsi\",target=\"iqn.t\"} 0",
            "# TYPE pinion_volume_latency_seconds histogram",
            "# UNIT pinion_volume_latency_seconds seconds",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        drop(open);
        assert!(render(&src).contains("pinion_volume_in_flight{volume=\"v\\\"1\",protocol=\"iscsi\"} 0"));
    }
}
