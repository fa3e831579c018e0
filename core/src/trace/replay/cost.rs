//! [`CostModel`]: the hardware a replay prices, and how a layer step's costs combine.

use alloc::vec::Vec;

use super::ReplayStats;

/// How many of a layer step's misses the pool may promote before the step, under the overlapped
/// model ([`CostModel::overlapped`]); the misses it then serves in place are split between
/// fetching and in-place compute, at most the cap's count fetched under [`FetchCap::AtMost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FetchCap {
    /// No cap: the pool promotes what its policy admits (a promotion's later hits are worth
    /// more than one step's split when routing repeats), and only the misses it serves in place
    /// are split, the link busy with its promotions.
    Uncapped,
    /// As many as make the step cheapest: the link's time against the in-place time, the most
    /// used experts fetched first ([`split_misses`]); the bandwidth-matched share.
    Balanced,
    /// At most this many whole experts per layer step (and at most the balanced share), the
    /// most used first. Split misses ([`CostModel::split`]), whose down alone is fetched, are not
    /// counted: they are weighed against the host by the step's time.
    AtMost(u32),
}

/// The hardware a replay prices, and how a layer step's costs combine.
///
/// Two ways of combining them:
///
/// - **Additive** (the default): every miss served in place costs `slow_pair_seconds`, every
///   copy `expert_bytes / link`, one after the other: `served in place × slow_pair_seconds +
///   bytes moved / link`.
/// - **Overlapped** ([`CostModel::overlapped`]): copies and the compute of pairs in place use
///   different resources (the link's copy engine, the host CPU) and run at once. Before each
///   layer step the replay caps the pool's promotions at the step's share of its misses by the
///   [`FetchCap`] ([`split_misses`] with an idle link; [`crate::ExpertPool::set_fetch_cap`]), as
///   a runtime that computes the rest in place does ([`FetchCap::Uncapped`]: no cap, the pool
///   promotes what its policy admits). After the step, the misses the pool served
///   in place are split again, the link now busy with the promotions: the most used are fetched
///   (copied for the step, not admitted), the others computed in place. The step costs
///   `max(link time, in-place time)`, where the link time is the step's promotions plus its
///   fetched experts over the link, and the in-place time `slow_step_seconds` plus the pairs
///   left in place × `slow_pair_seconds` (nothing without pairs left). The compute of pairs from slots is not charged, in either model.
/// - **Split misses** ([`CostModel::split`], overlapped model only): a miss may also be served
///   half and half, its down projection fetched (`split_down` of the expert's bytes over the
///   link) while the pairs' gate and up are computed in place (`1 − split_down` of
///   `slow_pair_seconds` each); the device computes down from the uploaded intermediate. The
///   split weighs the three at once: the most used misses fetched, the next split, the rest in
///   place.
///
/// A cap is a rule over the ways a miss is served (copy, bus read, host), not a way of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CostModel {
    /// Bytes of one expert (all its projections).
    pub expert_bytes: u64,
    /// Seconds to compute one token–expert pair from slow memory (in place: on the host, or
    /// read over the bus).
    pub slow_pair_seconds: f64,
    /// Bytes per second from slow memory into a slot.
    pub link_bytes_per_second: f64,
    /// Seconds one layer computes a step, which prefetch copies for the next layer overlap
    /// (0: no overlap, no prefetch).
    pub layer_compute_seconds: f64,
    /// Under the overlapped model: seconds a layer step pays once when it computes any pair in
    /// place (a host starting its threads, fetching the layer's input and returning the
    /// outputs), before `slow_pair_seconds` per pair. The additive model does not charge it.
    pub slow_step_seconds: f64,
    /// `None`: the additive model; a cap: the overlapped model with that cap (see above).
    pub overlap: Option<FetchCap>,
    /// Under the overlapped model: down's share of an expert's bytes, which a split miss
    /// fetches while its gate and up are computed in place; 0 (the default): no miss is split.
    pub split_down: f64,
}

/// What one layer step costs under the overlapped model ([`CostModel::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StepCost {
    /// The step's modeled seconds.
    pub seconds: f64,
    /// Experts fetched for the step's misses.
    pub fetched: u32,
    /// Pairs left in place.
    pub in_place: u64,
    /// Experts split: down fetched, gate and up computed in place.
    pub split: u32,
}

