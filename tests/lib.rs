//! Test support for Pinion's integration tests (`tests/tests/*.rs`):
//! a small blocking NVMe/TCP host ([`host`]), a blocking iSCSI initiator
//! ([`iscsi_host`]), both thin drivers over `pinion_initiator`'s sans-IO
//! core, and a harness that runs the real `pinion` binary ([`server`]).

pub mod host;
pub mod iscsi_host;
pub mod ops;
pub mod server;
