//! The host's expert FFN ([`ExpertFfn`]): `part = down · (SiLU(gate · x) ⊙ (up · x))` for
//! token–expert pairs, reading each expert's gate, up and down slabs in place (a mapped model
//! file, a store, slots), multi-threaded with rayon and vectorised for the CPU found at run time
//! ([`Isa`]); then [`combine`] weighs a token's pairs by the router.
//!
//! The arithmetic follows [`order`] (F32 and BF16) and [`blocks`] (Q8_0, Q4_K and Q6_K, read
//! against activations quantized to 8 bits) operation by operation, which the GPU kernels of
//! `expertslab-cuda` follow too: a pair computed here has the same bits as the same pair
//! computed on the GPU, whatever the instruction set, thread count or batch.
//!
//! ```
//! use expertslab_std::ffn::{combine, ExpertFfn, PairSlabs};
//! use expertslab_std::Format;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One expert of hidden 4, FFN 2, F32: gate and up 2 × 4, down 4 × 2.
//! let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
//! let gate = bytes(&[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
//! let up = bytes(&[1.0; 8]);
//! let down = bytes(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
//! let ffn = ExpertFfn::new(4, 2, Format::F32)?;
//! let x = [1.0f32, 2.0, 0.0, 0.0];
//! let mut part = [0.0f32; 4];
//! ffn.parts(&[PairSlabs { gate: &gate, up: &up, down: &down, token: 0 }], &x, &mut part)?;
//! let silu = |g: f32| g / (1.0 + (-g).exp());
//! assert!((part[0] - silu(1.0) * 3.0).abs() < 1e-6); // h = (SiLU(1)·3, SiLU(2)·3)
//! let mut y = [0.0f32; 4];
//! combine(&[0.5], &part, &mut y);
//! assert_eq!(y[0], 0.5 * part[0]);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use expertslab::{ExpertSource, Format, Projection};
use rayon::prelude::*;
use rayon::ThreadPool;

pub mod blocks;
#[cfg(target_arch = "x86_64")]
mod blocks_avx2;
mod isa;
pub mod order;
mod rows;
#[cfg(target_arch = "x86_64")]
mod sum_avx2;

pub use isa::Isa;
pub use order::{combine, exp, silu_mul};
use rows::Activations;

/// The most gate/up rows one task computes (they are kept in a buffer of this many): small
/// enough to spread one token's pairs over many threads, large enough to keep a task's overhead
/// small.
const ROWS_PER_TASK: usize = 32;

/// The most weight bytes one down task reads, where that is more than [`ROWS_PER_TASK`] rows:
/// down's rows are narrower than gate's and up's (`ffn` wide, not `hidden`), so with as few
/// rows a task of many pairs would read a sixth of a gate/up task's bytes and pay its overhead
/// as often.
const DOWN_TASK_BYTES: usize = 256 << 10;

/// Tasks per thread a call aims for: a thread that falls behind (descheduled, or sharing its
/// core) then delays the call's end by a small task, not by a large share of the work.
const TASKS_PER_THREAD: usize = 4;

/// Rows per task for `pairs` pairs of `rows` rows each on `threads` threads: enough tasks for
/// [`TASKS_PER_THREAD`] each, at most `most` rows, never 0; then evened out over a pair's tasks,
/// so its last task is not a small remainder (2,048 rows by at most 170: 12 tasks of 158 rows
/// and one of 152, not 12 of 170 and one of 8).
fn rows_per_task(rows: usize, pairs: usize, threads: usize, most: usize) -> usize {
    let tasks = threads.max(1).saturating_mul(TASKS_PER_THREAD);
    let per = rows.saturating_mul(pairs.max(1)).div_ceil(tasks).clamp(1, most.max(1));
    rows.div_ceil(rows.div_ceil(per).max(1)).max(1)
}

