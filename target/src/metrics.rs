//! The `/metrics` endpoint: OpenMetrics text over a minimal HTTP/1.1
//! responder (one request per connection, GET only), so an operator can see
//! which data path each I/O took and what the page pool is doing.

use pinion_backends::metrics::{PathCounter, METRICS};
use pinion_backends::{PagePool, Volume};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Everything the endpoint reports on.
#[derive(Clone)]
pub struct Sources {
    pub pool: PagePool,
    pub volumes: Vec<Arc<Volume>>,
    pub reactors: crate::reactor::Loads,
}

fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# TYPE {name} counter\n# HELP {name} {help}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}_total{labels} {v}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# TYPE {name} gauge\n# HELP {name} {help}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// The exposition, in OpenMetrics text format.
pub fn render(src: &Sources) -> String {
    let m = &*METRICS;
    let mut out = String::with_capacity(4096);
    let paths: [(&str, &PathCounter); 5] = [
        ("{path=\"splice\"}", &m.splice),
        ("{path=\"direct\"}", &m.direct),
        ("{path=\"copy\"}", &m.copy),
        ("{path=\"zerocopy\"}", &m.zerocopy),
        ("{path=\"send_copy\"}", &m.send_copy),
    ];
    let ios: Vec<_> = paths.iter().map(|(l, c)| (*l, c.get().0)).collect();
    let bytes: Vec<_> = paths.iter().map(|(l, c)| (*l, c.get().1)).collect();
    counter(&mut out, "pinion_io", "I/Os by data path: READs spliced, read with O_DIRECT or copied; payloads sent with MSG_ZEROCOPY or by copy.", &ios);
    counter(&mut out, "pinion_io_bytes", "Bytes by data path.", &bytes);
    let w = [("{path=\"direct\"}", m.write_direct.get()), ("{path=\"buffered\"}", m.write_buffered.get())];
    counter(&mut out, "pinion_write", "WRITEs by path.", &w.map(|(l, v)| (l, v.0)));
    counter(&mut out, "pinion_write_bytes", "WRITE bytes by path.", &w.map(|(l, v)| (l, v.1)));
    counter(&mut out, "pinion_zerocopy_completions", "Zero-copy send completions read from the error queue.", &[("", m.zerocopy_completions.load(Relaxed))]);
    counter(&mut out, "pinion_zerocopy_copied", "Zero-copy completions reporting that the kernel copied anyway.", &[("", m.zerocopy_copied.load(Relaxed))]);
    counter(&mut out, "pinion_zerocopy_disabled", "Connections that fell back to plain sends because the kernel copied.", &[("", m.zerocopy_disabled.load(Relaxed))]);
    counter(
        &mut out,
        "pinion_path_fallback",
        "I/Os that could not take the cheaper path, by reason.",
        &[
            ("{reason=\"data_digest\"}", m.fallback_data_digest.load(Relaxed)),
            ("{reason=\"no_pipe\"}", m.fallback_no_pipe.load(Relaxed)),
            ("{reason=\"unaligned\"}", m.fallback_unaligned.load(Relaxed)),
            ("{reason=\"local_peer\"}", m.fallback_local_peer.load(Relaxed)),
            ("{reason=\"zerocopy_copied\"}", m.zerocopy_disabled.load(Relaxed)),
        ],
    );
    counter(&mut out, "pinion_close_waits", "Connection closes that waited for the kernel to release pages.", &[("", m.close_waits.load(Relaxed))]);
    counter(&mut out, "pinion_close_resets", "Connection closes that reset the connection because pages stayed referenced.", &[("", m.close_resets.load(Relaxed))]);
    let p = src.pool.stats();
    gauge(&mut out, "pinion_pool_pages", "Page pool: budget, in use now, high-water mark.", &[
        ("{state=\"budget\"}", p.budget_pages as u64),
        ("{state=\"in_use\"}", p.in_use as u64),
        ("{state=\"high_water\"}", p.high_water as u64),
    ]);
    gauge(&mut out, "pinion_pool_waiting", "Allocations waiting for pool pages now.", &[("", p.waiting as u64)]);
    counter(&mut out, "pinion_pool_waits", "Allocations that had to wait for pool pages.", &[("", p.waits as u64)]);
    let mut waiting = Vec::new();
    let mut waits = Vec::new();
    let mut held = Vec::new();
    let labels: Vec<String> = src.volumes.iter().map(|v| format!("{{volume=\"{}\"}}", escaped(&v.name))).collect();
    for (v, l) in src.volumes.iter().zip(&labels) {
        let r = v.range_locks();
        waiting.push((l.as_str(), r.waiting.load(Relaxed)));
        waits.push((l.as_str(), r.waits.load(Relaxed)));
        held.push((l.as_str(), r.held() as u64));
    }
    gauge(&mut out, "pinion_range_lock_waiting", "Commands waiting for a range lock now (a write behind an unsent page-cache payload).", &waiting);
    counter(&mut out, "pinion_range_lock_waits", "Range lock requests that had to wait.", &waits);
    gauge(&mut out, "pinion_range_locks_held", "Range locks held now.", &held);
    let loads = src.reactors.get();
    let labels: Vec<String> = (0..loads.len()).map(|i| format!("{{reactor=\"{i}\"}}")).collect();
    let live: Vec<_> = labels.iter().zip(&loads).map(|(l, n)| (l.as_str(), *n as u64)).collect();
    gauge(&mut out, "pinion_reactor_connections", "Live connections on each reactor (the thread that runs them).", &live);
    per_volume(&mut out, src);
    out.push_str("# EOF\n");
    out
}

