//! `--warm-from PROFILE`: the warm start `simulate` and `tune` replay every policy from.

use std::path::Path;

use expertslab_std::trace::{Trace, WarmStart};

use crate::error::CliError;
use crate::replay_args::read_trace;

/// The warm start for replaying `trace`: each layer's hottest experts in the profile at
/// `profile`, or none (every layer starts as `--cold` or the default says).
///
/// # Errors
/// The profile cannot be read, or its expert count is not the trace's (its ids would name other
/// experts).
pub fn load(profile: Option<&Path>, trace: &Trace) -> Result<WarmStart, CliError> {
    let Some(path) = profile else { return Ok(WarmStart::new()) };
    let profile = read_trace(path)?;
    let (theirs, ours) = (profile.header().experts, trace.header().experts);
    if theirs != ours {
        return Err(CliError::unusable(
            path,
            format!("the profile has {theirs} experts per layer, the trace {ours}: a warm start needs the same model"),
        ));
    }
    Ok(WarmStart::hottest(&profile))
}
