//! The error every subcommand returns: printed as one `error: ...` line, exit status 1.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a subcommand failed.
#[derive(Debug)]
pub enum CliError {
    /// The model file could not be opened, parsed or laid out.
    Model {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: expertslab_std::Error,
    },
    /// The model is valid but gives the subcommand nothing to work on.
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The arguments, valid one by one, do not work together.
    Usage(String),
    /// A run failed after its arguments were accepted: a pool or offloader step, the host FFN,
    /// a replay, the GPU.
    Run(String),
    /// A check the command makes of its own results failed (the demo's offloaded output differs
    /// from the all-resident output).
    Check(String),
    /// Writing the output failed.
    Output(io::Error),
}

impl CliError {
    /// A failure about the model at `path`.
    pub fn model(path: &Path, source: impl Into<expertslab_std::Error>) -> Self {
        Self::Model { path: path.to_path_buf(), source: source.into() }
    }

    /// Reading or writing the file at `path` failed.
    pub fn io(path: &Path, source: io::Error) -> Self {
        Self::model(path, expertslab_std::Error::Io { path: path.to_path_buf(), source })
    }

    /// The model at `path` cannot be used, for `reason`.
    pub fn unusable(path: &Path, reason: impl Into<String>) -> Self {
        Self::Unusable { path: path.to_path_buf(), reason: reason.into() }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // I/O errors already name the path.
            Self::Model { source: source @ expertslab_std::Error::Io { .. }, .. } => write!(f, "{source}"),
            Self::Model { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Unusable { path, reason } => write!(f, "{}: {reason}", path.display()),
            Self::Usage(reason) | Self::Run(reason) | Self::Check(reason) => f.write_str(reason),
            Self::Output(e) => write!(f, "writing the output: {e}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Model { source, .. } => Some(source),
            Self::Unusable { .. } | Self::Usage(_) | Self::Run(_) | Self::Check(_) => None,
            Self::Output(e) => Some(e),
        }
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        Self::Output(e)
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        Self::Output(e.into())
    }
}
