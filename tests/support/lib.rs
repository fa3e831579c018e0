//! Helpers shared by the host integration tests: a plain reference model of TIDE placement, a
//! small synthetic model whose expert bytes identify the expert, and the synthetic trace families
//! of the placement goals.

#![forbid(unsafe_code)]

pub mod families;
pub mod fuzz;
pub mod gguf;

/// `n` cases of a property or sampled loop, or a handful under Miri, which runs each case
/// thousands of times slower.
pub fn cases(n: u32) -> u32 {
    if cfg!(miri) {
        n.min(4)
    } else {
        n
    }
}

use std::collections::{HashMap, HashSet};

use expertslab::{ExpertLayout, ExpertPool, Format, LayerStacks, MigrationPlan, PoolConfig, Projection, StackLayout};

/// A pool built from `config` with its initial plan committed (no bytes: placement only), and a
/// plan with room for its slots.
pub fn started_pool(config: PoolConfig) -> (ExpertPool, MigrationPlan) {
    let mut pool = ExpertPool::new(config).expect("valid config");
    let mut plan = MigrationPlan::new(pool.slots());
    pool.initial_plan(&mut plan);
    commit_plan(&mut pool, &plan);
    (pool, plan)
}

/// Commits every promotion of `plan` as if copied.
pub fn commit_plan(pool: &mut ExpertPool, plan: &MigrationPlan) {
    for &p in plan.promotions() {
        pool.commit(p, 1).expect("a fresh plan commits");
    }
}

/// The resident experts of `pool`.
pub fn resident_set(pool: &ExpertPool) -> HashSet<u32> {
    pool.residents().map(|(_, e)| e as u32).collect()
}

/// TIDE's hit-count refresh written as plainly as possible with hash sets, to check the pool.
#[derive(Debug, Clone, Default)]
pub struct ReferenceTide {
    /// Slots.
    pub slots: usize,
    /// Experts in the layer.
    pub experts: u32,
    /// Resident experts.
    pub resident: HashSet<u32>,
    /// The experts the last refresh promoted, until the step is served.
    pub copied: HashSet<u32>,
}

/// One reference step's pairs: hits (resident before the step), misses served by copy (copied in
/// for the step) and misses served in place (not resident).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReferenceServed {
    /// Pairs whose expert was resident before the step.
    pub hits: u64,
    /// Pairs whose expert was copied in for the step.
    pub served_by_copy: u64,
    /// Pairs whose expert is not resident.
    pub served_in_place: u64,
}

impl ReferenceServed {
    /// The pool's counts of a served step, in this shape.
    pub fn of(served: &expertslab::ServeStats) -> Self {
        assert_eq!(served.misses, served.served_by_copy + served.served_in_place);
        Self { hits: served.hits, served_by_copy: served.served_by_copy, served_in_place: served.served_in_place }
    }
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
    /// A reference layer; warm starts with experts `0..slot count` resident.
    pub fn new(experts: u32, slots: usize, warm: bool) -> Self {
        let slots = slots.min(experts as usize);
        let resident = if warm { (0..slots as u32).collect() } else { HashSet::new() };
        Self { slots, experts, resident, copied: HashSet::new() }
    }

