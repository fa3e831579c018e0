//! Calibration of a [`GpuModel`]: the link's bandwidth and the per-pair costs of each way of
//! serving a miss, measured through the library's sink at start-up.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use expertslab::{Projection, SlotArena};
use std::sync::Arc;

use expertslab_std::ffn::PairSlabs;

use super::model::{seconds, GpuModel};
use super::runner::spawn_on;
use super::{activations, median, Calibration};
use crate::arena::DEVICE_ALIGN;
use crate::driver::CudaDriver;
use crate::error::CudaError;
use crate::ffn::{raw, MissCosts, PairSource, SlotView};
use crate::sink::CudaSlotSink;
use crate::table::DeviceSlotTable;

impl GpuModel {
    /// Measures the link bandwidth and the per-pair compute costs of resident and bus-read
    /// experts (medians of `reps` timings each), through the library's sink: copies are
    /// scratch writes, resident pairs read the scratch slots, bus-read pairs the mapped host
    /// memory.
    ///
    /// # Errors
    /// [`CudaError::Driver`] and the kernels' errors.
    pub fn calibrate(&self, reps: usize) -> Result<Calibration, CudaError> {
        let reps = reps.max(3);
        let k = self.spec.shape.top_k.min(self.spec.experts);
        let (mut sink, _table, view) = self.scratch_sink(k)?;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        // Link: copies of k experts from page-locked memory.
        let mut link = Vec::new();
        let mut scratch = Vec::new();
        for _ in 0..reps {
            let start = sink.copy_stream().record_event(timing)?;
            scratch.clear();
            for e in 0..k {
                scratch.push(sink.write_scratch(0, e, &self.layout, &self.store, 0, e)?);
            }
            let end = sink.copy_stream().record_event(timing)?;
            end.synchronize()?;
            link.push((k * self.expert_bytes) as f64 / seconds(&start, &end)?);
        }
        sink.order_before(&self.compute)?;
        // One token over k experts, from device memory and over the bus.
        let ids: Vec<u32> = (0..k as u32).collect();
        let weights = vec![1.0 / k as f32; k];
        let x = self.compute.clone_htod(&activations(self.spec.seed, self.spec.shape.hidden))?;
        let y = self.compute.alloc_zeros::<f32>(self.spec.shape.hidden)?;
        let (xp, yp) = (raw(&x, &self.compute), raw(&y, &self.compute));
        let mut step = self.ffn.step_buffers(&self.compute, 1)?;
        let mut per_pair = |sources: &[PairSource]| -> Result<f64, CudaError> {
            step.stage(&self.compute, &ids, &weights, sources)?;
            let mut t = Vec::new();
            for _ in 0..reps + 1 {
                let start = self.compute.record_event(timing)?;
                // SAFETY: `view` reads the sink's arena and the table (alive for this function),
                // the sources the sink's scratch slots or the model's mapped host stacks, `xp`
                // and `yp` one token's activations and output; the compute stream waited on the
                // copy stream above.
                unsafe { self.ffn.launch(&self.compute, &view, &step, xp, yp) }?;
                let end = self.compute.record_event(timing)?;
                end.synchronize()?;
                t.push(seconds(&start, &end)? / k as f64);
            }
            t.remove(0); // the first launch warms up
            step.check_status(&self.compute)?;
            Ok(median(&mut t))
        };
        let resident =
            scratch.iter().map(|&s| PairSource::scratch(&sink, &self.layout, s)).collect::<Result<Vec<_>, _>>()?;
        let bus_read =
            (0..k).map(|e| PairSource::mapped(sink.host(), &self.store, 0, e)).collect::<Result<Vec<_>, _>>()?;
        let resident_pair = per_pair(&resident)?;
        let bus_pair = per_pair(&bus_read)?;
        self.compute.synchronize()?;
        let link_bytes_per_second = median(&mut link);
        // The host is timed with the link busy, as the balanced rule keeps it: host memory
        // serves the copies and the host's reads at once.
        let mut copies = 0usize;
        let mut busy_link = |n: usize| -> Result<(), CudaError> {
            sink.synchronize().map_err(|f| f.error)?;
            for i in 0..n {
                let expert = (copies + i) % self.spec.experts.max(1);
                sink.write_scratch(0, i % k, &self.layout, &self.store, 0, expert)?;
            }
            copies += n;
            Ok(())
        };
        let (host_pair, host_step) = self.host_costs(k, reps, &x, &mut busy_link)?;
        sink.synchronize().map_err(|f| f.error)?;
        Ok(Calibration {
            link_bytes_per_second,
            costs: MissCosts {
                copy: self.expert_bytes as f64 / link_bytes_per_second,
                resident_pair,
                bus_pair,
                host_pair,
                host_step,
                down_share: self.layout.share_of(Projection::Down)?,
            },
        })
    }

