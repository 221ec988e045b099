//! Which fused operations a queue accepts, and whether two adjacent
//! commands form one: the decisions only, without I/O, so they are tested
//! here. The queue (`queue::dispatch`) holds a fused first until the next
//! command of its submission queue arrives; `io::fused` executes a pair.

use nvme_types::command::{fuse, io};
use nvme_types::{Sqe, Status};

/// What to do with a command whose FUSE field is not 0, arriving while no
/// fused first is pending.
#[derive(Debug, PartialEq, Eq)]
pub enum Alone {
    /// A valid first: hold it until the next command arrives.
    HoldFirst,
    /// Complete it with this status.
    Reject(Status),
}

/// Checks a command with FUSE != 0 when no first is pending. Only Compare
/// + Write is supported (FUSES bit 0), on I/O queues.
pub fn alone(sqe: &Sqe, qid: u16) -> Alone {
    match sqe.fuse() {
        fuse::FIRST if qid != 0 && sqe.opcode() == io::COMPARE => Alone::HoldFirst,
        fuse::FIRST => {
            tracing::debug!(qid, opcode = sqe.opcode, "fused first is not an I/O Compare");
            Alone::Reject(Status::INVALID_FIELD.dnr())
        }
        fuse::SECOND => {
            tracing::debug!(qid, opcode = sqe.opcode, "fused second without a first before it");
            Alone::Reject(Status::ABORTED_MISSING_FUSED)
        }
        f => {
            tracing::debug!(fuse = f, "reserved FUSE value");
            Alone::Reject(Status::INVALID_FIELD.dnr())
        }
    }
}

/// What the command after a held fused first means for the pair.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A matching second: execute the pair.
    Pair,
    /// Not a second: the first completes with Missing Fused Command and the
    /// next command is handled on its own.
    Missing,
    /// A second that does not match the first (another opcode, namespace or
    /// LBA range): both complete with this status.
    Mismatch(Status),
}

/// Decides what `next` (the command right after `first` in the same
/// submission queue) does to the held fused first.
pub fn next(first: &Sqe, next: &Sqe) -> Next {
    if next.fuse() != fuse::SECOND {
        tracing::debug!(first = first.cid(), next = next.cid(), "fused first not followed by its second");
        return Next::Missing;
    }
    let same_range = first.nsid() == next.nsid() && first.slba() == next.slba() && first.nlb() == next.nlb();
    if next.opcode() != io::WRITE || !same_range {
        tracing::debug!(first = first.cid(), second = next.cid(), opcode = next.opcode, same_range, "fused second does not match its first");
        return Next::Mismatch(Status::INVALID_FIELD.dnr());
    }
    Next::Pair
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_types::command::Opcode;

    fn sqe(op: Opcode, f: u8, nsid: u32, slba: u64, nlb0: u32) -> Sqe {
        Sqe {
            opcode: op.0,
            flags: f | (1 << 6),
            nsid: nsid.into(),
            cdw10: (slba as u32).into(),
            cdw11: ((slba >> 32) as u32).into(),
            cdw12: nlb0.into(),
            ..Sqe::default()
        }
    }

    #[test]
    fn a_compare_first_on_an_io_queue_is_held() {
        assert_eq!(alone(&sqe(io::COMPARE, fuse::FIRST, 1, 5, 0), 1), Alone::HoldFirst);
    }

    #[test]
    fn other_firsts_admin_queue_and_reserved_fuse_are_invalid_field() {
        let inv = Alone::Reject(Status::INVALID_FIELD.dnr());
        assert_eq!(alone(&sqe(io::WRITE, fuse::FIRST, 1, 5, 0), 1), inv);
        assert_eq!(alone(&sqe(io::READ, fuse::FIRST, 1, 5, 0), 1), inv);
        assert_eq!(alone(&sqe(io::COMPARE, fuse::FIRST, 1, 5, 0), 0), inv);
        assert_eq!(alone(&sqe(io::COMPARE, 3, 1, 5, 0), 1), inv);
    }

    #[test]
    fn a_lone_second_is_missing_fused() {
        assert_eq!(alone(&sqe(io::WRITE, fuse::SECOND, 1, 5, 0), 1), Alone::Reject(Status::ABORTED_MISSING_FUSED));
    }

    #[test]
    fn a_matching_write_second_pairs() {
        let first = sqe(io::COMPARE, fuse::FIRST, 1, 1 << 33 | 7, 3);
        assert_eq!(next(&first, &sqe(io::WRITE, fuse::SECOND, 1, 1 << 33 | 7, 3)), Next::Pair);
    }

    #[test]
    fn a_normal_or_first_command_next_leaves_the_first_missing() {
        let first = sqe(io::COMPARE, fuse::FIRST, 1, 7, 0);
        assert_eq!(next(&first, &sqe(io::WRITE, fuse::NORMAL, 1, 7, 0)), Next::Missing);
        assert_eq!(next(&first, &sqe(io::COMPARE, fuse::FIRST, 1, 7, 0)), Next::Missing);
    }

    #[test]
    fn a_second_with_another_opcode_namespace_or_range_is_a_mismatch() {
        let first = sqe(io::COMPARE, fuse::FIRST, 1, 7, 0);
        let inv = Next::Mismatch(Status::INVALID_FIELD.dnr());
        assert_eq!(next(&first, &sqe(io::READ, fuse::SECOND, 1, 7, 0)), inv);
        assert_eq!(next(&first, &sqe(io::WRITE, fuse::SECOND, 2, 7, 0)), inv);
        assert_eq!(next(&first, &sqe(io::WRITE, fuse::SECOND, 1, 8, 0)), inv);
        assert_eq!(next(&first, &sqe(io::WRITE, fuse::SECOND, 1, 7, 1)), inv);
        assert_eq!(next(&first, &sqe(io::WRITE, fuse::SECOND, 1, 7 + (1 << 32), 0)), inv);
    }
}
