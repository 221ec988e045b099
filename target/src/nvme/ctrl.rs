//! Controllers: the per-association state behind an admin queue and its I/O
//! queues (registers, features, keep-alive, asynchronous events).

use super::subsys::SubsysKind;
use pinion_transport::nvme_tcp::XferAborter;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's clock, so tests can run the keep-alive timer on paused time
use tokio::time::Instant;
use tokio::sync::watch;

/// Controller Configuration (CC) fields.
pub mod cc {
    pub const EN: u32 = 1 << 0;
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 0x7
    }
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xf
    }
    pub fn shn(cc: u32) -> u32 {
        (cc >> 14) & 0x3
    }
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xf
    }
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xf
    }
}

/// Controller Status (CSTS) bits.
pub mod csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 0x3 << 2;
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
}

/// Why a controller went away, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    Alive,
    KeepAliveTimeout,
    AdminQueueGone,
    ServerShutdown,
    /// An operator's `pinion ctl disconnect`.
    Disconnected,
}

pub struct CtrlState {
    pub cc: u32,
    pub csts: u32,
    pub kato_ms: u32,
    /// I/O queues granted (Set Features 07h), 1-based.
    pub io_queues: u16,
    pub async_event_config: u32,
    pub connected_io: BTreeSet<u16>,
    /// Per connected I/O queue: aborts its commands still waiting for
    /// write data (admin Abort).
    pub aborters: HashMap<u16, XferAborter>,
    /// Parked Asynchronous Event Requests and events not yet reported.
    pub aen: super::aen::AenState,
    /// Changed Namespace List log contents, until read.
    pub changed_ns: Vec<u32>,
    /// The host's address of each connected queue (admin = 0), for `pinion ctl status`.
    pub queue_peers: std::collections::BTreeMap<u16, std::net::SocketAddr>,
    /// Our address the admin queue connected to: the controller's port
    /// (its ANA states, ana.rs).
    pub local_addr: Option<std::net::SocketAddr>,
    /// Reservation notification log, its mask, the notice sinks.
    pub resv: super::resv::CtrlResv,
}

pub struct Controller {
    pub cntlid: u16,
    pub kind: SubsysKind,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub state: Mutex<CtrlState>,
    /// When the controller was made: `last_seen_ms` counts from here.
    born: Instant,
    /// When the host was last heard from, in milliseconds since `born`.
    /// Written only when the millisecond changes: queues of one controller
    /// run on different reactors, and a write (or a lock) per command would
    /// pass the cache line between their cores on every command.
    last_seen_ms: AtomicU64,
    /// Volatile write cache enabled (Set Features 06h); when off every
    /// write is written through. Every WRITE reads it, from every queue's
    /// reactor: an atomic (a shared line that stays in each core's cache),
    /// not a field under `state`, whose lock per command passed the mutex
    /// between the reactors' cores.
    pub vwc: AtomicBool,
    kill: watch::Sender<KillReason>,
    /// Wakes the admin queue's driver when an event completion is ready.
    pub aen_wake: tokio::sync::Notify,
}

impl Controller {
    pub fn new(cntlid: u16, kind: SubsysKind, hostnqn: String, hostid: [u8; 16], kato_ms: u32, io_queues: u16) -> Arc<Controller> {
        let (kill, _) = watch::channel(KillReason::Alive);
        Arc::new(Controller {
            cntlid,
            kind,
            hostnqn,
            hostid,
            state: Mutex::new(CtrlState {
                cc: 0,
                csts: 0,
                kato_ms,
                io_queues,
                async_event_config: 0,
                connected_io: BTreeSet::new(),
                aborters: HashMap::new(),
                aen: Default::default(),
                changed_ns: Vec::new(),
                queue_peers: Default::default(),
                local_addr: None,
                resv: Default::default(),
            }),
            born: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            vwc: AtomicBool::new(true),
            kill,
            aen_wake: tokio::sync::Notify::new(),
        })
    }

