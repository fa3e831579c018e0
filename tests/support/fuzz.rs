//! The bodies of the fuzz targets (`fuzz/`), shared with the test that replays their committed
//! corpora (`tests/fuzz_corpora.rs`), so CI exercises every saved input without a fuzzing
//! engine. Each function takes arbitrary bytes, drives one public API with them, and panics
//! only when an invariant of the library is broken (a panic inside the library counts too).

use expertslab::gguf::{GgufFile, GgufModel};
use expertslab::trace::replay::{replay, CostModel, ReplayConfig, ReplayError, ReplayPolicy, Sharing};
use expertslab::trace::Trace;
use expertslab::{
    migrate, slots_per_layer, split_byte_budget, ArenaSink, ExpertLayout, ExpertPool, ExpertSource, Format,
    InitialPlacement, LayerDemand, LayeredSource, MigrationPlan, MissOrder, Mode, Policy, PoolConfig, PoolError,
    Predictor, Projection, Schedule, SlotArena, SlotSink, SlotWrite, StackLayout, StackSource, Step,
};

use crate::{borrow_layer, slab_byte, synthetic_layer};

/// Reads little-endian values from fuzz input, giving zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(core::array::from_fn(|_| self.u8()))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A GGUF file: whatever parses must only hand out slabs inside the file, of the layout's
/// length.
pub fn gguf(data: &[u8]) {
    if let Ok(file) = GgufFile::parse(data) {
        assert!(file.data_start() <= data.len() as u64 || file.tensors().is_empty());
        for t in file.tensors() {
            if let Ok(bytes) = file.tensor_data(t) {
                assert_eq!(Some(bytes.len() as u64), t.size);
                assert!(t.data_offset + bytes.len() as u64 <= data.len() as u64);
            }
        }
    }
    if let Ok(model) = GgufModel::new(data) {
        for layer in model.moe_layers().collect::<Vec<_>>() {
            let layout = model.layer_layout(layer).expect("a listed layer has a layout").clone();
            for &(projection, stack) in layout.projections() {
                for expert in 0..stack.experts().min(16) {
                    let slab = model.expert(layer, projection, expert).expect("a listed expert has a slab");
                    assert_eq!(slab.len(), stack.expert_bytes());
                }
                if let Ok(whole) = model.stack(layer, projection) {
                    assert_eq!(whole.len(), stack.total_bytes());
                }
            }
        }
    }
}

/// Layout math: every range it gives lies inside what it says the whole is.
pub fn layout(data: &[u8]) {
    let mut input = Input(data);
    let format = match input.u8() {
        255 => Format::custom(u32::from(input.u16()), u32::from(input.u16())),
        id => Format::from_ggml_type(u32::from(id)),
    };
    let Ok(format) = format else { return };
    let dims = [input.u64() as usize, input.u64() as usize, input.u64() as usize];
    let Ok(stack) = StackLayout::new(format, dims[0], dims[1], dims[2]) else { return };
    assert_eq!(stack.total_bytes(), stack.expert_bytes() * stack.experts());
    let expert = input.u64() as usize;
    if let Ok(range) = stack.expert_range(expert) {
        assert!(range.end <= stack.total_bytes() && range.len() == stack.expert_bytes());
    }
    let (r0, r1) = (input.u64() as usize, input.u64() as usize);
    if let Ok(range) = stack.rows_range(expert, r0..r1) {
        assert!(range.end <= stack.total_bytes() && range.len() == (r1 - r0) * stack.row_bytes());
    }
    let projections = [(Projection::Gate, stack), (Projection::Up, stack), (Projection::Down, stack)];
    let Ok(expert_layout) = ExpertLayout::new(&projections[..usize::from(input.u8() % 3) + 1]) else { return };
    let (slots, align) = (usize::from(input.u16()), 1usize << (input.u8() % 13));
    if let Ok(arena) = SlotArena::new(&expert_layout, slots, align) {
        for slot in [0, slots / 2, slots.saturating_sub(1)] {
            for index in 0..arena.projections() {
                if let Ok(range) = arena.projection_range(slot, index) {
                    assert!(range.end <= arena.total_bytes() && range.start.is_multiple_of(align));
                }
            }
        }
    }
    let (memory, reserve, slot_bytes) = (input.u64(), input.u64(), input.u64());
    if let Ok(n) = slots_per_layer(memory, reserve, slot_bytes, u32::from(input.u8()), u32::from(input.u16())) {
        assert!(u64::from(n).saturating_mul(slot_bytes) <= memory.saturating_sub(reserve) || n == 0);
    }
    let demands = [LayerDemand { slot_bytes: slot_bytes.max(1), experts: u32::from(input.u8()) }; 3];
    let mut out = [0; 3];
    if let Ok(used) = split_byte_budget(memory % (1 << 24), &demands, &mut out) {
        assert!(used <= memory % (1 << 24));
    }
}

