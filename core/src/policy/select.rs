//! Bounded selection and in-place ordering on one binary-heap sift, shared by the policies: no
//! allocation, and small code (a heap sort instead of `slice::sort`, whose copies cost kilobytes
//! of `.text` on a microcontroller).

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

/// Arranges `heap` with the worst item at the root.
fn heapify<T: Copy>(heap: &mut [T], better: &impl Fn(&T, &T) -> bool) {
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
    }
}
