//! Reactors: one thread per core, pinned to its CPU, each running its own
//! single-threaded tokio runtime. A new connection goes to the reactor with
//! the fewest live connections and runs there for its whole life: every task
//! it spawns (`tokio::spawn` inside a connection means "on this reactor")
//! and every timer and socket wake-up stays on that thread, so the hot path
//! has no cross-thread wake-ups. Blocking file I/O still goes through the
//! reactor's own `spawn_blocking` pool.
//!
//! With `[runtime] busy_poll_us` a reactor that has just served a connection
//! keeps polling its sockets for a bounded, adaptive budget before it parks
//! (see [`crate::busy_poll`]); off by default.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::busy_poll;

/// Blocking threads of all reactors together (tokio's default for one
/// runtime), split evenly so more reactors do not mean more threads.
const BLOCKING_THREADS: usize = 512;
/// But each reactor gets at least this many.
const MIN_BLOCKING_THREADS: usize = 16;
/// How long a reactor waits for its blocking threads when it stops.
const BLOCKING_GRACE: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Live connections per reactor, and with busy polling on its counters,
/// for `/metrics`.
#[derive(Clone, Default)]
pub struct Loads(Vec<Arc<AtomicUsize>>, Vec<Arc<busy_poll::Counters>>);

impl Loads {
    /// Live connections of each reactor, by reactor number.
    pub fn get(&self) -> Vec<usize> {
        self.0.iter().map(|l| l.load(Relaxed)).collect()
    }

    /// Each reactor's busy-poll counters (empty when busy polling is off).
    pub fn busy_poll(&self) -> &[Arc<busy_poll::Counters>] {
        &self.1
    }
}

struct Reactor {
    tx: mpsc::UnboundedSender<Job>,
    live: Arc<AtomicUsize>,
    busy: Option<Arc<busy_poll::Counters>>,
}

/// Counts a connection as live on its reactor from hand-off until the
/// connection ends, is aborted, or is dropped undelivered.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The pool of reactors.
pub struct Reactors {
    reactors: Vec<Reactor>,
    threads: Vec<(std::thread::JoinHandle<()>, oneshot::Receiver<()>)>,
    abort: watch::Sender<bool>,
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    use rustix::thread::{sched_getaffinity, CpuSet};
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(e) => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            tracing::warn!(error = %e, cpus = n, "cannot read the CPU affinity mask; assuming CPUs 0..{n}");
            (0..n).collect()
        }
    }
}

fn pin_to(cpu: usize) -> std::io::Result<()> {
    use rustix::thread::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(std::io::Error::from)
}

