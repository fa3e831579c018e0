//! Bounded selection and in-place ordering on one binary-heap sift, shared by the policies: no
//! allocation, and small code (a heap sort instead of `slice::sort`, whose copies cost kilobytes
//! of `.text` on a microcontroller). Beside it, [`threshold`]: selection of the largest integer
//! keys by bucket passes, in time linear in the keys.

/// Keeps the `cap` best items offered to `kept` so far, `better(a, b)` saying whether `a` ranks
/// above `b`. While filling, `kept` is a plain list; once full it is a binary heap with the worst
/// kept item at the root, which a better offer replaces. `kept` must have room for `cap` items
/// for this to allocate nothing.
pub(crate) fn keep_best<T: Copy>(kept: &mut alloc::vec::Vec<T>, cap: usize, item: T, better: impl Fn(&T, &T) -> bool) {
    if kept.len() < cap {
        kept.push(item);
        if kept.len() == cap {
            heapify(kept, &better);
        }
    } else if let Some(root) = kept.first_mut() {
        if better(&item, root) {
            *root = item;
            sift_down(kept, 0, &better);
        }
    }
}

/// Sorts `items` best first, in place, without allocating (a heap sort).
pub(crate) fn sort_best_first<T: Copy>(items: &mut [T], better: impl Fn(&T, &T) -> bool) {
    heapify(items, &better);
    for end in (1..items.len()).rev() {
        // The worst remaining item is at the root: move it behind the shrinking heap.
        items.swap(0, end);
        if let Some(heap) = items.get_mut(..end) {
            sift_down(heap, 0, &better);
        }
    }
}

/// Removes and returns the worst item of `heap`, arranged by [`heapify`] with the same `better`.
#[cfg(any(feature = "demand", test))]
pub(crate) fn pop_worst<T: Copy>(heap: &mut alloc::vec::Vec<T>, better: &impl Fn(&T, &T) -> bool) -> Option<T> {
    let last = heap.pop()?;
    let Some(root) = heap.first_mut() else { return Some(last) };
    let worst = core::mem::replace(root, last);
    sift_down(heap, 0, better);
    Some(worst)
}

/// Arranges `heap` with the worst item at the root.
pub(crate) fn heapify<T: Copy>(heap: &mut [T], better: &impl Fn(&T, &T) -> bool) {
    for i in (0..heap.len() / 2).rev() {
        sift_down(heap, i, better);
    }
}

/// Moves the item at `i` down until no child ranks below it (`better(parent, child)` holds).
fn sift_down<T: Copy>(heap: &mut [T], mut i: usize, better: &impl Fn(&T, &T) -> bool) {
    loop {
        let Some(left) = i.checked_mul(2).and_then(|d| d.checked_add(1)) else {
            return; // no child can exist that far out
        };
        let mut worst = i;
        for child in [left, left.saturating_add(1)] {
            if let (Some(c), Some(w)) = (heap.get(child), heap.get(worst)) {
                if better(w, c) {
                    worst = child;
                }
            }
        }
        if worst == i {
            return;
        }
        heap.swap(i, worst);
        i = worst;
    }
}

/// Buckets per pass of [`threshold`] (on the stack: 256 bytes).
const BUCKETS: usize = 64;

