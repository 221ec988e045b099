//! Runs the real `pinion` binary for a test.
//!
//! [`Server::start`] writes a config into a fresh temporary directory, starts
//! `pinion serve --config FILE` with its output going to a log file there,
//! and waits until the NVMe/TCP port accepts. Dropping the [`Server`] kills
//! the child (by its PID, via `Child::kill`) and, if the test is panicking,
//! prints the server's log (always, when `PINION_TEST_SHOW_LOG` is set).

use std::fs;
use std::fmt::Write;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server gets to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the `pinion` binary is: `$PINION_BIN`, else
/// `$CARGO_TARGET_DIR/debug/pinion`, else `<repo>/build/cargo/debug/pinion`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PINION_BIN") {
        return PathBuf::from(p);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() { t } else { repo.join(t) };
        let p = t.join("debug/pinion");
        if p.exists() {
            return p;
        }
    }
    repo.join("build/cargo/debug/pinion")
}

/// A free TCP port on 127.0.0.1 for a server a test starts: bound once to
/// check it, then released for the server. A port the kernel picked (`:0`)
/// comes from its ephemeral range, where any test's client connection may
/// take it as a source port before the server binds it (CI saw `Address
/// already in use` that way). So ports come from below that range (Linux:
/// 32768 and up), each handed out once per test binary, starting at a place
/// that depends on the process so two binaries rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left in 127.0.0.1:{LOW}..{}", LOW + SPAN);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Server {
    child: Child,
    /// The NVMe/TCP listener.
    pub addr: SocketAddr,
    pub port: u16,
    /// The iSCSI listener (`{ISCSI_PORT}` in the config).
    pub iscsi_addr: SocketAddr,
    /// The metrics endpoint, when the config used `{MPORT}`.
    pub metrics: Option<SocketAddr>,
    dir: tempfile::TempDir,
    log: PathBuf,
    /// The config as written (placeholders replaced), for failure messages.
    config: String,
    /// The config has an iSCSI listener.
    iscsi: bool,
    mport: u16,
}

/// Extra ways to start the server ([`Server::start_with`]).
#[derive(Clone, Debug, Default)]
pub struct StartOpts {
    /// Arguments after `serve --config FILE`.
    pub args: Vec<String>,
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
    /// Return without waiting for the listeners.
    pub no_wait: bool,
}

impl Server {
    /// Starts the server. In `config_toml`, `{PORT}` and `{ISCSI_PORT}` are
    /// replaced by free ports (the server must listen on `{PORT}`, and on
    /// `{ISCSI_PORT}` when the config names it), `{MPORT}` by another (for
    /// `[metrics] listen`) and `{DIR}` by the temporary directory (for
    /// backing files).
    pub fn start(config_toml: &str) -> Server {
        Server::start_with(config_toml, &StartOpts::default())
    }

    /// [`Server::start`] with extra `serve` arguments and environment; with
    /// `opts.no_wait` it returns as soon as the process is started (then
    /// [`Server::wait_ready`] waits for the listeners).
    ///
    /// A config without a `[management]` section gets its control socket in
    /// the temporary directory ([`Server::ctl_socket`]), so test servers
    /// never touch the system default.
    pub fn start_with(config_toml: &str, opts: &StartOpts) -> Server {
        let bin = binary();
        assert!(
            bin.exists(),
            "pinion binary not found at {} — run `cargo build -p pinion-target` first (or set PINION_BIN)",
            bin.display()
        );
        let dir = tempfile::Builder::new().prefix("pinion-test-").tempdir().expect("tempdir");
        let port = free_port();
        let iscsi_port = free_port();
        let mport = free_port();
        let metrics = config_toml.contains("{MPORT}").then(|| SocketAddr::from(([127, 0, 0, 1], mport)));
        let mut config_toml = config_toml.to_string();
        if !config_toml.contains("[management]") {
            config_toml += "\n[management]\nsocket = \"{DIR}/ctl.sock\"\n";
        }
        let config = config_toml
            .replace("{PORT}", &port.to_string())
            .replace("{ISCSI_PORT}", &iscsi_port.to_string())
            .replace("{MPORT}", &mport.to_string())
            .replace("{DIR}", &dir.path().display().to_string());
        let conf_path = dir.path().join("pinion.toml");
        fs::write(&conf_path, &config).expect("write config");
        let log = dir.path().join("pinion.log");
        let out = fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log fd");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg("--config").arg(&conf_path).args(&opts.args).stdin(Stdio::null()).stdout(out).stderr(err);
        // The server reads PINION_* variables as config overrides and rejects
        // unknown ones (PINION_BIN would be "unknown key"): do not pass any.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().to_ascii_uppercase().starts_with("PINION_") {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let iscsi_addr = SocketAddr::from(([127, 0, 0, 1], iscsi_port));
        let iscsi = config_toml.contains("{ISCSI_PORT}");
        let mut s = Server { child, addr, port, iscsi_addr, metrics, dir, log, config, iscsi, mport };
        if !opts.no_wait {
            s.wait_ready();
        }
        s
    }

