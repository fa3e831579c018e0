//! The least modeled time any placement could reach on a trace, knowing the whole future: the
//! bound the policies are measured against ([`ReplayPolicy::Optimal`] for per-layer pools,
//! [`ReplayPolicy::OptimalShared`] for one pool shared by the layers).
//!
//! [`ReplayPolicy::Optimal`]: super::ReplayPolicy::Optimal
//! [`ReplayPolicy::OptimalShared`]: super::ReplayPolicy::OptimalShared
//!
//! # The model
//!
//! The replay's own cost model, with nothing a policy could not do: a record is a time point; at
//! each one, the experts in slots (at most the slot count) serve all their pairs of the record,
//! and every other valid pair is computed in slow memory (served in place) at
//! `slow_pair_seconds`. An expert not in a slot before a record may be copied in for it, at
//! `expert_bytes / link_bytes_per_second` (no overlap with compute, no prefetch). The start is the
//! other policies' start: warm, experts `0..slots` of every layer resident; cold, none. A schedule
//! that copies an expert earlier than the record using it is never cheaper, so copies happen at
//! uses. Modeled time is `slow pairs × slow_pair_seconds + bytes moved / link`, as in
//! [the replay](super).
//!
//! Per layer, each layer's records are its time points and its slots hold its experts. Shared,
//! one pool of `slots × layers` slots (the layers that have records) holds (layer, expert) keys,
//! and the time points are all records in the shared replay's order: by step, then layer (file order
//! among equals; a restarted step counter, a diffusion model's next block, after the rounds before).
//!
//! # The method
//!
//! A min-cost flow on a DAG, exact. The time line is a chain of nodes (before and after each time
//! point) carrying one unit of flow per slot; a unit on the chain is a free slot, at no cost. Each
//! use `i` (an expert's `c_i` valid pairs at one time point) has two nodes `a_i → b_i`; a unit
//! through them is a slot that serves those pairs (cost `−c_i × slow pair`). It enters `a_i` from
//! the chain before the time point (a copy, cost one copy), from `b` of the expert's previous use
//! (kept in its slot, free), or, for a warm start's resident at its first use, from the start of
//! the chain (free); it leaves `b_i` to the chain after the time point (dropped) or to `a` of the
//! expert's next use (kept). Every cut between two time points is crossed by exactly the slot
//! count, so no schedule exceeds it. The modeled time is every pair in place plus the least cost.
//!
//! Successive shortest paths with potentials (initial potentials from the DAG's topological order,
//! then Dijkstra on reduced costs), one slot at a time, stopping when the cheapest path no longer
//! saves anything. The two costs are scaled to integers exactly (f64 values are dyadic rationals);
//! when one cost outweighs everything the other could add up to, the order between schedules is
//! lexicographic and is kept exactly by small integer weights. Only a trace of more than about
//! 2^34 uses and pairs, with costs of widely different scale, gets rounded weights. Nodes and
//! edges are numbered in 32 bits, which holds time lines of up to 2^30 uses (hundreds of
//! gigabytes of flow network, far past any trace in memory).

use alloc::collections::BinaryHeap;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

use super::{CostModel, ReplayConfig, ReplayReport, ReplayStats};
use crate::trace::{Trace, TraceRecord};

/// The least modeled time any per-layer placement reaches on `trace` with `config.slots` slots
/// per layer (clamped to the expert count) and `config.cost`, starting with the experts `start`
/// names (`layer << 32 | expert` keys, ascending: the other policies' start), and the counters
/// of that schedule. The policy, schedule and initial placement in `config` are not read.
///
/// Counters: `hits` are pairs whose expert was in its slot before the record (kept, or a warm
/// start's resident); `misses` the others, `served_in_place` computed in slow memory and
/// `served_by_copy` served by the copy made for them; `promotions` the copies; `demotions` the copies
/// made while every slot was taken (each evicts one expert).
pub(crate) fn optimal(trace: &Trace, config: &ReplayConfig, start: &[u64]) -> ReplayReport {
    let slots = clamped_slots(trace, config);
    let mut by_layer: Vec<&TraceRecord> = trace.records().iter().collect();
    by_layer.sort_by_key(|r| r.layer);
    let mut report = ReplayReport { layers: Vec::new(), total: ReplayStats::default() };
    let mut solver = Solver::default();
    for records in by_layer.chunk_by(|a, b| a.layer == b.layer) {
        let Some(layer) = records.first().map(|r| r.layer) else { continue };
        let mut layers = vec![(layer, ReplayStats::default())];
        solver.solve(trace, records, slots, config, start, &mut layers);
        for (layer, counters) in layers {
            report.total.add(&counters);
            report.layers.push((layer, counters));
        }
    }
    report
}

