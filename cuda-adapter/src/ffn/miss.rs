//! The miss rule: what the host does with a routed expert that is not resident.

use expertslab::trace::replay::{split_misses, FetchCap, SplitCosts};

/// What to do with a routed expert that is not resident: the three ways to serve a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissAction {
    /// Copy it into a scratch slot on the copy stream, then compute from there.
    Copy,
    /// Read it straight from registered host memory over the bus.
    Bus,
    /// Compute its pairs on the host CPU, from host memory, while the GPU computes the others;
    /// the pairs' outputs are uploaded before the combine (same bits as on the GPU).
    Host,
    /// The host way, split with the link: the host computes its pairs' gate and up while its
    /// down projection is copied into a scratch slot; the pairs' intermediate `h` is uploaded
    /// and the GPU computes down from there (same bits). Only [`MissRule::Balanced`] with a
    /// share of down ([`MissCosts::down_share`]) plans it.
    Split,
}

/// Costs of one expert measured at start-up, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MissCosts {
    /// Copying the expert from page-locked host memory into a slot.
    pub copy: f64,
    /// Computing one pair with the expert in device memory.
    pub resident_pair: f64,
    /// Computing one pair reading the expert from host memory over the bus.
    pub bus_pair: f64,
    /// Computing one pair on the host CPU (all its threads on the pair's rows);
    /// `f64::INFINITY` when the host does not compute pairs.
    pub host_pair: f64,
    /// Paid once by a layer step that computes any pair on the host, before `host_pair` per
    /// pair: fetching the layer's input from the device, starting the threads, uploading the
    /// outputs.
    pub host_step: f64,
    /// Down's share of an expert's bytes: what a [`MissAction::Split`] copies, while the host
    /// computes the rest (gate and up, `1 − down_share` of `host_pair`); 0: no miss is split.
    pub down_share: f64,
}

impl MissCosts {
    /// The costs the core's split weighs ([`split_misses`]), the link busy `busy` seconds.
    pub const fn split(&self, busy: f64) -> SplitCosts {
        SplitCosts { busy, copy: self.copy, pair: self.host_pair, step: self.host_step, down: self.down_share }
    }
}

/// How the host picks a miss's action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MissRule {
    /// Always this action.
    Always(MissAction),
    /// By measured costs: copy when `copy + uses × resident_pair < uses × bus_pair` (the
    /// expert is copied once and then read from device memory by each of the step's `uses`
    /// pairs), read over the bus otherwise.
    Measured(MissCosts),
    /// Copies and host compute side by side: the pool promotes at most the step's share of its
    /// misses by the [`FetchCap`] (none under [`FetchCap::Uncapped`]); then the misses it left,
    /// the most used first, are copied, the next split ([`MissAction::Split`], with a share of
    /// down) and the rest computed on the host, in the counts with the least `max(link time,
    /// host time)` (the copy engine and the host CPU run at once; [`split_misses`]): the link's
    /// time is the promotions', the copies' and the split downs' over the link, the host's
    /// `host_step` plus its pairs and the split pairs' gate and up. With an infinite
    /// `host_pair` every miss is copied.
    Balanced(MissCosts, FetchCap),
}

impl MissRule {
    /// Whether the rule may serve a miss on the host (whole or split).
    pub fn may_use_host(&self) -> bool {
        match self {
            Self::Always(action) => matches!(action, MissAction::Host | MissAction::Split),
            Self::Balanced(c, _) => c.host_pair.is_finite(),
            Self::Measured(_) => false,
        }
    }

    /// The action for a missed expert used by `uses` pairs of the step, alone (for
    /// [`MissRule::Balanced`], as the step's only miss).
    pub fn choose(&self, uses: usize) -> MissAction {
        match self {
            Self::Always(action) => *action,
            Self::Balanced(..) => {
                let mut actions = Vec::with_capacity(1);
                self.plan(&[u32::try_from(uses).unwrap_or(u32::MAX)], 0, &mut actions);
                actions.first().copied().unwrap_or(MissAction::Copy)
            }
            Self::Measured(c) => {
                let n = uses.max(1) as f64;
                if c.copy + n * c.resident_pair < n * c.bus_pair {
                    MissAction::Copy
                } else {
                    MissAction::Bus
                }
            }
        }
    }
}

