//! Expert stores: every MoE layer's projection stacks as [`SharedBytes`], cheap to clone across
//! threads and runtimes, usable as the core's [`ExpertSource`], [`StackSource`] and
//! [`LayeredSource`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use expertslab::gguf::{GgufModel, Placement};
use expertslab::{
    ExpertLayout, ExpertSource, LayerStacks, LayeredSource, LayoutError, Projection, StackBytes, StackLayout,
    StackSource,
};

use crate::bytes::SharedBytes;
use crate::error::Error;

/// One projection stack of a store: in one piece, or one slab per expert where the model file
/// keeps each expert in a tensor of its own. Expert slabs are always served from where they lie
/// (for a memory-mapped file, the mapping); a stack kept per expert is gathered into one aligned
/// copy only when a whole stack is asked for ([`StackSource::stack`]), once, and shared by
/// every clone.
#[derive(Debug, Clone)]
pub enum StoredStack {
    /// The whole `[experts, rows, cols]` stack in one piece.
    Whole(SharedBytes),
    /// One slab per expert, in expert order.
    PerExpert {
        /// Expert `e`'s slab is `slabs[e]`.
        slabs: Arc<[SharedBytes]>,
        /// The gathered stack, made on the first whole-stack request.
        gathered: Arc<OnceLock<SharedBytes>>,
    },
}

impl StoredStack {
    /// A stack kept as one slab per expert.
    pub fn per_expert(slabs: Vec<SharedBytes>) -> Self {
        Self::PerExpert { slabs: slabs.into(), gathered: Arc::default() }
    }

    /// Whether the whole stack exists in one piece (given, or gathered by an earlier request).
    pub fn is_whole(&self) -> bool {
        match self {
            Self::Whole(_) => true,
            Self::PerExpert { gathered, .. } => gathered.get().is_some(),
        }
    }
}

impl From<SharedBytes> for StoredStack {
    fn from(bytes: SharedBytes) -> Self {
        Self::Whole(bytes)
    }
}

impl StackBytes for StoredStack {
    fn check(&self, layout: &StackLayout) -> Result<(), LayoutError> {
        match self {
            Self::Whole(bytes) => layout.check_stack(bytes.as_bytes()),
            Self::PerExpert { slabs, .. } => {
                if slabs.len() != layout.experts() {
                    return Err(LayoutError::LengthMismatch { expected: layout.experts(), actual: slabs.len() });
                }
                let expected = layout.expert_bytes();
                match slabs.iter().find(|slab| slab.len() != expected) {
                    Some(slab) => Err(LayoutError::LengthMismatch { expected, actual: slab.len() }),
                    None => Ok(()),
                }
            }
        }
    }

    fn expert_slab(&self, layout: &StackLayout, expert: usize) -> Result<&[u8], LayoutError> {
        match self {
            Self::Whole(bytes) => layout.expert_slab(bytes.as_bytes(), expert),
            Self::PerExpert { slabs, .. } => slabs
                .get(expert)
                .map(SharedBytes::as_bytes)
                .ok_or(LayoutError::ExpertOutOfRange { expert, experts: slabs.len() }),
        }
    }

    fn whole(&self, _layout: &StackLayout) -> Result<&[u8], LayoutError> {
        match self {
            Self::Whole(bytes) => Ok(bytes.as_bytes()),
            Self::PerExpert { slabs, gathered } => Ok(gathered
                .get_or_init(|| {
                    SharedBytes::copy_from(&slabs.iter().flat_map(SharedBytes::as_bytes).copied().collect::<Vec<u8>>())
                })
                .as_bytes()),
        }
    }
}

/// The expert weights of a model: one [`LayerStacks`] of [`StoredStack`]s per MoE layer, by
/// layer index. Cloning shares every stack.
#[derive(Debug, Clone, Default)]
pub struct ExpertStore {
    layers: BTreeMap<usize, LayerStacks<StoredStack>>,
}