/// Each volume's data paths, so an operator sees which path each volume's
/// I/O takes (the unlabelled families above are the process totals).
fn per_volume(out: &mut String, src: &Sources) {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    let mut fallbacks = Vec::new();
    for v in &src.volumes {
        let name = escaped(&v.name);
        let m = &v.metrics;
        for (path, c) in [("splice", &m.read_splice), ("direct", &m.read_direct), ("copy", &m.read_copy)] {
            reads.push((format!("{{volume=\"{name}\",path=\"{path}\"}}"), c.get()));
        }
        for (path, c) in [("direct", &m.write_direct), ("buffered", &m.write_buffered)] {
            writes.push((format!("{{volume=\"{name}\",path=\"{path}\"}}"), c.get()));
        }
        for (reason, c) in [
            ("data_digest", &m.fallback_data_digest),
            ("no_pipe", &m.fallback_no_pipe),
            ("unaligned", &m.fallback_unaligned),
            ("local_peer", &m.fallback_local_peer),
        ] {
            fallbacks.push((format!("{{volume=\"{name}\",reason=\"{reason}\"}}"), c.load(Relaxed)));
        }
    }
    fn pick(v: &[(String, (u64, u64))], bytes: bool) -> Vec<(&str, u64)> {
        v.iter().map(|(l, c)| (l.as_str(), if bytes { c.1 } else { c.0 })).collect()
    }
    let fallbacks: Vec<_> = fallbacks.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    counter(out, "pinion_volume_read", "READs of each volume by data path: spliced, O_DIRECT, copied.", &pick(&reads, false));
    counter(out, "pinion_volume_read_bytes", "READ bytes of each volume by data path.", &pick(&reads, true));
    counter(out, "pinion_volume_write", "WRITEs of each volume by path.", &pick(&writes, false));
    counter(out, "pinion_volume_write_bytes", "WRITE bytes of each volume by path.", &pick(&writes, true));
    counter(out, "pinion_volume_path_fallback", "I/Os of each volume that could not take the cheaper path, by reason.", &fallbacks);
}

/// A volume's name as an OpenMetrics label value.
fn escaped(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

async fn respond(mut s: TcpStream, src: &Sources) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    // Only the request line and headers matter; cap them at 4 KiB.
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && !buf[..n].windows(2).any(|w| w == b"\n\n") {
        if n == buf.len() {
            break;
        }
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(src)),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(l: TcpListener, src: Sources) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let src = src.clone();
                tokio::spawn(async move {
                    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(10), respond(s, &src)).await {
                        tracing::debug!(error = %e, "metrics request failed");
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
