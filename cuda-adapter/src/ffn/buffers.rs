//! [`StepBuffers`]: a step's device buffers, staged from the host in one copy.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use super::view::PairSource;
use super::{raw, StepArgs};
use crate::driver::copy_htod_async;
use crate::error::CudaError;
use crate::reference::FfnShape;

/// A step's device buffers: the router's ids and weights, each pair's miss addresses, the
/// launch order of the pairs, the intermediate `h` and a status word, staged through one
/// page-locked host block and uploaded with one copy.
///
/// The host block is reused by the next [`StepBuffers::stage`], which first waits for the
/// previous upload: keep two per layer to stage a step while the last one runs. Pairs computed
/// on the host ([`PairSource::Host`]) are not launched: their outputs come through
/// [`StepBuffers::upload_parts`].
#[derive(Debug)]
pub struct StepBuffers {
    max_pairs: usize,
    top_k: usize,
    pub(super) tokens: usize,
    pub(super) pairs: usize,
    pub(super) before: usize,
    /// Pairs the kernels compute whole (the others are split or the host's).
    pub(super) on_device: usize,
    /// Split pairs: the kernels compute their down only.
    pub(super) split: usize,
    /// The staged step's pairs computed on the host, and its split pairs.
    host_pairs: Vec<usize>,
    split_pairs: Vec<usize>,
    host: PinnedHostSlice<u64>,
    /// Host-computed outputs staged for upload, `[max_pairs, hidden]`.
    host_parts: Option<PinnedHostSlice<f32>>,
    /// Host-computed intermediate rows of split pairs staged for upload, `[max_pairs, ffn]`.
    host_h: Option<PinnedHostSlice<f32>>,
    hidden: usize,
    ffn: usize,
    _device: CudaSlice<u64>,
    device_ptr: u64,
    h: CudaSlice<f32>,
    h_ptr: u64,
    _part: CudaSlice<f32>,
    part_ptr: u64,
    status: CudaSlice<u32>,
    status_ptr: u64,
    /// Per token and row tile of down: its pairs done so far in the step (the kernels put each
    /// back to 0 once the tile is combined).
    _counts: CudaSlice<u32>,
    counts_ptr: u64,
    /// Recorded after each upload of the staged block and of the host's outputs; created once
    /// and recorded again (creating an event per step cost as much as a launch).
    uploaded: Upload,
    parts_uploaded: Upload,
    h_uploaded: Upload,
}

/// Words of the staged block for `pairs` pairs: miss addresses (3 per pair), then ids, weights
/// and the pair order (one 32-bit value per pair each, two to a word). A step fills and uploads
/// only its own pairs' words, laid out for its pair count, so a decode step of a few pairs does
/// not copy a prefill-sized block.
fn block_words(pairs: usize) -> usize {
    pairs * 3 + 3 * pairs.div_ceil(2)
}

/// Byte offsets in the staged block of a step of `pairs` pairs: ids, weights, pair order.
fn block_offsets(pairs: usize) -> (u64, u64, u64) {
    let (miss, half) = (8 * 3 * pairs as u64, 8 * pairs.div_ceil(2) as u64);
    (miss, miss + half, miss + 2 * half)
}

impl StepBuffers {
    pub(super) fn new(stream: &Arc<CudaStream>, shape: &FfnShape, max_tokens: usize) -> Result<Self, CudaError> {
        let max_pairs = max_tokens
            .checked_mul(shape.top_k)
            .filter(|&p| p > 0 && i32::try_from(p).is_ok())
            .ok_or_else(|| CudaError::Unsupported(format!("{max_tokens} tokens per step")))?;
        let words = block_words(max_pairs);
        let h_len = max_pairs
            .checked_mul(shape.ffn)
            .ok_or_else(|| CudaError::Unsupported(format!("{max_tokens} tokens per step")))?;
        let ctx = stream.context();
        // SAFETY: the block is written in full by `stage` before each upload reads it.
        let host = unsafe { ctx.alloc_pinned_with_flags::<u64>(words, 0) }?;
        let device = stream.alloc_zeros::<u64>(words)?;
        let h = stream.alloc_zeros::<f32>(h_len)?;
        let part_len = max_pairs
            .checked_mul(shape.hidden)
            .ok_or_else(|| CudaError::Unsupported(format!("{max_tokens} tokens per step")))?;
        let part = stream.alloc_zeros::<f32>(part_len)?;
        let part_ptr = raw(&part, stream);
        let status = stream.alloc_zeros::<u32>(1)?;
        let tiles = shape.hidden.div_ceil(crate::kernels::ROWS_PER_BLOCK as usize);
        let counts = stream.alloc_zeros::<u32>(
            max_tokens
                .checked_mul(tiles)
                .ok_or_else(|| CudaError::Unsupported(format!("{max_tokens} tokens per step")))?,
        )?;
        let counts_ptr = raw(&counts, stream);
        let device_ptr = raw(&device, stream);
        let (h_ptr, status_ptr) = (raw(&h, stream), raw(&status, stream));
        Ok(Self {
            max_pairs,
            top_k: shape.top_k,
            tokens: 0,
            pairs: 0,
            before: 0,
            on_device: 0,
            split: 0,
            host_pairs: Vec::new(),
            split_pairs: Vec::new(),
            host,
            host_parts: None,
            host_h: None,
            hidden: shape.hidden,
            ffn: shape.ffn,
            _device: device,
            device_ptr,
            h,
            h_ptr,
            _part: part,
            part_ptr,
            status,
            status_ptr,
            _counts: counts,
            counts_ptr,
            uploaded: Upload::new(stream)?,
            parts_uploaded: Upload::new(stream)?,
            h_uploaded: Upload::new(stream)?,
        })
    }

