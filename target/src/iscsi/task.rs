//! The SCSI tasks of one iSCSI session, and the rule that ends each of them
//! exactly once.
//!
//! # Ownership rule
//!
//! A task has one entry in its session's [`TaskTable`] from the moment its
//! command is accepted until it has ended, and its state changes only under
//! the table's lock:
//!
//! ```text
//!   Receiving ──start──▶ Running ──complete──▶ gone, its response queued
//!       │                   │
//!       │ abort             │ abort
//!       ▼                   ▼
//!   gone, no response    Aborted ──complete──▶ gone, no response
//! ```
//!
//! * **Receiving**: the command is accepted and waits for its Data-Out (or
//!   is about to start). The session's reader owns its buffers. An abort
//!   removes the entry at once and wakes the reader ([`TaskTable::reap`]),
//!   which drops the buffers (their pool pages go back) and discards any
//!   Data-Out that still arrives. The reader starts a task only through
//!   [`TaskTable::start`], so a write whose data was being received when it
//!   was aborted is never executed.
//! * **Running**: the SCSI layer executes it. Its end is decided by whoever
//!   changes the state first. The task's own completion
//!   ([`TaskTable::complete`]) removes the entry and queues the response
//!   *while it holds the lock*, so a task management function that looks
//!   later finds no task and its own response already behind the task's.
//!   An abort moves it to **Aborted**: the task runs to the end of its
//!   backend I/O (an I/O is never cut mid-flight: its pages may be in the
//!   kernel's hands) and then leaves the table without a response.
//! * A task management function answers FUNCTION COMPLETE for the tasks it
//!   aborted only once every one of them has left the table
//!   ([`TaskTable::wait_gone`]): no aborted task changes the medium after
//!   the initiator has heard it was aborted. A task that had already won
//!   completion is not in the table any more, so ABORT TASK answers TASK
//!   DOES NOT EXIST for it: a task is aborted or completed, never both.
//!
//! The CmdSN slot of a non-immediate task frees when its entry leaves.

use pinion_transport::iscsi::pdu::{sn_le, sn_lt};
use pinion_transport::iscsi::session::CmdWindow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Receiving,
    Running,
    Aborted,
}

struct Entry {
    lun: u64,
    immediate: bool,
    state: State,
}

/// What an abort did to one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Aborted {
    /// It was still receiving its data: it is gone, and was never executed.
    Removed,
    /// It was running: it ends without a response once its I/O is done.
    Stopping,
    /// An earlier abort had already claimed it.
    Already,
}

/// The answer to ABORT TASK (RFC 7143 §11.5.1), decided under the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AbortTask {
    /// The task was there and is claimed by this abort: FUNCTION COMPLETE
    /// once it has left the table.
    Claimed(Aborted),
    /// No such task, but its RefCmdSN lies in the command window below the
    /// TMF's own CmdSN: the command has not arrived and is considered
    /// received and done (case b): FUNCTION COMPLETE.
    NotArrived,
    /// No such task, and the RefCmdSN is outside the window: the command
    /// came and completed (its response is already queued), or never
    /// existed: TASK DOES NOT EXIST.
    DoesNotExist,
}

/// A session's live tasks, shared by its reader, its tasks and task
/// management from other sessions. See the module comment for the rule.
pub struct TaskTable {
    m: Mutex<HashMap<u32, Entry>>,
    window: Arc<Mutex<CmdWindow>>,
    /// Bumped whenever an aborted task leaves.
    ended: watch::Sender<u64>,
    /// Wakes the reader when a task still receiving data was aborted.
    reap: Notify,
}

