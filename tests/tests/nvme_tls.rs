//! NVMe/TCP over TLS 1.3 with PSKs (TP 8011) against the real `pinion` binary,
//! with two TLS stacks that share no code with Pinion as hosts: OpenSSL's
//! `s_client` and GnuTLS's `gnutls-cli`. Each completes the handshake with the
//! NVMe PSK identity and the TLS PSK, then sends an ICReq through its stdin
//! and must print the ICResp. The TLS PSKs are derived here with OpenSSL's
//! command-line HKDF (`openssl kdf`) from info bytes spelled out below, not
//! with Pinion's code.

use pinion_tests::host::{capsule_pdu, icreq_pdu, sgl, Digests, Queue, PSDT_SGL};
use pinion_tests::server::Server;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SUBNQN: &str = "nqn.2026-11.io.pinion:tls";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
const HOST384: &str = "nqn.2014-08.org.nvmexpress:uuid:38438438-4384-3843-8438-438438438438";
const HOST_COMPAT: &str = "nqn.2014-08.org.nvmexpress:uuid:c0c0c0c0-c0c0-c0c0-c0c0-c0c0c0c0c0c0";
/// The configured key 00 01 .. 1f, SHA-256 transform (CRC-32 0x91267e8a, as
/// `nvme check-tls-key` reports for it).
const KEY256: &str = "NVMeTLSkey-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const NO: Digests = Digests { header: false, data: false };
/// ICResp: type 0x01, flags 0, HLEN 128, PDO 0, PLEN 128.
const ICRESP_HEAD: [u8; 8] = [0x01, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00];

fn key_bytes(n: u8) -> Vec<u8> {
    (0..n).collect()
}

/// The interchange form of a key, CRC-32 computed here.
fn interchange(hh: u8, key: &[u8]) -> String {
    let mut raw = key.to_vec();
    raw.extend_from_slice(&crc32(key).to_le_bytes());
    format!("NVMeTLSkey-1:{hh:02}:{}:", base64(&raw))
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}

fn base64(b: &[u8]) -> String {
    let mut c = Command::new("base64").arg("-w0").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("base64");
    c.stdin.take().unwrap().write_all(b).unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// HKDF (extract with a zero salt, then expand) by `openssl kdf`.
fn openssl_hkdf(sha: &str, ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let o = Command::new("openssl")
        .args([
            "kdf",
            "-keylen",
            &len.to_string(),
            "-kdfopt",
            &format!("digest:{sha}"),
            "-kdfopt",
            &format!("hexkey:{}", hex(ikm)),
            "-kdfopt",
            &format!("hexsalt:{}", hex(&vec![0u8; if sha == "SHA384" { 48 } else { 32 }])),
            "-kdfopt",
            &format!("hexinfo:{}", hex(info)),
            "HKDF",
        ])
        .output()
        .expect("openssl kdf");
    assert!(o.status.success(), "openssl kdf: {}", String::from_utf8_lossy(&o.stderr));
    unhex(&String::from_utf8(o.stdout).unwrap().trim().replace(':', ""))
}

/// RFC 8446 HkdfLabel, or libnvme's original one (`compat`): little-endian
/// length, no length bytes before label and context.
fn label(len: usize, label: &str, ctx: &[u8], compat: bool) -> Vec<u8> {
    let l = format!("tls13 {label}");
    let mut v = Vec::new();
    if compat {
        v.extend_from_slice(&(len as u16).to_le_bytes());
        v.extend_from_slice(l.as_bytes());
    } else {
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.push(l.len() as u8);
        v.extend_from_slice(l.as_bytes());
        v.push(ctx.len() as u8);
    }
    v.extend_from_slice(ctx);
    v
}

/// Identity and TLS PSK (hex) for a configured key with a SHA transform.
fn tls_psk(key: &[u8], host: &str, version: u8, compat: bool) -> (String, String) {
    let (sha, hh) = if key.len() == 48 { ("SHA384", 2) } else { ("SHA256", 1) };
    let n = key.len();
    let retained = openssl_hkdf(sha, key, &label(n, "HostNQN", host.as_bytes(), compat), n);
    let (identity, ctx) = if version == 0 {
        let id = format!("NVMe0R{hh:02} {host} {SUBNQN}");
        (id.clone(), id)
    } else {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s' '{host} {SUBNQN} NVMe-over-Fabrics' | openssl dgst -{} -mac HMAC -macopt hexkey:{} -binary | base64 -w0",
                sha.to_lowercase(),
                hex(&retained)
            ))
            .output()
            .unwrap();
        let digest = String::from_utf8(o.stdout).unwrap();
        (format!("NVMe1R{hh:02} {host} {SUBNQN} {digest}"), format!("{hh:02} {digest}"))
    };
    let psk = openssl_hkdf(sha, &retained, &label(n, "nvme-tls-psk", ctx.as_bytes(), compat), n);
    (identity, hex(&psk))
}