    /// A sink with no slots and `scratch` scratch slots (key 0), its slot table and the view the
    /// kernels read it by: what the start-up measurements compute resident pairs from. Keep the
    /// table as long as the view is used.
    fn scratch_sink(
        &self,
        scratch: usize,
    ) -> Result<(CudaSlotSink<CudaDriver>, DeviceSlotTable<CudaDriver>, SlotView), CudaError> {
        let mut sink = self.sink()?;
        sink.add_arena(0, SlotArena::new(&self.layout, 0, DEVICE_ALIGN)?)?;
        sink.add_scratch(0, SlotArena::new(&self.layout, scratch, DEVICE_ALIGN)?)?;
        let table = DeviceSlotTable::new(0, self.spec.experts, &mut sink)?;
        let vram = sink.vram(0).ok_or(CudaError::UnknownLayer { layer: 0 })?;
        let view = SlotView::new(&self.spec.shape, &self.layout, vram, table.view())?;
        Ok((sink, table, view))
    }

    /// The MoE FFN's kernels alone for one decode token: every layer's top-k pairs, launched
    /// back to back on the compute stream with no host work between layers (the runner waits
    /// for each layer before it knows the next one's routing; this does not). Each layer reads
    /// its own top-k experts from scratch slots in VRAM, so a token reads as many bytes as the
    /// runner's all-resident token and no layer finds the last one's in the L2 cache (for models
    /// whose experts of all layers exceed it). Median over `reps` runs of 20 tokens, after one
    /// to warm up, in seconds per token.
    ///
    /// Beside [`GpuModel::decode`]'s all-resident time it splits the floor into the kernels'
    /// time and what the runner adds (pool steps, staging, launches and the wait per layer).
    ///
    /// # Errors
    /// [`CudaError::DoesNotFit`] when `layers × top-k` experts do not fit the free device memory,
    /// [`CudaError::Driver`] and the kernels' errors.
    pub fn kernel_floor(&self, reps: usize) -> Result<f64, CudaError> {
        const TOKENS: usize = 20;
        let (layers, k) = (self.spec.layers.max(1), self.spec.shape.top_k.min(self.spec.experts));
        let (free, _) = self.ctx.mem_get_info()?;
        super::check_fit(free as u64, self.slot_bytes_all_layers()?, 0, k)?;
        let (mut sink, _table, view) = self.scratch_sink(layers * k)?;
        let ids: Vec<u32> = (0..k as u32).collect();
        let weights = vec![1.0 / k as f32; k];
        let mut steps = Vec::with_capacity(layers);
        for layer in 0..layers {
            let mut sources = Vec::with_capacity(k);
            for e in 0..k {
                let slot = sink.write_scratch(0, layer * k + e, &self.layout, &self.store, layer, e)?;
                sources.push(PairSource::scratch(&sink, &self.layout, slot)?);
            }
            let mut step = self.ffn.step_buffers(&self.compute, 1)?;
            step.stage(&self.compute, &ids, &weights, &sources)?;
            steps.push(step);
        }
        sink.order_before(&self.compute)?;
        let x = self.compute.clone_htod(&activations(self.spec.seed, self.spec.shape.hidden))?;
        let y = self.compute.alloc_zeros::<f32>(self.spec.shape.hidden)?;
        let (xp, yp) = (raw(&x, &self.compute), raw(&y, &self.compute));
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(reps);
        for rep in 0..=reps.max(1) {
            let start = self.compute.record_event(timing)?;
            for _ in 0..TOKENS {
                for step in &steps {
                    // SAFETY: `view` reads the sink's arena and the table (alive for this
                    // function), the sources the sink's scratch slots, filled before the
                    // compute stream's wait above; `xp` and `yp` one token's activations and
                    // output.
                    unsafe { self.ffn.launch(&self.compute, &view, step, xp, yp) }?;
                }
            }
            let end = self.compute.record_event(timing)?;
            end.synchronize()?;
            if rep > 0 {
                times.push(seconds(&start, &end)? / TOKENS as f64);
            }
        }
        for step in &mut steps {
            step.check_status(&self.compute)?;
        }
        sink.synchronize().map_err(|f| f.error)?;
        Ok(median(&mut times))
    }