    /// One refresh from `ids`.
    pub fn refresh(&mut self, ids: &[u32]) -> ReferenceRefresh {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &id in ids.iter().filter(|&&id| id < self.experts) {
            *counts.entry(id).or_default() += 1;
        }
        let mut ranked: Vec<(u32, u32)> = counts.iter().map(|(&e, &c)| (e, c)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(self.slots);
        let targets: Vec<u32> = ranked.iter().map(|&(e, _)| e).collect();
        let target_set: HashSet<u32> = targets.iter().copied().collect();
        let promoted: Vec<u32> = targets.iter().copied().filter(|e| !self.resident.contains(e)).collect();
        let free = self.slots - self.resident.len();
        let needed = promoted.len().saturating_sub(free);
        let mut candidates: Vec<u32> = self.resident.iter().copied().filter(|e| !target_set.contains(e)).collect();
        candidates.sort_by_key(|e| (counts.get(e).copied().unwrap_or(0), *e));
        let demoted: Vec<u32> = candidates.into_iter().take(needed).collect();
        for e in &demoted {
            self.resident.remove(e);
        }
        self.resident.extend(promoted.iter().copied());
        self.copied = promoted.iter().copied().collect();
        assert!(self.resident.len() <= self.slots);
        ReferenceRefresh { targets, promoted, demoted }
    }

    /// Serves `ids`: a resident's pair is a hit unless the last refresh copied it in for this
    /// step; every other valid pair is served in place. Forgets the refresh's promotions.
    pub fn serve(&mut self, ids: &[u32]) -> ReferenceServed {
        let mut served = ReferenceServed::default();
        for id in ids.iter().filter(|&&id| id < self.experts) {
            if !self.resident.contains(id) {
                served.served_in_place += 1;
            } else if self.copied.contains(id) {
                served.served_by_copy += 1;
            } else {
                served.hits += 1;
            }
        }
        self.copied.clear();
        served
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
pub fn borrow_layer<'a>(layout: &ExpertLayout, stacks: &'a [Vec<u8>]) -> LayerStacks<&'a [u8]> {
    let slices: Vec<&[u8]> = stacks.iter().map(Vec::as_slice).collect();
    LayerStacks::new(layout.clone(), &slices).expect("stacks match the layout")
}

/// The projections of a gate/up/down layout, in order.
pub const GATE_UP_DOWN: [Projection; 3] = [Projection::Gate, Projection::Up, Projection::Down];

/// Demand caching written as plainly as possible, to check the pool's LRU, LFU, LRU-2 and Belady.
/// Residents are a list; demotion candidates are found by scanning it; Belady scans the stream for next uses.
/// Pin before admit: the residents any id of the current step routes (pinned before its first
/// miss), the experts it admits and those prefetched for it are never demotion candidates; with
/// no other demotion candidate a miss is not admitted.
#[derive(Debug, Clone)]
pub struct ReferenceDemand {
    /// "lru", "lfu", "lru2" or "belady".
    pub kind: &'static str,
    /// Slots.
    pub slots: usize,
    /// Experts.
    pub experts: u32,
    /// (expert, last use, use before that).
    pub resident: Vec<(u32, u64, u64)>,
    frequency: HashMap<u32, u64>,
    clock: u64,
    stream: Vec<u32>,
    position: usize,
    /// Counters.
    pub hits: u64,
    /// Counters.
    pub misses: u64,
    /// Counters: misses whose expert was admitted in their step.
    pub served_by_copy: u64,
    /// Counters: misses not admitted (no slot, or every slot pinned).
    pub served_in_place: u64,
    /// Counters.
    pub promotions: u64,
    /// Counters.
    pub demotions: u64,
    /// Experts the last step used or admitted (pinned during a prefetch after it).
    last_step: HashSet<u32>,
    /// Experts prefetched for the next step (pinned through it).
    prefetched: HashSet<u32>,
}

impl ReferenceDemand {
    /// A reference cache; warm starts with experts `0..slot count`, used at time 0. Belady needs the
    /// layer's whole stream.
    pub fn new(kind: &'static str, experts: u32, slots: usize, warm: bool, stream: Vec<u32>) -> Self {
        let slots = slots.min(experts as usize);
        let resident = if warm { (0..slots as u32).map(|e| (e, 0, 0)).collect() } else { Vec::new() };
        Self {
            kind,
            slots,
            experts,
            resident,
            frequency: HashMap::new(),
            clock: 0,
            stream,
            position: 0,
            hits: 0,
            misses: 0,
            served_by_copy: 0,
            served_in_place: 0,
            promotions: 0,
            demotions: 0,
            last_step: HashSet::new(),
            prefetched: HashSet::new(),
        }
    }

    /// The policy's demotion key of a resident (lowest goes first; ties to the lower id).
    fn key(&self, r: &(u32, u64, u64)) -> (u64, u64, u32) {
        match self.kind {
            "lru" => (r.1, 0, r.0),
            "lfu" => (self.frequency.get(&r.0).copied().unwrap_or(0), 0, r.0),
            "lru2" => (r.2, r.1, r.0),
            "belady" => (u64::MAX - self.next_use(r.0) as u64, 0, r.0),
            other => panic!("unknown policy {other}"),
        }
    }

    /// The resident the policy demotes first among those not in `pinned`.
    fn victim(&self, pinned: &HashSet<u32>) -> Option<usize> {
        let candidates = (0..self.resident.len()).filter(|&i| !pinned.contains(&self.resident[i].0));
        candidates.min_by_key(|&i| self.key(&self.resident[i]))
    }

    /// Prefetch after a step: until `limit` are placed, each guess neither resident nor placed
    /// goes into a free slot or replaces the policy's demotion candidate among the residents the
    /// last step did not use or admit (every candidate is outranked). A prefetched expert ranks
    /// as never used and is pinned through the next step.
    pub fn prefetch(&mut self, guesses: &[u32], limit: usize) {
        let mut placed = 0;
        for &guess in guesses {
            if placed >= limit || self.slots == 0 {
                break;
            }
            if guess >= self.experts || self.resident.iter().any(|r| r.0 == guess) {
                continue;
            }
            if self.resident.len() == self.slots {
                let pinned: HashSet<u32> = self.last_step.union(&self.prefetched).copied().collect();
                let Some(victim) = self.victim(&pinned) else { break };
                self.resident.remove(victim);
                self.demotions += 1;
            }
            self.resident.push((guess, 0, 0));
            self.prefetched.insert(guess);
            self.promotions += 1;
            placed += 1;
        }
    }

