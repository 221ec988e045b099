//! iSCSI (RFC 7143), sans-IO: the target's side of the protocol as bytes
//! and events in, PDUs and actions out.
//!
//! * [`pdu`]: every BHS in both directions, AHS, digests, padding, and the
//!   header check that runs before any payload is read.
//! * [`text`]: key=value text and operational parameter negotiation.
//! * [`chap`], [`login`]: the login state machine with CHAP.
//! * [`session`]: the CmdSN window and the data transfer of one WRITE
//!   (unsolicited data, R2T bursts, DataSN/offset checks), Data-In cutting.
//! * [`wire`]: encoding of what the target sends, with sequence numbers
//!   stamped in send order, kept apart from the socket loop.
//!
//! The server's tokio glue (reader, writer, SCSI dispatch) lives in
//! `pinion_target::iscsi`.

pub mod chap;
pub mod login;
pub mod pdu;
pub mod session;
pub mod text;
pub mod wire;