/// One pair's expert: its gate, up and down slabs (each `rows × cols` elements of the FFN's
/// format, row-major, as GGUF stacks them) and the token whose activations it reads.
#[derive(Debug, Clone, Copy)]
pub struct PairSlabs<'a> {
    /// `ffn × hidden` gate weights.
    pub gate: &'a [u8],
    /// `ffn × hidden` up weights.
    pub up: &'a [u8],
    /// `hidden × ffn` down weights.
    pub down: &'a [u8],
    /// The token (row of the activations).
    pub token: usize,
}

impl<'a> PairSlabs<'a> {
    /// Expert `expert` of layer `layer` as `source` gives its gate, up and down slabs, for
    /// token `token`.
    ///
    /// # Errors
    /// The source's, when it has no such layer, projection or expert.
    pub fn from_source<S: ExpertSource + ?Sized>(
        source: &'a S,
        layer: usize,
        expert: usize,
        token: usize,
    ) -> Result<Self, S::Error> {
        Ok(Self {
            gate: source.expert(layer, Projection::Gate, expert)?,
            up: source.expert(layer, Projection::Up, expert)?,
            down: source.expert(layer, Projection::Down, expert)?,
            token,
        })
    }
}

/// What [`ExpertFfn`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FfnError {
    /// Weights of a format the FFN does not read (it reads F32, BF16, Q8_0, Q4_K and Q6_K).
    Format(Format),
    /// A width of 0.
    EmptyShape,
    /// A width that is not a whole number of the format's blocks (Q8_0's are 32 elements, Q4_K's
    /// and Q6_K's 256).
    NotWholeBlocks {
        /// The format.
        format: Format,
        /// The width.
        width: usize,
    },
    /// A slab of the wrong length.
    Slab {
        /// The pair.
        pair: usize,
        /// `gate`, `up` or `down`.
        projection: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A pair reads a token the activations do not have.
    Token {
        /// The pair.
        pair: usize,
        /// Its token.
        token: usize,
        /// Tokens in the activations.
        tokens: usize,
    },
    /// Activations or outputs of the wrong length.
    Length {
        /// `activations` or `parts`.
        what: &'static str,
        /// Values expected (a multiple of this for activations).
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// The instruction set asked for is not on this CPU.
    Isa(Isa),
    /// A thread pool that could not be built (rayon's reason).
    Pool(String),
}

impl fmt::Display for FfnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(format) => {
                write!(f, "the host FFN reads f32, bf16, q8_0, q4_K and q6_K experts, not {}", format.name())
            }
            Self::EmptyShape => write!(f, "an FFN of hidden or FFN width 0"),
            Self::NotWholeBlocks { format, width } => write!(
                f,
                "a width of {width} is not a whole number of {}'s blocks of {}",
                format.name(),
                format.block().elems()
            ),
            Self::Slab { pair, projection, expected, actual } => {
                write!(f, "pair {pair}: a {projection} slab of {actual} bytes, not {expected}")
            }
            Self::Token { pair, token, tokens } => write!(f, "pair {pair} reads token {token} of {tokens}"),
            Self::Length { what, expected, actual } => write!(f, "{what}: {actual} values, expected {expected}"),
            Self::Isa(isa) => write!(f, "this CPU cannot run {}", isa.name()),
            Self::Pool(why) => write!(f, "the host FFN's thread pool: {why}"),
        }
    }
}

impl std::error::Error for FfnError {}

/// Whether the host FFN (and the GPU kernels, which follow the same order) read weights of
/// `format`: F32, BF16, Q8_0, Q4_K and Q6_K.
pub const fn reads(format: Format) -> bool {
    matches!(format, Format::F32 | Format::BF16 | Format::Q8_0 | Format::Q4_K | Format::Q6_K)
}

/// The host's expert FFN for one shape and weight format (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct ExpertFfn {
    hidden: usize,
    ffn: usize,
    format: Format,
    /// Down's format: `format`, or another (a Q4_K_M file's Q6_K down beside Q4_K gate and up).
    down_format: Format,
    isa: Isa,
    pool: Option<Arc<ThreadPool>>,
    /// Counts the work started on the pool ([`ExpertFfn::parts`], [`ExpertFfn::spawn`]):
    /// threads kept warm spin until it moves.
    calls: Calls,
}

