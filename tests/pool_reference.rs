//! The pool against a plain reference model of TIDE placement, and its invariants, over random
//! routing traces.

use std::num::NonZeroU32;

use expertslab::{ExpertPool, InitialPlacement, MigrationPlan, PoolConfig, Schedule, Step};
use expertslab_tests::{commit_plan as commit, resident_set, started_pool, ReferenceServed, ReferenceTide};
use proptest::prelude::*;

/// A random layer: experts, slot count, warm or cold, and steps of ids (some out of range).
fn trace() -> impl Strategy<Value = (u32, usize, bool, Vec<Vec<u32>>)> {
    (1u32..40, 0usize..48, any::<bool>()).prop_flat_map(|(experts, slots, warm)| {
        let ids = prop::collection::vec(prop::collection::vec(0..experts + 3, 0..48), 1..24);
        (Just(experts), Just(slots), Just(warm), ids)
    })
}

fn build(experts: u32, slots: usize, warm: bool, schedule: Schedule) -> (ExpertPool, MigrationPlan) {
    let initial = if warm { InitialPlacement::Warm } else { InitialPlacement::Cold };
    started_pool(PoolConfig::new(experts as usize, slots).initial(initial).schedule(schedule))
}

/// Resident count within slot count, and the slot table a bijection between residents and occupied
/// slots, seen from both directions.
fn check_invariants(pool: &ExpertPool) {
    assert!(pool.resident() <= pool.slots());
    let residents: Vec<_> = pool.residents().collect();
    assert_eq!(residents.len(), pool.resident());
    for &(slot, expert) in &residents {
        assert_eq!(pool.slot_of(expert), Some(slot));
        assert_eq!(pool.expert_in(slot), Some(expert));
    }
    let by_expert = (0..pool.experts()).filter(|&e| pool.is_resident(e)).count();
    assert_eq!(by_expert, residents.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(expertslab_tests::cases(256)))]

    #[test]
    fn every_forward_matches_the_reference((experts, slots, warm, steps) in trace()) {
        let (mut pool, mut plan) = build(experts, slots, warm, Schedule::EveryForward);
        let mut reference = ReferenceTide::new(experts, slots, warm);
        prop_assert_eq!(resident_set(&pool), reference.resident.clone());
        for (s, ids) in steps.iter().enumerate() {
            let demotions_before = pool.stats().demotions;
            prop_assert!(pool.plan_step(Step::decode(s as u64), ids, &mut plan).unwrap());
            let expected = reference.refresh(ids);
            let promoted: Vec<u32> = plan.promotions().iter().map(|p| u32::from(p.expert)).collect();
            prop_assert_eq!(&promoted, &expected.promoted);
            let demoted: Vec<u32> = plan.promotions().iter().filter_map(|p| p.demoted).map(u32::from).collect();
            prop_assert_eq!(&demoted, &expected.demoted);
            prop_assert_eq!(pool.stats().demotions - demotions_before, expected.demoted.len() as u64);
            commit(&mut pool, &plan);
            check_invariants(&pool);
            prop_assert_eq!(resident_set(&pool), reference.resident.clone());
            // Every target is resident after the refresh: the refreshed placement serves its step.
            for t in &expected.targets {
                prop_assert!(pool.is_resident(*t as usize));
            }
            // Hits are the pairs of experts resident before the refresh; the promoted experts'
            // pairs are served by copy, the others' in place.
            let served = pool.serve(ids);
            prop_assert_eq!(ReferenceServed::of(&served), reference.serve(ids));
            prop_assert_eq!(served.invalid_ids as usize, ids.iter().filter(|&&id| id >= experts).count());
        }
    }

    #[test]
    fn schedules_refresh_only_when_due(
        (experts, slots, warm, steps) in trace(),
        interval in 1u32..5,
        prefill_every in 2usize..7,
        restart in any::<bool>(),
    ) {
        // With `restart`, the step counter restarts at each prefill block, as a diffusion model's
        // denoise counter does: the schedule then counts within the block.
        let interval_steps = NonZeroU32::new(interval).unwrap();
        let schedule =
            if restart { Schedule::EveryDenoiseSteps(interval_steps) } else { Schedule::EveryDecodeSteps(interval_steps) };
        let (mut pool, mut plan) = build(experts, slots, warm, schedule);
        let mut reference = ReferenceTide::new(experts, slots, warm);
        for (s, ids) in steps.iter().enumerate() {
            let index = if restart { s % prefill_every } else { s } as u64;
            let step = if s % prefill_every == 0 { Step::prefill(index) } else { Step::decode(index) };
            let due = step.prefill || index.is_multiple_of(u64::from(interval));
            let before = resident_set(&pool);
            prop_assert_eq!(pool.plan_step(step, ids, &mut plan).unwrap(), due);
            if due {
                reference.refresh(ids);
                commit(&mut pool, &plan);
            } else {
                prop_assert!(plan.is_empty());
                prop_assert_eq!(resident_set(&pool), before);
            }
            check_invariants(&pool);
            prop_assert_eq!(resident_set(&pool), reference.resident.clone());
            // Between refreshes every resident's pair hits; on a refresh the promoted experts'
            // pairs are served by copy.
            prop_assert_eq!(ReferenceServed::of(&pool.serve(ids)), reference.serve(ids));
        }
    }

    #[test]
    fn all_resident_never_moves((experts, _budget, _warm, steps) in trace()) {
        let (mut pool, mut plan) = build(experts, experts as usize, true, Schedule::EveryForward);
        for ids in &steps {
            pool.refresh(ids, &mut plan).unwrap();
            prop_assert!(plan.is_empty());
        }
        prop_assert_eq!(pool.stats().demotions, 0);
        prop_assert_eq!(pool.stats().promotions, u64::from(experts));
    }

    #[test]
    fn uncommitted_plans_leave_a_consistent_pool((experts, slots, warm, steps) in trace(), keep in 0usize..4) {
        // A runtime may commit only part of a plan (copies failed): the pool stays consistent and
        // later refreshes still agree with the invariants.
        let (mut pool, mut plan) = build(experts, slots, warm, Schedule::EveryForward);
        for ids in &steps {
            pool.refresh(ids, &mut plan).unwrap();
            for &p in plan.promotions().iter().take(keep) {
                pool.commit(p, 1).unwrap();
            }
            check_invariants(&pool);
        }
    }
}

