//! Namespaces whose storage grew while served (an RBD image after `rbd
//! resize`): every controller of the subsystem gets the namespace in its
//! Changed Namespace List and a Namespace Attribute Changed event, and
//! Identify Namespace reports the new size (NVMe Base 5.27.1.7 / 8.1.5).

use super::subsys::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the volumes' sizes are compared (the RBD backend itself
/// looks once a second).
const PERIOD: Duration = Duration::from_secs(1);

/// Runs until `shutdown` changes.
pub async fn watch(reg: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let mut seen: HashMap<(String, u32), u64> = HashMap::new();
    for s in reg.subsystems.values() {
        for ns in s.namespaces().iter() {
            seen.insert((s.nqn.clone(), ns.nsid), ns.nsze());
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = shutdown.changed() => return,
        }
        for s in reg.subsystems.values() {
            let mut grew = Vec::new();
            for ns in s.namespaces().iter() {
                let now = ns.nsze();
                // a namespace a reload added (or replaced) starts being watched
                let Some(old) = seen.insert((s.nqn.clone(), ns.nsid), now) else { continue };
                if old != now {
                    tracing::info!(subsystem = %s.nqn, nsid = ns.nsid, old_blocks = old, new_blocks = now, "namespace size changed: Namespace Attribute Changed to every controller");
                    grew.push(ns.nsid);
                }
            }
            s.namespaces_changed(&grew);
        }
    }
}