/// A routing trace: what parses writes back to the same trace, and replays without error for
/// every policy.
pub fn trace(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(trace) = Trace::parse(text) else { return };
    let mut written = String::new();
    trace.write(&mut written).expect("writing to a String");
    assert_eq!(Trace::parse(&written).as_ref(), Ok(&trace));
    if trace.header().experts > 4096 {
        return; // pools that large are valid but slow to build for every input
    }
    for name in ReplayPolicy::NAMES {
        let config = ReplayConfig::new(
            ReplayPolicy::from_name(name).expect("a listed name"),
            (trace.header().experts / 2) as usize,
            Schedule::EveryDecodeSteps(core::num::NonZeroU32::MIN.saturating_add(1)),
            InitialPlacement::Warm,
            CostModel::new(1 << 20, 1e-5, 1e10),
        );
        let report = match replay(&trace, &config) {
            // The Markov reference refuses (and says so) a layer whose model is past its limits.
            Err(ReplayError::TooLarge { .. }) if config.policy == ReplayPolicy::Markov => continue,
            result => result.expect("a parsed trace replays"),
        };
        assert_eq!(report.total.served.hits + report.total.served.misses, report.total.served.pairs());
        assert_eq!(
            report.total.served.served_by_copy + report.total.served.served_in_place,
            report.total.served.misses
        );
        // A shared pool (demand policies) and prefetch (LRU, LFU) replay the same pairs, or refuse
        // a trace whose keys or steps are too many for one pool.
        let prefetching =
            ReplayConfig { prefetch: Some(Predictor::Both), cost: config.cost.layer_compute(1e-3), ..config };
        for variant in [ReplayConfig { sharing: Sharing::Shared, ..config }, prefetching] {
            if !variant.sharing.supports(variant.policy) {
                continue;
            }
            match replay(&trace, &variant) {
                Ok(other) => {
                    assert_eq!(other.total.served.pairs(), report.total.served.pairs(), "{name}");
                    assert!(other.total.prefetch_hits <= other.total.prefetched);
                }
                Err(ReplayError::Pool {
                    error: PoolError::TooManyExperts { .. } | PoolError::TooManyIds { .. },
                    ..
                }) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
}

/// A sink that fails its `fail_at`-th write after writing half of it.
struct Faulty<'a> {
    inner: ArenaSink<'a>,
    writes: usize,
    fail_at: usize,
}

impl SlotSink for Faulty<'_> {
    type Error = ();

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), ()> {
        self.writes += 1;
        if self.writes == self.fail_at {
            let torn: Vec<u8> =
                bytes.iter().enumerate().map(|(i, &b)| if i < bytes.len() / 2 { b } else { 0xEE }).collect();
            let _ = self.inner.write(dest, &torn);
            return Err(());
        }
        self.inner.write(dest, bytes).map_err(|_| ())
    }
}

