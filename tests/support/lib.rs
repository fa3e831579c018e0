//! Helpers shared by the host integration tests: a plain reference model of TIDE placement and
//! a small synthetic model whose expert bytes identify the expert.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};

use expertslab::{ExpertLayout, Format, LayerStacks, Projection, StackLayout};

/// TIDE's hit-count refresh written as plainly as possible with hash sets, to check the pool.
#[derive(Debug, Clone, Default)]
pub struct ReferenceTide {
    /// Slots.
    pub budget: usize,
    /// Experts in the layer.
    pub experts: u32,
    /// Resident experts.
    pub resident: HashSet<u32>,
}

/// What one reference refresh decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceRefresh {
    /// Targets, hottest first.
    pub targets: Vec<u32>,
    /// Experts promoted, hottest first.
    pub promoted: Vec<u32>,
    /// Experts demoted, coldest first.
    pub demoted: Vec<u32>,
}

impl ReferenceTide {
    /// A reference layer; warm starts with experts `0..budget` resident.
    pub fn new(experts: u32, budget: usize, warm: bool) -> Self {
        let budget = budget.min(experts as usize);
        let resident = if warm { (0..budget as u32).collect() } else { HashSet::new() };
        Self { budget, experts, resident }
    }

    /// One refresh from `ids`.
    pub fn refresh(&mut self, ids: &[u32]) -> ReferenceRefresh {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &id in ids.iter().filter(|&&id| id < self.experts) {
            *counts.entry(id).or_default() += 1;
        }
        let mut ranked: Vec<(u32, u32)> = counts.iter().map(|(&e, &c)| (e, c)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(self.budget);
        let targets: Vec<u32> = ranked.iter().map(|&(e, _)| e).collect();
        let target_set: HashSet<u32> = targets.iter().copied().collect();
        let promoted: Vec<u32> = targets.iter().copied().filter(|e| !self.resident.contains(e)).collect();
        let free = self.budget - self.resident.len();
        let needed = promoted.len().saturating_sub(free);
        let mut candidates: Vec<u32> = self.resident.iter().copied().filter(|e| !target_set.contains(e)).collect();
        candidates.sort_by_key(|e| (counts.get(e).copied().unwrap_or(0), *e));
        let demoted: Vec<u32> = candidates.into_iter().take(needed).collect();
        for e in &demoted {
            self.resident.remove(e);
        }
        self.resident.extend(promoted.iter().copied());
        assert!(self.resident.len() <= self.budget);
        ReferenceRefresh { targets, promoted, demoted }
    }

    /// Hits of `ids` against the resident set.
    pub fn hits(&self, ids: &[u32]) -> usize {
        ids.iter().filter(|e| self.resident.contains(e)).count()
    }
}

/// The byte of expert `expert`'s slab of projection `index`: slabs identify their expert.
pub fn slab_byte(expert: usize, index: usize) -> u8 {
    (expert * 7 + index * 3 + 1) as u8
}

/// A synthetic layer: gate, up and down `F32` stacks whose expert slabs are filled with
/// [`slab_byte`]. Returns the layout and the three stacks.
pub fn synthetic_layer(experts: usize, rows: usize, cols: usize) -> (ExpertLayout, Vec<Vec<u8>>) {
    let stack = StackLayout::new(Format::F32, experts, rows, cols).expect("valid layout");
    let layout = ExpertLayout::gate_up_down(stack, stack, stack).expect("valid layout");
    let stacks = (0..3)
        .map(|index| (0..experts).flat_map(|e| vec![slab_byte(e, index); stack.expert_bytes()]).collect())
        .collect();
    (layout, stacks)
}

/// Borrows [`synthetic_layer`]'s stacks as a one-layer source.
pub fn borrow_layer<'a>(layout: &ExpertLayout, stacks: &'a [Vec<u8>]) -> LayerStacks<'a> {
    let slices: Vec<&[u8]> = stacks.iter().map(Vec::as_slice).collect();
    LayerStacks::new(layout.clone(), &slices).expect("stacks match the layout")
}

/// The projections of a gate/up/down layout, in order.
pub const GATE_UP_DOWN: [Projection; 3] = [Projection::Gate, Projection::Up, Projection::Down];

/// A small deterministic generator (xorshift64*), so tests and benchmarks need no randomness
/// crate and give the same streams everywhere.
#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// One step of skewed top-k routing: `tokens` tokens, each with `top_k` distinct experts drawn
/// with a popularity that falls off with the expert's rank (a product of two uniforms), the rank
/// order rotated by `shift` to model drift between steps.
pub fn skewed_routing(rng: &mut Xorshift, tokens: usize, top_k: usize, experts: u32, shift: u32) -> Vec<u32> {
    let mut ids = Vec::with_capacity(tokens * top_k);
    for _ in 0..tokens {
        let start = ids.len();
        while ids.len() - start < top_k.min(experts as usize) {
            let rank = (u64::from(rng.below(experts)) * u64::from(rng.below(experts)) / u64::from(experts)) as u32;
            let expert = (rank + shift) % experts;
            if !ids[start..].contains(&expert) {
                ids.push(expert);
            }
        }
    }
    ids
}
