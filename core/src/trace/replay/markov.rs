//! The Markov reference ([`ReplayPolicy::Markov`]): the least modeled time a per-layer placement
//! reaches when it sees only the present step but knows how the trace's steps follow one another.
//! It stands between the policies and the optimum: what an online placement could reach with
//! perfect knowledge of the routing's statistics, without seeing the future.
//!
//! [`ReplayPolicy::Markov`]: super::ReplayPolicy::Markov
//!
//! # The model
//!
//! The replay's own costs, as for [the optimum](super::optimal): per layer, each record is a time
//! point; a record's *demand* is the set of experts its valid ids name, with their pair counts.
//! At each record the placement knows the residents and the record's demand, never the next
//! record. It may copy any of the record's missed experts in (`expert_bytes / link` each),
//! evicting only residents the record does not use (the pinned-step rule) and only to make room
//! (holding a slot costs nothing). Every other missed pair is computed in place
//! (`slow_pair_seconds`).
//!
//! The routing's statistics are a first-order Markov chain over the layer's demand sets, fitted to
//! the layer's own records taken as a cycle (the last followed by the first): the chance that set
//! `d'` follows set `d` is how often it did. At each record the placement takes the choice that
//! minimises the record's cost plus the expected cost of all that follows under the chain (the
//! chain's pair counts: each set's mean). The counters and modeled time are that placement's, on
//! the trace's records with their actual pair counts. A warm start's residents that the layer never
//! uses are free slots.
//!
//! The choices weigh the long run (the mean cost per record, the chain never ending): a one-time
//! copy that only a longer trace would repay is still made. Over hundreds of records per layer
//! that is a copy or two at the start; on a trace of a few records it can cost more than it saves.
//!
//! # What it tells
//!
//! The chain comes from the trace it is scored on, so the reference knows statistics no deployed
//! policy has beforehand. Where routing is first-order Markov (each step depends on the step before
//! alone), no online placement that decides from the mean pair counts does better on average.
//! It is meant for decode traces of one token per record: where demand sets seldom repeat
//! (several tokens per record, prompts), the fitted chain is nearly deterministic and the
//! reference comes close to knowing the future (on a predictable cycle it pays what the optimum
//! pays). The gap between a policy and this reference
//! is what better online placement can still win; the gap between this reference and the optimum
//! is the price of not seeing the future, which no online placement can win back.
//!
//! # The method
//!
//! Relative value iteration over post-decision states (the residents after a record, the record's
//! demand set), with the aperiodicity transform (each iteration's values halfway between the last
//! and the Bellman update), until the values' change is flat to a part in 10^9 of one pair's cost
//! or [`MAX_ITERATIONS`]; values that have not settled by then (a chain whose states do not all
//! reach each other, or a long deterministic cycle) are used as they are. The residents range over every set of at most `slots` of the experts the
//! layer uses, so the states grow as binomial sums: the reference is computed for few experts
//! (Mixtral's 8, for one) and refused past [`MAX_STATES`] states or [`MAX_OPTIONS`] choices or
//! transition terms ([`ReplayError::TooLarge`]; [`within_reach`] says beforehand).

#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "indices within the vectors a layer's model builds together; counts bounded by the trace's pairs"
)]

use alloc::vec;
use alloc::vec::Vec;

use super::{CostModel, ReplayConfig, ReplayError, ReplayReport, ReplayStats};
use crate::trace::{Trace, TraceRecord};

/// Most (residents, demand set) states of one layer's model.
pub const MAX_STATES: usize = 1 << 15;
/// Most choices (a state and a next demand set's ways to serve it) of one layer's model, and most
/// terms of one iteration's expectations (resident sets × the chain's transitions).
pub const MAX_OPTIONS: usize = 1 << 18;
/// Most steps of enumerating one layer's choices (subsets tried, kept or not).
const MAX_WORK: u64 = 1 << 26;
/// Most value iterations per layer.
pub const MAX_ITERATIONS: usize = 2000;