/// A pool driven by arbitrary steps (every interval and demand policy, schedules, modes,
/// prefill) and slot-count changes, migrated through a sink that fails at arbitrary writes, with every
/// invariant checked after each operation: resident count within the slots, the slot table a
/// bijection, and every slot the pool names holding exactly its expert's bytes. The memory of
/// slots a shrinking slot count gives back is scribbled over, as a caller reusing it would.
pub fn pool_ops(data: &[u8]) {
    let mut input = Input(data);
    let experts = usize::from(input.u8() % 24) + 1;
    let slots = usize::from(input.u8() % 26);
    let policy = [Policy::Tide, Policy::Decay(Default::default()), Policy::Lru, Policy::Lfu, Policy::Lru2]
        [usize::from(input.u8() % 5)];
    let interval = core::num::NonZeroU32::new(u32::from(input.u8() % 4) + 1).expect("non-zero");
    let initial = if input.u8() % 2 == 0 { InitialPlacement::Warm } else { InitialPlacement::Cold };
    // Bit 0: busiest first; bits 1-2: staging slots (demand policies only: the others refuse them).
    let options = input.u8();
    let miss_order = if options & 1 == 1 { MissOrder::Busiest } else { MissOrder::Routing };
    let staging = if policy.is_demand() { usize::from((options >> 1) & 3) } else { 0 };
    let config = PoolConfig::new(experts, slots)
        .policy(policy)
        .schedule(Schedule::EveryDecodeSteps(interval))
        .initial(initial)
        .miss_order(miss_order)
        .staging(staging);
    let mut pool = ExpertPool::new(config).expect("a valid configuration");
    let (layout, stacks) = synthetic_layer(experts, 1, 2);
    let source = [borrow_layer(&layout, &stacks)];
    // Room for every slot count the pool can take; slot s lies at the same place whatever the count.
    let arena = SlotArena::new(&layout, experts, 8).expect("an arena");
    let mut backing = vec![0u8; arena.total_bytes() + 8];
    let buffer = arena.fit(&mut backing).expect("fits");
    let mut plan = MigrationPlan::new(pool.slots());
    pool.initial_plan(&mut plan);
    let mut step = 0u64;
    let mut ids = Vec::new();
    while !input.is_empty() {
        let op = input.u8();
        let fail_at = match input.u8() {
            0..=191 => 0,
            n => usize::from(n - 191),
        };
        let mut sink =
            Faulty { inner: ArenaSink::new(arena.clone(), 0, &mut *buffer).expect("a sink"), writes: 0, fail_at };
        match op % 6 {
            0 | 1 => {
                ids.clear();
                ids.extend((0..input.u8() % 12).map(|_| u32::from(input.u8() % (experts as u8 + 2))));
                let mode = [Mode::Scheduled, Mode::Scheduled, Mode::Reuse, Mode::Refresh][usize::from(input.u8() % 4)];
                let prefill = op % 6 == 1;
                let s = Step { index: step, prefill, mode };
                step += 1;
                pool.plan_step(s, &ids, &mut plan).expect("a short step");
                let _ = migrate(&mut pool, &plan, &layout, &source[..], &mut sink);
                let served = pool.serve(&ids);
                assert_eq!((served.hits + served.misses + served.invalid_ids) as usize, ids.len());
                assert_eq!(served.served_by_copy + served.served_in_place, served.misses);
            }
            // Retry the last plan: it resumes or is refused as stale, never corrupts.
            2 => {
                let _ = migrate(&mut pool, &plan, &layout, &source[..], &mut sink);
            }
            3 => {
                pool.serve(&ids);
            }
            // Prefetch guesses (ids past the expert count among them), then copy them.
            5 => {
                let guesses: Vec<u16> =
                    (0..input.u8() % 4).map(|_| u16::from(input.u8() % (experts as u8 + 2))).collect();
                let limit = usize::from(input.u8() % 4);
                match pool.prefetch(&guesses, limit, |v, g| (v + g) % 2 == 0, &mut plan) {
                    Ok(_) => {
                        assert!(plan.len() <= limit);
                        let _ = migrate(&mut pool, &plan, &layout, &source[..], &mut sink);
                    }
                    Err(error) => assert_eq!((error, policy.is_demand()), (PoolError::PolicyMismatch, false)),
                }
            }
            _ => {
                let (before, resident) = (pool.slots(), pool.resident());
                let wanted = usize::from(input.u8() % 26);
                let demoted = pool.set_slots(wanted);
                assert_eq!(pool.resident() + demoted, resident);
                assert_eq!(pool.slots(), wanted.min(experts));
                // The caller reuses the memory given back.
                for slot in pool.slots()..before {
                    if let Ok(range) = arena.slot_range(slot) {
                        buffer[range].fill(0xEE);
                    }
                }
            }
        }
        check(&pool, &arena, buffer);
    }
}

fn check(pool: &ExpertPool, arena: &SlotArena, buffer: &[u8]) {
    assert!(pool.resident() <= pool.slots());
    let residents: Vec<(usize, usize)> = pool.residents().collect();
    assert_eq!(residents.len(), pool.resident());
    for &(slot, expert) in &residents {
        assert_eq!(pool.slot_of(expert), Some(slot));
        for index in 0..3 {
            let slab = arena.projection_bytes(buffer, slot, index).expect("slot in range");
            assert!(slab.iter().all(|&b| b == slab_byte(expert, index)), "slot {slot} lost expert {expert}'s bytes");
        }
    }
    assert_eq!((0..pool.experts()).filter(|&e| pool.is_resident(e)).count(), residents.len());
}

/// A fuzz target: arbitrary bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` and the corpus test know them.
pub const TARGETS: [(&str, Target); 4] = [("gguf", gguf), ("layout", layout), ("trace", trace), ("pool_ops", pool_ops)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_run_out_into_zeros() {
        let mut input = Input(&[1, 2]);
        assert_eq!(input.u16(), 0x0201);
        assert_eq!(input.u64(), 0);
        assert!(input.is_empty());
        for (_, target) in TARGETS {
            target(&[]);
            target(&[0xFF; 64]);
        }
    }
}