/// Where the `take` largest of the keys `keys()` yields lie, by bucket passes over the keys
/// (`keys` is called once per pass and must yield the same keys each time): returns
/// `Some((t, at_t))` when at least `take` keys are positive, so that they are every key above
/// `t` and `at_t` of the keys equal to `t` (`t` >= 1); `None` when every positive key is among
/// them. `sum` bounds the sum of the keys (the `take`-th largest is at most `sum / take`).
///
/// Each pass buckets the keys in the range still open into [`BUCKETS`] equal buckets and keeps
/// the bucket where the `take`-th largest falls, so there are `log64(sum / take)` passes or
/// fewer, each over all keys.
pub(crate) fn threshold<I: Iterator<Item = u32>>(
    keys: impl Fn() -> I,
    take: usize,
    sum: usize,
) -> Option<(u32, usize)> {
    let bound = u32::try_from(sum.checked_div(take)?).unwrap_or(u32::MAX);
    if bound == 0 {
        return None; // fewer than `take` keys can be positive
    }
    // The `take`-th largest positive key is in lo..=hi.
    let (mut lo, mut hi) = (1u32, bound);
    loop {
        let span = hi.saturating_sub(lo);
        let shift = u32::BITS.saturating_sub(span.leading_zeros()).saturating_sub(BUCKETS.trailing_zeros());
        let mut buckets = [0u32; BUCKETS];
        let mut above = 0usize;
        for key in keys() {
            if key > hi {
                above = above.saturating_add(1);
            } else if key >= lo {
                if let Some(b) = buckets.get_mut(((key.saturating_sub(lo)) >> shift) as usize) {
                    *b = b.saturating_add(1);
                }
            }
        }
        // How many keys of lo..=hi belong to the largest `take`.
        let mut need = take.checked_sub(above).filter(|&n| n > 0)?;
        let mut found = None;
        for (b, &n) in buckets.iter().enumerate().rev() {
            if n as usize >= need {
                found = Some(b as u32);
                break;
            }
            need = need.saturating_sub(n as usize);
        }
        // Too few keys of lo..=hi: only possible in the first pass, where every positive key is in.
        let b = found?;
        let start = lo.saturating_add(b << shift);
        if shift == 0 {
            return Some((start, need));
        }
        hi = hi.min(start.saturating_add((1u32 << shift).saturating_sub(1)));
        lo = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn keeps_the_best_and_sorts_them() {
        let mut kept = Vec::with_capacity(3);
        for v in [5, 1, 9, 3, 9, 7, 2] {
            keep_best(&mut kept, 3, v, |a: &i32, b: &i32| a > b);
        }
        sort_best_first(&mut kept, |a, b| a > b);
        assert_eq!(kept, [9, 9, 7]);
        let mut all = [4, 8, 1, 8, 0, 3];
        sort_best_first(&mut all, |a, b| a < b);
        assert_eq!(all, [0, 1, 3, 4, 8, 8]);
        let mut none: Vec<i32> = Vec::new();
        keep_best(&mut none, 0, 1, |a, b| a > b);
        assert!(none.is_empty());
        // A heap pops its worst item first.
        let mut heap = Vec::from([4, 8, 1, 8, 0, 3]);
        let higher = |a: &i32, b: &i32| a > b;
        heapify(&mut heap, &higher);
        let popped: Vec<i32> = core::iter::from_fn(|| pop_worst(&mut heap, &higher)).collect();
        assert_eq!(popped, [0, 1, 3, 4, 8, 8]);
    }

    /// The `take` largest keys by [`threshold`]: above it, and the first `at_t` equal to it.
    fn largest(keys: &[u32], take: usize) -> Vec<usize> {
        let sum = keys.iter().map(|&k| k as usize).sum();
        let (t, mut at_t) = threshold(|| keys.iter().copied(), take, sum).unwrap_or((1, usize::MAX));
        let mut out = Vec::new();
        for (i, &k) in keys.iter().enumerate() {
            if k > t || (k == t && at_t > 0) {
                at_t = at_t.saturating_sub(usize::from(k == t));
                out.push(i);
            }
        }
        out
    }

    #[test]
    fn threshold_selects_as_the_heap_does() {
        let mut seed = 7u64;
        for round in 0..400 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = 1 + (seed >> 33) as usize % 300;
            let spread = [3u64, 40, 5000, 1 << 20][round % 4];
            let keys: Vec<u32> = (0..n)
                .map(|i| {
                    let x = (seed >> 7).wrapping_add((i as u64).wrapping_mul(0x9E3779B97F4A7C15)) >> 20;
                    if x.is_multiple_of(5) {
                        0
                    } else {
                        (x % spread) as u32
                    }
                })
                .collect();
            for take in [1, 2, 7, n / 2 + 1, n, n + 3] {
                let mut kept = Vec::with_capacity(take);
                for (i, &k) in keys.iter().enumerate() {
                    if k > 0 {
                        keep_best(&mut kept, take, (k, i), |a: &(u32, usize), b| {
                            a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
                        });
                    }
                }
                let mut want: Vec<usize> = kept.iter().map(|&(_, i)| i).collect();
                want.sort_unstable();
                assert_eq!(largest(&keys, take), want, "take {take} of {keys:?}");
            }
        }
        assert_eq!(threshold(|| [5u32, 1].into_iter(), 0, 6), None);
    }
}