/// Whether [`ReplayPolicy::Markov`](super::ReplayPolicy::Markov) can be computed for `trace` with
/// `slots` slots per layer (clamped to the expert count): every layer uses at most 63 experts and
/// its model is within [`MAX_STATES`] and [`MAX_OPTIONS`] (and a bounded enumeration of its
/// choices).
pub fn within_reach(trace: &Trace, slots: usize) -> bool {
    by_layer(trace).iter().all(|records| Layer::new(trace, records, clamped(trace, slots)).is_ok())
}

/// The Markov reference on `trace` under `config` (its slots, clamped to the expert count, and
/// costs; the policy, schedule, sharing and prefetch are not read), each layer starting with the
/// experts `start` names (`layer << 32 | expert` keys).
///
/// # Errors
/// [`ReplayError::TooLarge`] for a layer whose model is past [`MAX_STATES`] or [`MAX_OPTIONS`].
pub(crate) fn markov(trace: &Trace, config: &ReplayConfig, start: &[u64]) -> Result<ReplayReport, ReplayError> {
    let slots = clamped(trace, config.slots);
    let mut report = ReplayReport { layers: Vec::new(), total: ReplayStats::default() };
    for records in by_layer(trace) {
        let Some(layer) = records.first().map(|r| r.layer) else { continue };
        let mut model = Layer::new(trace, &records, slots)?;
        // Values that did not settle within MAX_ITERATIONS are used as they are (see the module).
        let _iterations = model.solve(&config.cost);
        let first = start.partition_point(|&k| k < u64::from(layer) << 32);
        let residents = start[first..]
            .iter()
            .take_while(|&&k| k >> 32 == u64::from(layer))
            .filter_map(|&k| model.bit(u32::try_from(k & 0xFFFF_FFFF).ok()?))
            .fold(0u64, |set, bit| set | bit);
        let counters = model.replay(trace, &records, residents, &config.cost);
        report.total.add(&counters);
        report.layers.push((layer, counters));
    }
    Ok(report)
}

fn clamped(trace: &Trace, slots: usize) -> usize {
    slots.min(trace.header().experts as usize)
}

/// The trace's records grouped by layer, each group in file order.
fn by_layer(trace: &Trace) -> Vec<Vec<&TraceRecord>> {
    let mut sorted: Vec<&TraceRecord> = trace.records().iter().collect();
    sorted.sort_by_key(|r| r.layer);
    sorted.chunk_by(|a, b| a.layer == b.layer).map(<[_]>::to_vec).collect()
}

/// One way to serve a demand from a resident set: its modeled cost and the residents after.
#[derive(Debug, Clone, Copy)]
struct Choice {
    cost: f64,
    next: u32,
}

/// One layer's chain and values. Experts the layer uses are renumbered `0..used.len()` (bit `i`
/// of a set is `used[i]`).
struct Layer {
    /// The layer's used experts, ascending.
    used: Vec<u32>,
    slots: usize,
    /// Every resident set of at most `slots` used experts, ascending.
    sets: Vec<u64>,
    /// The distinct demand sets, ascending, with their mean pair count per used expert.
    demands: Vec<u64>,
    mean_pairs: Vec<f64>,
    /// Each record's demand set (an index into `demands`).
    record_demand: Vec<u32>,
    /// Per demand set, the sets that followed it and how often (as chances).
    follows: Vec<Vec<(u32, f64)>>,
    /// The choices of state `(set, next demand)`: `choices[offsets[i]..offsets[i + 1]]`, `i = set ·
    /// demands + next demand`.
    offsets: Vec<u32>,
    choices: Vec<Choice>,
    /// The relative values of post-decision states, `set · demands + demand`.
    values: Vec<f64>,
}

