//! Asynchronous events: how a controller tells its host that something
//! changed (namespaces, ANA states, the discovery log, reservations).
//!
//! The host parks Asynchronous Event Request commands on the admin queue; an
//! event completes one of them. Everything here lives in the controller's
//! state, under its lock, and any thread may post: a reload, a reservation
//! taken on another controller, an operator changing ANA states. Only the
//! admin queue's own driver sends the completions, woken through
//! [`Controller::aen_wake`], so a completion never races the queue's other
//! sends.
//!
//! Rules (NVMe base specification, Asynchronous Event Request):
//! - an event the host disabled (Asynchronous Event Configuration, feature
//!   0Bh) is not reported;
//! - once an event is reported, further events that point at the same log
//!   page are not reported again until the host reads that page without
//!   Retain Asynchronous Event: they are folded into the one report, the
//!   log page carries the detail;
//! - with no request parked, the event waits for the next one.

use nvme_types::log::lid;
use std::collections::VecDeque;

/// One asynchronous event as the completion reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Asynchronous Event Type (DW0 bits 2:0).
    pub kind: u8,
    /// Asynchronous Event Information (DW0 bits 15:8).
    pub info: u8,
    /// The log page that tells the detail (DW0 bits 23:16).
    pub log_page: u8,
}

/// Event types.
pub mod kind {
    pub const NOTICE: u8 = 2;
    pub const IO_COMMAND_SPECIFIC: u8 = 6;
}

impl AsyncEvent {
    /// Namespaces were added, removed or resized: Changed Namespace List.
    pub const NS_ATTR_CHANGED: AsyncEvent = AsyncEvent { kind: kind::NOTICE, info: 0x00, log_page: lid::CHANGED_NS };
    /// An ANA group changed state on this controller's port: ANA log.
    pub const ANA_CHANGE: AsyncEvent = AsyncEvent { kind: kind::NOTICE, info: 0x03, log_page: 0x0c };
    /// The discovery log changed (discovery controllers only).
    pub const DISCOVERY_CHANGE: AsyncEvent = AsyncEvent { kind: kind::NOTICE, info: 0xf0, log_page: lid::DISCOVERY };
    /// A reservation notification is waiting in the Reservation
    /// Notification log (its own mask is feature 82h, per namespace, applied
    /// by whoever posts it).
    pub const RESERVATION_LOG: AsyncEvent = AsyncEvent { kind: kind::IO_COMMAND_SPECIFIC, info: 0x00, log_page: 0x80 };

    /// The Asynchronous Event Configuration bit that enables this event,
    /// when there is one.
    pub fn config_bit(&self) -> Option<u32> {
        match (self.kind, self.info) {
            (kind::NOTICE, 0x00) => Some(1 << 8),
            (kind::NOTICE, 0x03) => Some(1 << 11),
            (kind::NOTICE, 0xf0) => Some(1 << 31),
            _ => None,
        }
    }

    /// Completion DW0.
    pub fn dw0(&self) -> u32 {
        u32::from(self.kind & 0x7) | u32::from(self.info) << 8 | u32::from(self.log_page) << 16
    }
}

/// A controller's event state.
#[derive(Debug, Default)]
pub struct AenState {
    /// Parked Asynchronous Event Request command IDs, oldest first.
    parked: VecDeque<u16>,
    /// Events no request has carried yet.
    pending: VecDeque<AsyncEvent>,
    /// Log pages reported and not yet read (bit per log page ID).
    reported: [u64; 4],
    /// Completions ready for the admin queue's driver to send: (CID, DW0).
    ready: Vec<(u16, u32)>,
}

/// What a new Asynchronous Event Request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Park {
    /// Completes now, carrying this DW0.
    Complete(u32),
    /// Waits for an event.
    Parked,
    /// Too many parked: Asynchronous Event Request Limit Exceeded.
    Limit,
}

impl AenState {
    fn is_reported(&self, lp: u8) -> bool {
        self.reported[usize::from(lp / 64)] & 1 << (lp % 64) != 0
    }

    fn set_reported(&mut self, lp: u8, on: bool) {
        let (w, b) = (usize::from(lp / 64), 1u64 << (lp % 64));
        if on {
            self.reported[w] |= b
        } else {
            self.reported[w] &= !b
        }
    }

