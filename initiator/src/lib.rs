//! Pinion's initiator: the host side of NVMe/TCP and iSCSI.
//!
//! A sans-IO core (bytes in, PDUs and events out; unit-tested without
//! sockets) and the drivers over it:
//! - [`conn`]: the one connection-buffer type every driver uses: a receive
//!   buffer that yields whole PDUs or exact payload reads, payloads received
//!   straight into the caller's memory, a send queue of framing bytes and
//!   data slices sent with one `writev`.
//! - [`nvme_tcp`]: NVMe/TCP PDU framing (digests, PDA padding), the commands
//!   a host builds, and a validating decoder for controller PDUs, over
//!   `nvme_types`' wire types.
//! - [`iscsi`]: iSCSI PDU framing (BHS, AHS, digests, padding), a validating
//!   decoder for target PDUs, login (CHAP, operational negotiation), over
//!   `pinion_transport::iscsi`'s PDU, text and CHAP codecs.
//! - [`perf`]: `pinion perf`, the load generator: a poll-driven runner over
//!   nonblocking sockets, the workload generator, latency statistics and
//!   verification stamps. The `pinion` binary calls [`perf::main`].
//!
//! The blocking test hosts (`tests/host.rs`, `tests/iscsi_host.rs`) are the
//! other drivers. Dependencies point one way: `nvme-types` ←
//! `pinion-transport` ← `pinion-initiator` ← `pinion-target` (for `perf`).
#![forbid(unsafe_code)]

pub mod conn;
pub mod iscsi;
pub mod nvme_tcp;
pub mod perf;