/// A step longer than `MAX_STEP_IDS` is refused by every planning call and changes nothing. The
/// ids are one zeroed allocation the calls never read, so the operating system never backs it.
#[test]
#[cfg(target_pointer_width = "64")]
#[cfg_attr(miri, ignore = "a 2 GiB step")]
fn oversized_steps_are_refused_and_change_nothing() {
    use expertslab::{LayerPools, Policy, PoolError, MAX_STEP_IDS};
    let too_many = vec![0u32; MAX_STEP_IDS + 1];
    let refused: Result<(), _> = Err(PoolError::TooManyIds { ids: MAX_STEP_IDS + 1, max: MAX_STEP_IDS });
    for policy in [Policy::Tide, Policy::Lru] {
        let (mut pool, mut plan) = started_pool(PoolConfig::new(8, 3).policy(policy));
        let before = (resident_set(&pool), *pool.stats());
        let (prefill, decode) = (Step::prefill(0), Step::decode(1));
        assert_eq!(pool.refresh(&too_many, &mut plan), refused.map(|_| ()));
        assert_eq!(pool.plan_step(prefill, &too_many, &mut plan), refused.map(|_| true));
        assert_eq!(pool.plan_step(decode, &too_many, &mut plan), refused.map(|_| true));
        assert_eq!((resident_set(&pool), *pool.stats()), before, "{policy:?}");

        // Across layers: the first layer's good step is not planned either.
        let config = PoolConfig::new(8, 3).policy(policy);
        let mut layers = LayerPools::new(&[config.layer(0), config.layer(1)]).expect("two layers");
        let mut plans = layers.new_plans();
        let stats = layers.total_stats();
        let ids: [&[u32]; 2] = [&[1, 2], &too_many];
        assert_eq!(layers.plan_step(prefill, &ids, &mut plans), refused.map(|_| 0));
        assert_eq!(layers.total_stats(), stats);
        assert!(plans.iter().all(|p| p.is_empty()));
    }
}