    /// Waits until the NVMe/TCP port (and the iSCSI port, when configured)
    /// accepts connections.
    pub fn wait_ready(&mut self) {
        let config = self.config.clone();
        self.wait_listening(&config, self.addr);
        if self.iscsi {
            self.wait_listening(&config, self.iscsi_addr);
        }
    }

    /// The control socket `pinion ctl` talks to (unless the config has its
    /// own `[management]` section).
    pub fn ctl_socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// Runs `pinion ctl --socket <ctl_socket> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary()).arg("ctl").arg("--socket").arg(self.ctl_socket()).args(args).output().expect("run pinion ctl")
    }

    /// Sends SIGTERM (by PID, with kill(1)).
    pub fn terminate(&self) {
        let ok = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().expect("run kill").success();
        assert!(ok, "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics endpoint's exposition (`GET /metrics`).
    pub fn metrics_text(&self) -> String {
        let a = self.metrics.expect("config has no [metrics] listen = \"127.0.0.1:{MPORT}\"");
        let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(5)).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pinion\r\n\r\n").expect("send request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read response");
        assert!(out.starts_with("HTTP/1.1 200"), "metrics answered {out}");
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }

    /// One sample of the metrics, e.g. `metric("pinion_io_total{path=\"splice\"}")`.
    pub fn metric(&self, name: &str) -> u64 {
        let t = self.metrics_text();
        t.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in\n{t}"))
    }

    fn wait_listening(&mut self, config: &str, addr: SocketAddr) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "pinion exited during startup with {status}\n--- config ---\n{config}\n--- log ---\n{}",
                    self.log_text()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "pinion did not listen on {} within {START_TIMEOUT:?}\n--- config ---\n{config}\n--- log ---\n{}",
                    addr,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the server's configuration file (placeholders as in
    /// [`Server::start`], with the same ports and directory; a control
    /// socket section is added the same way), e.g. before `pinion reload`.
    pub fn rewrite_config(&mut self, config_toml: &str) {
        let mut t = config_toml.to_string();
        if !t.contains("[management]") {
            t += "\n[management]\nsocket = \"{DIR}/ctl.sock\"\n";
        }
        let config = t
            .replace("{PORT}", &self.port.to_string())
            .replace("{ISCSI_PORT}", &self.iscsi_addr.port().to_string())
            .replace("{MPORT}", &self.mport.to_string())
            .replace("{DIR}", &self.dir.path().display().to_string());
        fs::write(self.config_path(), &config).expect("write config");
        self.config = config;
    }

    /// The configuration file the server was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pinion.toml")
    }

    /// Runs `pinion reload --socket <ctl_socket> ARGS`.
    pub fn reload(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary()).arg("reload").arg("--socket").arg(self.ctl_socket()).args(args).output().expect("run pinion reload")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's CPU time so far as `/proc/PID/stat` counts it (user +
    /// system, every thread, exited ones too). The kernel prints user and
    /// system time each truncated to a clock tick (USER_HZ, which its ABI
    /// fixes at 100), so a difference of two readings is off by up to two
    /// ticks (20 ms) either way.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.pid();
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
        // fields after the command name (which may hold spaces) in parentheses;
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name
        let f: Vec<&str> = s.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
        let ticks = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        Duration::from_millis(ticks * 10)
    }

    /// The server's resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/PID/status");
        let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS line");
        kb.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmRSS value") * 1024
    }

    /// Everything the server has logged so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Waits until the server has logged a line holding every one of
    /// `needles`: a state the server reports only in its log has been
    /// reached. Panics after `within`.
    #[track_caller]
    pub fn wait_log(&self, needles: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log_text().lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            assert!(Instant::now() < deadline, "the server logged no line with {needles:?} in {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server with SIGKILL (no shutdown at all) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again (after [`Server::kill9`]) with the same
    /// config, ports and directory; its log goes on in the same file.
    pub fn restart(mut self) -> Server {
        self.respawn();
        self.wait_ready();
        self
    }

    /// [`Server::restart`] without waiting for the listeners.
    pub fn restart_no_wait(mut self) -> Server {
        self.respawn();
        self
    }

    fn respawn(&mut self) {
        let out = fs::OpenOptions::new().append(true).open(&self.log).expect("open log");
        let err = out.try_clone().expect("clone log fd");
        let mut cmd = Command::new(binary());
        cmd.arg("serve").arg("--config").arg(self.dir.path().join("pinion.toml")).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().to_ascii_uppercase().starts_with("PINION_") {
                cmd.env_remove(&k);
            }
        }
        self.child = cmd.spawn().expect("respawn pinion");
    }

    /// True while the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("PINION_TEST_SHOW_LOG").is_some() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(300);
            let mut e = String::new();
            let _ = writeln!(
                e,
                "--- pinion log ({} lines, last {} shown; {}) ---",
                lines.len(),
                lines.len() - from,
                match exited {
                    Some(s) => format!("server had exited: {s}"),
                    None => "server was running".to_owned(),
                }
            );
            for l in &lines[from..] {
                let _ = writeln!(e, "{l}");
            }
            let _ = writeln!(e, "--- end of pinion log ---");
            // eprint! (not io::stderr) so the test harness shows it with the failing test
            eprint!("{e}");
        }
    }
}