/// The least modeled time one pool of `config.slots × layers` slots (slots clamped to the expert
/// count; layers with records), shared by all layers' experts, reaches on `trace`, and the counters
/// of that schedule, per layer and in total. Each layer starts as [`optimal`]'s do. Counters as
/// in [`optimal`]; a demotion is counted at the layer whose copy made it.
pub(crate) fn optimal_shared(trace: &Trace, config: &ReplayConfig, start: &[u64]) -> ReplayReport {
    let slots = clamped_slots(trace, config);
    // As the shared pool's replay serves them: by step, then layer (file order within one step and
    // layer), a restarted step counter (a diffusion model's next block) after every earlier round.
    let records = crate::trace::interleaved::forward_order(trace);
    let mut layers: Vec<(u32, ReplayStats)> = trace.layers().map(|l| (l, ReplayStats::default())).collect();
    let capacity = slots.saturating_mul(layers.len());
    Solver::default().solve(trace, &records, capacity, config, start, &mut layers);
    let mut total = ReplayStats::default();
    layers.iter().for_each(|(_, counters)| total.add(counters));
    ReplayReport { layers, total }
}

fn clamped_slots(trace: &Trace, config: &ReplayConfig) -> usize {
    config.slots.min(trace.header().experts as usize)
}

/// One use: a key's valid pairs at one time point.
#[derive(Debug, Clone, Copy)]
struct Use {
    /// `layer << 32 | expert`.
    key: u64,
    pairs: u64,
    /// The time point (its chain nodes are `chain[time]` before and `chain[time + 1]` after).
    time: u32,
    /// Node `a` (node `b` is the next one).
    node: u32,
    /// The edge from the chain into `a` (the copy) and the edge `a → b` (served from a slot).
    copy_edge: u32,
    serve_edge: u32,
}

impl Use {
    const fn layer(&self) -> u32 {
        (self.key >> 32) as u32
    }
}

/// The buffers of one solve, reused across layers.
#[derive(Debug, Default)]
struct Solver {
    uses: Vec<Use>,
    ids: Vec<u32>,
    /// The chain node before each time point, and the last one (after all of them).
    chain: Vec<u32>,
    order: Vec<u32>,
    graph: Graph,
}

