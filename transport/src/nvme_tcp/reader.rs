//! The receive side of a queue: every PDU is checked whole (common header,
//! header, digest, lengths, transfer tags) before anything acts on it.

use super::{Command, PendingXfer, Shared, TransportError, Tx};
use crate::digest::crc32c;
use crate::recv::{read_into, RECV_BUFFER};
use nvme_types::tcp::{self, Fes, Limits, Pdu, PduError, Role, DIGEST_LEN, MAX_HLEN};
use nvme_types::Status;
use pinion_backends::{PagePool, Sgl};
use std::io::ErrorKind;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use zerocopy::FromBytes;

pub(super) struct State {
    pub negotiated: super::Negotiated,
    pub limits: Limits,
    pub pool: PagePool,
    pub shared: Arc<Shared>,
    pub tx: mpsc::UnboundedSender<Tx>,
}

/// The receive side of a queue, run inside the connection's driver:
/// [`Reader::next`] reads PDUs until the next command capsule, placing
/// H2CData of R2T transfers on the way.
pub struct Reader {
    rd: BufReader<OwnedReadHalf>,
    st: State,
}

impl Reader {
    pub(super) fn new(rd: OwnedReadHalf, st: State) -> Reader {
        // Headers are small and frequent: buffer them. Payloads are read
        // straight into their pages.
        Reader { rd: BufReader::with_capacity(RECV_BUFFER, rd), st }
    }

    /// The next command from the host. `None`: the receive side has ended
    /// (the host closed, the socket failed, or a fatal PDU error, whose
    /// C2HTermReq is queued to be sent); transfers still waiting for data
    /// then fail. The reader moves in and out, so the future is `'static`
    /// and the driver keeps it across its turns.
    pub async fn next(mut self) -> (Reader, Option<Command>) {
        let r = read_loop(&mut self.rd, &self.st).await;
        let c = match r {
            Ok(c) => Some(c),
            Err(stop) => {
                end(&self.rd, &self.st, stop);
                None
            }
        };
        (self, c)
    }
}

enum Stop {
    /// The host closed the connection or the command consumer went away.
    Done,
    Io(std::io::Error),
    /// A protocol error: C2HTermReq with the offending header, then close.
    Fatal(PduError, Vec<u8>),
    HostTerm(Fes, u32),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        if e.kind() == ErrorKind::UnexpectedEof {
            Stop::Done
        } else {
            Stop::Io(e)
        }
    }
}

fn fatal(fes: Fes, fei: u32, reason: &'static str, hdr: &[u8]) -> Stop {
    Stop::Fatal(PduError { fes, fei, reason }, hdr.to_vec())
}

fn end(rd: &BufReader<OwnedReadHalf>, st: &State, stop: Stop) {
    match stop {
        Stop::Done => tracing::debug!("queue connection closed by host"),
        Stop::Io(e) => match (e.raw_os_error() == Some(libc::EIO)).then(|| crate::tls::control_record(rd.get_ref().as_ref())).flatten() {
            // kTLS: the host sent an alert (close_notify) or a handshake message
            Some(record) => tracing::info!(%record, "TLS control record from the host; connection closed"),
            None => tracing::info!(error = %e, "queue connection lost"),
        },
        Stop::HostTerm(fes, fei) => {
            tracing::warn!(fes = ?fes, fei, error = %TransportError::HostTerminated(fes), "host sent H2CTermReq")
        }
        Stop::Fatal(e, hdr) => {
            tracing::warn!(fes = ?e.fes, fei = e.fei, reason = e.reason, "fatal PDU error; sending C2HTermReq");
            let _ = st.tx.send(Tx::Term { fes: e.fes, fei: e.fei, hdr });
        }
    }
    // Transfers still waiting for data will never get it.
    let mut x = st.shared.xfers();
    x.closed = true;
    x.pending.clear();
}

async fn read_digest<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<u32> {
    let mut d = [0u8; DIGEST_LEN];
    rd.read_exact(&mut d).await?;
    Ok(u32::from_le_bytes(d))
}