fn config(tls: &str) -> String {
    let key384 = interchange(2, &key_bytes(48));
    format!(
        r#"
[nvme_tcp]
listen = ["127.0.0.1:{{PORT}}"]
tls = "{tls}"

[iscsi]
listen = []

[metrics]
listen = "127.0.0.1:{{MPORT}}"

[[volume]]
name = "ram0"
backend = "ram"
size = "16MiB"

[[subsystem]]
nqn = "{SUBNQN}"
namespaces = ["ram0"]

[[subsystem.host]]
nqn = "{HOST}"
tls_key = "{KEY256}"

[[subsystem.host]]
nqn = "{HOST384}"
tls_key = "{key384}"

[[subsystem.host]]
nqn = "{HOST_COMPAT}"
tls_key = "{KEY256}"
tls_key_compat = true
"#
    )
}

/// Runs a TLS client, writes an ICReq to its stdin once it runs, and returns
/// what it printed (stdout) when an ICResp appeared in it or after 10 s.
fn exchange(cmd: Command) -> (bool, Vec<u8>, String) {
    exchange_with(cmd, &icreq_pdu(NO), &ICRESP_HEAD)
}

/// [`exchange`] with other bytes in and another pattern to wait for.
fn exchange_with(mut cmd: Command, input: &[u8], want: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn TLS client");
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut so = child.stdout.take().unwrap();
    let o2 = out.clone();
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = so.read(&mut b) {
            if n == 0 {
                break;
            }
            o2.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    let mut se = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    // the handshake happens on connect; the ICReq is sent once it is done
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    let _ = stdin.flush();
    let t0 = Instant::now();
    let found = loop {
        if out.lock().unwrap().windows(want.len()).any(|w| w == want) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(10) || child.try_wait().ok().flatten().is_some() {
            break out.lock().unwrap().windows(want.len()).any(|w| w == want);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let _ = reader.join();
    let stderr = err.join().unwrap_or_default();
    let o = out.lock().unwrap().clone();
    (found, o, stderr)
}

fn s_client(port: u16, identity: &str, psk: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-tls1_3", "-quiet", "-psk_identity", identity, "-psk", psk]);
    c.args(extra);
    c
}

fn gnutls_cli(port: u16, identity: &str, psk: &str, priority: &str) -> Command {
    let mut c = Command::new("gnutls-cli");
    c.args(["--priority", priority, "--pskusername", identity, "--pskkey", psk, "-p", &port.to_string(), "127.0.0.1"]);
    c
}

const GNUTLS_PSK: &str = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+PSK:+ECDHE-PSK:+DHE-PSK";

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

#[test]
fn openssl_s_client_completes_handshake_and_icreq() {
    let s = Server::start(&config("required"));
    // version 0 identity, SHA-256; s_client offers AES-256 first, the server
    // must still pick the PSK's suite
    let (id, psk) = tls_psk(&key_bytes(32), HOST, 0, false);
    let (ok, _, err) = exchange(s_client(s.port, &id, &psk, &[]));
    assert!(ok, "s_client got no ICResp; stderr: {err}\nserver log:\n{}", s.log_text());
    // (s_client's -psk is a SHA-256 external PSK only; SHA-384 keys are tested
    // with Pinion's own host.)
    // a host whose libnvme derived its key the old way, configured tls_key_compat
    let (id, psk) = tls_psk(&key_bytes(32), HOST_COMPAT, 0, true);
    let (ok, _, err) = exchange(s_client(s.port, &id, &psk, &["-ciphersuites", "TLS_AES_128_GCM_SHA256"]));
    assert!(ok, "s_client (compat derivation) got no ICResp; stderr: {err}\n{}", s.log_text());
    assert_eq!(s.metric("pinion_nvme_tls_sessions_total{handoff=\"ktls\"}") + s.metric("pinion_nvme_tls_sessions_total{handoff=\"relay\"}"), 2);
    assert!(s.log_text().contains("TLS 1.3 session established"));
}

#[test]
fn gnutls_cli_completes_handshake_and_icreq() {
    assert!(have("gnutls-cli"), "gnutls-cli missing: install Debian's gnutls-bin (scripts/install-test-deps.sh does)");
    let s = Server::start(&config("required"));
    for version in [1, 0] {
        let (id, psk) = tls_psk(&key_bytes(32), HOST, version, false);
        let (ok, out, err) = exchange(gnutls_cli(s.port, &id, &psk, GNUTLS_PSK));
        assert!(ok, "gnutls-cli (identity v{version}) got no ICResp: {}\n{err}\n{}", String::from_utf8_lossy(&out), s.log_text());
    }
    // (GnuTLS 3.7 computes the binder of an external PSK with SHA-256 only, so
    // SHA-384 keys are tested with Pinion's own host in `perf_tls` and the
    // transport's unit tests.)
}

#[test]
fn wrong_key_unknown_identity_and_plain_are_refused_when_required() {
    let s = Server::start(&config("required"));
    let (id, psk) = tls_psk(&key_bytes(32), HOST, 0, false);
    let mut wrong = unhex(&psk);
    wrong[5] ^= 0x40;
    let (ok, _, _) = exchange(s_client(s.port, &id, &hex(&wrong), &[]));
    assert!(!ok, "a wrong key completed the exchange");
    // the compat-derived key is not the key of a host configured without tls_key_compat
    let (_, compat) = tls_psk(&key_bytes(32), HOST, 0, true);
    let (ok, _, _) = exchange(gnutls_cli(s.port, &id, &compat, GNUTLS_PSK));
    assert!(!ok, "the compat key of a spec host completed the exchange");
    let (ok, _, _) = exchange(s_client(s.port, &format!("NVMe0R01 nqn.2014-08.org.nvmexpress:uuid:0 {SUBNQN}"), &psk, &[]));
    assert!(!ok, "an unknown identity completed the exchange");
    assert!(Queue::connect(s.addr, NO).is_err(), "a plain ICReq was answered on a TLS-required listener");
    // the server counts a refusal as it closes; the host may see the close first
    let t0 = Instant::now();
    while s.metric("pinion_nvme_tls_refused_total{reason=\"plain\"}") == 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.metric("pinion_nvme_tls_refused_total{reason=\"handshake\"}"), 3);
    assert_eq!(s.metric("pinion_nvme_tls_refused_total{reason=\"plain\"}"), 1, "{}", s.log_text());
    let log = s.log_text();
    assert!(log.contains("TLS PSK identity refused"), "{log}");
    assert!(log.contains("this listener requires TLS"), "{log}");
}

#[test]
fn optional_takes_tls_and_plain_and_off_takes_plain_only() {
    let s = Server::start(&config("optional"));
    let q = Queue::connect(s.addr, NO).expect("plain connection on an optional listener");
    q.shutdown().unwrap();
    let (id, psk) = tls_psk(&key_bytes(32), HOST, 0, false);
    let (ok, _, err) = exchange(s_client(s.port, &id, &psk, &[]));
    assert!(ok, "TLS on an optional listener: {err}\n{}", s.log_text());
    drop(s);
    let s = Server::start(&config("off"));
    Queue::connect(s.addr, NO).expect("plain connection with TLS off");
    let (ok, _, _) = exchange(s_client(s.port, &id, &psk, &[]));
    assert!(!ok, "TLS was answered with TLS off");
}

/// `pinion perf --tls`: verified random I/O over TLS on every queue, with a
/// SHA-256 and a SHA-384 key; a wrong key fails the run at setup.
#[test]
fn perf_tls_runs_verified_io() {
    let s = Server::start(&config("required"));
    let url = format!("nvme-tcp://127.0.0.1:{}/{SUBNQN}", s.port);
    let key384 = interchange(2, &key_bytes(48));
    let run = |host: &str, key: &str, extra: &[&str]| {
        let mut c = Command::new(pinion_tests::server::binary());
        c.args(["perf", &url, "--tls", "--tls-key", key, "--hostnqn", host, "--rw", "randrw", "--bs", "4k-128k"]);
        c.args(["--qd", "8", "--queues", "2", "--verify", "--time", "2", "--json"]).args(extra);
        c.output().expect("pinion perf")
    };
    let mut sessions = 0;
    for (host, key, extra) in [(HOST, KEY256, &[][..]), (HOST384, key384.as_str(), &[][..]), (HOST_COMPAT, KEY256, &["--tls-compat"][..])] {
        let o = run(host, key, extra);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "perf --tls ({host}) failed: {out}\n{}\n{}", String::from_utf8_lossy(&o.stderr), s.log_text());
        let j: serde_json::Value = serde_json::from_str(&out).expect("perf JSON");
        assert_eq!(j["errors"], 0, "{out}");
        assert_eq!(j["verify"]["mismatches"], 0, "{out}");
        assert!(j["verify"]["blocks_checked"].as_u64() > Some(0), "{out}");
        assert!(j["target"].as_str().unwrap().contains("over TLS 1.3"), "{out}");
        sessions += 3; // the admin queue and two I/O queues
    }
    let total = s.metric("pinion_nvme_tls_sessions_total{handoff=\"ktls\"}") + s.metric("pinion_nvme_tls_sessions_total{handoff=\"relay\"}");
    assert_eq!(total, sessions);
    assert!(s.log_text().contains("TLS_AES_256_GCM_SHA384"), "the SHA-384 key did not use its suite");
    // the key of another host: the handshake fails, so does the run
    let o = run(HOST384, KEY256, &[]);
    assert!(!o.status.success(), "perf with a wrong key succeeded");
}

/// The TLS PSK is one host's key for one subsystem: a fabrics Connect on that
/// session that names another host is refused (the same Connect with the
/// identity's own host NQN succeeds).
#[test]
fn connect_must_name_the_tls_identity() {
    use pinion_initiator::nvme_tcp::{connect_cmd, ConnectArgs};
    use zerocopy::IntoBytes;
    let s = Server::start(&config("required"));
    let (id, psk) = tls_psk(&key_bytes(32), HOST, 0, false);
    let connect = |hostnqn: &str| {
        let (mut sqe, d) = connect_cmd(&ConnectArgs { qid: 0, sqsize: 31, cattr: 0, kato_ms: 0, cntlid: 0xffff, subnqn: SUBNQN, hostnqn, hostid: [7; 16] });
        sqe.flags = (sqe.flags & 0x3f) | PSDT_SGL;
        sqe.dptr = sgl(nvme_types::command::SglType::DATA_BLOCK_OFFSET, 1024);
        let mut input = icreq_pdu(NO);
        input.extend_from_slice(&capsule_pdu(&sqe, d.as_bytes(), NO, 0));
        input
    };
    // CapsuleResp: type 0x05, HLEN 24, PLEN 24; then the CQE
    let resp_head = [0x05, 0x00, 0x18, 0x00, 0x18, 0x00, 0x00, 0x00];
    let status_of = |out: &[u8]| {
        let at = out.windows(8).position(|w| w == resp_head).expect("a CapsuleResp");
        let cqe = &out[at + 8..at + 24];
        u16::from_le_bytes([cqe[14], cqe[15]]) >> 1
    };
    let (ok, out, err) = exchange_with(s_client(s.port, &id, &psk, &[]), &connect(HOST), &resp_head);
    assert!(ok, "no Connect response: {err}\n{}", s.log_text());
    assert_eq!(status_of(&out), 0, "Connect with the identity's host failed");
    let (ok, out, err) = exchange_with(s_client(s.port, &id, &psk, &[]), &connect(HOST384), &resp_head);
    assert!(ok, "no Connect response: {err}\n{}", s.log_text());
    assert_ne!(status_of(&out), 0, "Connect as another host than the TLS identity succeeded");
    assert!(s.log_text().contains("other than the TLS PSK identity"));
}