impl Layer {
    /// The layer's chain and its choices (their costs are filled by [`Layer::solve`]).
    fn new(trace: &Trace, records: &[&TraceRecord], slots: usize) -> Result<Self, ReplayError> {
        let layer = records.first().map_or(0, |r| r.layer);
        let experts = trace.header().experts;
        let mut used: Vec<u32> =
            records.iter().flat_map(|r| trace.ids(r).iter().copied()).filter(|&e| e < experts).collect();
        used.sort_unstable();
        used.dedup();
        let too_large = |states: usize| ReplayError::TooLarge { layer, states };
        if used.len() > 63 {
            return Err(too_large(usize::MAX));
        }
        let slots = slots.min(used.len());
        let sets = sets_of_at_most(used.len(), slots, MAX_STATES).ok_or_else(|| too_large(usize::MAX))?;
        let record_sets: Vec<u64> =
            records.iter().map(|r| trace.ids(r).iter().fold(0, |s, &e| s | bit_of(&used, e).unwrap_or(0))).collect();
        let mut demands = record_sets.clone();
        demands.sort_unstable();
        demands.dedup();
        let states = sets.len().saturating_mul(demands.len());
        if states > MAX_STATES {
            return Err(too_large(states));
        }
        let index = |s: u64| demands.binary_search(&s).unwrap_or(0) as u32;
        let record_demand: Vec<u32> = record_sets.iter().map(|&s| index(s)).collect();
        // Mean pairs per (demand set, used expert).
        let width = used.len();
        let mut mean_pairs = vec![0.0; demands.len() * width];
        let mut seen = vec![0u64; demands.len()];
        for (r, &d) in records.iter().zip(&record_demand) {
            let d = d as usize;
            seen[d] += 1;
            for &e in trace.ids(r) {
                if let Ok(i) = used.binary_search(&e) {
                    mean_pairs[d * width + i] += 1.0;
                }
            }
        }
        for (d, &n) in seen.iter().enumerate() {
            mean_pairs[d * width..(d + 1) * width].iter_mut().for_each(|p| *p /= n as f64);
        }
        // The chain: each record followed by the next, the last by the first.
        let mut counts: Vec<Vec<(u32, u64)>> = vec![Vec::new(); demands.len()];
        for (i, &d) in record_demand.iter().enumerate() {
            let next = record_demand[(i + 1) % record_demand.len()];
            let row = &mut counts[d as usize];
            match row.iter_mut().find(|(n, _)| *n == next) {
                Some((_, c)) => *c += 1,
                None => row.push((next, 1)),
            }
        }
        let transitions = counts.iter().map(Vec::len).sum::<usize>();
        if sets.len().saturating_mul(transitions) > MAX_OPTIONS {
            return Err(too_large(states));
        }
        let follows = counts
            .into_iter()
            .map(|row| {
                let total: u64 = row.iter().map(|&(_, c)| c).sum();
                row.into_iter().map(|(n, c)| (n, c as f64 / total as f64)).collect()
            })
            .collect();
        let mut model = Layer {
            used,
            slots,
            sets,
            demands,
            mean_pairs,
            record_demand,
            follows,
            offsets: Vec::new(),
            choices: Vec::new(),
            values: Vec::new(),
        };
        model.enumerate().map_err(|()| too_large(states))?;
        Ok(model)
    }

    /// The bit of expert `e` in this layer's sets (`None`: the layer never uses it).
    fn bit(&self, e: u32) -> Option<u64> {
        bit_of(&self.used, e)
    }

    /// Every state's choices, their costs left at 0 (filled per cost model by [`Layer::solve`]).
    fn enumerate(&mut self) -> Result<(), ()> {
        self.offsets = Vec::with_capacity(self.sets.len() * self.demands.len() + 1);
        self.offsets.push(0);
        let mut choices = Vec::new();
        let mut work = 0u64;
        for &set in &self.sets {
            for &demand in &self.demands {
                // The subsets `ways` tries: of the missed experts, and of the evictable for each.
                let (missed, evictable) = ((demand & !set).count_ones(), (set & !demand).count_ones());
                work = work.saturating_add(1u64.checked_shl(missed + evictable).unwrap_or(u64::MAX));
                if work > MAX_WORK {
                    return Err(());
                }
                for next in ways(set, demand, self.slots) {
                    let next = self.sets.binary_search(&next).map_err(|_| ())? as u32;
                    choices.push(Choice { cost: 0.0, next });
                    if choices.len() > MAX_OPTIONS {
                        return Err(());
                    }
                }
                self.offsets.push(choices.len() as u32);
            }
        }
        self.choices = choices;
        Ok(())
    }

