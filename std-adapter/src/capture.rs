//! Routing capture: the router's top-k expert ids of each layer for the current step, as a
//! runtime reports them.

use std::collections::BTreeMap;
use std::fmt;

/// An id that cannot be an expert id.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum CaptureError {
    /// An f32-encoded id that is NaN, infinite, negative, not a whole number or not below 2^32.
    NotAnId {
        /// The layer.
        layer: usize,
        /// Position of the id in the call's slice.
        position: usize,
        /// The value.
        value: f32,
    },
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotAnId { layer, position, value } => {
                write!(f, "layer {layer}: id {value} at position {position} is not a non-negative whole number")
            }
        }
    }
}

impl std::error::Error for CaptureError {}

/// The routing ids of one step, per layer (flat, token-major), reused from step to step.
///
/// Ids at or past a layer's expert count are kept: the pool counts them as invalid.
#[derive(Debug, Clone, Default)]
pub struct RoutingCapture {
    layers: BTreeMap<usize, Vec<u32>>,
}

impl RoutingCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every layer's ids, keeping the storage for the next step.
    pub fn clear(&mut self) {
        self.layers.values_mut().for_each(Vec::clear);
    }

    fn layer_mut(&mut self, layer: usize) -> &mut Vec<u32> {
        self.layers.entry(layer).or_default()
    }

    /// Appends `ids` to layer `layer`'s ids of this step.
    pub fn record(&mut self, layer: usize, ids: &[u32]) {
        self.layer_mut(layer).extend_from_slice(ids);
    }

    /// Appends f32-encoded ids (as some runtimes emit their top-k indices) to layer `layer`.
    ///
    /// # Errors
    /// [`CaptureError::NotAnId`] for the first value that is NaN, infinite, negative, fractional
    /// or above `u32::MAX`; nothing of this call is kept then.
    pub fn record_f32(&mut self, layer: usize, ids: &[f32]) -> Result<(), CaptureError> {
        let ids_of_layer = self.layer_mut(layer);
        let before = ids_of_layer.len();
        for (position, &value) in ids.iter().enumerate() {
            let valid = value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < u32::MAX as f32;
            if !valid {
                ids_of_layer.truncate(before);
                return Err(CaptureError::NotAnId { layer, position, value });
            }
            ids_of_layer.push(value as u32);
        }
        Ok(())
    }

    /// Layer `layer`'s ids of this step (empty when none were recorded).
    pub fn ids(&self, layer: usize) -> &[u32] {
        self.layers.get(&layer).map_or(&[], Vec::as_slice)
    }

    /// The layers with ids this step, ascending.
    pub fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.iter().filter(|(_, ids)| !ids.is_empty()).map(|(&layer, _)| layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_per_layer_and_f32_ids_are_checked() {
        let mut c = RoutingCapture::new();
        c.record(2, &[1, 5]);
        c.record(2, &[7]);
        c.record_f32(0, &[3.0, 0.0]).unwrap();
        assert_eq!((c.ids(0), c.ids(1), c.ids(2)), (&[3, 0][..], &[][..], &[1, 5, 7][..]));
        for bad in [f32::NAN, -1.0, 2.5, f32::INFINITY, 5e9] {
            let err = c.record_f32(0, &[4.0, bad]).unwrap_err();
            assert!(matches!(err, CaptureError::NotAnId { layer: 0, position: 1, .. }), "{bad}");
            assert_eq!(c.ids(0), &[3, 0], "a refused call keeps nothing");
        }
        assert_eq!(c.layers().collect::<Vec<_>>(), [0, 2]);
        c.record(usize::MAX, &[1]);
        assert_eq!(c.ids(usize::MAX), &[1]);
        c.clear();
        assert!(c.ids(2).is_empty());
        assert_eq!(c.layers().count(), 0);
    }
}
