//! The send loop of an iSCSI connection: takes what is queued, encodes a
//! batch with `wire::Encoder` (which stamps sequence numbers in send
//! order), and writes it with vectored writes. Data-In payloads go out
//! straight from the volume's SGL; each SGL is released only once the socket
//! has accepted its bytes.

use pinion_transport::iscsi::session::CmdWindow;
use pinion_transport::iscsi::wire::{Encoder, Tx};
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

const MAX_BATCH: usize = 64;

pub(super) async fn run(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Tx>, mut enc: Encoder, window: Arc<Mutex<CmdWindow>>) {
    let mut batch: Vec<Tx> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        enc.clear();
        let mut close = false;
        for (i, item) in batch.iter().enumerate() {
            if matches!(item, Tx::Close) {
                close = true;
                break;
            }
            enc.encode(i, item, &window);
        }
        let mut slices = enc.slices(&batch);
        let r = write_all_vectored(&mut wr, &mut slices).await;
        drop(slices);
        // the socket has the bytes: data SGLs may be released now
        batch.clear();
        if let Err(e) = r {
            tracing::info!(error = %e, "iSCSI send failed");
            break;
        }
        if close {
            break;
        }
    }
    rx.close();
    let _ = wr.shutdown().await;
}

async fn write_all_vectored(wr: &mut OwnedWriteHalf, slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    let mut s = slices;
    while !s.is_empty() {
        let n = s.len().min(1024);
        let w = wr.write_vectored(&s[..n]).await?;
        if w == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut s, w);
    }
    Ok(())
}