impl ExpertStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets layer `layer`'s stacks (whole stacks as [`SharedBytes`], or [`StoredStack`]s),
    /// returning the ones it replaces.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] when a converted stack no longer fits its layout (never
    /// for [`SharedBytes`] or [`StoredStack`]); the store is unchanged then.
    pub fn insert<B: Into<StoredStack> + StackBytes>(
        &mut self,
        layer: usize,
        stacks: LayerStacks<B>,
    ) -> Result<Option<LayerStacks<StoredStack>>, LayoutError> {
        let stacks = stacks.map(Into::into)?;
        Ok(self.layers.insert(layer, stacks))
    }

    /// Layer `layer`'s stacks.
    pub fn layer(&self, layer: usize) -> Option<&LayerStacks<StoredStack>> {
        self.layers.get(&layer)
    }

    /// Number of MoE layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the store has no layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The stores of a GGUF model whose bytes are shared: expert tensors are handed out as
    /// slices of the same bytes (no copy, also of a memory map), stacked ones whole and those
    /// stored one tensor per expert as one slab per expert (see [`StoredStack`]). Layer indexes
    /// are block numbers.
    ///
    /// # Errors
    /// [`LayoutError`] when a range reaches past the bytes (not for a model built from them).
    pub fn from_gguf(model: &GgufModel<SharedBytes>) -> Result<Self, LayoutError> {
        let bytes = model.data();
        let mut store = Self::new();
        for layer in model.moe().layers() {
            let mut stacks = Vec::with_capacity(layer.placements().len());
            for placement in layer.placements() {
                stacks.push(match placement {
                    Placement::Stacked(range) => StoredStack::Whole(bytes.slice(range.clone())?),
                    Placement::PerExpert(ranges) => StoredStack::per_expert(
                        ranges.iter().map(|range| bytes.slice(range.clone())).collect::<Result<_, _>>()?,
                    ),
                });
            }
            store.layers.insert(layer.block(), LayerStacks::new(layer.layout().clone(), &stacks)?);
        }
        Ok(store)
    }

    /// Opens a GGUF file through a read-only memory map: see [`open_gguf`].
    ///
    /// # Errors
    /// As [`open_gguf`] and [`ExpertStore::from_gguf`].
    pub fn open_gguf(path: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(Self::from_gguf(&open_gguf(path)?)?)
    }

    fn weights(&self, layer: usize) -> Result<&LayerStacks<StoredStack>, LayoutError> {
        self.layers.get(&layer).ok_or(LayoutError::LayerOutOfRange { layer, layers: self.layers.len() })
    }
}

/// Opens a GGUF model file through a read-only memory map and locates its MoE layers; the
/// weights stay in the file until copied into slots. The file must stay unchanged while mapped
/// (see [`SharedBytes::map_file`]).
///
/// # Errors
/// [`Error::Io`] naming the path (also when it is not a regular file, as a directory, a device,
/// a pipe, or when it is empty, as a `/proc` file reads), [`Error::Gguf`] naming what is wrong
/// and where.
pub fn open_gguf(path: impl AsRef<Path>) -> Result<GgufModel<SharedBytes>, Error> {
    let path = path.as_ref();
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    // Looked at before opening: opening a pipe for reading waits for a writer.
    regular_file(&std::fs::metadata(path).map_err(io)?).map_err(io)?;
    let file = File::open(path).map_err(io)?;
    regular_file(&file.metadata().map_err(io)?).map_err(io)?;
    let bytes = SharedBytes::map_file(&file).map_err(io)?;
    Ok(GgufModel::new(bytes)?)
}

/// A regular file that is not empty: a model file, which can be mapped; what it is otherwise.
fn regular_file(metadata: &std::fs::Metadata) -> std::io::Result<()> {
    let kind = metadata.file_type();
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        if metadata.len() == 0 {
            let empty = "the file is empty (a GGUF model starts with a header; /proc and /sys files read as empty)";
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, empty));
        }
        return Ok(());
    } else {
        special_file(&kind)
    };
    let message = format!("not a regular file but {what}; a model must be a file that can be mapped");
    Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, message))
}

/// What a file that is neither a directory nor a regular file is.
#[cfg(unix)]
fn special_file(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a pipe"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// What a file that is neither a directory nor a regular file is.
#[cfg(not(unix))]
fn special_file(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

impl ExpertSource for ExpertStore {
    type Error = LayoutError;

    fn expert(&self, layer: usize, projection: Projection, expert: usize) -> Result<&[u8], LayoutError> {
        self.weights(layer)?.slab(projection, expert)
    }
}

impl StackSource for ExpertStore {
    type Error = LayoutError;

    fn stack(&self, layer: usize, projection: Projection) -> Result<&[u8], LayoutError> {
        self.weights(layer)?.stack(projection)
    }
}

impl LayeredSource for ExpertStore {
    fn moe_layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.keys().copied()
    }

    fn layer_layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.layers.get(&layer).map(LayerStacks::layout)
    }
}
