//! The miss rule: what the host does with a routed expert that is not resident.

/// What to do with a routed expert that is not resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissAction {
    /// Copy it into a scratch slot on the copy stream, then compute from there.
    Copy,
    /// Read it straight from registered host memory over the bus.
    ZeroCopy,
}

/// Costs of one expert measured at start-up, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MissCosts {
    /// Copying the expert from page-locked host memory into a slot.
    pub copy: f64,
    /// Computing one pair with the expert in device memory.
    pub resident_pair: f64,
    /// Computing one pair reading the expert from host memory over the bus.
    pub zero_copy_pair: f64,
}

/// How the host picks a miss's action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MissRule {
    /// Always this action.
    Always(MissAction),
    /// By measured costs: copy when `copy + uses × resident_pair < uses × zero_copy_pair` (the
    /// expert is copied once and then read from device memory by each of the step's `uses`
    /// pairs), read over the bus otherwise.
    Measured(MissCosts),
}

impl MissRule {
    /// The action for a missed expert used by `uses` pairs of the step.
    pub fn choose(&self, uses: usize) -> MissAction {
        match self {
            Self::Always(action) => *action,
            Self::Measured(c) => {
                let n = uses.max(1) as f64;
                if c.copy + n * c.resident_pair < n * c.zero_copy_pair {
                    MissAction::Copy
                } else {
                    MissAction::ZeroCopy
                }
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
        let costs = MissCosts { copy: 180e-6, resident_pair: 3e-6, zero_copy_pair: 200e-6 };
        let rule = MissRule::Measured(costs);
        assert_eq!(rule.choose(1), MissAction::Copy); // 183 < 200
        let slow_copy = MissRule::Measured(MissCosts { copy: 400e-6, ..costs });
        assert_eq!(slow_copy.choose(1), MissAction::ZeroCopy); // 403 > 200
        assert_eq!(slow_copy.choose(3), MissAction::Copy); // 409 < 600: shared by three tokens
        assert_eq!(slow_copy.choose(0), MissAction::ZeroCopy); // counted as one use
        assert_eq!(MissRule::Always(MissAction::ZeroCopy).choose(100), MissAction::ZeroCopy);
        assert_eq!(MissRule::Always(MissAction::Copy).choose(1), MissAction::Copy);
    }
}