    /// Pairs the buffers hold at most.
    pub const fn max_pairs(&self) -> usize {
        self.max_pairs
    }

    /// Stages a step on `stream`: `ids` and `weights` are `[tokens, top_k]`, token-major;
    /// `sources` gives each pair's source. Waits for this block's previous upload first.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when the lengths disagree, a step is longer than the buffers,
    /// an id does not fit `i32`, or a direct source has a null address; [`CudaError::Driver`].
    pub fn stage(
        &mut self,
        stream: &CudaStream,
        ids: &[u32],
        weights: &[f32],
        sources: &[PairSource],
    ) -> Result<(), CudaError> {
        let pairs = ids.len();
        if pairs != weights.len() || pairs != sources.len() || !pairs.is_multiple_of(self.top_k) {
            return Err(CudaError::Unsupported("ids, weights and sources must be tokens × top_k long".into()));
        }
        if pairs > self.max_pairs {
            return Err(CudaError::Unsupported(format!("{pairs} pairs, the buffers hold {}", self.max_pairs)));
        }
        if ids.iter().any(|&id| i32::try_from(id).is_err())
            || sources.iter().any(|s| match s {
                PairSource::Direct { .. } => s.pointers().contains(&0),
                PairSource::Split { down } => *down == 0,
                _ => false,
            })
        {
            return Err(CudaError::Unsupported("an id over i32::MAX or a null source address".into()));
        }
        self.uploaded.wait()?;
        let half = pairs.div_ceil(2);
        let words = block_words(pairs);
        let block = self.host.as_mut_slice()?.get_mut(..words).ok_or(CudaError::Unsupported("staging block".into()))?;
        block.fill(0);
        let (miss, rest) = block.split_at_mut(pairs * 3);
        let (id_words, rest) = rest.split_at_mut(half);
        let (weight_words, order_words) = rest.split_at_mut(half);
        for (pair, source) in sources.iter().enumerate() {
            for (slot, p) in miss.iter_mut().skip(pair * 3).zip(source.pointers()) {
                *slot = p;
            }
        }
        let put = |words: &mut [u64], i: usize, v: u32| {
            if let Some(w) = words.get_mut(i / 2) {
                *w |= u64::from(v) << (32 * (i % 2));
            }
        };
        for (i, (&id, &w)) in ids.iter().zip(weights).enumerate() {
            put(id_words, i, id);
            put(weight_words, i, w.to_bits());
        }
        // Launch order: pairs in place before the copies first, then the others, then the split
        // pairs (down only); the host's pairs last, never launched.
        let on = |p: usize, late: bool| sources.get(p).is_some_and(|s| s.on_device() && s.after_copies() == late);
        let is = |p: usize, f: fn(&PairSource) -> bool| sources.get(p).is_some_and(f);
        let host_only = |s: &PairSource| !s.on_device() && !s.split_pair();
        let early = (0..pairs).filter(|&p| on(p, false));
        let late = (0..pairs).filter(|&p| on(p, true));
        let split = (0..pairs).filter(|&p| is(p, PairSource::split_pair));
        let host = (0..pairs).filter(|&p| is(p, host_only));
        for (i, p) in early.chain(late).chain(split).chain(host).enumerate() {
            put(order_words, i, p as u32);
        }
        self.before = sources.iter().filter(|s| s.on_device() && !s.after_copies()).count();
        self.on_device = sources.iter().filter(|s| s.on_device()).count();
        self.host_pairs.clear();
        self.host_pairs.extend((0..pairs).filter(|&p| is(p, host_only)));
        self.split_pairs.clear();
        self.split_pairs.extend((0..pairs).filter(|&p| is(p, PairSource::split_pair)));
        self.split = self.split_pairs.len();
        self.pairs = pairs;
        self.tokens = pairs / self.top_k;
        let staged: &[u64] = block;
        if !staged.is_empty() {
            // SAFETY: `device_ptr` is this block's device allocation of `block_words(max_pairs)`
            // words (at least `words`: pairs ≤ max_pairs) and the source is the first `words`
            // words of the page-locked host block; it is not written again until `uploaded`
            // completes (waited on above at the next `stage`).
            unsafe { copy_htod_async(self.device_ptr, bytemuck_words(staged), stream) }?;
            self.uploaded.record(stream)?;
        }
        Ok(())
    }