impl MissRule {
    /// The actions for a step's missed experts, `uses[i]` pairs of the step using expert `i`
    /// (as [`expertslab::trace::replay::count_uses`] counts them):
    /// `actions[i]` (cleared and filled). `promotions` experts are copied for the step already
    /// (the pool's): [`MissRule::Balanced`] counts the link busy with them.
    pub fn plan(&self, uses: &[u32], promotions: usize, actions: &mut Vec<MissAction>) {
        actions.clear();
        let Self::Balanced(c, cap) = self else {
            actions.extend(uses.iter().map(|&u| self.choose(u as usize)));
            return;
        };
        // The most used first: a copy serves all of an expert's pairs, the host pays per pair.
        // The split is the core's (`split_misses`), as the replay's overlapped model makes it.
        let mut order: Vec<usize> = (0..uses.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(uses.get(i).copied().unwrap_or(0)));
        let sorted: Vec<u32> = order.iter().map(|&i| uses.get(i).copied().unwrap_or(0)).collect();
        let best = split_misses(&sorted, &c.split(promotions as f64 * c.copy), *cap);
        actions.resize(uses.len(), MissAction::Host);
        for (rank, &i) in order.iter().enumerate().take(best.fetched + best.split) {
            if let Some(a) = actions.get_mut(i) {
                *a = if rank < best.fetched { MissAction::Copy } else { MissAction::Split };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_miss_rule_weighs_one_copy_against_reads_over_the_bus() {
        // A 9 MiB expert: 180 µs to copy, 3 µs per pair from HBM, 200 µs per pair over the bus.
        let costs = MissCosts {
            copy: 180e-6,
            resident_pair: 3e-6,
            bus_pair: 200e-6,
            host_pair: f64::INFINITY,
            host_step: 0.0,
            down_share: 0.0,
        };
        let rule = MissRule::Measured(costs);
        assert_eq!(rule.choose(1), MissAction::Copy); // 183 < 200
        let slow_copy = MissRule::Measured(MissCosts { copy: 400e-6, ..costs });
        assert_eq!(slow_copy.choose(1), MissAction::Bus); // 403 > 200
        assert_eq!(slow_copy.choose(3), MissAction::Copy); // 409 < 600: shared by three tokens
        assert_eq!(slow_copy.choose(0), MissAction::Bus); // counted as one use
        assert_eq!(MissRule::Always(MissAction::Bus).choose(100), MissAction::Bus);
        assert_eq!(MissRule::Always(MissAction::Copy).choose(1), MissAction::Copy);
    }

    #[test]
    fn the_balanced_rule_splits_misses_between_the_link_and_the_host() {
        use MissAction::{Copy, Host};
        // Copying an expert costs as much as two pairs on the host.
        let costs =
            MissCosts { copy: 2.0, resident_pair: 0.0, bus_pair: 9.0, host_pair: 1.0, host_step: 0.0, down_share: 0.0 };
        let rule = MissRule::Balanced(costs, FetchCap::Balanced);
        let mut actions = Vec::new();
        // Eight experts used once: k copies take 2k, the host 8 − k; k = 2 and k = 3 both take
        // 6, the least, and the tie goes to fewer copies.
        rule.plan(&[1; 8], 0, &mut actions);
        assert_eq!(actions.iter().filter(|&&a| a == Copy).count(), 2, "{actions:?}");
        // The most used expert is copied first.
        rule.plan(&[1, 1, 4, 1], 0, &mut actions);
        assert_eq!(actions, [Host, Host, Copy, Host]);
        // No host: every miss copied.
        let no_host = MissRule::Balanced(MissCosts { host_pair: f64::INFINITY, ..costs }, FetchCap::Balanced);
        no_host.plan(&[1, 2, 1], 0, &mut actions);
        assert_eq!(actions, [Copy, Copy, Copy]);
        // A slow link: everything on the host.
        MissRule::Balanced(MissCosts { copy: 1e9, ..costs }, FetchCap::Balanced).plan(&[1, 1], 0, &mut actions);
        assert_eq!(actions, [Host, Host]);
        // The other rules plan miss by miss.
        MissRule::Always(Host).plan(&[3, 1], 0, &mut actions);
        assert_eq!(actions, [Host, Host]);
        // A link busy with three promotions (6) leaves every miss to the host.
        rule.plan(&[1; 4], 3, &mut actions);
        assert_eq!(actions, [Host; 4]);
        // A cap of one copy a step.
        MissRule::Balanced(costs, FetchCap::AtMost(1)).plan(&[1; 8], 0, &mut actions);
        assert_eq!(actions.iter().filter(|&&a| a == Copy).count(), 1, "{actions:?}");
        assert_eq!(rule.choose(1), Host, "one pair alone: 1 on the host beats a copy of 2");
        assert_eq!(rule.choose(3), Copy);
    }

    #[test]
    fn the_balanced_rule_splits_experts_between_the_host_and_the_link() {
        use MissAction::{Copy, Host, Split};
        // The GPU machine's costs (µs): a copy 180, a host pair 97 and 25 per step, down a
        // third of an expert. Two misses: both split, max(2 × 60, 25 + 2 × 64.7) = 154, beats one
        // copied and one on the host (180).
        let costs = MissCosts {
            copy: 180.0,
            resident_pair: 5.0,
            bus_pair: 275.0,
            host_pair: 97.0,
            host_step: 25.0,
            down_share: 1.0 / 3.0,
        };
        let mut actions = Vec::new();
        MissRule::Balanced(costs, FetchCap::Balanced).plan(&[1, 1], 0, &mut actions);
        assert_eq!(actions, [Split, Split]);
        // Without a share of down, the same misses are served whole.
        MissRule::Balanced(MissCosts { down_share: 0.0, ..costs }, FetchCap::Balanced).plan(&[1, 1], 0, &mut actions);
        assert_eq!(actions.iter().filter(|&&a| a == Split).count(), 0, "{actions:?}");
        assert!(actions.contains(&Copy) && actions.contains(&Host), "{actions:?}");
        // The most used are copied whole first: an expert of five pairs and four of one.
        MissRule::Balanced(costs, FetchCap::Balanced).plan(&[1, 5, 1, 1, 1], 0, &mut actions);
        assert_eq!(actions.get(1), Some(&Copy), "{actions:?}");
    }
}