impl CostModel {
    /// The additive model without prefetch overlap (`layer_compute_seconds` 0).
    pub const fn new(expert_bytes: u64, slow_pair_seconds: f64, link_bytes_per_second: f64) -> Self {
        Self {
            expert_bytes,
            slow_pair_seconds,
            link_bytes_per_second,
            layer_compute_seconds: 0.0,
            slow_step_seconds: 0.0,
            overlap: None,
            split_down: 0.0,
        }
    }

    /// With split misses (overlapped model only), down taking `down_share` of an expert's bytes
    /// (a third for an FFN whose projections are all of one format). A share outside (0, 1)
    /// splits nothing.
    pub const fn split(self, down_share: f64) -> Self {
        Self { split_down: down_share, ..self }
    }

    /// With `seconds` paid once by each layer step that computes pairs in place (overlapped
    /// model only).
    pub const fn slow_step(self, seconds: f64) -> Self {
        Self { slow_step_seconds: seconds, ..self }
    }

    /// The split's costs of a layer step whose link is already busy `busy` seconds.
    pub(crate) fn split_costs(&self, busy: f64) -> SplitCosts {
        SplitCosts {
            busy,
            copy: self.copy_seconds(self.expert_bytes),
            pair: self.slow_pair_seconds,
            step: self.slow_step_seconds,
            down: self.split_down,
        }
    }

    /// With `seconds` of compute per layer step for prefetch copies to overlap.
    pub const fn layer_compute(self, seconds: f64) -> Self {
        Self { layer_compute_seconds: seconds, ..self }
    }

    /// The overlapped model with `cap` (see [`CostModel`]).
    pub const fn overlapped(self, cap: FetchCap) -> Self {
        Self { overlap: Some(cap), ..self }
    }

    /// Prefetch copies that fit in one layer's compute time: `layer_compute_seconds` over one
    /// expert's copy time, rounded down (a compute time of exactly n copy times fits n). 0 without
    /// compute time to overlap; `usize::MAX` when copies are free (no bytes, or a link of no cost).
    pub fn prefetch_copies(&self) -> usize {
        if self.layer_compute_seconds.is_nan() || self.layer_compute_seconds <= 0.0 {
            return 0;
        }
        let copy = self.copy_seconds(self.expert_bytes);
        if copy.is_nan() || copy <= 0.0 {
            return usize::MAX;
        }
        // A compute time equal to n copy times fits n copies, whatever the rounding.
        let fits = self.layer_compute_seconds / copy * (1.0 + 1e-9);
        if fits >= usize::MAX as f64 {
            usize::MAX
        } else {
            fits as usize
        }
    }

    /// Seconds to copy one expert over the link (0 for a link of no cost).
    pub fn expert_copy_seconds(&self) -> f64 {
        self.copy_seconds(self.expert_bytes)
    }

    /// Seconds to copy `bytes` over the link (0 for a link of no cost).
    pub(crate) fn copy_seconds(&self, bytes: u64) -> f64 {
        if self.link_bytes_per_second > 0.0 {
            bytes as f64 / self.link_bytes_per_second
        } else {
            0.0
        }
    }

    /// The additive model's time of `served_in_place` pairs and `bytes` copied.
    pub(crate) fn seconds(&self, served_in_place: u64, bytes: u64) -> f64 {
        served_in_place as f64 * self.slow_pair_seconds + self.copy_seconds(bytes)
    }

    /// One layer step under the overlapped model with cap `cap`: `copied` bytes of promotions
    /// on the link, and the misses served in place, `uses[i]` pairs using missed expert `i`
    /// (sorted here, most used first).
    pub fn step(&self, cap: FetchCap, copied: u64, uses: &mut [u32]) -> StepCost {
        uses.sort_unstable_by(|a, b| b.cmp(a));
        let costs = self.split_costs(self.copy_seconds(copied));
        let plan = split_misses(uses, &costs, cap);
        let pairs = |from: usize, n: usize| uses.iter().skip(from).take(n).map(|&u| u64::from(u)).sum::<u64>();
        let (split_pairs, in_place) =
            (pairs(plan.fetched, plan.split), pairs(plan.fetched.saturating_add(plan.split), uses.len()));
        StepCost {
            seconds: costs.seconds(plan, split_pairs, in_place),
            fetched: u32::try_from(plan.fetched).unwrap_or(u32::MAX),
            in_place,
            split: u32::try_from(plan.split).unwrap_or(u32::MAX),
        }
    }
}