impl Solver {
    /// Solves `records` (time points in order) with `capacity` slots, adding the schedule's
    /// counters to `layers` (which holds every layer of the records, ascending).
    fn solve(
        &mut self,
        trace: &Trace,
        records: &[&TraceRecord],
        capacity: usize,
        config: &ReplayConfig,
        start: &[u64],
        layers: &mut [(u32, ReplayStats)],
    ) {
        self.collect(trace, records, layers);
        // The start's residents of these layers.
        let starts = |key: &u64| layers.binary_search_by_key(&((key >> 32) as u32), |(l, _)| *l).is_ok();
        let resident_at_start = start.iter().filter(|k| starts(k)).count() as u64;
        let Self { uses, chain, order, graph, .. } = self;
        let total_pairs = uses.iter().fold(0u64, |sum, u| sum.saturating_add(u.pairs));
        let weights = Weights::new(&config.cost, uses.len() as u64, total_pairs);

        // The graph: the chain, then each use's edges.
        let nodes = uses.len().saturating_mul(2).saturating_add(chain.len());
        graph.reset(nodes);
        let capacity = capacity as u64;
        for pair in chain.windows(2) {
            if let [from, to] = *pair {
                graph.add(from, to, capacity, 0);
            }
        }
        let sink = chain.last().copied().unwrap_or(0);
        for u in uses.iter_mut() {
            let time = u.time as usize;
            let before = chain.get(time).copied().unwrap_or(0);
            let after = chain.get(time.saturating_add(1)).copied().unwrap_or(sink);
            let b = u.node.saturating_add(1);
            u.copy_edge = graph.add(before, u.node, 1, weights.copy);
            u.serve_edge = graph.add(u.node, b, 1, weights.serve(u.pairs));
            graph.add(b, after, 1, 0);
        }
        // Kept between consecutive uses of a key; a warm resident's first use from the start.
        order.clear();
        order.extend(0..uses.len() as u32);
        order.sort_by_key(|&i| uses.get(i as usize).map(|u| u.key));
        let mut previous: Option<&Use> = None;
        for u in order.iter().filter_map(|&i| uses.get(i as usize)) {
            match previous {
                Some(p) if p.key == u.key => {
                    graph.add(p.node.saturating_add(1), u.node, 1, 0);
                }
                _ if start.binary_search(&u.key).is_ok() => {
                    graph.add(0, u.node, 1, 0);
                }
                _ => {}
            }
            previous = Some(u);
        }
        graph.finish();
        graph.min_cost_flow(0, sink, capacity);

        // The schedule's counters, uses in time order.
        let mut free = capacity.saturating_sub(resident_at_start);
        for u in uses.iter() {
            let Ok(at) = layers.binary_search_by_key(&u.layer(), |(l, _)| *l) else { continue };
            let Some((_, c)) = layers.get_mut(at) else { continue };
            if !graph.carries(u.serve_edge) {
                c.served.misses = c.served.misses.saturating_add(u.pairs);
                c.served.served_in_place = c.served.served_in_place.saturating_add(u.pairs);
            } else if graph.carries(u.copy_edge) {
                c.served.misses = c.served.misses.saturating_add(u.pairs);
                c.served.served_by_copy = c.served.served_by_copy.saturating_add(u.pairs);
                c.promotions = c.promotions.saturating_add(1);
                if free > 0 {
                    free = free.saturating_sub(1);
                } else {
                    c.demotions = c.demotions.saturating_add(1);
                }
            } else {
                c.served.hits = c.served.hits.saturating_add(u.pairs);
            }
        }
        for (_, c) in layers.iter_mut() {
            c.bytes_promoted = c.promotions.saturating_mul(config.cost.expert_bytes);
            c.modeled_time_s = config.cost.seconds(c.served.served_in_place, c.bytes_promoted);
        }
    }

    /// The uses of `records` in time order (within a time point by key), with their nodes and the
    /// chain's nodes numbered in topological order; counts pairs and invalid ids into `layers`.
    fn collect(&mut self, trace: &Trace, records: &[&TraceRecord], layers: &mut [(u32, ReplayStats)]) {
        let experts = trace.header().experts;
        self.uses.clear();
        self.chain.clear();
        let mut node = 0u32;
        for (time, record) in records.iter().enumerate() {
            self.chain.push(node);
            node = node.saturating_add(1);
            let ids = trace.ids(record);
            self.ids.clear();
            self.ids.extend(ids.iter().copied().filter(|&id| id < experts));
            self.ids.sort_unstable();
            let valid = self.ids.len() as u64;
            if let Ok(at) = layers.binary_search_by_key(&record.layer, |(l, _)| *l) {
                if let Some((_, c)) = layers.get_mut(at) {
                    // Its valid pairs are counted as the schedule serves them; valid <= len.
                    c.served.invalid_ids =
                        c.served.invalid_ids.saturating_add((ids.len() as u64).saturating_sub(valid));
                }
            }
            for run in self.ids.chunk_by(|a, b| a == b) {
                let Some(&expert) = run.first() else { continue };
                self.uses.push(Use {
                    key: u64::from(record.layer) << 32 | u64::from(expert),
                    pairs: run.len() as u64,
                    time: time as u32,
                    node,
                    copy_edge: 0,
                    serve_edge: 0,
                });
                node = node.saturating_add(2);
            }
        }
        self.chain.push(node);
    }
}

