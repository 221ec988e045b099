//! An in-process target for the tests of the connection driver: one RAM
//! namespace, served on a thread of its own by a single-threaded runtime
//! (as a reactor serves its connections).

use pinion_backends::{PagePool, Volume, VolumeSpec};
use pinion_target::nvme::subsys::{Limits, Registry, Subsystem};
use pinion_transport::nvme_tcp::{self, TransportConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const NQN: &str = "nqn.2026-11.io.pinion:driver";

/// Starts the target; `on_thread` runs first on its thread. Returns its
/// address and registry.
pub fn start_target(on_thread: fn()) -> (std::net::SocketAddr, Arc<Registry>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let pool = PagePool::new(64 << 20, false);
    let b = pinion_backends::open("drv", &VolumeSpec::Ram { size: 64 << 20, block_size: 4096 }).unwrap();
    let v = Arc::new(Volume::new("drv", b, pool.clone()));
    let s = Arc::new(Subsystem::new_nvm(NQN, None, None, vec![v], vec!["*".into()]));
    let reg = Arc::new(Registry {
        subsystems: HashMap::from([(NQN.to_string(), s)]).into(),
        discovery: Arc::new(Subsystem::new_discovery()),
        listeners: vec![addr].into(),
        listener_tls: Default::default(),
        ana: Default::default(),
        limits: Limits { max_queue_size: 128, max_io_queues: 2, inline_data_size: 8192, mdts: 5, write_budget: 8 << 20, connect_timeout: Duration::from_secs(10) },
        genctr: Default::default(),
    });
    let r = reg.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tcfg = TransportConfig { max_inline: 8192, max_h2c_data: 128 << 10, icreq_timeout: Duration::from_secs(10), send: Default::default() };
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            on_thread();
            loop {
                let (s, _) = l.accept().await.unwrap();
                let (reg, pool, tcfg, shutdown) = (r.clone(), pool.clone(), tcfg.clone(), shutdown.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = nvme_tcp::accept(s, &tcfg, pool.clone()).await {
                        pinion_target::nvme::queue::serve(conn, reg, pool, addr, shutdown).await;
                    }
                });
            }
        });
    });
    (addr, reg)
}