/// What a layer step's split between the link and in-place compute weighs ([`split_misses`]),
/// in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SplitCosts {
    /// The link's time already taken by the step's promotions.
    pub busy: f64,
    /// Fetching one expert over the link.
    pub copy: f64,
    /// Computing one pair in place.
    pub pair: f64,
    /// Paid once when any pair is computed in place ([`CostModel::slow_step_seconds`]).
    pub step: f64,
    /// Down's share of an expert ([`CostModel::split_down`]): a split expert costs the link
    /// `down × copy` and each of its pairs `(1 − down) × pair` in place. Outside (0, 1): no
    /// splits.
    pub down: f64,
}

impl SplitCosts {
    /// Whether misses may be split: a share of down strictly between 0 and 1.
    pub fn splits(&self) -> bool {
        self.down > 0.0 && self.down < 1.0
    }

    /// The step's time under `plan`, its split experts used by `split_pairs` pairs and
    /// `in_place` pairs left wholly in place: the slower of the link (`busy + fetched × copy +
    /// split × down × copy`) and the compute in place (`step + split_pairs × (1 − down) × pair
    /// + in_place × pair`, or nothing without pairs there).
    pub fn seconds(&self, plan: MissSplit, split_pairs: u64, in_place: u64) -> f64 {
        let down = if self.splits() { self.down } else { 0.0 };
        // Terms of no experts or pairs are left out: 0 × an infinite time is not 0.
        let times = |n: u64, each: f64| if n == 0 { 0.0 } else { n as f64 * each };
        let link = self.busy + times(plan.fetched as u64, self.copy) + times(plan.split as u64, down * self.copy);
        let here = if in_place == 0 && split_pairs == 0 {
            0.0
        } else {
            self.step + times(split_pairs, (1.0 - down) * self.pair) + times(in_place, self.pair)
        };
        link.max(here)
    }
}

/// How a step's missed experts, most used first, are served ([`split_misses`]): the first
/// `fetched` fetched whole, the next `split` split (down fetched, gate and up in place), the
/// rest in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MissSplit {
    /// Experts fetched whole.
    pub fetched: usize,
    /// Experts split.
    pub split: usize,
}

/// Fills `out` with each distinct id of `ids` and how many times it comes, in order of first
/// appearance: a step's missed experts and their uses, as [`split_misses`] takes them (once
/// sorted, most used first).
pub fn count_uses(ids: impl IntoIterator<Item = u32>, out: &mut Vec<(u32, u32)>) {
    out.clear();
    for id in ids {
        match out.iter_mut().find(|(e, _)| *e == id) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => out.push((id, 1)),
        }
    }
}

/// A layer step's missed experts and how many of its pairs use each: what the fetch cap and the
/// split of misses weigh ([`split_misses`]). One count for the replay's overlapped model and the
/// GPU runner.
#[derive(Debug, Default, Clone)]
pub struct MissedUses {
    uses: Vec<(u32, u32)>,
    counts: Vec<u32>,
}

impl MissedUses {
    /// Counts a step's misses: one id for each pair whose expert is not in a slot.
    pub fn count(&mut self, missed: impl IntoIterator<Item = u32>) {
        count_uses(missed, &mut self.uses);
        self.counts.clear();
        self.counts.extend(self.uses.iter().map(|&(_, n)| n));
    }

    /// `(expert, uses)`, in the order the experts first came.
    pub fn uses(&self) -> &[(u32, u32)] {
        &self.uses
    }

    /// The uses alone: in the order of [`MissedUses::uses`], or most used first after
    /// [`MissedUses::cap`].
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The fetch cap of the counted step: how many of its missed experts the pool may promote,
    /// the share [`split_misses`] gives the link under `costs`, the most used first; `None`
    /// under [`FetchCap::Uncapped`]. Leaves [`MissedUses::counts`] most used first.
    pub fn cap(&mut self, cap: FetchCap, costs: &SplitCosts) -> Option<u32> {
        if cap == FetchCap::Uncapped {
            return None;
        }
        self.counts.sort_unstable_by(|a, b| b.cmp(a));
        Some(u32::try_from(split_misses(&self.counts, costs, cap).fetched).unwrap_or(u32::MAX))
    }
}