/// How much work had been started on an FFN's pool at a point ([`ExpertFfn::work_mark`]); threads
/// kept warm from it ([`ExpertFfn::keep_warm_from`]) spin until work started after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkMark(u64);

/// The count threads kept warm watch: one for rayon's global pool, shared by every FFN on it;
/// one per pool given with [`ExpertFfn::with_pool`] (shared by that FFN's clones).
#[derive(Debug, Clone)]
enum Calls {
    Global,
    Pool(Arc<AtomicU64>),
}

/// The count of work started on rayon's global pool by any FFN.
static GLOBAL_CALLS: AtomicU64 = AtomicU64::new(0);

impl Calls {
    fn get(&self) -> &AtomicU64 {
        match self {
            Self::Global => &GLOBAL_CALLS,
            Self::Pool(count) => count,
        }
    }
}

impl ExpertFfn {
    /// An FFN of model width `hidden` and expert width `ffn` over weights of `format` (F32,
    /// BF16, Q8_0, Q4_K or Q6_K), on the fastest instruction set found and rayon's global thread
    /// pool.
    ///
    /// # Errors
    /// [`FfnError::Format`], [`FfnError::EmptyShape`], [`FfnError::NotWholeBlocks`].
    pub fn new(hidden: usize, ffn: usize, format: Format) -> Result<Self, FfnError> {
        if hidden == 0 || ffn == 0 {
            return Err(FfnError::EmptyShape);
        }
        Self { hidden, ffn, format, down_format: format, isa: Isa::detect(), pool: None, calls: Calls::Global }
            .with_down_format(format)
    }

    /// Reads down's weights in `format` (gate's and up's stay in the format given to
    /// [`ExpertFfn::new`]): llama.cpp's Q4_K_M files keep Q4_K gate and up beside Q6_K down.
    ///
    /// # Errors
    /// [`FfnError::Format`], [`FfnError::NotWholeBlocks`] (for either format).
    pub fn with_down_format(mut self, format: Format) -> Result<Self, FfnError> {
        if let Some(f) = [self.format, format].into_iter().find(|&f| !reads(f)) {
            return Err(FfnError::Format(f));
        }
        // Gate and up rows are `hidden` wide, down rows `ffn` wide.
        for (f, width) in [(self.format, self.hidden), (format, self.ffn)] {
            if f.row_bytes(width).is_err() {
                return Err(FfnError::NotWholeBlocks { format: f, width });
            }
        }
        self.down_format = format;
        Ok(self)
    }

    /// Runs its tasks in `pool` (for a thread count of the caller's) instead of rayon's global
    /// pool.
    #[must_use]
    pub fn with_pool(mut self, pool: Arc<ThreadPool>) -> Self {
        self.pool = Some(pool);
        self.calls = Calls::Pool(Arc::new(AtomicU64::new(0)));
        self
    }