/// The integer costs of one copy and of one pair computed in slow memory, ordering schedules as
/// their modeled times do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Weights {
    copy: i128,
    pair: i128,
}

/// Totals up to this keep every path cost and potential far from `i128`'s range.
const WEIGHT_LIMIT: i128 = 1 << 120;

impl Weights {
    /// The weights for a trace of `uses` uses (the most copies a schedule makes) and `pairs` valid
    /// pairs. A cost that is not a positive number (zero, NaN, negative) counts as zero.
    fn new(cost: &CostModel, uses: u64, pairs: u64) -> Self {
        let copy = cost.seconds(0, cost.expert_bytes);
        let pair = cost.slow_pair_seconds;
        let (copy, pair) = (if copy > 0.0 { copy } else { 0.0 }, if pair > 0.0 { pair } else { 0.0 });
        // Fewest copies first, then fewest pairs in place: right when pairs cost nothing, or when
        // one copy costs more than every pair of the trace (a copy never pays for itself).
        let copies_first = Self { copy: i128::from(pairs).saturating_add(1), pair: 1 };
        // Fewest pairs in place first, then fewest copies: right when copies cost nothing, or
        // when one pair costs more than a copy at every use.
        let pairs_first = Self { copy: 1, pair: i128::from(uses).saturating_add(1) };
        if pair == 0.0 {
            return copies_first;
        }
        if copy == 0.0 {
            return pairs_first;
        }
        if let Some(exact) = Self::exact(copy, pair, uses, pairs) {
            return exact;
        }
        // Margins of 2 cover the rounding of the products.
        if copy > 2.0 * pairs as f64 * pair {
            return copies_first;
        }
        if pair > 2.0 * uses as f64 * copy {
            return pairs_first;
        }
        // Rounded: both scaled so the larger total is near 2^100.
        let unit = (copy * uses as f64).max(pair * pairs as f64) / (1u128 << 100) as f64;
        let round = |x: f64| ((x / unit + 0.5) as i128).max(1);
        Self { copy: round(copy), pair: round(pair) }
    }

    /// Both costs as integer multiples of the finest power of two they share, when every total
    /// stays within [`WEIGHT_LIMIT`].
    fn exact(copy: f64, pair: f64, uses: u64, pairs: u64) -> Option<Self> {
        let (copy_mantissa, copy_exp) = dyadic(copy)?;
        let (pair_mantissa, pair_exp) = dyadic(pair)?;
        let unit = copy_exp.min(pair_exp);
        let scale = |mantissa: u64, exp: i32| {
            let shift = u32::try_from(exp.checked_sub(unit)?).ok()?;
            i128::from(mantissa).checked_mul(1i128.checked_shl(shift).filter(|&s| s > 0 && s < WEIGHT_LIMIT)?)
        };
        let weights = Self { copy: scale(copy_mantissa, copy_exp)?, pair: scale(pair_mantissa, pair_exp)? };
        let total =
            weights.copy.checked_mul(i128::from(uses))?.checked_add(weights.pair.checked_mul(i128::from(pairs))?)?;
        (total < WEIGHT_LIMIT).then_some(weights)
    }

    /// The cost of serving `pairs` pairs from a slot rather than in place.
    fn serve(&self, pairs: u64) -> i128 {
        self.pair.saturating_mul(i128::from(pairs)).saturating_neg()
    }
}

/// A positive finite `x` as `mantissa × 2^exp` with an odd mantissa.
fn dyadic(x: f64) -> Option<(u64, i32)> {
    if !(x.is_finite() && x > 0.0) {
        return None;
    }
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exp) =
        if biased == 0 { (fraction, -1074) } else { (fraction | 1 << 52, biased.saturating_sub(1075)) };
    let zeros = mantissa.trailing_zeros();
    Some((mantissa >> zeros, exp.saturating_add(zeros as i32)))
}

