//! The FFN on its thread pool: work spawned on it, and its threads kept warm between calls.

use super::*;

#[test]
fn threads_kept_warm_stop_spinning_at_the_next_call() {
    use std::time::{Duration, Instant};
    let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
    let ffn = ExpertFfn::new(8, 4, Format::F32).unwrap().with_pool(pool.clone());
    let (gate, up, down) = (vec![0u8; 4 * 8 * 4], vec![0u8; 4 * 8 * 4], vec![0u8; 8 * 4 * 4]);
    let pairs = [PairSlabs { gate: &gate, up: &up, down: &down, token: 0 }];
    let mut part = [1.0f32; 8];
    // Kept warm for a minute, the threads take the next call's tasks at once.
    ffn.keep_warm(Duration::from_secs(60));
    let start = Instant::now();
    ffn.parts(&pairs, &[0.5; 8], &mut part).unwrap();
    assert_eq!(part, [0.0; 8]);
    // Every thread of the pool is free again: a broadcast reaches them all.
    assert_eq!(pool.broadcast(|ctx| ctx.index()).len(), 2);
    assert!(start.elapsed() < Duration::from_secs(30), "the spin ended with the call");
    // Without a call, the spin ends by its limit.
    ffn.keep_warm(Duration::from_millis(1));
    assert_eq!(pool.broadcast(|ctx| ctx.index()).len(), 2);
}

#[test]
fn threads_are_not_kept_warm_from_a_mark_work_has_passed() {
    use std::time::Duration;
    let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
    let ffn = ExpertFfn::new(8, 4, Format::F32).unwrap().with_pool(pool.clone());
    let mark = ffn.work_mark();
    assert_eq!(ffn.work_mark(), mark);
    // Work started after the mark.
    let (done, ran) = std::sync::mpsc::channel();
    ffn.spawn(move |_| done.send(()).unwrap());
    ran.recv_timeout(Duration::from_secs(30)).expect("the spawned job ran");
    assert_ne!(ffn.work_mark(), mark);
    // Kept warm without a limit from the old mark: no thread spins, so both of the pool's
    // threads meet (a spinning thread would hold one until the next work, which never comes).
    ffn.keep_warm_from(mark, Duration::MAX);
    let (met, meeting) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let barrier = std::sync::Barrier::new(2);
        pool.broadcast(|_| barrier.wait());
        met.send(()).unwrap();
    });
    meeting.recv_timeout(Duration::from_secs(30)).expect("both threads were free");
}

#[test]
fn spawned_pairs_match_the_pairs_computed_in_place() {
    let (hidden, ffn_width) = (8, 4);
    let ffn = ExpertFfn::new(hidden, ffn_width, Format::F32).unwrap();
    let bytes = |n: usize, seed: f32| -> Vec<u8> {
        (0..n).flat_map(|i| ((i as f32 * 0.37 + seed).sin() * 0.5).to_le_bytes()).collect()
    };
    let (gate, up, down) = (bytes(32, 1.0), bytes(32, 2.0), bytes(32, 3.0));
    let x: Vec<f32> = (0..hidden).map(|i| i as f32 * 0.1 - 0.3).collect();
    let mut here = vec![0.0f32; hidden];
    ffn.parts(&[PairSlabs { gate: &gate, up: &up, down: &down, token: 0 }], &x, &mut here).unwrap();
    let (done, result) = std::sync::mpsc::channel();
    ffn.spawn(move |ffn| {
        let mut there = vec![0.0f32; hidden];
        let r = ffn.parts(&[PairSlabs { gate: &gate, up: &up, down: &down, token: 0 }], &x, &mut there);
        done.send(r.map(|()| there)).unwrap();
    });
    assert_eq!(result.recv().unwrap().unwrap(), here);
}

#[test]
fn spawned_work_stops_the_spinning_on_any_pool() {
    use std::time::Duration;
    for threads in [1, 2, 3] {
        let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap());
        let ffn = ExpertFfn::new(8, 4, Format::F32).unwrap().with_pool(pool);
        // Kept warm without a limit the clock can count: only new work ends the spin.
        ffn.keep_warm(Duration::MAX);
        let (done, ran) = std::sync::mpsc::channel();
        ffn.spawn(move |_| done.send(()).unwrap());
        ran.recv_timeout(Duration::from_secs(30)).expect("the spawned job ran while the pool was kept warm");
    }
}
