//! Pinion's wire protocols on sockets.
//!
//! `nvme_tcp` frames NVMe/TCP: the ICReq/ICResp handshake, a reader that
//! checks every PDU fully before acting on it and receives data straight
//! into destination SGLs, and an encoder of its PDUs. `send` is the send
//! engine every protocol shares: batched vectored writes, zero-copy sends,
//! splice, and the tracker that releases each payload only once the kernel
//! is done with it.
//!
//! `recv` receives payloads straight into destination SGLs, for both.
//!
//! `iscsi` is the sans-IO core of the iSCSI target: PDUs, text negotiation,
//! login with CHAP, the CmdSN window and write transfers, and the encoder of
//! the send path.
// `unsafe` lives only in `sys`, each block with its SAFETY argument.
#![deny(unsafe_code)]

pub mod digest;
pub mod iscsi;
pub mod nvme_tcp;
pub mod recv;
pub mod send;
mod sys;
pub mod tls;

/// Whether a peer is on this host (loopback, or our own address): local TCP
/// delivery keeps our pages in the receiver's socket queue after the send
/// is acknowledged (`pinion_backends::ReadOpts::local_peer`).
pub fn is_local_peer(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> bool {
    peer.ip() == local.ip() || peer.ip().is_loopback()
}
