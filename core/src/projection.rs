//! The weight matrices of one expert's feed-forward network. A leaf: it imports nothing from the
//! crate, so layouts, formats and errors can all name a projection.

/// One weight matrix of an expert's feed-forward network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Projection {
    /// The gate projection (`ffn_gate_exps`).
    Gate,
    /// The up projection (`ffn_up_exps`).
    Up,
    /// The down projection (`ffn_down_exps`).
    Down,
    /// Gate and up fused in one matrix (`ffn_gate_up_exps`): gate rows first, then up rows.
    GateUp,
}

impl Projection {
    /// The name as GGUF tensor names spell it: `gate`, `up`, `down`, `gate_up`.
    pub const fn name(self) -> &'static str {
        match self {
            Projection::Gate => "gate",
            Projection::Up => "up",
            Projection::Down => "down",
            Projection::GateUp => "gate_up",
        }
    }
}