    /// The modeled cost of serving `demand` (pairs `pairs[i]` of used expert `i`) from `set`,
    /// leaving `next` resident.
    fn cost(&self, cost: &CostModel, set: u64, demand: u64, next: u64, pairs: impl Fn(usize) -> f64) -> f64 {
        let (missed, copied) = (demand & !set, demand & !set & next);
        let in_place: f64 = (0..self.used.len()).filter(|&i| (missed & !copied) >> i & 1 == 1).map(pairs).sum();
        // Terms of no copies or no pairs are left out: 0 × an infinite time is not 0.
        let times = |n: f64, each: f64| if n == 0.0 { 0.0 } else { n * each };
        times(f64::from(copied.count_ones()), cost.copy_seconds(cost.expert_bytes))
            + times(in_place, cost.slow_pair_seconds)
    }

    /// Prices the choices under `cost` and iterates the values; the iterations it took
    /// ([`MAX_ITERATIONS`] when the values did not settle).
    fn solve(&mut self, cost: &CostModel) -> usize {
        let (nd, width) = (self.demands.len(), self.used.len());
        for (s, &set) in self.sets.iter().enumerate() {
            for (d, &demand) in self.demands.iter().enumerate() {
                let i = s * nd + d;
                let (from, to) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
                for c in from..to {
                    let next = self.sets[self.choices[c].next as usize];
                    self.choices[c].cost = self.cost(cost, set, demand, next, |e| self.mean_pairs[d * width + e]);
                }
            }
        }
        let unit = cost.slow_pair_seconds.max(cost.copy_seconds(cost.expert_bytes));
        if unit <= 0.0 {
            self.values = vec![0.0; self.sets.len() * nd];
            return 0;
        }
        let tolerance = unit * 1e-9;
        let mut values = vec![0.0; self.sets.len() * nd];
        let mut best = vec![0.0; self.sets.len() * nd];
        let mut updated = vec![0.0; values.len()];
        for iteration in 0..MAX_ITERATIONS {
            // best[(set, d')]: the cheapest way to serve d' from set, values included.
            for (i, b) in best.iter_mut().enumerate() {
                let d = i % nd;
                *b = self.choices[self.offsets[i] as usize..self.offsets[i + 1] as usize]
                    .iter()
                    .map(|c| c.cost + values[c.next as usize * nd + d])
                    .fold(f64::INFINITY, f64::min);
            }
            let (mut low, mut high, mut reference) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
            for (i, u) in updated.iter_mut().enumerate() {
                let (s, d) = (i / nd, i % nd);
                *u = self.follows[d].iter().map(|&(n, p)| p * best[s * nd + n as usize]).sum();
                if i == 0 {
                    reference = *u;
                }
            }
            for (v, u) in values.iter_mut().zip(&updated) {
                let new = 0.5 * *v + 0.5 * (u - reference);
                let change = new - *v;
                low = low.min(change);
                high = high.max(change);
                *v = new;
            }
            if high - low < tolerance {
                self.values = values;
                return iteration + 1;
            }
        }
        self.values = values;
        MAX_ITERATIONS
    }