/// A flow network in compressed adjacency form. Edges are added as pairs (an edge and its
/// reverse, ids `2j` and `2j + 1`), then laid out as arcs grouped by their tail node.
#[derive(Debug, Default)]
struct Graph {
    nodes: usize,
    /// Per edge id: tail, head, capacity and cost, until [`Graph::finish`].
    edges: Vec<(u32, u32, u64, i128)>,
    /// Per edge id, its arc.
    arc_of: Vec<u32>,
    arcs: Vec<Arc>,
    /// Per node, its arcs' range: `start[v]..start[v + 1]`.
    start: Vec<usize>,
    potential: Vec<i128>,
    distance: Vec<i128>,
    /// Per node, the arc the shortest path reached it by.
    via: Vec<u32>,
    heap: BinaryHeap<Reverse<(i128, u32)>>,
    /// Nodes reached at the distance being settled (by arcs of reduced cost 0), settled without
    /// the heap.
    level: Vec<u32>,
}

/// One direction of an edge in the residual network.
#[derive(Debug, Clone, Copy)]
struct Arc {
    head: u32,
    /// The opposite arc.
    reverse: u32,
    /// Residual capacity.
    cap: u64,
    cost: i128,
}

/// No path (yet).
const FAR: i128 = i128::MAX;

impl Graph {
    fn reset(&mut self, nodes: usize) {
        self.nodes = nodes;
        self.edges.clear();
    }

    /// Adds an edge and its reverse; returns the edge's id.
    fn add(&mut self, from: u32, to: u32, cap: u64, cost: i128) -> u32 {
        let id = self.edges.len() as u32;
        self.edges.extend([(from, to, cap, cost), (to, from, 0, cost.saturating_neg())]);
        id
    }

    /// Lays out the arcs once every edge is added. Edges naming a node at or past `nodes` are
    /// left out (the solver never adds one).
    fn finish(&mut self) {
        // Per node, its arc count, then (prefix sums) where its arcs start.
        self.start.clear();
        self.start.resize(self.nodes.saturating_add(1), 0);
        for &(from, ..) in &self.edges {
            if let Some(count) = self.start.get_mut(from as usize) {
                *count = count.saturating_add(1);
            }
        }
        let mut sum = 0usize;
        for at in &mut self.start {
            let count = *at;
            *at = sum;
            sum = sum.saturating_add(count);
        }
        // Each edge's arc: the next free position of its tail's range.
        let mut next = self.start.clone();
        self.arc_of.clear();
        for &(from, ..) in &self.edges {
            let arc = next.get_mut(from as usize).map_or(u32::MAX, |at| {
                *at = at.saturating_add(1);
                at.saturating_sub(1) as u32
            });
            self.arc_of.push(arc);
        }
        self.arcs.clear();
        self.arcs.resize(sum, Arc { head: 0, reverse: 0, cap: 0, cost: 0 });
        for (edge, &(_, head, cap, cost)) in self.edges.iter().enumerate() {
            let reverse = self.arc_of.get(edge ^ 1).copied().unwrap_or(u32::MAX);
            let at = self.arc_of.get(edge).copied().unwrap_or(u32::MAX);
            if let Some(arc) = self.arcs.get_mut(at as usize) {
                *arc = Arc { head, reverse, cap, cost };
            }
        }
    }

    /// Whether edge `edge` carries flow.
    fn carries(&self, edge: u32) -> bool {
        self.arc_of
            .get(edge as usize)
            .and_then(|&arc| self.arcs.get(arc as usize))
            .and_then(|arc| self.arcs.get(arc.reverse as usize))
            .is_some_and(|reverse| reverse.cap > 0)
    }

