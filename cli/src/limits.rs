//! The sizes the command line takes, checked before anything is allocated or written: against
//! the library's limits (experts per layer, ids per step) and against the memory a command may
//! plan for, computed from its flags up front. Each error names the flags that set the size.

use expertslab_std::{MAX_EXPERTS, MAX_STEP_IDS};

use crate::error::CliError;
use crate::units::format_size;

/// Memory assumed when the system tells nothing of it.
const FALLBACK_MEMORY: u64 = 8 << 30;

/// The memory a command may plan for: half the least of the machine's memory, its control
/// group's limit and the process's address-space limit (those the system tells; Linux), or half
/// of 8 GiB when it tells none. The other half is left to what a plan does not count (the
/// program, the allocator, buffers, threads).
pub fn memory_budget() -> u64 {
    let known = [mem_total(), cgroup_limit(), address_space_limit()].into_iter().flatten().min();
    known.unwrap_or(FALLBACK_MEMORY) / 2
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The control group's memory limit (v2 `memory.max`, or v1 `memory.limit_in_bytes`).
fn cgroup_limit() -> Option<u64> {
    ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok()?.trim().parse().ok())
        .min()
}

/// The soft address-space limit of this process (`ulimit -v`, `prlimit --as`), from
/// `/proc/self/limits`.
fn address_space_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The product of `factors`; `None` past `u64::MAX`.
pub fn product(factors: &[u64]) -> Option<u64> {
    factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f))
}

/// The sum of `terms`; `None` past `u64::MAX` or when a term is.
pub fn sum(terms: &[Option<u64>]) -> Option<u64> {
    terms.iter().try_fold(0u64, |acc, &t| acc.checked_add(t?))
}

/// A count as `u64` (every `usize` fits on the platforms the command runs on; saturates
/// otherwise).
pub fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Refuses more experts per layer than a pool holds ([`MAX_EXPERTS`]): no replay of a trace
/// with more could run. `flag` is the option that gave them.
///
/// # Errors
/// [`CliError::Usage`] naming `flag`.
pub fn experts(flag: &str, experts: u64) -> Result<(), CliError> {
    if experts > wide(MAX_EXPERTS) {
        return Err(CliError::Usage(format!(
            "{flag} {experts}: at most {MAX_EXPERTS} experts per layer (the most a pool, and so a replay, takes)"
        )));
    }
    Ok(())
}

/// Refuses a step of more ids than a pool takes ([`MAX_STEP_IDS`]). `what` names the flags
/// whose product `ids` is (`None`: past `u64::MAX`).
///
/// # Errors
/// [`CliError::Usage`] naming `what`.
pub fn step_ids(what: &str, ids: Option<u64>) -> Result<(), CliError> {
    match ids {
        Some(ids) if ids <= wide(MAX_STEP_IDS) => Ok(()),
        Some(ids) => {
            Err(CliError::Usage(format!("{what}: {ids} ids in one step; a pool takes at most {MAX_STEP_IDS} a step")))
        }
        None => Err(CliError::Usage(format!(
            "{what}: more than {} ids in one step; a pool takes at most {MAX_STEP_IDS} a step",
            u64::MAX
        ))),
    }
}

/// Refuses a plan of `bytes` of memory (`None`: past `u64::MAX`) above [`memory_budget`].
/// `what` says what needs it, naming the flags that set its size.
///
/// # Errors
/// [`CliError::Usage`] naming `what`.
pub fn memory(what: &str, bytes: Option<u64>) -> Result<(), CliError> {
    let budget = memory_budget();
    let need = match bytes {
        Some(bytes) if bytes <= budget => return Ok(()),
        Some(bytes) => format_size(bytes),
        None => format!("more than {}", format_size(u64::MAX)),
    };
    Err(CliError::Usage(format!(
        "{what} needs {need} of memory; a command plans for at most {} here (half of what this machine and \
         process may use)",
        format_size(budget)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_sums_stop_at_u64() {
        assert_eq!(product(&[2, 3, 7]), Some(42));
        assert_eq!(product(&[u64::MAX, 2]), None);
        assert_eq!(sum(&[Some(1), Some(2)]), Some(3));
        assert_eq!(sum(&[Some(u64::MAX), Some(1)]), None);
        assert_eq!(sum(&[Some(1), None]), None);
    }

    #[test]
    fn limits_name_the_flag() {
        assert!(experts("--experts", wide(MAX_EXPERTS)).is_ok());
        let err = experts("--experts", 4_294_967_295).unwrap_err().to_string();
        assert!(err.starts_with("--experts 4294967295: at most 65535"), "{err}");
        assert!(step_ids("--tokens", Some(wide(MAX_STEP_IDS))).is_ok());
        assert!(step_ids("--tokens 1000000000", Some(1_000_000_000)).unwrap_err().to_string().contains("--tokens"));
        assert!(step_ids("--tokens", None).is_err());
        assert!(memory("a plan", Some(1)).is_ok());
        let err = memory("--layers 7", None).unwrap_err().to_string();
        assert!(err.starts_with("--layers 7 needs more than 16.00 EiB of memory"), "{err}");
        assert!(memory_budget() > 0);
    }
}
