//! Counting one step's routing ids per expert at the pace the hardware allows.
//!
//! A plain loop (`counts[id] += 1`) chains every increment of a hot expert to the one before it:
//! the next read of a counter waits for the last write to it. With skewed routing a few experts
//! take a large share of the ids, so a long step is bound by that chain, not by reading the ids.
//! [`CountBanks`] breaks it: the ids go round-robin into four banks of counters, so consecutive
//! increments of one expert land in different banks and overlap; the banks are summed at the end,
//! so the counts stay exact. Ids at or past the expert count go into one spare counter per bank
//! (the branch-free way to ignore them) and are dropped when the banks are summed.
//!
//! The banks are scratch owned by the [`crate::MigrationPlan`] (one plan serves a layer's pools,
//! or a model's), not pool state: a pool keeps its 4 bytes per expert. Between refreshes every
//! counter is zero.

use alloc::vec;
use alloc::vec::Vec;

/// Number of banks.
const BANKS: usize = 4;

/// Steps with fewer ids count in one pass: below this, summing the banks costs more than the
/// chains they break (measured in `tests/benches/refresh.rs`).
pub const MIN_BANKED_IDS: usize = 1024;

/// Experts a plan's banks cover per slot of the plan's capacity (see [`crate::MigrationPlan::new`]).
pub(crate) const EXPERTS_PER_SLOT: usize = 4;

/// Ids counted before the banks' 16-bit counters are summed into the totals: whole rounds of
/// eight, so a bank sees at most `u16::MAX - 1` of them (two per round), or as many with the
/// last block's remainder.
const BLOCK_IDS: usize = 2 * BANKS * (u16::MAX as usize / 2);

/// Four banks of 16-bit counters for up to [`CountBanks::experts`] experts, each with a spare
/// counter for invalid ids (8 bytes per expert). All zero at rest. A [`crate::MigrationPlan`]
/// holds one for the refreshes it is filled by; it is public for measuring.
///
/// ```
/// use expertslab::count::{CountBanks, MIN_BANKED_IDS};
///
/// let mut banks = CountBanks::new(4);
/// let ids: Vec<u32> = (0..MIN_BANKED_IDS as u32).map(|i| i % 5).collect(); // 4 is out of range
/// let mut totals = [0u32; 4];
/// assert!(banks.count(&ids, &mut totals));
/// assert_eq!(totals, [205, 205, 205, 205]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct CountBanks {
    counters: Vec<u16>,
}

impl PartialEq for CountBanks {
    /// Scratch carries no meaning: any two compare equal.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CountBanks {}

impl CountBanks {
    /// Banks for pools of up to `experts` experts.
    pub fn new(experts: usize) -> Self {
        Self { counters: vec![0; experts.saturating_add(1).saturating_mul(BANKS)] }
    }

    /// The most experts the banks cover.
    pub fn experts(&self) -> usize {
        (self.counters.len() / BANKS).saturating_sub(1)
    }

    /// Writes into `totals[e]` the number of `ids` equal to `e`, for every expert `e` (ids at or
    /// past `totals.len()` are ignored), if the banks cover `totals.len()` experts and `ids` is
    /// long enough for banks to pay ([`MIN_BANKED_IDS`]). Returns whether it did; otherwise
    /// `totals` is unchanged.
    pub fn count(&mut self, ids: &[u32], totals: &mut [u32]) -> bool {
        let experts = totals.len();
        if ids.len() < MIN_BANKED_IDS || experts > self.experts() || experts == 0 {
            return false;
        }
        totals.fill(0);
        // experts <= self.experts(), so the banks hold BANKS * (experts + 1) counters.
        let width = experts.saturating_add(1);
        let Some(used) = self.counters.get_mut(..width.saturating_mul(BANKS)) else { return false };
        for block in ids.chunks(BLOCK_IDS) {
            let mut banks = used.chunks_exact_mut(width);
            let (Some(b0), Some(b1), Some(b2), Some(b3)) = (banks.next(), banks.next(), banks.next(), banks.next())
            else {
                return false; // BANKS chunks of `width` exist by construction
            };
            // Eight ids a round, two per bank (fewer loop tests than four).
            let mut rounds = block.chunks_exact(2 * BANKS);
            for round in &mut rounds {
                if let [a, b, c, d, e, f, g, h] = *round {
                    // An invalid id counts in the spare counter at index `experts`.
                    bump(b0, a, experts);
                    bump(b1, b, experts);
                    bump(b2, c, experts);
                    bump(b3, d, experts);
                    bump(b0, e, experts);
                    bump(b1, f, experts);
                    bump(b2, g, experts);
                    bump(b3, h, experts);
                }
            }
            // Under eight left: at most two more per bank.
            for (i, &id) in rounds.remainder().iter().enumerate() {
                let bank = match i % BANKS {
                    0 => &mut *b0,
                    1 => &mut *b1,
                    2 => &mut *b2,
                    _ => &mut *b3,
                };
                bump(bank, id, experts);
            }
            for (total, ((a, b), (c, d))) in
                totals.iter_mut().zip(b0.iter().zip(b1.iter()).zip(b2.iter().zip(b3.iter())))
            {
                let sum =
                    u32::from(*a).wrapping_add(u32::from(*b)).wrapping_add(u32::from(*c)).wrapping_add(u32::from(*d));
                // At most COUNT_MASK ids per step (checked by the pool): totals stay far from wrapping.
                *total = total.wrapping_add(sum);
            }
            used.fill(0);
        }
        true
    }
}

/// Adds one to `bank[min(id, spare)]` (`bank` has `spare + 1` counters; a bank sees at most
/// `u16::MAX` ids per block of [`BLOCK_IDS`], so its counters do not wrap).
#[inline(always)]
fn bump(bank: &mut [u16], id: u32, spare: usize) {
    if let Some(c) = bank.get_mut((id as usize).min(spare)) {
        *c = c.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banked_counts_equal_a_plain_count() {
        let mut banks = CountBanks::new(8);
        assert_eq!(banks.experts(), 8);
        // Skewed ids with invalid ones, a length that is not a multiple of the bank count.
        let ids: Vec<u32> = (0..MIN_BANKED_IDS as u32 + 7).map(|i| if i % 3 == 0 { 2 } else { (i * 7) % 11 }).collect();
        let mut totals = [9u32; 6];
        assert!(banks.count(&ids, &mut totals));
        let mut plain = [0u32; 6];
        for &id in &ids {
            if let Some(c) = plain.get_mut(id as usize) {
                *c += 1;
            }
        }
        assert_eq!(totals, plain);
        assert!(banks.counters.iter().all(|&c| c == 0), "banks rest at zero");
        // Short steps and pools past the banks' cover are left to the caller.
        assert!(!banks.count(&ids[..MIN_BANKED_IDS - 1], &mut totals));
        assert!(!banks.count(&ids, &mut [0u32; 9]));
        // Blocks past one bank's counter range still count exactly.
        let long: Vec<u32> = vec![1; BLOCK_IDS * 2 - 1];
        let mut totals = [0u32; 2];
        assert!(banks.count(&long, &mut totals));
        assert_eq!(totals, [0, long.len() as u32]);
    }
}