    /// The placement replayed on the layer's records from `residents`, with their actual pairs.
    fn replay(&self, trace: &Trace, records: &[&TraceRecord], mut residents: u64, cost: &CostModel) -> ReplayStats {
        let mut c = ReplayStats::default();
        let nd = self.demands.len();
        let mut pairs = vec![0u64; self.used.len()];
        for (r, &d) in records.iter().zip(&self.record_demand) {
            pairs.iter_mut().for_each(|p| *p = 0);
            let ids = trace.ids(r);
            for &e in ids {
                match self.used.binary_search(&e) {
                    Ok(i) => pairs[i] += 1,
                    Err(_) => c.served.invalid_ids += 1,
                }
            }
            let demand = self.demands[d as usize];
            let set = self.sets.binary_search(&residents).unwrap_or(0);
            let i = set * nd + d as usize;
            let mut pick: Option<(f64, u64)> = None;
            for choice in &self.choices[self.offsets[i] as usize..self.offsets[i + 1] as usize] {
                let next = self.sets[choice.next as usize];
                let total = self.cost(cost, residents, demand, next, |e| pairs[e] as f64)
                    + self.values[choice.next as usize * nd + d as usize];
                if pick.is_none_or(|(t, _)| total < t) {
                    pick = Some((total, next));
                }
            }
            let next = pick.map_or(residents, |(_, n)| n);
            let sum = |set: u64| (0..self.used.len()).filter(|&e| set >> e & 1 == 1).map(|e| pairs[e]).sum::<u64>();
            let (hit, copied) = (demand & residents, demand & !residents & next);
            let missed = demand & !residents;
            c.served.hits += sum(hit);
            c.served.served_by_copy += sum(copied);
            c.served.served_in_place += sum(missed & !copied);
            c.served.misses += sum(missed);
            c.promotions += u64::from(copied.count_ones());
            c.demotions += u64::from((residents & !next).count_ones());
            residents = next;
        }
        c.bytes_promoted = c.promotions.saturating_mul(cost.expert_bytes);
        c.modeled_time_s = cost.seconds(c.served.served_in_place, c.bytes_promoted);
        c
    }
}

/// The bit of expert `e` among `used` (ascending), or `None` when it is not there.
fn bit_of(used: &[u32], e: u32) -> Option<u64> {
    used.binary_search(&e).ok().map(|i| 1u64 << i)
}

/// Every set of at most `k` of `n` items as bit sets, ascending; `None` past `limit` sets.
fn sets_of_at_most(n: usize, k: usize, limit: usize) -> Option<Vec<u64>> {
    // Σ C(n, j) for j ≤ k, checked before listing.
    let (mut total, mut choose) = (0usize, 1usize);
    for j in 0..=k {
        total = total.checked_add(choose)?;
        if total > limit {
            return None;
        }
        choose = choose.checked_mul(n - j)? / (j + 1);
    }
    let mut sets = Vec::with_capacity(total);
    for j in 0..=k {
        // The j-subsets in ascending order (each the next larger number with j bits).
        let mut s: u64 = (1u64 << j) - 1;
        while s < 1u64 << n {
            sets.push(s);
            if s == 0 {
                break;
            }
            let low = s & s.wrapping_neg();
            let ripple = s + low;
            s = (((ripple ^ s) >> 2) / low) | ripple;
        }
    }
    sets.sort_unstable();
    Some(sets)
}

/// The resident sets after serving `demand` from `set` with `slots` slots: any of the missed
/// experts copied in, evicting only residents the demand does not use and only to make room.
fn ways(set: u64, demand: u64, slots: usize) -> impl Iterator<Item = u64> {
    let missed = demand & !set;
    let evictable = set & !demand;
    let free = slots.saturating_sub(set.count_ones() as usize);
    subsets(missed).flat_map(move |copied| {
        let need = (copied.count_ones() as usize).saturating_sub(free);
        subsets(evictable)
            .filter(move |v| v.count_ones() as usize == need)
            .map(move |evicted| (set | copied) & !evicted)
    })
}

/// Every subset of `mask`, from `mask` itself down to the empty set.
fn subsets(mask: u64) -> impl Iterator<Item = u64> {
    let mut next = Some(mask);
    core::iter::from_fn(move || {
        let s = next?;
        next = if s == 0 { None } else { Some((s - 1) & mask) };
        Some(s)
    })
}

#[cfg(test)]
mod tests;