    #[cfg(test)]
    pub fn new_for_test(cntlid: u16) -> Arc<Controller> {
        Controller::new(cntlid, SubsysKind::Nvm, "nqn.test".into(), [0; 16], 0, 1)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, CtrlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Any command from the host counts as a sign of life (traffic-based
    /// keep-alive): a busy host need not also send Keep Alive.
    pub fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        if self.last_seen_ms.load(Relaxed) < ms {
            self.last_seen_ms.store(ms, Relaxed);
        }
    }

    /// How long the host has been silent (rounded up to the millisecond).
    pub fn idle_for(&self) -> Duration {
        self.born.elapsed().saturating_sub(Duration::from_millis(self.last_seen_ms.load(Relaxed)))
    }

    pub fn ready(&self) -> bool {
        self.lock().csts & csts::RDY != 0
    }

    /// Reports an asynchronous event to this controller's host (any
    /// thread). The admin queue's driver sends the completion.
    pub fn post_event(&self, ev: super::aen::AsyncEvent) {
        let ready = {
            let mut s = self.lock();
            let config = s.async_event_config;
            s.aen.post(ev, config)
        };
        if ready {
            self.aen_wake.notify_one();
        }
        tracing::debug!(cntlid = self.cntlid, event = ?ev, reported = ready, "asynchronous event");
    }

    /// Tears the controller down: every queue of it closes.
    pub fn kill(&self, why: KillReason) {
        self.kill.send_if_modified(|r| {
            if *r == KillReason::Alive {
                *r = why;
                true
            } else {
                false
            }
        });
    }

    pub fn killed(&self) -> watch::Receiver<KillReason> {
        self.kill.subscribe()
    }

    pub fn kill_reason(&self) -> KillReason {
        *self.kill.borrow()
    }

    pub fn is_killed(&self) -> bool {
        *self.kill.borrow() != KillReason::Alive
    }

    /// Applies a CC write; returns true when a shutdown was requested, so
    /// the caller flushes and then calls [`Controller::shutdown_complete`].
    pub fn set_cc(&self, new: u32) -> bool {
        let mut s = self.lock();
        let old = s.cc;
        s.cc = new;
        if new & cc::EN != 0 && old & cc::EN == 0 {
            let valid = cc::iosqes(new) == 6 && cc::iocqes(new) == 4 && cc::mps(new) == 0 && cc::css(new) == 0;
            if valid {
                s.csts = csts::RDY;
            } else {
                tracing::warn!(cntlid = self.cntlid, cc = format_args!("{new:#x}"), "invalid CC on enable; controller fatal status");
                s.csts = csts::CFS;
            }
        } else if new & cc::EN == 0 && old & cc::EN != 0 {
            s.csts &= !csts::RDY;
        }
        if cc::shn(new) != 0 && cc::shn(old) == 0 {
            return true;
        }
        if cc::shn(new) == 0 {
            s.csts &= !csts::SHST_MASK;
        }
        false
    }

    pub fn shutdown_complete(&self) {
        self.lock().csts |= csts::SHST_COMPLETE;
    }
}

/// Watches a controller's keep-alive timeout; ends when it is killed.
pub async fn keep_alive_timer(ctrl: Arc<Controller>) {
    let mut killed = ctrl.killed();
    loop {
        let kato = Duration::from_millis(u64::from(ctrl.lock().kato_ms));
        if kato.is_zero() {
            return;
        }
        let tick = (kato / 4).max(Duration::from_millis(50));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = killed.changed() => return,
        }
        if ctrl.idle_for() > kato {
            tracing::warn!(cntlid = ctrl.cntlid, host = %ctrl.hostnqn, kato_ms = kato.as_millis() as u64,
                "keep-alive timeout: tearing the controller down");
            ctrl.kill(KillReason::KeepAliveTimeout);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_and_shutdown_handshake() {
        let c = Controller::new_for_test(1);
        let en = cc::EN | 6 << 16 | 4 << 20;
        assert!(!c.set_cc(en));
        assert!(c.ready());
        // shutdown notification
        assert!(c.set_cc(en | 1 << 14));
        c.shutdown_complete();
        assert_eq!(c.lock().csts & csts::SHST_MASK, csts::SHST_COMPLETE);
        // disable
        assert!(!c.set_cc(0));
        assert!(!c.ready());
        assert_eq!(c.lock().csts & csts::SHST_MASK, 0);
        // bad queue entry sizes: controller fatal status
        assert!(!c.set_cc(cc::EN));
        assert_eq!(c.lock().csts, csts::CFS);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_host_is_torn_down() {
        let c = Controller::new(1, SubsysKind::Nvm, "h".into(), [0; 16], 1000, 1);
        let t = tokio::spawn(keep_alive_timer(c.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.touch();
        assert!(!c.is_killed());
        t.await.unwrap();
        assert_eq!(*c.killed().borrow(), KillReason::KeepAliveTimeout);
    }
}