    /// Enqueues on `stream` the upload of host-computed outputs: `parts` holds one `hidden`-long
    /// row per entry of `pairs`, the output of that pair of the staged step, copied into the
    /// step's partial outputs (where the combine reads them). Call after [`StepBuffers::stage`]
    /// and before the combine, on the combine's stream. The rows go through a page-locked block
    /// this call reuses after its previous upload completed.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when a pair is not one the staged step serves on the host
    /// ([`PairSource::Host`]: the kernels write the others) or the lengths disagree;
    /// [`CudaError::Driver`].
    pub fn upload_parts(&mut self, stream: &CudaStream, pairs: &[usize], parts: &[f32]) -> Result<(), CudaError> {
        let rows = HostRows {
            what: "host outputs",
            served: &self.host_pairs,
            width: self.hidden,
            max_pairs: self.max_pairs,
            device: self.part_ptr,
        };
        rows.upload(stream, pairs, parts, &mut self.host_parts, &mut self.parts_uploaded)
    }

    /// Enqueues on `stream` the upload of the intermediate rows the host computed for split
    /// pairs ([`PairSource::Split`]): `h` holds one `ffn`-long row per entry of `pairs`, copied
    /// into the step's `h`, where [`Phase::Split`]'s down launch reads them. Call after
    /// [`StepBuffers::stage`] and before that launch, on its stream; through a page-locked block
    /// as [`StepBuffers::upload_parts`].
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] when a pair is not a split pair of the staged step or the
    /// lengths disagree; [`CudaError::Driver`].
    ///
    /// [`Phase::Split`]: super::Phase::Split
    pub fn upload_h(&mut self, stream: &CudaStream, pairs: &[usize], h: &[f32]) -> Result<(), CudaError> {
        let rows = HostRows {
            what: "intermediate rows",
            served: &self.split_pairs,
            width: self.ffn,
            max_pairs: self.max_pairs,
            device: self.h_ptr,
        };
        rows.upload(stream, pairs, h, &mut self.host_h, &mut self.h_uploaded)
    }

    /// The device address of the staged step's launch order (pair indexes, `i32`).
    pub(super) fn order_ptr(&self) -> u64 {
        self.device_ptr + block_offsets(self.pairs).2
    }

    pub(super) fn args(&self, shape: &FfnShape, x: u64, y: u64) -> StepArgs {
        let (ids, weights, _) = block_offsets(self.pairs);
        StepArgs {
            ids: self.device_ptr + ids,
            weights: self.device_ptr + weights,
            miss: self.device_ptr,
            x,
            h: self.h_ptr,
            part: self.part_ptr,
            y,
            status: self.status_ptr,
            tokens: self.tokens as i32,
            top_k: shape.top_k as i32,
            hidden: shape.hidden as i32,
            ffn: shape.ffn as i32,
            counts: self.counts_ptr,
            fused: i32::from(self.fused()),
        }
    }

    /// Whether the staged step's down launches also combine its tokens: every pair is computed
    /// whole on the device (none on the host, none split), so nothing is uploaded between down
    /// and the combine. A step with split pairs combines in its own launch, after the split
    /// phase, so a step whose split phase is never launched leaves no tile half counted.
    pub const fn fused(&self) -> bool {
        self.pairs > 0 && self.on_device == self.pairs
    }

    /// Reads and clears the status word the kernels set for pairs they could not compute
    /// (synchronises `stream`).
    ///
    /// # Errors
    /// [`CudaError::KernelStatus`] when a kernel set it, [`CudaError::Driver`].
    pub fn check_status(&mut self, stream: &Arc<CudaStream>) -> Result<(), CudaError> {
        let status = stream.clone_dtoh(&self.status)?;
        stream.memset_zeros(&mut self.status)?;
        match status.first().copied().unwrap_or(0) {
            0 => Ok(()),
            bits => Err(CudaError::KernelStatus(bits)),
        }
    }

    /// The intermediate `h` of the last step, `[pairs, ffn]` (synchronises `stream`).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn h(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>, CudaError> {
        Ok(stream.clone_dtoh(&self.h)?)
    }
}

/// Rows the host computed for some pairs of a staged step, and where they go: one `width`-long
/// row per pair, at the pair's row of the device buffer `device` (`max_pairs × width` f32).
struct HostRows<'a> {
    what: &'static str,
    /// The pairs the staged step serves this way.
    served: &'a [usize],
    width: usize,
    max_pairs: usize,
    device: u64,
}

