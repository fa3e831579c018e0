//! Model files the subcommands read (`inspect`, `fit`, and the cost model's `--model`).

use std::path::Path;

use expertslab_std::gguf::GgufModel;
use expertslab_std::SharedBytes;

use crate::error::CliError;

/// Opens a GGUF model through a memory map; errors name the path.
pub fn open_model(path: &Path) -> Result<GgufModel<SharedBytes>, CliError> {
    expertslab_std::open_gguf(path).map_err(|e| CliError::model(path, e))
}
