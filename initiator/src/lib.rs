//! Pinion's initiator: the host side of NVMe/TCP and iSCSI.
//!
//! `perf` is the `pinion perf` load generator (a poll-driven runner over
//! nonblocking sockets, the workload generator, latency statistics and
//! verification stamps). The `pinion` binary calls [`perf::main`]; the test
//! hosts in `tests/` drive targets through the same code.
#![forbid(unsafe_code)]

pub mod conn;
pub mod iscsi;
pub mod nvme_tcp;
pub mod perf;
