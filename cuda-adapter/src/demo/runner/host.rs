//! The host's share of a record: the pairs the miss rule serves on the CPU (steps 3 and 5 of
//! the [runner](super)).

use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use expertslab_std::ffn::{ExpertFfn, PairSlabs};
use expertslab_std::ExpertStore;

use super::{Kernels, Runner};
use crate::demo::RunReport;
use crate::driver::{Driver, PinnedMemory};
use crate::error::CudaError;
use crate::ffn::MissRule;

/// How long the host's threads spin after a layer step's pairs, waiting for the next step's
/// ([`expertslab_std::ffn::ExpertFfn::keep_warm`]): longer than a decode step of a large model.
const HOST_WARM: Duration = Duration::from_millis(5);

/// How long a thread waiting for work it handed to the host FFN's pool checks for it without
/// sleeping, from its call to [`Pending::wait`]: waking a sleeping thread costs tens of µs (more
/// in a virtual machine), a share of a layer step's host work; past this the thread sleeps until
/// the work is done.
const WAIT_SPINNING: Duration = Duration::from_millis(2);

/// The weight of a record in a layer's [`ReadBack`] rate of host use: about the last eight
/// records count.
const USE_WEIGHT: f32 = 1.0 / 8.0;

/// The rate of host use (the share of a layer's recent records that computed pairs on the host)
/// from which the record before each of them copies its output back. A copy on the stream
/// costs every record a few µs before its event; a record whose host pairs find no copy
/// fetches its input itself, a synchronous copy of tens of µs: copying back pays where about a
/// quarter of the records use it.
const READ_BACK_RATE: f32 = 0.25;

/// Where a record's output goes for the next layer's host pairs, under a rule that may use the
/// host: page-locked memory it is copied into on the compute stream before the record's event,
/// so the next record's host pairs find their input on the host once that event completed. A
/// record copies back only when the next layer's recent records computed pairs on the host
/// ([`READ_BACK_RATE`]): under a rule that seldom uses the host, the copy on every record
/// cost more than the few inputs it saved.
pub(super) struct ReadBack<P> {
    pinned: P,
    /// The device address and bytes the last record's copy read, if it copied.
    copied: Option<(u64, usize)>,
    /// Per layer, the share of its recent records that computed pairs on the host (each record
    /// weighs [`USE_WEIGHT`]; 1 at the start, so the first records copy back).
    rate: Vec<f32>,
}

impl<P> ReadBack<P> {
    /// Copies into `pinned`, for `layers` layers.
    pub(super) fn new(pinned: P, layers: usize) -> Self {
        Self { pinned, copied: None, rate: vec![1.0; layers] }
    }

    /// Counts a record of `layer` that computed pairs on the host (`used`) or not.
    fn count(&mut self, layer: usize, used: bool) {
        if let Some(rate) = self.rate.get_mut(layer) {
            *rate += (if used { 1.0 } else { 0.0 } - *rate) * USE_WEIGHT;
        }
    }

    /// Whether the record before a record of `layer` copies its output back for it.
    fn wanted(&self, layer: usize) -> bool {
        self.rate.get(layer).is_some_and(|&rate| rate >= READ_BACK_RATE)
    }
}

/// Work handed to the host FFN's pool by [`spawn_on`]: its result, when the pool sends it.
pub(crate) struct Pending<T> {
    done: Receiver<T>,
    /// When the work was handed to the pool.
    spawned: Instant,
}

/// Runs `job` on `ffn`'s pool in the background, then keeps the pool's threads warm for the next
/// work ([`ExpertFfn::keep_warm`]) and sends the result: how the runner's layer steps and the
/// calibration's timings hand pairs to the host, so both pay the same handoff. A panic in `job`
/// aborts the process (the rule for work spawned on a rayon pool): the jobs here return their
/// errors instead.
pub(crate) fn spawn_on<T: Send + 'static>(
    ffn: &ExpertFfn,
    job: impl FnOnce(&ExpertFfn) -> T + Send + 'static,
) -> Pending<T> {
    let (done, receiver) = sync_channel(1);
    let spawned = Instant::now();
    ffn.spawn(move |ffn| {
        let result = job(ffn);
        let mark = ffn.work_mark();
        // The result first: the waiter goes on while the spinners below are handed out (waking a
        // sleeping thread for each costs a system call). The waiter dropped the work only when
        // it failed first: nothing waits for it.
        let _ = done.send(result);
        // The next layer step's pairs find the threads awake; if that step's work was started
        // meanwhile, no thread spins.
        ffn.keep_warm_from(mark, HOST_WARM);
    });
    Pending { done: receiver, spawned }
}

