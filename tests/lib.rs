//! Test support for Pinion's integration tests (`tests/tests/*.rs`):
//! a small blocking NVMe/TCP host ([`host`]), a blocking iSCSI initiator
//! ([`iscsi_host`]) and a harness that runs the real
//! `pinion` binary ([`server`]).

pub mod host;
pub mod iscsi_host;
pub mod server;
