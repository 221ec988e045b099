//! The receive side of a queue: every PDU is checked whole (common header,
//! header, digest, lengths, transfer tags) before anything acts on it.

use super::{Command, Msg, TransportError, Tx};
use crate::digest::crc32c;
use crate::recv::{read_into, RECV_BUFFER};
use nvme_types::tcp::{self, Fes, Limits, Pdu, PduError, Role, DIGEST_LEN, MAX_HLEN};
use nvme_types::Status;
use pinion_backends::{PagePool, Sgl};
use std::io::ErrorKind;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use zerocopy::FromBytes;

pub(super) struct State {
    pub negotiated: super::Negotiated,
    pub limits: Limits,
    pub pool: PagePool,
    pub tx: mpsc::UnboundedSender<Msg>,
}

/// An H2CData header, checked as a PDU (common header, digest, lengths):
/// whether it fits its transfer is for the transfer table to say
/// ([`super::Transfers::on_data`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub ttag: u16,
    pub cccid: u16,
    pub datao: usize,
    pub datal: usize,
    /// The LAST_PDU flag.
    pub last: bool,
}

/// What the driver tells the reader to do next.
#[derive(Debug)]
pub enum Feed {
    /// Read the next PDU.
    Read,
    /// Read the payload of the H2CData just returned into this SGL (at its
    /// data offset), then return it ([`Event::Placed`]).
    Place(Sgl),
    /// Read and drop the payload of the H2CData just returned.
    Drain,
    /// The H2CData just returned is wrong: C2HTermReq with its header, end.
    Fatal(PduError),
}

/// What the reader found.
#[derive(Debug)]
pub enum Event {
    /// A command capsule (with its in-capsule data, if any).
    Command(Command),
    /// An H2CData header: the driver answers with a [`Feed`] for its payload.
    Data(DataHeader),
    /// The payload of H2CData `hdr` is in `sgl`; `digest_ok`: its data
    /// digest matched (or none was negotiated).
    Placed { hdr: DataHeader, sgl: Sgl, digest_ok: bool },
    /// The receive side has ended (the host closed, the socket failed, or
    /// a fatal PDU error, whose C2HTermReq is queued to be sent).
    End,
}

/// An H2CData whose payload waits for the driver's [`Feed`].
struct Held {
    hdr: DataHeader,
    layout: tcp::Layout,
    bytes: [u8; H2C_HLEN],
}

/// An H2CData PDU's header length (the Reader, which holds one, is moved
/// for every command: it stays small).
const H2C_HLEN: usize = core::mem::size_of::<tcp::DataHdr>();

/// The receive side of a queue, run inside the connection's driver:
/// [`Reader::next`] reads PDUs until the next command capsule or H2CData
/// header, and places H2CData payloads where the driver says.
pub struct Reader {
    rd: BufReader<OwnedReadHalf>,
    st: State,
    held: Option<Held>,
}

impl Reader {
    pub(super) fn new(rd: OwnedReadHalf, st: State) -> Reader {
        // Headers are small and frequent: buffer them. Payloads are read
        // straight into their pages.
        Reader { rd: BufReader::with_capacity(RECV_BUFFER, rd), st, held: None }
    }

    /// Does what `feed` says and returns the next event. The reader moves
    /// in and out, so the future is `'static` and the driver keeps it
    /// across its turns.
    pub async fn next(mut self, feed: Feed) -> (Reader, Event) {
        // The driver moves this future into place for every event, so what
        // it holds is copied per command: the payload's arms are boxed (one
        // allocation per H2CData PDU, never per command), and it holds one
        // `read_loop`.
        let mut feed = feed;
        let r = loop {
            break match (feed, self.held.take()) {
                (Feed::Read, None) => read_loop(&mut self.rd, &self.st, &mut self.held).await,
                (Feed::Place(sgl), Some(h)) => Box::pin(place(&mut self.rd, h, sgl)).await,
                (Feed::Drain, Some(h)) => match Box::pin(drain(&mut self.rd, h.layout)).await {
                    Ok(()) => {
                        feed = Feed::Read;
                        continue;
                    }
                    Err(e) => Err(e),
                },
                (Feed::Fatal(e), Some(h)) => Err(Stop::Fatal(e, h.bytes.to_vec())),
                (f, h) => {
                    // a driver bug, not the host's: end the connection, loudly
                    tracing::error!(feed = ?f, held = h.is_some(), "reader fed out of turn");
                    Err(fatal(Fes::PDU_SEQUENCE_ERROR, 0, "internal: reader fed out of turn", &[]))
                }
            };
        };
        let e = match r {
            Ok(e) => e,
            Err(stop) => {
                end(&self.rd, &self.st, stop);
                Event::End
            }
        };
        (self, e)
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
            let _ = st.tx.send(Msg::Tx(Tx::Term { fes: e.fes, fei: e.fei, hdr }));
        }
    }
}

async fn read_digest<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<u32> {
    let mut d = [0u8; DIGEST_LEN];
    rd.read_exact(&mut d).await?;
    Ok(u32::from_le_bytes(d))
}

/// Reads PDUs until a command capsule or an H2CData header (kept in
/// `held` for the driver's answer), or the end.
async fn read_loop(rd: &mut BufReader<OwnedReadHalf>, st: &State, held: &mut Option<Held>) -> Result<Event, Stop> {
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
            skip(rd, layout.pad).await?;
        }
        let r = match pdu {
            Pdu::CapsuleCmd(c) => return capsule(rd, st, &layout, c.sqe).await.map(Event::Command),
            Pdu::H2CData(d) => {
                let h = DataHeader {
                    ttag: d.ttag.get(),
                    cccid: d.cccid.get(),
                    datao: d.datao.get() as usize,
                    datal: d.datal.get() as usize,
                    last: d.ch.flags & tcp::flags::LAST_PDU != 0,
                };
                // check_header admits H2CData with its one header length only
                let mut bytes = [0u8; H2C_HLEN];
                bytes.copy_from_slice(&hdr[..H2C_HLEN]);
                *held = Some(Held { hdr: h, layout, bytes });
                return Ok(Event::Data(h));
            }
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

/// Reads an H2CData payload (its header checked by the transfer table)
/// into the transfer's SGL.
async fn place(rd: &mut BufReader<OwnedReadHalf>, h: Held, mut sgl: Sgl) -> Result<Event, Stop> {
    let (datao, datal, dd) = (h.hdr.datao, h.hdr.datal, h.layout.data_digest);
    let got = read_into(rd, &mut sgl, datao, datal, dd).await?;
    let digest_ok = !dd || read_digest(rd).await? == got;
    Ok(Event::Placed { hdr: h.hdr, sgl, digest_ok })
}

/// Reads and drops an H2CData payload (of an aborted transfer).
async fn drain(rd: &mut BufReader<OwnedReadHalf>, layout: tcp::Layout) -> Result<(), Stop> {
    skip(rd, layout.data_len + if layout.data_digest { DIGEST_LEN } else { 0 }).await
}

/// Reads and drops `n` bytes, through the receive buffer: no scratch array
/// in the reader's future, which the driver moves into place for every
/// event.
async fn skip(rd: &mut BufReader<OwnedReadHalf>, mut n: usize) -> Result<(), Stop> {
    while n > 0 {
        let got = rd.fill_buf().await?.len();
        if got == 0 {
            return Err(Stop::Done);
        }
        let k = got.min(n);
        rd.consume(k);
        n -= k;
    }
    Ok(())
}
