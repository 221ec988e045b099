//! The Pinion server: the NVMe target over NVMe/TCP (`nvme`), the iSCSI
//! target (`iscsi`) and SCSI logical-unit emulation (`scsi`) over the same
//! volumes, metrics, and the process around them (listeners, signals,
//! shutdown, systemd notification, the `pinion ctl` socket).
#![forbid(unsafe_code)]

pub mod ana;
pub mod auth_throttle;
pub mod busy_poll;
pub mod ctl;
pub mod iscsi;
pub mod limits;
pub mod metrics;
pub mod mgmt;
pub mod notify;
pub mod nvme;
pub mod reactor;
pub mod reload;
pub mod resv_store;
pub mod scsi;
pub mod server;
pub mod sockets;

pub use server::{Server, ServerError};
