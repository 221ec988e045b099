//! What the operations tests share: the control socket's JSON, the
//! Prometheus parser's view of `/metrics`, and systemd's notify socket.

use crate::server::Server;
use serde_json::Value;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `pinion ctl ARGS` printed (ARGS ask for --json), parsed; a failure fails the test.
pub fn ctl_json(s: &Server, args: &[&str]) -> Value {
    let out = s.ctl(args);
    assert!(out.status.success(), "pinion ctl {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("pinion ctl {args:?}: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// The exposition as the Python Prometheus client's OpenMetrics parser
/// reads it: `[{name, type, unit, samples: [[name, labels, value]]}]`. A
/// parse error fails the test with the parser's message.
pub fn parse_with_prometheus(text: &str) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "unit": f.unit,
                "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(out))
"#;
    // Debian's interpreter, where python3-prometheus-client installs (a
    // python3 earlier in PATH may be another one)
    let py = if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let mut child = Command::new(py)
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {py}: {e} (scripts/install-test-deps.sh installs python3-prometheus-client)"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics (is python3-prometheus-client installed? scripts/install-test-deps.sh):\n{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// Reads notify datagrams until one contains `want`; returns all read.
pub fn recv_notify_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {want:?} within {timeout:?}; got {got:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = m.lines().any(|l| l == want);
                got.push(m);
                if hit {
                    return got;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}
