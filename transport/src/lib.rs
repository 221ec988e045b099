//! Pinion's wire protocols on sockets.
//!
//! `nvme_tcp` frames NVMe/TCP: the ICReq/ICResp handshake, a reader that
//! checks every PDU fully before acting on it and receives data straight
//! into destination SGLs, and a writer (the send engine) that batches PDUs
//! into vectored writes and releases each SGL only once it has been written.
#![forbid(unsafe_code)]

pub mod digest;
pub mod nvme_tcp;