    /// Sends up to `units` from `source` to `sink` (node 0 and the last node, every edge from a
    /// lower node to a higher one) at the least cost, stopping once another unit saves nothing.
    fn min_cost_flow(&mut self, source: u32, sink: u32, mut units: u64) {
        // Potentials: shortest distances on the DAG, in node order.
        self.potential.clear();
        self.potential.resize(self.nodes, FAR);
        self.distance.resize(self.nodes, FAR);
        self.via.resize(self.nodes, u32::MAX);
        if let Some(p) = self.potential.get_mut(source as usize) {
            *p = 0;
        }
        for u in 0..self.nodes {
            let d = self.potential.get(u).copied().unwrap_or(FAR);
            if d == FAR {
                continue;
            }
            let Self { start, arcs, potential, .. } = &mut *self;
            let range = start.get(u).copied().unwrap_or(0)..start.get(u.saturating_add(1)).copied().unwrap_or(0);
            for arc in arcs.get(range).unwrap_or(&[]) {
                if let Some(p) = potential.get_mut(arc.head as usize) {
                    if arc.cap > 0 && d.saturating_add(arc.cost) < *p {
                        *p = d.saturating_add(arc.cost);
                    }
                }
            }
        }
        let mut path = Vec::new();
        while units > 0 && self.shortest(source, sink) {
            // The path's cost is the sink's new potential (the source's stays 0).
            if self.potential.get(sink as usize).is_none_or(|&cost| cost >= 0) {
                break;
            }
            // The path's arcs, from the sink back (none when it is broken, which `shortest`
            // never leaves).
            path.clear();
            let mut v = sink;
            while v != source {
                let Some(arc) = self.via.get(v as usize).and_then(|&at| self.arcs.get(at as usize).map(|a| (at, a)))
                else {
                    return;
                };
                let Some(back) = self.arcs.get(arc.1.reverse as usize) else { return };
                path.push((arc.0, arc.1.reverse));
                v = back.head;
            }
            let pushed =
                path.iter().filter_map(|&(at, _)| self.arcs.get(at as usize).map(|a| a.cap)).fold(units, u64::min);
            for &(at, reverse) in &path {
                if let Some(arc) = self.arcs.get_mut(at as usize) {
                    arc.cap = arc.cap.saturating_sub(pushed);
                }
                if let Some(arc) = self.arcs.get_mut(reverse as usize) {
                    arc.cap = arc.cap.saturating_add(pushed);
                }
            }
            units = units.saturating_sub(pushed);
        }
    }

    /// Dijkstra on reduced costs from `source`, stopping at `sink`; then raises every potential
    /// by its distance (capped at the sink's), which keeps reduced costs non-negative. Returns
    /// whether the sink is reachable.
    fn shortest(&mut self, source: u32, sink: u32) -> bool {
        self.distance.fill(FAR);
        self.heap.clear();
        self.level.clear();
        if let Some(d) = self.distance.get_mut(source as usize) {
            *d = 0;
        }
        self.level.push(source);
        let Self { start, arcs, potential, distance, via, heap, level, .. } = &mut *self;
        loop {
            // Nodes at the distance being settled first, then the heap's nearest.
            let (d, u) = match level.pop() {
                Some(u) => (distance.get(u as usize).copied().unwrap_or(FAR), u as usize),
                None => match heap.pop() {
                    Some(Reverse((d, u))) => (d, u as usize),
                    None => break,
                },
            };
            if distance.get(u).is_none_or(|&settled| d > settled) {
                continue;
            }
            if u == sink as usize {
                break;
            }
            let base = d.saturating_add(potential.get(u).copied().unwrap_or(0));
            let first = start.get(u).copied().unwrap_or(0);
            let range = first..start.get(u.saturating_add(1)).copied().unwrap_or(first);
            for (k, arc) in arcs.get(range).unwrap_or(&[]).iter().enumerate() {
                if arc.cap == 0 {
                    continue;
                }
                let v = arc.head as usize;
                let (Some(dv), Some(&pv)) = (distance.get_mut(v), potential.get(v)) else { continue };
                let reduced = base.saturating_add(arc.cost).saturating_sub(pv);
                if reduced < *dv {
                    *dv = reduced;
                    if let Some(via) = via.get_mut(v) {
                        *via = first.saturating_add(k) as u32;
                    }
                    if reduced == d {
                        level.push(v as u32);
                    } else {
                        heap.push(Reverse((reduced, v as u32)));
                    }
                }
            }
        }
        let reach = distance.get(sink as usize).copied().unwrap_or(FAR);
        if reach == FAR {
            return false;
        }
        for (p, &d) in potential.iter_mut().zip(distance.iter()) {
            *p = p.saturating_add(d.min(reach));
        }
        true
    }
}

#[cfg(test)]
mod tests;