    /// Runs its tasks on a pool of its own of `threads` threads (at least one): a caller with
    /// a thread of its own to keep busy, such as one driving a GPU, leaves it a core.
    ///
    /// # Errors
    /// [`FfnError::Pool`] when the operating system refuses the threads.
    pub fn with_threads(self, threads: usize) -> Result<Self, FfnError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("expertslab-ffn-{i}"))
            .build()
            .map_err(|e| FfnError::Pool(e.to_string()))?;
        Ok(self.with_pool(Arc::new(pool)))
    }

    /// The threads its tasks run on: its own pool's; without one, those of the rayon pool of the
    /// calling thread (the global pool outside any pool).
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Runs on `isa` instead of the fastest found (the bits are the same).
    ///
    /// # Errors
    /// [`FfnError::Isa`] when this CPU cannot run it.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self, FfnError> {
        if !isa.available() {
            return Err(FfnError::Isa(isa));
        }
        self.isa = isa;
        Ok(self)
    }

    /// Runs `job` with this FFN on its thread pool, in the background: a caller with other work
    /// while pairs compute (a GPU runner enqueueing kernels) starts them here and waits for
    /// what `job` sends back. Threads kept warm stop spinning and take it. A panic in `job`
    /// aborts the process (the rule for work spawned on a rayon pool): `job` returns its errors
    /// instead.
    pub fn spawn(&self, job: impl FnOnce(&Self) + Send + 'static) {
        self.calls.get().fetch_add(1, Ordering::AcqRel);
        let ffn = self.clone();
        let run = move || job(&ffn);
        match &self.pool {
            Some(pool) => pool.spawn(run),
            None => rayon::spawn(run),
        }
    }

    /// Keeps the pool's threads spinning, ready for the next work started on it
    /// ([`ExpertFfn::parts`] or [`ExpertFfn::spawn`], by this FFN or a clone of it; on rayon's
    /// global pool, by any FFN without a pool of its own), until that starts or `limit` has
    /// passed. Other work on the same threads does not stop the spinning early: it finds the
    /// spinning threads yielding their CPUs. Threads left idle between calls go to sleep,
    /// and waking them costs the operating system (and a virtual machine's hypervisor, which
    /// halts an idle virtual CPU) from tens to hundreds of µs: more than a pair on the host. A
    /// decode loop that computes pairs every layer step calls this after each step's pairs. All
    /// but one of the pool's threads spin meanwhile (yielding their CPU to any other thread that
    /// is ready, such as the one driving the decode), so the caller keeps a CPU and the last
    /// thread can take spawned work; a pool of one thread does not spin. Calls without work in
    /// between queue one spin after another, all ending by `limit` from the first call.
    pub fn keep_warm(&self, limit: Duration) {
        self.keep_warm_from(self.work_mark(), limit);
    }

    /// Where the pool's work stands: how much work has been started on it so far
    /// ([`ExpertFfn::parts`] or [`ExpertFfn::spawn`], by this FFN or a clone of it).
    pub fn work_mark(&self) -> WorkMark {
        WorkMark(self.calls.get().load(Ordering::Acquire))
    }

    /// [`ExpertFfn::keep_warm`] until work started after `mark` (taken by
    /// [`ExpertFfn::work_mark`]): threads spin only while no work came since `mark`, so a caller
    /// can hand its result on first and keep the threads warm after, without the spinning
    /// outlasting work that was started in between (it stops at once then).
    pub fn keep_warm_from(&self, mark: WorkMark, limit: Duration) {
        let spinners = self.threads().saturating_sub(1);
        let seen = mark.0;
        if self.calls.get().load(Ordering::Acquire) != seen {
            return;
        }
        // No deadline for a limit past what the clock can count.
        let deadline = Instant::now().checked_add(limit);
        for _ in 0..spinners {
            let calls = self.calls.clone();
            let spin = move || {
                while calls.get().load(Ordering::Acquire) == seen && deadline.is_none_or(|d| Instant::now() < d) {
                    for _ in 0..64 {
                        std::hint::spin_loop();
                    }
                    std::thread::yield_now();
                }
            };
            match &self.pool {
                Some(pool) => pool.spawn(spin),
                None => rayon::spawn(spin),
            }
        }
    }

    /// The model width: the length of a token's activations and of a pair's output.
    pub const fn hidden(&self) -> usize {
        self.hidden
    }

    /// The instruction set the inner loops run on.
    pub const fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of `rows` rows of `cols` elements of `format` (whole blocks, checked when built).
    fn slab_bytes(format: Format, rows: usize, cols: usize) -> usize {
        rows.saturating_mul(format.row_bytes(cols).unwrap_or(usize::MAX))
    }

    /// Checks `pairs`' slabs (down's too when `down`) and tokens; `offset` numbers them in
    /// errors.
    fn check(&self, pairs: &[PairSlabs<'_>], tokens: usize, down: bool, offset: usize) -> Result<(), FfnError> {
        let gate = Self::slab_bytes(self.format, self.ffn, self.hidden);
        let down_bytes = Self::slab_bytes(self.down_format, self.hidden, self.ffn);
        for (i, p) in pairs.iter().enumerate() {
            let pair = offset.saturating_add(i);
            let slabs = [("gate", p.gate, gate), ("up", p.up, gate), ("down", p.down, down_bytes)];
            for (projection, slab, bytes) in slabs.into_iter().take(if down { 3 } else { 2 }) {
                if slab.len() != bytes {
                    return Err(FfnError::Slab { pair, projection, expected: bytes, actual: slab.len() });
                }
            }
            if p.token >= tokens {
                return Err(FfnError::Token { pair, token: p.token, tokens });
            }
        }
        Ok(())
    }

    /// Checks that `values` holds `rows` rows of `width`.
    fn check_length(what: &'static str, values: &[f32], rows: usize, width: usize) -> Result<(), FfnError> {
        let expected = rows.saturating_mul(width);
        if values.len() == expected {
            Ok(())
        } else {
            Err(FfnError::Length { what, expected, actual: values.len() })
        }
    }

    /// Computes every pair's down output: `parts[i]` (`hidden` values) `= down_i · (SiLU(gate_i
    /// · x_t) ⊙ (up_i · x_t))` with `x_t` the `hidden` activations of pair `i`'s token in `x`
    /// (`tokens × hidden`). Rows are spread over the thread pool.
    ///
    /// # Errors
    /// [`FfnError::Length`] when `x` is not whole tokens or `parts` not `pairs × hidden`;
    /// [`FfnError::Slab`], [`FfnError::Token`]. Nothing is written then.
    pub fn parts(&self, pairs: &[PairSlabs<'_>], x: &[f32], parts: &mut [f32]) -> Result<(), FfnError> {
        self.parts_and_h(pairs, x, parts, &[], &mut [])
    }

    /// Computes the intermediate row of every pair: `h[i]` (`ffn` values) `= SiLU(gate_i · x_t)
    /// ⊙ (up_i · x_t)`, the input of down, in the shared order (so a device computing down from
    /// it gives the bits of the whole pair computed anywhere). Down's slabs are not read (they
    /// may be empty).
    ///
    /// # Errors
    /// [`FfnError::Length`] when `x` is not whole tokens or `h` not `pairs × ffn`;
    /// [`FfnError::Slab`] (gate and up), [`FfnError::Token`]. Nothing is written then.
    pub fn gate_up(&self, pairs: &[PairSlabs<'_>], x: &[f32], h: &mut [f32]) -> Result<(), FfnError> {
        self.parts_and_h(&[], x, &mut [], pairs, h)
    }

    /// [`ExpertFfn::parts`] of `whole` and [`ExpertFfn::gate_up`] of `halves` in one call, on the
    /// same threads: what a decode step with pairs on the host and split pairs computes. Pairs
    /// are numbered in errors `whole` first, then `halves`.
    ///
    /// # Errors
    /// As [`ExpertFfn::parts`] and [`ExpertFfn::gate_up`]. Nothing is written then.
    #[allow(clippy::arithmetic_side_effects, reason = "row indexes bounded by the checked lengths")]
    pub fn parts_and_h(
        &self,
        whole: &[PairSlabs<'_>],
        x: &[f32],
        parts: &mut [f32],
        halves: &[PairSlabs<'_>],
        h: &mut [f32],
    ) -> Result<(), FfnError> {
        let (hidden, ffn) = (self.hidden, self.ffn);
        if !x.len().is_multiple_of(hidden) {
            return Err(FfnError::Length { what: "activations", expected: hidden, actual: x.len() });
        }
        Self::check_length("parts", parts, whole.len(), hidden)?;
        Self::check_length("h", h, halves.len(), ffn)?;
        self.check(whole, x.len() / hidden, true, 0)?;
        self.check(halves, x.len() / hidden, false, whole.len())?;
        // Threads kept warm stop spinning and take this call's tasks.
        self.calls.get().fetch_add(1, Ordering::AcqRel);
        let (isa, format, down_format) = (self.isa, self.format, self.down_format);
        // Pair `i` of the call: `whole`'s, then `halves'`; only `whole`'s go on to down.
        let pairs: Vec<&PairSlabs<'_>> = whole.iter().chain(halves).collect();
        let count = pairs.len();
        let mut run = || {
            // Activations of each token as the rows read them (quantized for block formats).
            let quantized = Format::is_block_quantized;
            let xt: Vec<Activations> =
                x.chunks_exact(hidden).map(|token| Activations::new(token, quantized(format))).collect();
            let threads = rayon::current_num_threads();
            let up_rows = rows_per_task(ffn, count, threads, ROWS_PER_TASK);
            let down_row_bytes = down_format.row_bytes(ffn).unwrap_or(usize::MAX).max(1);
            let down_most = ROWS_PER_TASK.max(DOWN_TASK_BYTES / down_row_bytes);
            let down_rows = rows_per_task(hidden, whole.len(), threads, down_most);
            let up_tasks = ffn.div_ceil(up_rows);
            // Each pair's h (as f32 bits), written by its gate/up tasks; the task that finishes
            // a whole pair's h (its count reaching 0) pads it and computes the pair's down rows
            // (split among idle threads), which write the pair's rows of `parts`. A pair's down
            // so starts while other pairs' gate/up run: the call waits once, at its end.
            let cells: Vec<AtomicU32> = (0..count * ffn).map(|_| AtomicU32::new(0)).collect();
            let left: Vec<AtomicUsize> = whole.iter().map(|_| AtomicUsize::new(up_tasks)).collect();
            let outputs: Vec<Mutex<Option<&mut [f32]>>> =
                parts.chunks_mut(hidden).map(|part| Mutex::new(Some(part))).collect();
            (0..count * up_tasks).into_par_iter().for_each(|t| {
                let (i, task) = (t / up_tasks, t % up_tasks);
                let (Some(p), Some(pair_h)) = (pairs.get(i), cells.get(i * ffn..(i + 1) * ffn)) else { return };
                let Some(xt) = xt.get(p.token) else { return };
                let first = task * up_rows;
                let mut rows = [0.0f32; ROWS_PER_TASK];
                let rows = rows.get_mut(..up_rows.min(ffn - first)).unwrap_or_default();
                isa::gate_up(isa, format, p.gate, p.up, hidden, xt, first, rows);
                for (cell, v) in pair_h.iter().skip(first).zip(rows.iter()) {
                    cell.store(v.to_bits(), Ordering::Relaxed);
                }
                // The last of a whole pair's tasks sees every row (AcqRel orders them); halves
                // have no count and stop here.
                if left.get(i).is_none_or(|l| l.fetch_sub(1, Ordering::AcqRel) != 1) {
                    return;
                }
                let values: Vec<f32> = pair_h.iter().map(|c| f32::from_bits(c.load(Ordering::Relaxed))).collect();
                let ht = Activations::new(&values, quantized(down_format));
                let part =
                    outputs.get(i).and_then(|o| o.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
                if let Some(part) = part {
                    part.par_chunks_mut(down_rows).enumerate().for_each(|(task, rows)| {
                        isa::down(isa, down_format, p.down, ffn, &ht, task * down_rows, rows);
                    });
                }
            });
            // The halves' rows (the parallel loop's end orders their stores before these loads).
            let halves_h = cells.get(whole.len() * ffn..).unwrap_or_default();
            for (out, cell) in h.iter_mut().zip(halves_h) {
                *out = f32::from_bits(cell.load(Ordering::Relaxed));
            }
        };
        match &self.pool {
            Some(pool) => pool.install(run),
            None => run(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod ggml;
#[cfg(test)]
mod tests;