impl<T> Pending<T> {
    /// The work's result: checked for without sleeping for up to [`WAIT_SPINNING`] (the thread
    /// yields its CPU to any other ready thread meanwhile), then waited for asleep. `None` if the
    /// pool dropped the work without its result.
    pub(crate) fn wait(&self) -> Option<T> {
        let deadline = Instant::now().checked_add(WAIT_SPINNING);
        loop {
            match self.done.try_recv() {
                Ok(result) => return Some(result),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) if deadline.is_some_and(|d| Instant::now() < d) => {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
                Err(TryRecvError::Empty) => return self.done.recv().ok(),
            }
        }
    }
}

/// The host's pairs of a record, computing on the thread pool while the runner enqueues the
/// GPU's work.
pub(super) type HostJob = Pending<Result<HostDone, CudaError>>;

/// What a [`HostJob`] sends back: the outputs of its pairs on the host (`pairs × hidden`), the
/// intermediate rows of its split pairs (`pairs × ffn`), and when a thread started and ended
/// computing them.
pub(super) struct HostDone {
    parts: Vec<f32>,
    h: Vec<f32>,
    started: Instant,
    computed: Instant,
}

impl<D: Driver + Clone, K: Kernels<D>> Runner<'_, D, K> {
    /// Under [`MissRule::Balanced`] with a cap, how many of the record's missed experts (not
    /// resident before it, by `self.before`) the pool may promote: the share
    /// [`split_misses`](expertslab::trace::replay::split_misses)
    /// gives the link, the most used first, the rest left to the host (the replay's cap, by the
    /// same [`MissedUses::cap`](expertslab::trace::replay::MissedUses::cap)). `None` under the
    /// other rules and an uncapped pool.
    pub(super) fn fetch_cap(&mut self, ids: &[u32]) -> Option<u32> {
        let MissRule::Balanced(c, cap) = self.rule else { return None };
        self.missed.count(ids.iter().zip(&self.before).filter(|(_, before)| before.is_none()).map(|(&id, _)| id));
        self.missed.cap(cap, &c.split(0.0))
    }

    /// Starts the host's pairs of a record (step 3): the layer's input `x` copied to the host
    /// (or the run's activations for layer 0's input), then, on the thread pool, the pairs
    /// (and the split pairs' gate and up) computed from a shared handle on the model's store
    /// while this thread goes on enqueueing the GPU's work. [`Runner::host_finish`] takes their
    /// outputs.
    pub(super) fn host_start(&mut self, layer: usize, ids: &[u32], x: u64) -> Result<HostJob, CudaError> {
        let (top_k, hidden) = (self.model.shape.top_k.max(1), self.model.shape.hidden);
        let tokens = ids.len() / top_k;
        let len = tokens * hidden;
        let to_f32 = |bytes: &[u8]| -> Vec<f32> {
            bytes.chunks_exact(4).map(|b| b.try_into().map_or(f32::NAN, f32::from_le_bytes)).collect()
        };
        let read_back = match &self.readback {
            // Copied on the compute stream before the previous record's event, which completed.
            Some(ReadBack { pinned, copied: Some((at, bytes)), .. }) if *at == x && *bytes >= len * 4 => {
                Some(to_f32(pinned.bytes()?.get(..len * 4).ok_or(CudaError::UnknownLayer { layer })?))
            }
            _ => None,
        };
        let input: Vec<f32> = if x == self.x.ptr {
            self.model.activations.get(..len).ok_or(CudaError::UnknownLayer { layer })?.to_vec()
        } else if let Some(input) = read_back {
            input
        } else {
            self.host_x.resize(len * 4, 0);
            // SAFETY: `x` is the previous record's output, `len` f32 long, whose kernels ended
            // (the host waited on their event before this record).
            unsafe { self.driver.copy_to_host(&mut self.host_x, x)? };
            to_f32(&self.host_x)
        };
        let ffn = self.model.host.as_ref().ok_or(CudaError::Unsupported("no host FFN".into()))?;
        let (ffn_width, of) = (self.model.shape.ffn, |pairs: &[usize]| -> Vec<(usize, usize)> {
            pairs.iter().map(|&pair| (ids.get(pair).copied().unwrap_or(0) as usize, pair / top_k)).collect()
        });
        let (whole, halves) = (of(&self.host_pairs), of(&self.split_pairs));
        let store: Arc<ExpertStore> = Arc::clone(&self.host_store);
        let mut parts = std::mem::take(&mut self.host_parts);
        let mut h = std::mem::take(&mut self.host_h);
        Ok(spawn_on(ffn, move |ffn| {
            let started = Instant::now();
            let slabs = |pairs: &[(usize, usize)]| {
                pairs
                    .iter()
                    .map(|&(expert, token)| PairSlabs::from_source(&*store, layer, expert, token))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(CudaError::from)
            };
            slabs(&whole).and_then(|whole| Ok((whole, slabs(&halves)?))).and_then(|(whole, halves)| {
                parts.resize(whole.len() * hidden, 0.0);
                h.resize(halves.len() * ffn_width, 0.0);
                ffn.parts_and_h(&whole, &input, &mut parts, &halves, &mut h)
                    .map_err(|e| CudaError::Unsupported(format!("host pairs of layer {layer}: {e}")))?;
                Ok(HostDone { parts, h, started, computed: Instant::now() })
            })
        }))
    }

    /// After a record's combine into `y` (`tokens` rows), before its event: counts whether the
    /// record computed pairs on the host, then, when the next layer may miss and its records
    /// used the host lately ([`ReadBack`]), enqueues the copy of `y` into the page-locked block
    /// on the compute stream, so the next record's host pairs ([`Runner::host_start`]) read
    /// their input from host memory once this record's event completed, without a copy of their
    /// own.
    pub(super) fn read_back_output(&mut self, layer: usize, y: u64, tokens: usize) -> Result<(), CudaError> {
        // No readback block: the rule never uses the host (nothing to check per record).
        let Some(readback) = self.readback.as_mut() else { return Ok(()) };
        readback.copied = None;
        readback.count(layer, !self.host_pairs.is_empty() || !self.split_pairs.is_empty());
        let next = layer + 1;
        if next >= self.model.layers || self.placement.holds_all(next, self.model.experts) || !readback.wanted(next) {
            return Ok(());
        }
        let len = tokens * self.model.shape.hidden * 4;
        // SAFETY: `y` is this record's output, `tokens × hidden` f32 of a live buffer; the host
        // reads the block only after the event recorded after this copy completed (`host_start`,
        // which copies it out before the next record's copy is enqueued).
        unsafe { self.driver.copy_to_pinned(&mut readback.pinned, y, len, &self.compute)? };
        readback.copied = Some((y, len));
        Ok(())
    }

    /// Waits for the host's pairs started by [`Runner::host_start`] (step 5) and keeps their
    /// outputs in `host_parts`, the split pairs' rows in `host_h`; when `timed`, adds the
    /// job's queued, compute and handoff times to `report`.
    pub(super) fn host_finish(&mut self, job: &HostJob, report: &mut RunReport, timed: bool) -> Result<(), CudaError> {
        let waiting = Instant::now();
        let done = job.wait().ok_or_else(|| CudaError::Unsupported("the host's pairs were lost".into()))??;
        if timed {
            let seconds = |later: Instant, earlier: Instant| later.saturating_duration_since(earlier).as_secs_f64();
            report.host_queued_seconds += seconds(done.started, job.spawned);
            report.host_compute_seconds += seconds(done.computed, done.started);
            report.host_handoff_seconds += seconds(Instant::now(), done.computed.max(waiting));
            report.host_late_seconds += seconds(waiting, done.computed);
        }
        self.host_parts = done.parts;
        self.host_h = done.h;
        Ok(())
    }
}
