//! Refresh schedules: on which steps a layer re-decides its placement.

use core::num::NonZeroU32;

/// When a layer refreshes its placement.
///
/// A layer refreshes on step `s` when `s % n == 0` (`n = 1` for [`Schedule::EveryForward`]). A
/// prefill step always refreshes; a step with [`Mode::Refresh`] always refreshes and one with
/// [`Mode::Reuse`] never does. Each layer keeps its own schedule.
///
/// A diffusion model's denoise counter restarts at each block: the block's first step is a prefill
/// step (so it always refreshes) and may carry a smaller index than the layer's previous step.
/// Since the rule reads only the step's own index, `s % n` then counts within the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Schedule {
    /// Refresh on every forward pass (TIDE's τ = 1).
    EveryForward,
    /// Refresh every `n` decode steps of an autoregressive model (the step index counts tokens).
    EveryDecodeSteps(NonZeroU32),
    /// Refresh every `n` denoising steps of a diffusion model (the step index counts denoising
    /// iterations).
    EveryDenoiseSteps(NonZeroU32),
}

impl Schedule {
    /// The refresh interval τ in steps.
    pub const fn interval(self) -> NonZeroU32 {
        match self {
            Schedule::EveryForward => NonZeroU32::MIN,
            Schedule::EveryDecodeSteps(n) | Schedule::EveryDenoiseSteps(n) => n,
        }
    }

    /// Whether `step` refreshes under this schedule.
    pub const fn is_due(self, step: Step) -> bool {
        match step.mode {
            Mode::Reuse => false,
            Mode::Refresh => true,
            Mode::Scheduled => step.prefill || divides(self.interval().get(), step.index),
        }
    }
}

/// Whether `n` divides `index`. Indices below 2^32 (every real run) take a 32-bit remainder; the
/// others a remainder by shift and subtract. A plain 64-bit `%` would link the 64-bit division
/// routine on 32-bit microcontrollers, which have no instruction for it: about 860 bytes of code
/// on a Cortex-M4, more than the whole schedule.
const fn divides(n: u32, index: u64) -> bool {
    if index <= u32::MAX as u64 {
        (index as u32).is_multiple_of(n)
    } else {
        remainder(index, n) == 0
    }
}

/// `value % n` by long division, one bit at a time (no 64-bit divide).
const fn remainder(value: u64, n: u32) -> u64 {
    let n = n as u64;
    let mut rest = 0u64;
    let mut bit = u64::BITS;
    while bit > 0 {
        // `bit > 0`: no wrap.
        bit = bit.wrapping_sub(1);
        // `rest < n < 2^32`, so the shift cannot overflow.
        rest = (rest << 1) | ((value >> bit) & 1);
        if rest >= n {
            // `rest >= n`: no wrap.
            rest = rest.wrapping_sub(n);
        }
    }
    rest
}

/// What a step asks of placement, beside its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mode {
    /// Refresh when the schedule (or a prefill) says so.
    #[default]
    Scheduled,
    /// Keep the current placement whatever the schedule says.
    Reuse,
    /// Refresh whatever the schedule says.
    Refresh,
}

/// One step of one layer: its index, whether it is a prefill block, and its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Step {
    /// The step index the schedule counts (decode step or denoising step).
    pub index: u64,
    /// A prefill block: always refreshes unless the mode is [`Mode::Reuse`].
    pub prefill: bool,
    /// The explicit mode.
    pub mode: Mode,
}

impl Step {
    /// A decode (or denoise) step `index` that follows the schedule.
    pub const fn decode(index: u64) -> Self {
        Self { index, prefill: false, mode: Mode::Scheduled }
    }

    /// A prefill block at step `index`.
    pub const fn prefill(index: u64) -> Self {
        Self { index, prefill: true, mode: Mode::Scheduled }
    }

    /// This step with an explicit mode.
    pub const fn with_mode(self, mode: Mode) -> Self {
        Self { mode, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remainder_by_shift_is_the_remainder() {
        let values = [0, 1, 2, 7, 1 << 32, (1 << 32) + 5, u64::from(u32::MAX) * 3, u64::MAX - 1, u64::MAX];
        let divisors = [1, 2, 3, 10, 1000, 65_537, u32::MAX - 1, u32::MAX];
        for value in values {
            for n in divisors {
                assert_eq!(remainder(value, n), value % u64::from(n), "{value} % {n}");
                assert_eq!(divides(n, value), value % u64::from(n) == 0, "{n} divides {value}");
            }
        }
    }

    #[test]
    fn schedules_follow_the_interval_prefill_and_mode() {
        let every3 = Schedule::EveryDecodeSteps(NonZeroU32::new(3).unwrap());
        let due: [bool; 7] = core::array::from_fn(|s| every3.is_due(Step::decode(s as u64)));
        assert_eq!(due, [true, false, false, true, false, false, true]);
        assert!(every3.is_due(Step::prefill(1)));
        assert!(every3.is_due(Step::decode(1).with_mode(Mode::Refresh)));
        assert!(!every3.is_due(Step::decode(3).with_mode(Mode::Reuse)));
        assert!(!every3.is_due(Step::prefill(3).with_mode(Mode::Reuse)));
        assert!((0..5).all(|s| Schedule::EveryForward.is_due(Step::decode(s))));
        let denoise = Schedule::EveryDenoiseSteps(NonZeroU32::new(2).unwrap());
        assert!(denoise.is_due(Step::decode(4)) && !denoise.is_due(Step::decode(5)));
        assert_eq!(every3.interval().get(), 3);
    }

    #[test]
    fn a_restarting_block_counts_its_steps_within_the_block() {
        // Diffusion blocks whose denoise counter restarts: the block's first step is a prefill
        // and refreshes whatever its index; later steps refresh where `index % n == 0`.
        let denoise = Schedule::EveryDenoiseSteps(NonZeroU32::new(2).unwrap());
        let due = |block: [u64; 4]| -> [bool; 4] {
            core::array::from_fn(|i| {
                let step = if i == 0 { Step::prefill(block[i]) } else { Step::decode(block[i]) };
                denoise.is_due(step)
            })
        };
        assert_eq!(due([0, 1, 2, 3]), [true, false, true, false]);
        // The same block again, after the counter went back to 0.
        assert_eq!(due([0, 1, 2, 3]), [true, false, true, false]);
        // A block whose counter restarts at 3.
        assert_eq!(due([3, 4, 5, 6]), [true, true, false, true]);
    }
}