/// How to serve a step's missed experts, `uses` their pairs, most used first: the `fetched`
/// (at most the cap's) and `split` ([`SplitCosts::splits`]; none otherwise) with the least
/// [`SplitCosts::seconds`], the fewest fetched and then the fewest split on ties. The GPU
/// runner splits its misses with this same function.
pub fn split_misses(uses: &[u32], costs: &SplitCosts, cap: FetchCap) -> MissSplit {
    let limit = match cap {
        FetchCap::Uncapped | FetchCap::Balanced => uses.len(),
        FetchCap::AtMost(n) => uses.len().min(n as usize),
    };
    let total: u64 = uses.iter().map(|&u| u64::from(u)).sum();
    let mut best = MissSplit::default();
    let mut best_cost = costs.seconds(best, 0, total);
    let mut fetched_pairs = 0u64;
    for fetched in 0..=limit {
        if let Some(&u) = fetched.checked_sub(1).and_then(|i| uses.get(i)) {
            fetched_pairs = fetched_pairs.saturating_add(u64::from(u));
        }
        let splits = if costs.splits() { uses.len().saturating_sub(fetched) } else { 0 };
        let mut split_pairs = 0u64;
        for split in 0..=splits {
            if let Some(&u) = split.checked_sub(1).and_then(|i| uses.get(fetched.saturating_add(i))) {
                split_pairs = split_pairs.saturating_add(u64::from(u));
            }
            let plan = MissSplit { fetched, split };
            let c = costs.seconds(plan, split_pairs, total.saturating_sub(fetched_pairs).saturating_sub(split_pairs));
            if c < best_cost {
                (best, best_cost) = (plan, c);
            }
        }
    }
    best
}

/// The overlapped model's time, step by step ([`CostModel::overlapped`]); nothing under the
/// additive model.
#[derive(Debug, Default)]
pub(crate) struct OverlapClock {
    seconds: f64,
    fetched: u64,
    split: u64,
    missed: MissedUses,
}

impl OverlapClock {
    /// The fetch cap of a layer step about to be planned, under the overlapped model: the share
    /// of its misses (ids whose expert `resident` says is not in a slot) that [`split_misses`]
    /// gives the link, the most used first; `None` under the additive model and
    /// [`FetchCap::Uncapped`]. The pool promotes
    /// at most that many, as a runtime computing the rest in place does.
    pub(crate) fn cap(
        &mut self,
        cost: &CostModel,
        ids: &[u32],
        resident: impl Fn(usize) -> bool,
        experts: usize,
    ) -> Option<u32> {
        let cap = cost.overlap?;
        self.missed(ids, resident, experts);
        self.missed.cap(cap, &cost.split_costs(0.0))
    }

    /// Counts the uses of each expert of `ids` not in a slot.
    fn missed(&mut self, ids: &[u32], resident: impl Fn(usize) -> bool, experts: usize) {
        self.missed.count(ids.iter().copied().filter(|&id| (id as usize) < experts && !resident(id as usize)));
    }

    /// A layer step with `promotions` demand copies, its `ids` served, `resident` telling which
    /// experts are in slots after it (the others were served in place).
    pub(crate) fn step(
        &mut self,
        cost: &CostModel,
        promotions: usize,
        ids: &[u32],
        resident: impl Fn(usize) -> bool,
        experts: usize,
    ) {
        let Some(cap) = cost.overlap else { return };
        self.missed(ids, resident, experts);
        let copied = (promotions as u64).saturating_mul(cost.expert_bytes);
        let s = cost.step(cap, copied, &mut self.missed.counts);
        self.seconds += s.seconds;
        self.fetched = self.fetched.saturating_add(u64::from(s.fetched));
        self.split = self.split.saturating_add(u64::from(s.split));
    }