impl HostRows<'_> {
    /// Copies `rows` (one per entry of `pairs`) into the page-locked `block` (allocated on first
    /// use, reused once `uploaded` completed) and enqueues their upload on `stream`.
    fn upload(
        &self,
        stream: &CudaStream,
        pairs: &[usize],
        rows: &[f32],
        block: &mut Option<PinnedHostSlice<f32>>,
        uploaded: &mut Upload,
    ) -> Result<(), CudaError> {
        let width = self.width;
        if rows.len() != pairs.len() * width || pairs.iter().any(|p| !self.served.contains(p)) {
            return Err(CudaError::Unsupported(format!(
                "{} {} for pairs {pairs:?}; the staged step serves {:?} so",
                rows.len() / width.max(1),
                self.what,
                self.served
            )));
        }
        if pairs.is_empty() {
            return Ok(());
        }
        uploaded.wait()?;
        if block.is_none() {
            let ctx = stream.context();
            // SAFETY: rows are written below before the copies that read them.
            *block = Some(unsafe { ctx.alloc_pinned_with_flags::<f32>(self.max_pairs * width, 0) }?);
        }
        let block = block.as_mut().ok_or(CudaError::Unsupported(self.what.into()))?;
        let outside = |pair: usize| CudaError::Unsupported(format!("pair {pair} is past the staging block"));
        let staged = block.as_mut_slice()?;
        for (&pair, row) in pairs.iter().zip(rows.chunks_exact(width)) {
            let at = pair * width;
            staged.get_mut(at..at + width).ok_or_else(|| outside(pair))?.copy_from_slice(row);
        }
        let staged = block.as_slice()?;
        // One copy per run of consecutive pairs: a copy's enqueue and its transfer's start cost
        // more than its few KiB.
        for (first, count) in pair_runs(pairs) {
            let (at, len) = (first * width, count * width);
            let rows = staged.get(at..at + len).ok_or_else(|| outside(first + count - 1))?;
            // SAFETY: the destination is pairs `first .. first + count`'s rows of the step's
            // device buffer (`max_pairs × width` f32, each pair < pairs ≤ max_pairs); the source
            // is the same rows of the page-locked block, not written again until `uploaded`
            // completes.
            unsafe { copy_htod_async(self.device + 4 * at as u64, f32_bytes(rows), stream) }?;
        }
        uploaded.record(stream)?;
        Ok(())
    }
}

/// The runs of consecutive values of `pairs` (in any order, each once), as (first, count), in
/// ascending order.
fn pair_runs(pairs: &[usize]) -> Vec<(usize, usize)> {
    let mut sorted = pairs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for pair in sorted {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == pair => *count += 1,
            _ => runs.push((pair, 1)),
        }
    }
    runs
}

/// An event marking the end of an upload from a page-locked block, which the block's next
/// writer waits for.
#[derive(Debug)]
struct Upload {
    event: CudaEvent,
    pending: bool,
}

impl Upload {
    fn new(stream: &CudaStream) -> Result<Self, CudaError> {
        let flags = cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        Ok(Self { event: stream.context().new_event(Some(flags))?, pending: false })
    }

    /// Waits (host) for the last upload recorded, if any.
    fn wait(&mut self) -> Result<(), CudaError> {
        if self.pending {
            self.event.synchronize()?;
            self.pending = false;
        }
        Ok(())
    }

    /// Records the end of the upload just enqueued on `stream`.
    fn record(&mut self, stream: &CudaStream) -> Result<(), CudaError> {
        self.event.record(stream)?;
        self.pending = true;
        Ok(())
    }
}

/// The bytes of `words`.
fn bytemuck_words(words: &[u64]) -> &[u8] {
    bytemuck::cast_slice(words)
}

/// The bytes of `values`.
fn f32_bytes(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staged_block_holds_three_addresses_and_three_halves_per_pair() {
        assert_eq!(block_words(8), 24 + 12);
        assert_eq!(block_words(3), 9 + 6);
        // Ids after the 24 miss words, weights and the order four words apart.
        assert_eq!(block_offsets(8), (192, 224, 256));
        assert_eq!(block_offsets(3), (72, 88, 104));
        assert_eq!(block_offsets(3).2 + 8 * 2, 8 * block_words(3) as u64);
    }

    #[test]
    fn host_rows_go_up_in_one_copy_per_run_of_consecutive_pairs() {
        assert_eq!(pair_runs(&[0, 1, 2, 3, 4, 5, 6, 7]), vec![(0, 8)]);
        assert_eq!(pair_runs(&[6, 1, 2, 4, 7]), vec![(1, 2), (4, 1), (6, 2)]);
        assert_eq!(pair_runs(&[3, 3]), vec![(3, 1)]);
        assert!(pair_runs(&[]).is_empty());
    }
}