    /// The host's costs as the runner pays them for one token: per layer step, the model's host
    /// FFN on all its threads over the pairs (kept warm between steps, as the runner keeps
    /// them) and their outputs uploaded; the input `x_device` is copied to the host untimed, as
    /// the runner's previous record leaves it on the host. Timed with one pair and with `k`
    /// (medians over `reps` runs, after one
    /// to warm up): `host_pair` is the time `k` pairs add over one, per pair, and `host_step`
    /// what is left of the one-pair time. Both `f64::INFINITY` when the host FFN does not read
    /// the model's format. Each run reads other experts, spread over every layer, as decode's
    /// misses do: experts read again and again would be timed from the host's caches (a
    /// last-level cache of hundreds of MiB holds a token's experts), not from its memory.
    fn host_costs(
        &self,
        k: usize,
        reps: usize,
        x_device: &CudaSlice<f32>,
        busy_link: &mut dyn FnMut(usize) -> Result<(), CudaError>,
    ) -> Result<(f64, f64), CudaError> {
        let s = &self.spec.shape;
        let Some(ffn) = &self.host else {
            return Ok((f64::INFINITY, f64::INFINITY));
        };
        let (experts, layers) = (self.spec.experts.max(1), self.spec.layers.max(1));
        let all = experts * layers;
        // A stride prime to the expert count, so the runs visit every expert before one comes
        // back.
        let stride = if all % 7919 == 0 { 1 } else { 7919 };
        let k = k.max(2);
        let mut next = 0usize;
        let mut x = vec![0.0f32; s.hidden];
        let mut parts_device = self.compute.alloc_zeros::<f32>(k * s.hidden)?;
        let store = Arc::new(self.store.clone());
        let hidden = s.hidden;
        let mut time = |n: usize| -> Result<f64, CudaError> {
            // One copy a pair: the link busy about as long as the host (a copy of an expert
            // takes about as long as a pair on the host).
            busy_link(n)?;
            let experts_of: Vec<(usize, usize)> = (0..n)
                .map(|_| {
                    let at = (next * stride) % all;
                    next += 1;
                    (at / experts, at % experts)
                })
                .collect();
            // The input is on the host when a layer step starts (the previous record's stream
            // copied it back before its event): not timed.
            self.compute.memcpy_dtoh(x_device, &mut x)?;
            self.compute.synchronize()?;
            let start = std::time::Instant::now();
            // Handed to the pool and waited for as the runner does ([`spawn_on`]), so the costs
            // include the handoff a layer step pays.
            let (store, input) = (Arc::clone(&store), x.clone());
            let job = spawn_on(ffn, move |ffn| -> Result<Vec<f32>, CudaError> {
                let pairs = experts_of
                    .iter()
                    .map(|&(layer, expert)| PairSlabs::from_source(&*store, layer, expert, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut out = vec![0.0f32; n * hidden];
                ffn.parts(&pairs, &input, &mut out).map_err(|e| CudaError::Unsupported(format!("host FFN: {e}")))?;
                Ok(out)
            });
            let out = job.wait().ok_or_else(|| CudaError::Unsupported("the host's pairs were lost".into()))??;
            // The upload enqueued, as the runner leaves it: it may queue behind the link's
            // copies, time the link already counts.
            let mut device = parts_device.slice_mut(..n * hidden);
            self.compute.memcpy_htod(&out, &mut device)?;
            let seconds = start.elapsed().as_secs_f64();
            self.compute.synchronize()?;
            Ok(seconds)
        };
        let (mut one, mut added) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
        for rep in 0..=reps {
            let (t1, tk) = (time(1)?, time(k)?);
            if rep > 0 {
                one.push(t1);
                added.push((tk - t1).max(0.0) / (k - 1) as f64);
            }
        }
        let pair = median(&mut added);
        Ok((pair, (median(&mut one) - pair).max(0.0)))
    }
}
