//! `pinion`: the storage target server.

use clap::{Parser, Subcommand};
use pinion_conf::Config;
use pinion_target::{notify, Server};
use std::path::PathBuf;
use std::process::ExitCode;

mod sys;

#[derive(Parser)]
#[command(name = "pinion", version, about = "Pinion: an NVMe/TCP and iSCSI storage target")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve volumes. Without --config: a 1 GiB RAM volume as namespace 1 of
    /// nqn.2026-11.io.pinion:default on 127.0.0.1:4420 (NVMe/TCP) and LUN 0
    /// of iqn.2026-11.io.pinion:default on 127.0.0.1:3260 (iSCSI).
    Serve {
        /// TOML configuration file (see deploy/examples/).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log line format [default: `[log] format` of the config, else text].
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate a configuration file and exit (0 = valid).
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Load-test an NVMe/TCP or iSCSI target (any target, not only Pinion).
    Perf(Box<pinion_initiator::perf::PerfArgs>),
    /// Talk to a running server over its control socket: status, disconnect, reload.
    Ctl(pinion_target::ctl::CtlArgs),
    /// Make the running server read its configuration file again and apply
    /// the difference (as SIGHUP does); exits non-zero with the errors when
    /// the new configuration is rejected.
    Reload {
        /// The server's control socket [default: `[management] socket` of --config, else /run/pinion/ctl.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The server's configuration file, to find its control socket.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the fields of the event and its spans.
    Json,
}

fn init_logging(cfg: &pinion_conf::LogConfig) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over the config, for one-off debugging
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cfg.format {
        pinion_conf::LogFormat::Json => b.json().init(),
        pinion_conf::LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    // before anything opens a file: descriptors 3.. may be passed-in sockets
    let passed = sys::listen_fds();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Perf(args) => pinion_initiator::perf::main(*args),
        Cmd::Ctl(args) => pinion_target::ctl::main(args),
        Cmd::Reload { socket, config, json } => {
            pinion_target::ctl::main(pinion_target::ctl::CtlArgs { socket, config, json, cmd: pinion_target::ctl::CtlCmd::Reload })
        }
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Cmd::Serve { config, log_format } => {
            let mut cfg = match &config {
                Some(f) => match Config::load(f) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                },
                None => Config::default_ram(),
            };
            match log_format {
                Some(LogFormatArg::Text) => cfg.log.format = pinion_conf::LogFormat::Text,
                Some(LogFormatArg::Json) => cfg.log.format = pinion_conf::LogFormat::Json,
                None => {}
            }
            init_logging(&cfg.log);
            pinion_target::sockets::Inherited::set(passed);
            for w in cfg.warnings() {
                tracing::warn!("{w}");
            }
            serve(cfg, config)
        }
    }
}

fn serve(cfg: Config, file: Option<PathBuf>) -> ExitCode {
    // Connections run on the reactors (one thread per core, see
    // `pinion_target::reactor`); this thread only accepts, serves
    // `/metrics` and shuts down.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().thread_name("pinion").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        // watched from the start: a SIGHUP while starting must not kill
        // the process (its default action); it reloads once serving
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup());
        let server = match Server::build(&cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pinion: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(f) = file {
            // relative to where we started, as at start-up
            server.live.set_config_file(std::path::absolute(&f).unwrap_or(f));
        }
        let listeners = match server.bind() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("pinion: {e}");
                return ExitCode::FAILURE;
            }
        };
        let bound = listeners.addrs();
        print!("{}", server.banner(&bound));
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
        let serving = format!("serving {} on {}", n(server.volumes.len(), "volume"), n(bound.len(), "listener"));
        notify::ready(&serving);
        tracing::info!(volumes = server.volumes.len(), listeners = bound.len(), "ready");
        let mut helpers = tokio::task::JoinSet::new();
        if let Some(w) = notify::watchdog() {
            tracing::info!(interval = ?w, "systemd watchdog: pinging at half the interval");
            helpers.spawn(notify::watchdog_pings(w));
        }
        {
            // SIGHUP (and the unit's ExecReload=) reloads the configuration
            let live = server.live.clone();
            helpers.spawn(async move {
                let mut hup = match hup {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch SIGHUP: reload only through `pinion reload`");
                        return;
                    }
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = live.reload().await;
                }
            });
        }
        if notify::enabled() {
            let (reg, iscsi) = (server.reg.clone(), server.iscsi.clone());
            helpers.spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    let ctrls: usize = reg.subsystems.values().map(|s| s.controllers().len()).sum();
                    let sessions = iscsi.all_sessions().iter().filter(|s| s.target.is_some()).count();
                    notify::status(&format!("{serving}; {}, {}", n(ctrls, "NVMe controller"), n(sessions, "iSCSI session")));
                }
            });
        }
        let stop = async {
            stop_signal().await;
            notify::stopping("stopping: finishing in-flight commands, flushing volumes");
        };
        server.run(listeners, stop).await;
        helpers.abort_all();
        ExitCode::SUCCESS
    })
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
}