impl TaskTable {
    pub(crate) fn new(window: Arc<Mutex<CmdWindow>>) -> TaskTable {
        TaskTable { m: Mutex::new(HashMap::new()), window, ended: watch::Sender::new(0), reap: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Entry>> {
        self.m.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn window(&self) -> MutexGuard<'_, CmdWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A command was accepted; false if its ITT names a task still present.
    pub(crate) fn insert(&self, itt: u32, lun: u64, immediate: bool) -> bool {
        let mut m = self.lock();
        if m.contains_key(&itt) {
            return false;
        }
        m.insert(itt, Entry { lun, immediate, state: State::Receiving });
        true
    }

    pub(crate) fn contains(&self, itt: u32) -> bool {
        self.lock().contains_key(&itt)
    }

    pub(crate) fn state(&self, itt: u32) -> Option<State> {
        self.lock().get(&itt).map(|e| e.state)
    }

    /// Receiving → Running. False if the task was aborted meanwhile: the
    /// caller must not execute it.
    pub(crate) fn start(&self, itt: u32) -> bool {
        match self.lock().get_mut(&itt) {
            Some(e) if e.state == State::Receiving => {
                e.state = State::Running;
                true
            }
            _ => false,
        }
    }

    fn remove(&self, m: &mut HashMap<u32, Entry>, itt: u32) -> Option<Entry> {
        let e = m.remove(&itt)?;
        if !e.immediate {
            self.window().complete();
        }
        Some(e)
    }

    /// The task has its outcome. If no abort claimed it first, `send` runs
    /// under the lock (it must only queue the response) and this returns
    /// true; an aborted task leaves silently and this returns false.
    pub(crate) fn complete(&self, itt: u32, send: impl FnOnce()) -> bool {
        let mut m = self.lock();
        match m.get(&itt).map(|e| e.state) {
            Some(State::Receiving | State::Running) => {
                self.remove(&mut m, itt);
                send();
                true
            }
            Some(State::Aborted) => {
                self.remove(&mut m, itt);
                drop(m);
                self.ended.send_modify(|n| *n = n.wrapping_add(1));
                false
            }
            None => false,
        }
    }

    fn abort_locked(&self, m: &mut HashMap<u32, Entry>, itt: u32) -> Option<Aborted> {
        let e = m.get_mut(&itt)?;
        Some(match e.state {
            State::Receiving => {
                self.remove(m, itt);
                self.reap.notify_one();
                Aborted::Removed
            }
            State::Running => {
                e.state = State::Aborted;
                Aborted::Stopping
            }
            State::Aborted => Aborted::Already,
        })
    }

    /// Aborts one task; `None` if there is none with this ITT (it never
    /// came, or it has completed).
    pub(crate) fn abort(&self, itt: u32) -> Option<Aborted> {
        self.abort_locked(&mut self.lock(), itt)
    }

    /// ABORT TASK for `itt`: claims the task, or says why there is none.
    /// The window is read under the same lock as the table, so a task that
    /// completes concurrently is either claimed here or its CmdSN is
    /// already below ExpCmdSN.
    pub(crate) fn abort_task(&self, itt: u32, ref_cmdsn: u32, tmf_cmdsn: u32) -> AbortTask {
        let mut m = self.lock();
        if let Some(a) = self.abort_locked(&mut m, itt) {
            return AbortTask::Claimed(a);
        }
        let w = *self.window();
        let in_window = sn_le(w.exp_cmdsn, ref_cmdsn) && sn_le(ref_cmdsn, w.max_cmdsn());
        if in_window && sn_lt(ref_cmdsn, tmf_cmdsn) {
            AbortTask::NotArrived
        } else {
            AbortTask::DoesNotExist
        }
    }

    /// Aborts every task whose LUN matches; returns their ITTs.
    pub fn abort_where(&self, pred: impl Fn(u64) -> bool) -> Vec<u32> {
        let mut m = self.lock();
        let victims: Vec<u32> = m.iter().filter(|(_, e)| pred(e.lun)).map(|(k, _)| *k).collect();
        for itt in &victims {
            self.abort_locked(&mut m, *itt);
        }
        victims
    }

    /// Resolves once none of `itts` is an aborted task still ending.
    pub(crate) async fn wait_gone(&self, itts: &[u32]) {
        let mut rx = self.ended.subscribe();
        loop {
            {
                let m = self.lock();
                if !itts.iter().any(|i| m.get(i).is_some_and(|e| e.state == State::Aborted)) {
                    return;
                }
            }
            // the sender lives as long as `self`
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Woken when a task still receiving data was aborted (by anyone).
    pub(crate) fn reap(&self) -> &Notify {
        &self.reap
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn table() -> TaskTable {
        TaskTable::new(Arc::new(Mutex::new(CmdWindow::new(1, 8))))
    }

    /// The completion reached its decision point first: the response is
    /// queued, and a later ABORT TASK finds no task (TASK DOES NOT EXIST).
    #[test]
    fn completion_first_then_abort_finds_nothing() {
        let t = table();
        assert!(t.insert(7, 0, false));
        assert!(t.start(7));
        let sent = AtomicUsize::new(0);
        assert!(t.complete(7, || {
            sent.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        assert_eq!(t.abort(7), None);
        assert!(t.is_empty());
    }

    /// The race of libiscsi's AbortTaskSimpleAsync: WRITE (CmdSN 1), then an
    /// immediate ABORT TASK (CmdSN 2) that arrives after the WRITE has
    /// completed. The answer must be TASK DOES NOT EXIST, not FUNCTION
    /// COMPLETE: the initiator already has the WRITE's GOOD status.
    #[test]
    fn abort_task_after_completion_is_task_does_not_exist() {
        let t = table();
        assert_eq!(t.window().receive(1, false), pinion_transport::iscsi::session::CmdSnCheck::Accept);
        assert!(t.insert(0x10, 0, false));
        assert!(t.start(0x10));
        // the completion holds the decision point and wins
        assert!(t.complete(0x10, || {}));
        assert_eq!(t.abort_task(0x10, 1, 2), AbortTask::DoesNotExist);
    }

    /// The same race won by the abort: FUNCTION COMPLETE, and the
    /// completion that follows sends nothing.
    #[test]
    fn abort_task_before_completion_claims_it() {
        let t = table();
        assert_eq!(t.window().receive(1, false), pinion_transport::iscsi::session::CmdSnCheck::Accept);
        assert!(t.insert(0x10, 0, false));
        assert!(t.start(0x10));
        assert_eq!(t.abort_task(0x10, 1, 2), AbortTask::Claimed(Aborted::Stopping));
        assert!(!t.complete(0x10, || panic!("aborted task responded")));
    }

    /// RFC 7143 §11.5.1 b: a RefCmdSN in the window below the TMF's CmdSN
    /// names a command that has not arrived: FUNCTION COMPLETE.
    #[test]
    fn abort_task_of_a_command_not_yet_arrived() {
        let t = table();
        // ExpCmdSN 1: CmdSN 1 has not arrived; a non-immediate TMF with CmdSN 2
        assert_eq!(t.abort_task(0x20, 1, 2), AbortTask::NotArrived);
        // outside the window (beyond MaxCmdSN) or not below the TMF: no task
        assert_eq!(t.abort_task(0x20, 100, 101), AbortTask::DoesNotExist);
        assert_eq!(t.abort_task(0x20, 2, 2), AbortTask::DoesNotExist);
    }

    /// The abort reached the task first: the completion that arrives later
    /// (its I/O was already under way) sends nothing.
    #[test]
    fn abort_first_then_completion_sends_nothing() {
        let t = table();
        assert!(t.insert(7, 0, false));
        assert!(t.start(7));
        assert_eq!(t.abort(7), Some(Aborted::Stopping));
        // still present until its I/O ends: a TMF waits for it
        assert_eq!(t.state(7), Some(State::Aborted));
        assert_eq!(t.abort(7), Some(Aborted::Already));
        let sent = AtomicUsize::new(0);
        assert!(!t.complete(7, || {
            sent.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(sent.load(Ordering::SeqCst), 0);
        assert!(t.is_empty());
    }

    /// A write aborted while it waits for Data-Out is never started.
    #[test]
    fn receiving_task_aborted_never_starts() {
        let t = table();
        assert!(t.insert(9, 3, false));
        assert_eq!(t.abort_where(|l| l == 3), vec![9]);
        assert!(!t.start(9));
        assert!(!t.complete(9, || panic!("an aborted task must not respond")));
        assert!(t.is_empty());
    }

    /// Abort by LUN touches only that LUN's tasks.
    #[test]
    fn abort_where_matches_the_lun() {
        let t = table();
        assert!(t.insert(1, 0, false));
        assert!(t.insert(2, 1, false));
        assert!(t.start(1) && t.start(2));
        assert_eq!(t.abort_where(|l| l == 1), vec![2]);
        assert_eq!(t.state(1), Some(State::Running));
        assert_eq!(t.state(2), Some(State::Aborted));
    }

    /// The CmdSN slot of a non-immediate task frees exactly once, when it
    /// leaves, whichever way it ends.
    #[test]
    fn window_slot_frees_once() {
        let t = table();
        for sn in 1..=3 {
            assert_eq!(t.window().receive(sn, false), pinion_transport::iscsi::session::CmdSnCheck::Accept);
        }
        t.insert(1, 0, false);
        t.insert(2, 0, false);
        t.insert(3, 0, true);
        assert!(t.start(1) && t.start(2));
        assert_eq!(t.window().in_flight, 3);
        t.abort(1);
        assert_eq!(t.window().in_flight, 3, "an aborted running task holds its slot until it ends");
        t.complete(1, || {});
        t.complete(1, || {});
        assert_eq!(t.window().in_flight, 2);
        t.complete(2, || {});
        t.abort(3);
        assert_eq!(t.window().in_flight, 1, "immediate tasks hold no slot");
    }

    /// The completer and the aborter race on the lock from two threads; in
    /// every round exactly one of them wins.
    #[test]
    fn racing_threads_exactly_one_wins() {
        let t = Arc::new(table());
        for round in 0..2000u32 {
            assert!(t.insert(round, 0, true));
            assert!(t.start(round));
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let (t2, b2) = (t.clone(), barrier.clone());
            let completer = std::thread::spawn(move || {
                b2.wait();
                t2.complete(round, || {})
            });
            barrier.wait();
            let aborted = t.abort(round) == Some(Aborted::Stopping);
            let responded = completer.join().expect("thread");
            assert!(aborted != responded, "round {round}: aborted={aborted} responded={responded}");
            if aborted {
                t.complete(round, || panic!("second completion"));
            }
            assert!(!t.contains(round));
        }
    }

    /// `wait_gone` resolves only when the aborted task has ended.
    #[tokio::test]
    async fn wait_gone_waits_for_the_aborted_task() {
        let t = Arc::new(table());
        t.insert(5, 0, true);
        t.start(5);
        t.abort(5);
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.wait_gone(&[5]).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        t.complete(5, || {});
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("resolves").expect("task");
    }
}