/// Reads PDUs until a command capsule (which it returns) or the end.
async fn read_loop(rd: &mut BufReader<OwnedReadHalf>, st: &State) -> Result<Command, Stop> {
    let digests = st.negotiated.digests;
    let mut hdr = [0u8; MAX_HLEN + DIGEST_LEN];
    loop {
        if let Err(e) = rd.read_exact(&mut hdr[..8]).await {
            return Err(e.into());
        }
        let ch = tcp::CommonHeader::read_from_bytes(&hdr[..8]).expect("8 bytes");
        let layout = match tcp::check_header(&ch, Role::Controller, true, digests, st.limits) {
            Ok(l) => l,
            Err(e) => return Err(Stop::Fatal(e, hdr[..8].to_vec())),
        };
        let hlen = layout.hlen;
        if let Err(e) = rd.read_exact(&mut hdr[8..8 + layout.rest_of_header()]).await {
            return Err(e.into());
        }
        if layout.header_digest {
            let want = u32::from_le_bytes(hdr[hlen..hlen + 4].try_into().expect("4 bytes"));
            if crc32c(&hdr[..hlen]) != want {
                return Err(fatal(Fes::HEADER_DIGEST_ERROR, 0, "header digest mismatch", &hdr[..hlen]));
            }
        }
        let pdu = match Pdu::parse(&layout, &hdr[..hlen]) {
            Ok(p) => p,
            Err(e) => return Err(Stop::Fatal(e, hdr[..hlen].to_vec())),
        };
        if layout.pad > 0 {
            let mut pad = [0u8; 256];
            if let Err(e) = rd.read_exact(&mut pad[..layout.pad]).await {
                return Err(e.into());
            }
        }
        let r = match pdu {
            Pdu::CapsuleCmd(c) => return capsule(rd, st, &layout, c.sqe).await,
            Pdu::H2CData(d) => h2c_data(rd, st, &layout, &d, &hdr[..hlen]).await,
            Pdu::H2CTermReq(t) => {
                let mut data = vec![0u8; layout.data_len];
                let _ = rd.read_exact(&mut data).await;
                let fei = u32::from(t.feil.get()) | (u32::from(t.feiu.get()) << 16);
                Err(Stop::HostTerm(Fes(t.fes.get()), fei))
            }
            // check_header admits nothing else on a connected controller queue
            _ => Err(fatal(Fes::INVALID_HEADER_FIELD, 0, "unexpected PDU", &hdr[..hlen])),
        };
        r?;
    }
}

async fn capsule(rd: &mut BufReader<OwnedReadHalf>, st: &State, layout: &tcp::Layout, sqe: nvme_types::Sqe) -> Result<Command, Stop> {
    let mut data = None;
    let mut data_error = None;
    if layout.data_len > 0 {
        let mut sgl = Sgl::alloc(&st.pool, pinion_backends::Direction::Dest, layout.data_len).await;
        let got = read_into(rd, &mut sgl, 0, layout.data_len, layout.data_digest).await?;
        if layout.data_digest {
            let want = read_digest(rd).await?;
            if got != want {
                tracing::warn!(cid = sqe.cid(), "in-capsule data digest mismatch");
                data_error = Some(Status::TRANSIENT_TRANSPORT_ERROR);
            }
        }
        data = Some(sgl);
    }
    Ok(Command { sqe, data, data_error })
}

async fn h2c_data(
    rd: &mut BufReader<OwnedReadHalf>,
    st: &State,
    layout: &tcp::Layout,
    d: &tcp::DataHdr,
    hdr: &[u8],
) -> Result<(), Stop> {
    let ttag = d.ttag.get();
    let (datao, datal) = (d.datao.get() as usize, d.datal.get() as usize);
    let taken = {
        let mut x = st.shared.xfers();
        let p = x.pending.remove(&ttag);
        let aborted = p.is_none() && x.aborted.contains(&ttag);
        (p, aborted)
    };
    let mut x = match taken {
        (Some(x), _) => x,
        (None, true) => {
            // the command was aborted (admin Abort) while the host sent this
            tracing::debug!(ttag, "H2CData for an aborted transfer dropped");
            let mut left = layout.data_len + if layout.data_digest { 4 } else { 0 };
            let mut scratch = [0u8; 4096];
            while left > 0 {
                let n = left.min(scratch.len());
                rd.read_exact(&mut scratch[..n]).await.map_err(Stop::from)?;
                left -= n;
            }
            return Ok(());
        }
        (None, false) => return Err(fatal(Fes::INVALID_HEADER_FIELD, 10, "H2CData for an unknown transfer tag", hdr)),
    };
    if x.cccid != d.cccid.get() {
        return Err(fatal(Fes::INVALID_HEADER_FIELD, 8, "H2CData command id does not match its R2T", hdr));
    }
    // We send one R2T per command for the whole transfer and take its data
    // in order, as the Linux host sends it.
    if datao != x.received {
        return Err(fatal(Fes::DATA_OUT_OF_RANGE, 12, "H2CData offset out of order", hdr));
    }
    if datao + datal > x.sgl.len() {
        return Err(fatal(Fes::DATA_OUT_OF_RANGE, 16, "H2CData beyond the requested range", hdr));
    }
    let got = read_into(rd, &mut x.sgl, datao, datal, layout.data_digest).await?;
    let digest_ok = !layout.data_digest || read_digest(rd).await? == got;
    x.received += datal;
    if !digest_ok {
        tracing::warn!(cid = x.cccid, ttag, "H2CData digest mismatch");
        let _ = x.done.send(Err(Status::TRANSIENT_TRANSPORT_ERROR));
        // the rest of this transfer (if any) is unknown-tag and fatal; the
        // Linux host sends one PDU per R2T chunk and stops on the error
        return Ok(());
    }
    let last = d.ch.flags & tcp::flags::LAST_PDU != 0;
    if x.received == x.sgl.len() {
        let PendingXfer { sgl, done, .. } = x;
        let _ = done.send(Ok(sgl));
    } else if last {
        return Err(fatal(Fes::PDU_SEQUENCE_ERROR, 1, "last H2CData before the transfer was complete", hdr));
    } else {
        st.shared.xfers().pending.insert(ttag, x);
    }
    Ok(())
}