impl Reactors {
    /// Starts `cores` reactors (default: one per CPU in the affinity mask),
    /// reactor N pinned to the Nth allowed CPU (round-robin when there are
    /// more reactors than CPUs). A non-zero `spin_max` is the most each
    /// reactor spins for after connection activity before it parks.
    pub fn start(cores: Option<u32>, spin_max: Duration) -> std::io::Result<Reactors> {
        let cpus = allowed_cpus();
        let n = cores.map_or(cpus.len(), |c| c as usize).max(1);
        if n > cpus.len() {
            tracing::warn!(reactors = n, cpus = cpus.len(), "more reactors than CPUs: reactors share CPUs");
        }
        let blocking = (BLOCKING_THREADS / n).max(MIN_BLOCKING_THREADS);
        let (abort, abort_rx) = watch::channel(false);
        let mut reactors = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for id in 0..n {
            let cpu = cpus.get(id % cpus.len().max(1)).copied();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(blocking)
                .thread_name(format!("pinion-blk-{id}"))
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done) = oneshot::channel();
            let abort = abort_rx.clone();
            let busy = (!spin_max.is_zero()).then(|| Arc::new(busy_poll::Counters::default()));
            let spin = busy.clone().map(|c| busy_poll::spinner(spin_max, c));
            let t = std::thread::Builder::new().name(format!("pinion-reactor-{id}")).spawn(move || {
                // everything on this thread's ring is entered from here
                pinion_backends::uring::this_thread_is_a_reactor();
                match cpu.map(pin_to) {
                    Some(Ok(())) => tracing::info!(reactor = id, cpu, blocking_threads = blocking, "reactor started"),
                    Some(Err(e)) => tracing::warn!(reactor = id, cpu, error = %e, "reactor started unpinned: cannot set its CPU affinity"),
                    None => tracing::warn!(reactor = id, "reactor started unpinned: no CPU known"),
                }
                rt.block_on(serve(rx, abort, spin));
                rt.shutdown_timeout(BLOCKING_GRACE);
                tracing::debug!(reactor = id, "reactor stopped");
                let _ = done_tx.send(());
            })?;
            reactors.push(Reactor { tx, live: Arc::default(), busy });
            threads.push((t, done));
        }
        Ok(Reactors { reactors, threads, abort })
    }

    /// How many reactors there are.
    pub fn len(&self) -> usize {
        self.reactors.len()
    }

    /// Always false: there is at least one reactor.
    pub fn is_empty(&self) -> bool {
        self.reactors.is_empty()
    }

    /// The live-connection counters, for `/metrics`.
    pub fn loads(&self) -> Loads {
        Loads(
            self.reactors.iter().map(|r| r.live.clone()).collect(),
            self.reactors.iter().filter_map(|r| r.busy.clone()).collect(),
        )
    }

    /// Live connections on all reactors.
    pub fn live(&self) -> usize {
        self.reactors.iter().map(|r| r.live.load(Relaxed)).sum()
    }

    /// Hands an accepted connection to the reactor with the fewest live
    /// connections, which runs `run(stream)` inside `span` for the
    /// connection's whole life; returns that reactor's number and records it
    /// as the span's `reactor` field (declare it `reactor =
    /// tracing::field::Empty`). Called on the accepting runtime.
    pub fn spawn_connection<F, Fut>(&self, stream: TcpStream, span: tracing::Span, run: F) -> Option<usize>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Leave the accepting runtime's poller; the reactor registers it with its own.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, "cannot hand the connection to a reactor");
                return None;
            }
        };
        let (id, r) = self.reactors.iter().enumerate().min_by_key(|(_, r)| r.live.load(Relaxed))?;
        r.live.fetch_add(1, Relaxed);
        let live = Live(r.live.clone());
        span.record("reactor", id);
        let busy = r.busy.is_some();
        let job: Job = Box::new(move || {
            let conn: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(
                async move {
                    let _live = live;
                    match TcpStream::from_std(std_stream) {
                        Ok(s) => run(s).await,
                        Err(e) => tracing::warn!(error = %e, "reactor cannot register the connection"),
                    }
                }
                .instrument(span),
            );
            // the spinner watches connections' polls; without it, nothing in between
            if busy {
                Box::pin(busy_poll::Active(conn))
            } else {
                conn
            }
        });
        // A send fails only when the reactor is gone (shutting down): the job,
        // and with it the socket and the live count, is dropped.
        r.tx.send(job).ok().map(|()| id)
    }

    /// Stops the reactors: no new connections; the live ones get `grace` to
    /// finish (tell them to through their own shutdown signal first), then
    /// are aborted. Returns when every reactor thread has exited (or, if
    /// one hangs even after the abort, logs it and leaves it).
    pub async fn shutdown(self, grace: Duration) {
        let Reactors { reactors, threads, abort } = self;
        drop(reactors);
        let mut threads: Vec<_> = threads.into_iter().map(|(t, d)| (t, Some(d))).collect();
        if tokio::time::timeout(grace, all_done(&mut threads)).await.is_err() {
            tracing::warn!("connections did not close in time; aborting them");
            let _ = abort.send(true);
            if tokio::time::timeout(BLOCKING_GRACE * 2, all_done(&mut threads)).await.is_err() {
                tracing::error!("a reactor did not stop after its connections were aborted; leaving it");
                return;
            }
        }
        for (t, _) in threads {
            // It has sent its last message: this returns at once.
            let _ = t.join();
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Threads = Vec<(std::thread::JoinHandle<()>, Option<oneshot::Receiver<()>>)>;

/// Waits for every reactor's last message (a receiver that delivered is
/// cleared: it must not be polled again).
async fn all_done(threads: &mut Threads) {
    for (_, slot) in threads.iter_mut() {
        if let Some(d) = slot {
            let _ = d.await;
            *slot = None;
        }
    }
}

/// A reactor's loop: runs connections as they arrive until the pool closes
/// the channel, then lets them finish (or aborts them when told to). The
/// busy-poll spinner, if any, runs beside them for the reactor's life.
async fn serve<S: Future<Output = ()> + Send + 'static>(mut rx: mpsc::UnboundedReceiver<Job>, mut abort: watch::Receiver<bool>, spin: Option<S>) {
    let _spinner = spin.map(|s| AbortOnDrop(tokio::spawn(s)));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            j = rx.recv() => match j {
                Some(job) => { conns.spawn(job()); }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    loop {
        tokio::select! {
            r = conns.join_next() => if r.is_none() { return },
            Ok(_) = abort.wait_for(|a| *a) => break,
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn name() -> String {
        std::thread::current().name().unwrap_or("?").to_owned()
    }

    /// A connected loopback pair: (server side as tokio stream, client side).
    async fn pair() -> (TcpStream, std::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let c = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(a));
        let (s, _) = l.accept().await.unwrap();
        (s, c.await.unwrap().unwrap())
    }

    /// Where a connection's work ran: the thread at start, in a task it
    /// spawned, after a blocking call, after a timer and after socket reads.
    async fn traced(mut s: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
        use tokio::io::AsyncReadExt;
        let push = |s: &Arc<Mutex<Vec<String>>>| s.lock().unwrap().push(name());
        push(&seen);
        let child = tokio::spawn({
            let seen = seen.clone();
            async move { seen.lock().unwrap().push(name()) }
        });
        child.await.unwrap();
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(5))).await.unwrap();
        push(&seen);
        tokio::time::sleep(Duration::from_millis(5)).await;
        push(&seen);
        let mut b = [0u8; 1];
        while s.read(&mut b).await.unwrap_or(0) == 1 {
            push(&seen);
        }
        push(&seen);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_spread_and_stay_on_their_reactor() {
        use std::io::Write;
        let r = Reactors::start(Some(2), Duration::ZERO).unwrap();
        assert_eq!(r.len(), 2);
        let mut clients = Vec::new();
        let mut seen = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (s, c) = pair().await;
            let v = Arc::new(Mutex::new(Vec::new()));
            let span = tracing::info_span!("conn", reactor = tracing::field::Empty);
            ids.push(r.spawn_connection(s, span, { let v = v.clone(); move |s| traced(s, v) }).unwrap());
            clients.push(c);
            seen.push(v);
        }
        assert_eq!(ids, [0, 1], "the second connection goes to the idle reactor");
        assert_eq!(r.loads().get(), [1, 1]);
        for c in &mut clients {
            for _ in 0..3 {
                c.write_all(b"x").unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        drop(clients);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while r.live() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "connections did not end: {:?}", r.loads().get());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.loads().get(), [0, 0], "ended connections are no longer counted");
        for (id, v) in ids.iter().zip(&seen) {
            let v = v.lock().unwrap();
            assert!(v.len() >= 8, "{v:?}");
            let want = format!("pinion-reactor-{id}");
            assert!(v.iter().all(|n| *n == want), "connection on reactor {id} ran on {v:?}");
        }
        r.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fewest_live_connections_wins() {
        let r = Reactors::start(Some(3), Duration::ZERO).unwrap();
        let mut keep = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let (s, c) = pair().await;
            keep.push(c);
            ids.push(r.spawn_connection(s, tracing::Span::none(), |s| async move {
                let _s = s;
                std::future::pending::<()>().await
            }).unwrap());
        }
        assert_eq!(ids, [0, 1, 2, 0, 1]);
        assert_eq!(r.loads().get(), [2, 2, 1]);
        // Connections that never end are aborted after the grace period.
        let t = std::time::Instant::now();
        let loads = r.loads();
        r.shutdown(Duration::from_millis(200)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(loads.get(), [0, 0, 0]);
    }

    /// CPU time of thread `tid` of this process so far, in 10 ms ticks.
    fn thread_ticks(tid: usize) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// A connection that echoes each byte spins its reactor while the pings
    /// come quickly; once they stop, the spinner parks and the reactor
    /// thread costs nothing. Fails if the spin never stops (or never starts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_poll_spins_while_busy_and_stops_when_idle() {
        use std::io::{Read, Write};
        let r = Reactors::start(Some(1), Duration::from_millis(2)).unwrap();
        let (s, mut c) = pair().await;
        let tid = Arc::new(AtomicUsize::new(0));
        let t = tid.clone();
        r.spawn_connection(s, tracing::Span::none(), move |mut s| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            t.store(rustix::thread::gettid().as_raw_nonzero().get() as usize, Relaxed);
            let mut b = [0u8; 1];
            while s.read(&mut b).await.unwrap_or(0) == 1 {
                if s.write_all(&b).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
        let busy = r.loads().busy_poll()[0].clone();
        let c = tokio::task::spawn_blocking(move || {
            c.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            for i in 0..2000u32 {
                c.write_all(&[i as u8]).unwrap();
                c.read_exact(&mut b).unwrap();
                assert_eq!(b[0], i as u8);
            }
            c
        })
        .await
        .unwrap();
        let caught = busy.caught.load(Relaxed);
        assert!(busy.spins.load(Relaxed) > 0 && caught > 0, "the reactor did not spin between pings: {busy:?}");
        // idle, connection still open: after the budget, no CPU at all
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!busy.spinning.load(Relaxed), "still spinning 100 ms after the last ping: {busy:?}");
        let caught = busy.caught.load(Relaxed);
        let tid = tid.load(Relaxed);
        let before = thread_ticks(tid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = thread_ticks(tid) - before;
        assert!(used <= 2, "an idle reactor with busy polling on used {used}0 ms of CPU in 1 s: {busy:?}");
        assert_eq!(busy.caught.load(Relaxed), caught, "nothing to catch while idle");
        drop(c);
        r.shutdown(Duration::from_secs(5)).await;
    }

    #[test]
    fn affinity_mask_is_read() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
    }
}
