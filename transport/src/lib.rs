//! Pinion's wire protocols on sockets.
//!
//! `nvme_tcp` frames NVMe/TCP: the ICReq/ICResp handshake, a reader that
//! checks every PDU fully before acting on it and receives data straight
//! into destination SGLs, and a writer (the send engine) that batches PDUs
//! into vectored writes and releases each SGL only once it has been written.
//!
//! `iscsi` is the sans-IO core of the iSCSI target: PDUs, text negotiation,
//! login with CHAP, the CmdSN window and write transfers, and the encoder of
//! the send path.
#![forbid(unsafe_code)]

pub mod digest;
pub mod iscsi;
pub mod nvme_tcp;