    fn next_use(&self, expert: u32) -> usize {
        self.stream.iter().skip(self.position).position(|&e| e == expert).map_or(usize::MAX, |p| p + self.position)
    }

    /// Serves one step.
    pub fn step(&mut self, ids: &[u32]) {
        let mut admitted: HashSet<u32> = HashSet::new();
        // Pin before admit: every resident any valid id of the step routes, before the first
        // miss, and the experts prefetched for this step.
        let mut pinned: HashSet<u32> =
            ids.iter().copied().filter(|&id| self.resident.iter().any(|r| r.0 == id)).collect();
        pinned.extend(self.prefetched.drain());
        for &id in ids {
            self.position += 1;
            if id >= self.experts {
                continue;
            }
            self.clock += 1;
            *self.frequency.entry(id).or_default() += 1;
            pinned.insert(id);
            if let Some(r) = self.resident.iter_mut().find(|r| r.0 == id) {
                // Admitted earlier in this step: served from its slot, but only by its copy.
                if admitted.contains(&id) {
                    self.misses += 1;
                    self.served_by_copy += 1;
                } else {
                    self.hits += 1;
                }
                r.2 = r.1;
                r.1 = self.clock;
                continue;
            }
            self.misses += 1;
            if self.slots == 0 {
                self.served_in_place += 1;
                continue;
            }
            if self.resident.len() == self.slots {
                if self.resident.iter().all(|r| pinned.contains(&r.0)) {
                    self.served_in_place += 1;
                    continue;
                }
                let demotable = self.victim(&pinned).expect("an unpinned resident");
                self.resident.remove(demotable);
                self.demotions += 1;
            }
            self.resident.push((id, self.clock, 0));
            admitted.insert(id);
            self.served_by_copy += 1;
        }
        self.promotions += admitted.len() as u64;
        self.last_step = ids.iter().copied().filter(|&id| self.resident.iter().any(|r| r.0 == id)).collect();
    }

    /// The resident set.
    pub fn resident_set(&self) -> HashSet<u32> {
        self.resident.iter().map(|r| r.0).collect()
    }
}

/// Decayed-frequency interval placement written plainly, to check the pool's decay policy.
#[derive(Debug, Clone)]
pub struct ReferenceDecay {
    alpha: f32,
    margin: f32,
    cap: Option<usize>,
    slots: usize,
    /// Scores per expert.
    pub scores: Vec<f32>,
    /// Resident experts.
    pub resident: HashSet<u32>,
    /// Counters.
    pub promotions: u64,
    /// Counters.
    pub demotions: u64,
}

impl ReferenceDecay {
    /// A reference; warm starts with experts `0..slot count`.
    pub fn new(config: expertslab::DecayConfig, experts: u32, slots: usize, warm: bool) -> Self {
        let slots = slots.min(experts as usize);
        Self {
            alpha: config.alpha(),
            margin: config.margin(),
            cap: config.max_promotions().map(usize::from),
            slots,
            scores: vec![0.0; experts as usize],
            resident: if warm { (0..slots as u32).collect() } else { HashSet::new() },
            promotions: 0,
            demotions: 0,
        }
    }

    /// One step: fold the ids into the scores, and re-place when `refresh`.
    pub fn step(&mut self, ids: &[u32], refresh: bool) {
        for s in &mut self.scores {
            *s *= self.alpha;
        }
        for &id in ids {
            if let Some(s) = self.scores.get_mut(id as usize) {
                *s += 1.0;
            }
        }
        if !refresh || self.resident.len() == self.scores.len() {
            return;
        }
        let mut ranked: Vec<u32> = (0..self.scores.len() as u32).filter(|&e| self.scores[e as usize] > 0.0).collect();
        ranked.sort_by(|&a, &b| self.scores[b as usize].total_cmp(&self.scores[a as usize]).then(a.cmp(&b)));
        ranked.truncate(self.slots);
        let targets: HashSet<u32> = ranked.iter().copied().collect();
        let mut demotables: Vec<u32> = self.resident.iter().copied().filter(|e| !targets.contains(e)).collect();
        demotables.sort_by(|&a, &b| self.scores[a as usize].total_cmp(&self.scores[b as usize]).then(a.cmp(&b)));
        let mut demotables = demotables.into_iter();
        let mut free = self.slots - self.resident.len();
        let mut promoted = 0;
        let challengers: Vec<u32> = ranked.iter().copied().filter(|t| !self.resident.contains(t)).collect();
        for t in challengers {
            if self.cap.is_some_and(|cap| promoted >= cap) {
                break;
            }
            if free > 0 {
                free -= 1;
            } else {
                match demotables.next() {
                    Some(v) if self.scores[t as usize] > self.margin * self.scores[v as usize] => {
                        self.resident.remove(&v);
                        self.demotions += 1;
                    }
                    _ => break,
                }
            }
            self.resident.insert(t);
            promoted += 1;
        }
        self.promotions += promoted as u64;
    }
}
