//! # expertslab-std
//!
//! The std side of [`expertslab`]: for now the core re-exported, so desktop runtimes depend on
//! one crate. Shared stores, parallel migration and model files build on it.
//!
//! ```
//! use expertslab_std::{ExpertPool, PoolConfig};
//! let pool = ExpertPool::new(PoolConfig::new(8, 2)).unwrap();
//! assert_eq!(pool.slots(), 2);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use expertslab::*;
