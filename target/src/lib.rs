//! The Pinion server: subsystems, controllers and namespaces; NVMe admin,
//! fabrics, discovery and I/O command execution over the NVMe/TCP
//! transport; the iSCSI target (`iscsi`) over the same volumes; and the
//! process around them (listeners, signals, shutdown).
//!
//! One module per spec area, as in Linux `drivers/nvme/target/`: `fabrics`
//! (Connect, properties), `admin`, `discovery`, `io`. A command handler's
//! error type is the NVMe [`Status`](nvme_types::Status) it completes with.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ctrl;
pub mod discovery;
pub mod fabrics;
pub mod io;
pub mod iscsi;
pub mod perf;
pub mod metrics;
pub mod queue;
pub mod scsi;
pub mod server;
pub mod subsys;

pub use server::{Server, ServerError};
