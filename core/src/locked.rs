//! A pool behind a spin lock, for execution contexts without std (a main loop and its
//! interrupt handlers).
//!
//! On a microcontroller the main loop may run refreshes while an interrupt handler (a DMA
//! completion, a timer) serves or commits. [`LockedPool`] wraps the state in a
//! [`spin::Mutex`]. An interrupt handler must never spin on a lock its own core holds, so it uses
//! [`LockedPool::try_with`], which gives up instead of waiting; threads and the main loop use
//! [`LockedPool::with`]. With std, wrap it in an `Arc` (or use a `std::sync::Mutex`).

use spin::Mutex;

use crate::pool::ExpertPool;

/// Pool state behind a spin lock, shareable by reference (`static`, `Arc`, …).
#[derive(Debug, Default)]
pub struct LockedPool<T = ExpertPool> {
    inner: Mutex<T>,
}

impl<T> LockedPool<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self { inner: Mutex::new(value) }
    }

    /// Runs `f` with exclusive access, spinning until the lock is free.
    ///
    /// Never call it from an interrupt handler that may have preempted a holder on the same
    /// core: it would spin forever. Use [`LockedPool::try_with`] there.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.inner.lock())
    }

    /// Runs `f` with exclusive access if the lock is free now; `None` when it is held.
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.inner.try_lock().map(|mut guard| f(&mut guard))
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolConfig;

    #[test]
    fn threads_lose_no_update_and_try_with_gives_up_while_held() {
        // Fewer rounds under Miri, which runs every thread interleaving slowly.
        const ROUNDS: u64 = if cfg!(miri) { 20 } else { 500 };
        let shared = LockedPool::new(ExpertPool::new(PoolConfig::new(8, 2)).unwrap());
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let shared = &shared;
                scope.spawn(move || {
                    for _ in 0..ROUNDS {
                        shared.with(|pool| pool.serve(&[t, t + 4, 99]));
                    }
                });
            }
        });
        let stats = shared.with(|pool| *pool.stats());
        assert_eq!(stats.served.misses, 4 * ROUNDS * 2);
        assert_eq!(stats.served.invalid_ids, 4 * ROUNDS);
        shared.with(|_held| {
            assert!(shared.try_with(|pool| pool.serve(&[0])).is_none());
        });
        assert!(shared.try_with(|pool| pool.serve(&[0])).is_some());
        assert_eq!(shared.into_inner().stats().served.misses, 4 * ROUNDS * 2 + 1);
    }
}