    /// A new Asynchronous Event Request; `limit` requests may be parked.
    pub fn park(&mut self, cid: u16, limit: usize) -> Park {
        if let Some(ev) = self.pending.pop_front() {
            self.set_reported(ev.log_page, true);
            return Park::Complete(ev.dw0());
        }
        if self.parked.len() >= limit {
            return Park::Limit;
        }
        self.parked.push_back(cid);
        Park::Parked
    }

    /// Posts an event; `config` is the host's Asynchronous Event
    /// Configuration. Returns true when a completion became ready (the
    /// admin queue's driver must be woken).
    pub fn post(&mut self, ev: AsyncEvent, config: u32) -> bool {
        if ev.config_bit().is_some_and(|bit| config & bit == 0) {
            return false;
        }
        if self.is_reported(ev.log_page) || self.pending.iter().any(|p| p.log_page == ev.log_page) {
            return false;
        }
        match self.parked.pop_front() {
            Some(cid) => {
                self.set_reported(ev.log_page, true);
                self.ready.push((cid, ev.dw0()));
                true
            }
            None => {
                self.pending.push_back(ev);
                false
            }
        }
    }

    /// The host read a log page; without RAE the events it reports are
    /// unmasked.
    pub fn log_read(&mut self, lp: u8, rae: bool) {
        if !rae {
            self.set_reported(lp, false);
        }
    }

    /// Completions to send now.
    pub fn take_ready(&mut self) -> Vec<(u16, u32)> {
        std::mem::take(&mut self.ready)
    }

    pub fn parked(&self) -> usize {
        self.parked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u32 = 1 << 8 | 1 << 11 | 1 << 31;

    #[test]
    fn an_event_completes_a_parked_request() {
        let mut s = AenState::default();
        assert_eq!(s.park(7, 4), Park::Parked);
        assert!(s.post(AsyncEvent::NS_ATTR_CHANGED, ALL));
        assert_eq!(s.take_ready(), vec![(7, 0x0004_0002)]);
        assert_eq!(s.parked(), 0);
        assert!(s.take_ready().is_empty());
    }

    #[test]
    fn an_event_waits_for_the_next_request() {
        let mut s = AenState::default();
        assert!(!s.post(AsyncEvent::RESERVATION_LOG, 0));
        assert_eq!(s.park(1, 4), Park::Complete(0x0080_0006));
        assert_eq!(s.park(2, 4), Park::Parked);
    }

    #[test]
    fn a_disabled_event_is_not_reported() {
        let mut s = AenState::default();
        s.park(1, 4);
        assert!(!s.post(AsyncEvent::ANA_CHANGE, 1 << 8));
        assert!(s.take_ready().is_empty());
        assert!(s.post(AsyncEvent::ANA_CHANGE, 1 << 11));
        assert_eq!(s.take_ready(), vec![(1, 0x000c_0302)]);
    }

    #[test]
    fn repeats_fold_until_the_log_is_read() {
        let mut s = AenState::default();
        s.park(1, 4);
        s.park(2, 4);
        assert!(s.post(AsyncEvent::NS_ATTR_CHANGED, ALL));
        assert!(!s.post(AsyncEvent::NS_ATTR_CHANGED, ALL), "masked until the log is read");
        s.log_read(lid::CHANGED_NS, true);
        assert!(!s.post(AsyncEvent::NS_ATTR_CHANGED, ALL), "RAE keeps it masked");
        // another log page is not affected
        assert!(s.post(AsyncEvent::ANA_CHANGE, ALL));
        s.log_read(lid::CHANGED_NS, false);
        assert_eq!(s.take_ready().len(), 2);
        assert_eq!(s.park(3, 4), Park::Parked);
        assert!(s.post(AsyncEvent::NS_ATTR_CHANGED, ALL));
        assert_eq!(s.take_ready(), vec![(3, 0x0004_0002)]);
    }

    #[test]
    fn pending_events_fold_too_and_the_limit_holds() {
        let mut s = AenState::default();
        assert!(!s.post(AsyncEvent::DISCOVERY_CHANGE, ALL));
        assert!(!s.post(AsyncEvent::DISCOVERY_CHANGE, ALL));
        assert_eq!(s.park(1, 1), Park::Complete(0x0070_f002));
        assert_eq!(s.park(2, 1), Park::Parked);
        assert_eq!(s.park(3, 1), Park::Limit);
    }
}
