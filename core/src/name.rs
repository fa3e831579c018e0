//! GGUF tensor names of expert stacks, formatted without the heap.

use core::fmt::Write;

use crate::layout::Projection;

/// Capacity of a [`TensorName`]: ggml's tensor-name limit (`GGML_MAX_NAME`).
pub const MAX_NAME_LEN: usize = 64;

/// A tensor name in a fixed buffer.
pub type TensorName = heapless::String<MAX_NAME_LEN>;

/// The GGUF name of layer `layer`'s `projection` stack: `blk.{layer}.ffn_{projection}_exps.weight`.
pub fn stack_name(layer: usize, projection: Projection) -> TensorName {
    let mut name = TensorName::new();
    // The longest name, "blk." + 20 digits + ".ffn_gate_up_exps.weight", is 48 bytes: the write
    // always fits.
    let _ = write!(name, "blk.{layer}.ffn_{}_exps.weight", projection.name());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_gguf() {
        assert_eq!(stack_name(0, Projection::Gate).as_str(), "blk.0.ffn_gate_exps.weight");
        assert_eq!(stack_name(17, Projection::Down).as_str(), "blk.17.ffn_down_exps.weight");
        assert_eq!(stack_name(3, Projection::GateUp).as_str(), "blk.3.ffn_gate_up_exps.weight");
        let longest = stack_name(usize::MAX, Projection::GateUp);
        assert_eq!(longest.as_str(), "blk.18446744073709551615.ffn_gate_up_exps.weight");
    }
}
