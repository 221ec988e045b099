//! systemd's notify protocol (`sd_notify(3)`, via the `sd-notify` crate):
//! READY=1 once every listener is bound, STATUS= lines, STOPPING=1 at
//! shutdown, and WATCHDOG=1 at half the unit's `WatchdogSec`. Without
//! `NOTIFY_SOCKET` in the environment every call does nothing.

use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// True when a service manager listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Every listener is bound: the service is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval the unit asked for (`WatchdogSec=`, passed as
/// `WATCHDOG_USEC` for this process), if any.
pub fn watchdog() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings the watchdog at half its interval for as long as the task runs.
/// It runs on the same runtime as the connections, so pings stop when the
/// runtime no longer schedules tasks, and systemd restarts the service.
pub async fn watchdog_pings(interval: Duration) {
    let mut t = tokio::time::interval(interval / 2);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

/// A reload has begun (READY=1 follows when it is done, applied or not).
/// MONOTONIC_USEC goes with it, as `Type=notify-reload` requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading the configuration")]),
    }
}
