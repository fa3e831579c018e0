//! # expertslab-cuda
//!
//! GPU fast memory for expertslab.