    /// Puts the overlapped time and fetches into `stats` (nothing under the additive model).
    pub(crate) fn apply(&self, cost: &CostModel, stats: &mut ReplayStats) {
        if cost.overlap.is_some() {
            stats.modeled_time_s = self.seconds;
            stats.fetched = self.fetched;
            stats.split = self.split;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_are_counted_in_order_of_first_appearance() {
        let mut out = Vec::from([(9, 9)]);
        count_uses([3, 1, 3, 3, 2], &mut out);
        assert_eq!(out, [(3, 3), (1, 1), (2, 1)]);
        count_uses([], &mut out);
        assert!(out.is_empty());
    }

    fn costs(busy: f64, copy: f64, pair: f64) -> SplitCosts {
        SplitCosts { busy, copy, pair, step: 0.0, down: 0.0 }
    }

    /// The experts fetched whole by the split.
    fn fetched(uses: &[u32], costs: &SplitCosts, cap: FetchCap) -> usize {
        let plan = split_misses(uses, costs, cap);
        assert_eq!(plan.split, 0, "no splits without a share of down");
        plan.fetched
    }

    #[test]
    fn misses_split_between_the_link_and_the_host() {
        // A copy costs two pairs in place.
        assert_eq!(fetched(&[1; 8], &costs(0.0, 2.0, 1.0), FetchCap::Balanced), 2); // max(4, 6) = 6
        assert_eq!(fetched(&[4, 1, 1, 1], &costs(0.0, 2.0, 1.0), FetchCap::Balanced), 1); // max(2, 3)
        assert_eq!(fetched(&[1; 8], &costs(0.0, 2.0, 1.0), FetchCap::AtMost(1)), 1);
        assert_eq!(fetched(&[1; 8], &costs(0.0, 2.0, 1.0), FetchCap::AtMost(0)), 0);
        assert_eq!(fetched(&[1; 8], &costs(0.0, 2.0, 1.0), FetchCap::Uncapped), 2);
        // A link already busy with the step's promotions takes fewer fetches.
        assert_eq!(fetched(&[1; 8], &costs(6.0, 2.0, 1.0), FetchCap::Balanced), 0);
        // No cost in place worth moving: nothing fetched; an infinite pair: everything.
        assert_eq!(fetched(&[1, 1], &costs(0.0, 2.0, 0.0), FetchCap::Balanced), 0);
        assert_eq!(fetched(&[1, 3], &costs(0.0, 2.0, f64::INFINITY), FetchCap::Balanced), 2);
        // A cost per step in place (3) moves one more fetch to the link: max(6, 3 + 5) beats
        // max(4, 3 + 6); and a lone miss is fetched rather than started on the host.
        let with_step = SplitCosts { step: 3.0, ..costs(0.0, 2.0, 1.0) };
        assert_eq!(fetched(&[1; 8], &with_step, FetchCap::Balanced), 3);
        assert_eq!(fetched(&[1], &with_step, FetchCap::Balanced), 1);
    }

    #[test]
    fn a_split_miss_fetches_down_while_gate_and_up_compute_in_place() {
        // A copy costs 3, a pair 3 in place, down a third of both: a split expert costs the
        // link 1 and each of its pairs 2 in place.
        let third = SplitCosts { down: 1.0 / 3.0, ..costs(0.0, 3.0, 3.0) };
        // Two misses: one fetched and one in place max(3, 3) beats both split max(2, 4).
        assert_eq!(split_misses(&[1, 1], &third, FetchCap::Balanced), MissSplit { fetched: 1, split: 0 });
        // The link busy 2 with promotions, a pair 4, three misses: one fetched, one split, one
        // in place max(2 + 3 + 1, 8/3 + 4) = 6.67 beats one fetched and two in place max(5, 8),
        // three split max(5, 8) and two fetched max(8, 4).
        let busy = SplitCosts { busy: 2.0, ..costs(0.0, 3.0, 4.0) };
        let busy = SplitCosts { down: 1.0 / 3.0, ..busy };
        assert_eq!(split_misses(&[1; 3], &busy, FetchCap::Balanced), MissSplit { fetched: 1, split: 1 });
        // A cap bounds the experts fetched, not those split: max(2 + 3, 3 × 8/3).
        assert_eq!(split_misses(&[1; 3], &busy, FetchCap::AtMost(0)), MissSplit { fetched: 0, split: 3 });
        // The GPU machine's shape (µs): a 9 MiB expert copied in 180, a pair on the host 97, 25
        // per step there. Two misses, both split: max(120, 25 + 2 × 64.7) = 154, against 180 for
        // one copied and one on the host.
        let gpu = SplitCosts { busy: 0.0, copy: 180.0, pair: 97.0, step: 25.0, down: 1.0 / 3.0 };
        assert_eq!(split_misses(&[1, 1], &gpu, FetchCap::Balanced), MissSplit { fetched: 0, split: 2 });
        let plan = MissSplit { fetched: 0, split: 2 };
        assert!((gpu.seconds(plan, 2, 0) - (25.0 + 2.0 * 97.0 * 2.0 / 3.0)).abs() < 1e-9);
        // A link of infinite copy time fetches nothing, with splits on or off.
        for down in [0.0, 1.0 / 3.0] {
            let no_link = SplitCosts { copy: f64::INFINITY, down, ..gpu };
            assert_eq!(split_misses(&[1; 3], &no_link, FetchCap::Balanced), MissSplit::default());
        }
        // No share of down (or a share of 1): nothing is split.
        for down in [0.0, 1.0, f64::NAN] {
            assert_eq!(split_misses(&[1, 1], &SplitCosts { down, ..gpu }, FetchCap::Balanced).split, 0);
        }
    }

    #[test]
    fn a_step_costs_its_slowest_resource() {
        let cost = CostModel::new(100, 1.0, 50.0).overlapped(FetchCap::Balanced); // a copy: 2 s
        let mut uses = [1, 1, 1, 1, 1, 1, 1, 1];
        let s = cost.step(FetchCap::Balanced, 0, &mut uses);
        assert_eq!((s.fetched, s.in_place), (2, 6));
        assert!((s.seconds - 6.0).abs() < 1e-12);
        // Promotions on the link: 200 bytes (4 s) already there.
        let s = cost.step(FetchCap::Balanced, 200, &mut [3, 1]);
        assert_eq!((s.fetched, s.in_place), (0, 4));
        assert!((s.seconds - 4.0).abs() < 1e-12);
        // The additive model of the same misses, for comparison: 8 pairs in place.
        assert!((CostModel::new(100, 1.0, 50.0).seconds(8, 0) - 8.0).abs() < 1e-12);
    }

    /// TIDE on two slots, one layer: steps [0, 1, 2, 3] (prefill), [0, 2, 2, 5], [6, 6, 6, 7].
    fn small() -> crate::trace::Trace {
        use crate::trace::{Trace, TraceHeader};
        let mut t = Trace::new(TraceHeader { experts: 8, layers: 1, top_k: 2 }).unwrap();
        for (s, ids) in [[0u32, 1, 2, 3], [0, 2, 2, 5], [6, 6, 6, 7]].iter().enumerate() {
            t.push(0, s as u64, s == 0, ids).unwrap();
        }
        t
    }

    #[test]
    fn the_overlapped_replay_charges_each_step_its_slowest_resource() {
        use crate::trace::replay::{replay, ReplayConfig, ReplayPolicy};
        use crate::{InitialPlacement, Policy, Schedule};
        // A copy takes 2 s (200 bytes at 100 B/s), a pair in place 1 s.
        let cost = CostModel::new(200, 1.0, 100.0);
        let config = |cost| {
            ReplayConfig::new(ReplayPolicy::Pool(Policy::Tide), 2, Schedule::EveryForward, InitialPlacement::Warm, cost)
        };
        let additive = replay(&small(), &config(cost)).unwrap().total;
        // Warm {0, 1}. Step 0: TIDE keeps 0 and 1 (counts 1 each, ties low): 2 and 3 in place.
        // Step 1: 2 (count 2) and 0 targeted, 2 replaces 1; 5 in place. Step 2: 6 and 7
        // promoted, nothing in place.
        assert_eq!((additive.promotions, additive.served.served_in_place), (3, 3));
        assert!((additive.modeled_time_s - (3.0 + 6.0)).abs() < 1e-9);
        // Overlapped, the pool capped at the step's share of its misses. With a cap of 0
        // nothing is promoted and each step costs its pairs in place: 2 + 3 + 4.
        let none = replay(&small(), &config(cost.overlapped(FetchCap::AtMost(0)))).unwrap().total;
        assert_eq!((none.promotions, none.served.served_in_place, none.fetched), (0, 9, 0), "{none:?}");
        assert!((none.modeled_time_s - 9.0).abs() < 1e-9, "{none:?}");
        // Balanced: step 0 fetches nothing (one fetch ties at 2); step 1 promotes 2 (max(2, 1));
        // step 2 promotes 6 only (max(2, 1) beats promoting 7 too, max(4, 0)): 2 + 2 + 2 s, one
        // promotion fewer than without the cap.
        let balanced = replay(&small(), &config(cost.overlapped(FetchCap::Balanced))).unwrap().total;
        assert!((balanced.modeled_time_s - 6.0).abs() < 1e-9, "{balanced:?}");
        assert_eq!(
            (balanced.served.hits, balanced.promotions, balanced.served.served_in_place),
            (additive.served.hits, 2, 4)
        );
        // Uncapped: TIDE promotes as without the overlap (3 promotions; 2, 3 and 5 in place).
        // Step 0 fetches nothing (max(2, 1) = max(0, 2)); step 1 promotes 2 (2 s on the link)
        // and leaves 5 in place (max(2, 1)); step 2 promotes 6 and 7 (4 s): 2 + 2 + 4 s.
        let uncapped = replay(&small(), &config(cost.overlapped(FetchCap::Uncapped))).unwrap().total;
        assert_eq!((uncapped.promotions, uncapped.served.served_in_place), (additive.promotions, 3), "{uncapped:?}");
        assert!((uncapped.modeled_time_s - 8.0).abs() < 1e-9, "{uncapped:?}");
        // A cost per step in place makes in-place compute dearer: never faster, fetching more.
        let stepped = replay(&small(), &config(cost.slow_step(1.0).overlapped(FetchCap::Balanced))).unwrap().total;
        assert!(stepped.modeled_time_s >= balanced.modeled_time_s, "{stepped:?}");
        assert!(stepped.fetched >= balanced.fetched, "{stepped:?}");
        // A slow host (3 s a pair): step 0 fetches one (max(2, 3) = 3 < 6).
        let slow = CostModel::new(200, 3.0, 100.0).overlapped(FetchCap::Balanced);
        let r = replay(&small(), &config(slow)).unwrap().total;
        assert_eq!(r.fetched, 1, "{r:?}");
    }

    #[cfg(feature = "demand")]
    #[test]
    fn the_interleaved_replay_charges_steps_the_same_way() {
        use crate::trace::replay::{replay, ReplayConfig, ReplayPolicy, Sharing};
        use crate::{InitialPlacement, Policy, Schedule};
        let cost = CostModel::new(200, 1.0, 100.0);
        // One pool shared by the layers replays interleaved; tinylfu with a threshold no score
        // reaches serves every miss in place, so the split has misses to fetch.
        let never = Policy::Tinylfu(crate::AdmissionConfig::new(4.0, 0.0, 1e9).unwrap());
        let shared = |policy, cost| ReplayConfig {
            sharing: Sharing::Shared,
            ..ReplayConfig::new(ReplayPolicy::Pool(policy), 2, Schedule::EveryForward, InitialPlacement::Warm, cost)
        };
        // Under the cap LRU promotes no more than without it; tinylfu that never admits is
        // capped at nothing anyway.
        for policy in [Policy::Lru, never] {
            let add = replay(&small(), &shared(policy, cost)).unwrap().total;
            let over = replay(&small(), &shared(policy, cost.overlapped(FetchCap::Balanced))).unwrap().total;
            assert!(over.promotions <= add.promotions, "{over:?} {add:?}");
            assert_eq!(over.served.pairs(), add.served.pairs());
        }
        let in_place = replay(&small(), &shared(never, cost.overlapped(FetchCap::Balanced))).unwrap().total;
        // Warm {0, 1}, nothing admitted. Step 0 misses 2 and 3 (fetching one: max(2, 1) = 2, a
        // tie with none), step 1 misses 2 twice and 5 (fetch 2: max(2, 1)), step 2 misses 6
        // three times and 7 (fetch 6: max(2, 1)): 6 s, two fetches.
        assert_eq!(in_place.fetched, 2, "{in_place:?}");
        assert!((in_place.modeled_time_s - 6.0).abs() < 1e-9, "{in_place:?}");
    }
}
