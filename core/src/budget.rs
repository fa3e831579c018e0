//! Budget sizing: how many expert slots fit in a memory size.
//!
//! Two questions an integrator asks before building pools:
//! - [`slots_per_layer`]: with `memory` bytes of fast memory, `reserve` of them kept for
//!   everything else (activations, KV cache, dense weights), and every MoE layer given the same
//!   number of slots, how many slots does each layer get? `⌊(memory − reserve) / (layers ×
//!   slot_bytes)⌋`, clamped to the expert count: the formula of the TIDE paper's budget and of
//!   common offloading runtimes.
//! - [`split_byte_budget`]: with one byte budget shared by layers whose slots differ in size (a
//!   quantization mix, dense leading layers), how many slots does each get? Slots are handed out
//!   one per layer per round, in layer order, while the next one fits, so identical layers get
//!   equal counts (±1) and no byte budget is left that could still hold a slot of some layer.

use crate::error::LayoutError;

/// One layer's demand in a shared byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LayerDemand {
    /// Bytes of one slot of this layer (see [`crate::SlotArena::slot_stride`]).
    pub slot_bytes: u64,
    /// Experts of this layer: more slots than experts are never given.
    pub experts: u32,
}

/// Slots per layer when `layers` layers share `memory − reserve` bytes equally; clamped to
/// `experts`. A reserve larger than the memory gives zero slots.
///
/// # Errors
/// [`LayoutError::ZeroDimension`] when `slot_bytes` or `layers` is zero,
/// [`LayoutError::Overflow`] when `layers × slot_bytes` overflows `u64`.
pub fn slots_per_layer(
    memory: u64,
    reserve: u64,
    slot_bytes: u64,
    layers: u32,
    experts: u32,
) -> Result<u32, LayoutError> {
    if slot_bytes == 0 || layers == 0 {
        return Err(LayoutError::ZeroDimension);
    }
    let per_round = slot_bytes.checked_mul(u64::from(layers)).ok_or(LayoutError::Overflow)?;
    #[allow(clippy::arithmetic_side_effects, reason = "per_round > 0: both factors were checked non-zero")]
    let slots = memory.saturating_sub(reserve) / per_round;
    Ok(u32::try_from(slots).unwrap_or(u32::MAX).min(experts))
}

/// Splits one byte budget across layers: writes each layer's slot count to `out` and returns the
/// bytes the slots use (at most `budget`).
///
/// # Errors
/// [`LayoutError::LengthMismatch`] when `out` is not as long as `layers`,
/// [`LayoutError::ZeroDimension`] when a layer's `slot_bytes` is zero.
pub fn split_byte_budget(budget: u64, layers: &[LayerDemand], out: &mut [u32]) -> Result<u64, LayoutError> {
    if out.len() != layers.len() {
        return Err(LayoutError::LengthMismatch { expected: layers.len(), actual: out.len() });
    }
    if layers.iter().any(|l| l.slot_bytes == 0) {
        return Err(LayoutError::ZeroDimension);
    }
    out.fill(0);
    let mut left = budget;
    loop {
        let mut gave = false;
        for (layer, count) in layers.iter().zip(out.iter_mut()) {
            if *count < layer.experts {
                if let Some(rest) = left.checked_sub(layer.slot_bytes) {
                    left = rest;
                    *count = count.saturating_add(1); // below `experts`, so never saturates
                    gave = true;
                }
            }
        }
        if !gave {
            return Ok(budget.saturating_sub(left)); // left only ever shrinks from budget
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_split_follows_the_formula() {
        // 8 GiB with 1 GiB reserved, 26 layers of 3 MiB slots: ⌊7 GiB / 78 MiB⌋ = 91, clamped to 64.
        let gib = 1u64 << 30;
        assert_eq!(slots_per_layer(8 * gib, gib, 3 << 20, 26, 256), Ok(91));
        assert_eq!(slots_per_layer(8 * gib, gib, 3 << 20, 26, 64), Ok(64));
        assert_eq!(slots_per_layer(gib, 2 * gib, 1, 1, 8), Ok(0));
        assert_eq!(slots_per_layer(gib, 0, 0, 1, 8), Err(LayoutError::ZeroDimension));
        assert_eq!(slots_per_layer(gib, 0, 1, 0, 8), Err(LayoutError::ZeroDimension));
        assert_eq!(slots_per_layer(u64::MAX, 0, u64::MAX, 2, 8), Err(LayoutError::Overflow));
    }

    #[test]
    fn shared_budget_is_split_round_robin() {
        let layers = [
            LayerDemand { slot_bytes: 100, experts: 8 },
            LayerDemand { slot_bytes: 100, experts: 8 },
            LayerDemand { slot_bytes: 40, experts: 2 },
        ];
        let mut out = [0; 3];
        // Round 1: 240, round 2: 480; 520 left 40 → no 100-byte slot fits, layer 3 is full.
        assert_eq!(split_byte_budget(520, &layers, &mut out), Ok(480));
        assert_eq!(out, [2, 2, 2]);
        assert_eq!(split_byte_budget(10_000, &layers, &mut out), Ok(1680));
        assert_eq!(out, [8, 8, 2]);
        assert_eq!(split_byte_budget(0, &layers, &mut out), Ok(0));
        assert_eq!(out, [0, 0, 0]);
        assert!(split_byte_budget(1, &layers, &mut [0; 2]).is_err());
        let zero = [LayerDemand { slot_bytes: 0, experts: 1 }];
        assert_eq!(split_byte_budget(1, &zero, &mut [0]), Err(LayoutError::ZeroDimension));
    }
}
