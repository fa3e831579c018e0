use alloc::vec::Vec;

use super::*;
use crate::policy::Policy;
use crate::schedule::Mode;

fn pool(experts: usize, slots: usize, initial: InitialPlacement) -> ExpertPool {
    let mut pool = ExpertPool::new(PoolConfig::new(experts, slots).initial(initial)).unwrap();
    let mut plan = MigrationPlan::new(slots);
    pool.initial_plan(&mut plan);
    commit_all(&mut pool, &plan);
    pool
}

/// Every policy name builds a pool, except that without the `demand` feature each demand policy
/// is refused by name (and the pool's demand-only operations answer `PolicyMismatch`).
#[test]
fn demand_policies_are_built_only_with_their_feature() {
    for name in Policy::NAMES {
        let policy = Policy::from_name(name).unwrap();
        let built = ExpertPool::new(PoolConfig::new(8, 2).policy(policy));
        let shared = SharedSlotPool::new(2, PoolConfig::new(8, 2).policy(policy), 16);
        if cfg!(feature = "demand") || !policy.is_demand() {
            assert!(built.is_ok(), "{name}");
            assert_eq!(shared.is_ok(), policy.drives_shared_pool(), "{name}");
        } else {
            let refused = PoolError::PolicyNotBuilt { policy: name };
            assert_eq!(built.err(), Some(refused), "{name}");
            let shared_refused = if policy.drives_shared_pool() { refused } else { PoolError::PolicyMismatch };
            assert_eq!(shared.err(), Some(shared_refused), "{name}");
            assert_eq!(
                alloc::format!("{refused}"),
                alloc::format!("policy {name} is not built: enable expertslab's `demand` feature")
            );
        }
    }
    let mut tide = ExpertPool::new(PoolConfig::new(8, 2)).unwrap();
    let mut plan = MigrationPlan::new(2);
    assert_eq!(tide.prefetch(&[3], 1, |_, _| true, &mut plan), Err(PoolError::PolicyMismatch));
    assert_eq!(tide.load_future(&[1, 2]), Err(PoolError::PolicyMismatch));
}

#[test]
fn the_step_limit_is_inclusive() {
    assert_eq!(check_step(MAX_STEP_IDS), Ok(()));
    assert_eq!(check_step(MAX_STEP_IDS + 1), Err(PoolError::TooManyIds { ids: MAX_STEP_IDS + 1, max: MAX_STEP_IDS }));
}

fn commit_all(pool: &mut ExpertPool, plan: &MigrationPlan) {
    for &p in plan.promotions() {
        assert_eq!(pool.commit(p, 10), Ok(PromotionState::Pending));
    }
}

#[test]
fn slot_count_changes_demote_the_dropped_slots_and_keep_the_rest() {
    let policies = [Policy::Tide, Policy::Decay(crate::DecayConfig::default()), Policy::Lru, Policy::Lfu, Policy::Lru2];
    for policy in policies.into_iter().filter(|p| cfg!(feature = "demand") || !p.is_demand()) {
        let mut p = ExpertPool::new(PoolConfig::new(8, 4).policy(policy)).unwrap();
        let mut plan = MigrationPlan::new(4);
        p.initial_plan(&mut plan);
        commit_all(&mut p, &plan); // experts 0..4 in slots 0..4

        // Shrink to 2: the experts of slots 2 and 3 are demoted, the others stay put.
        assert_eq!(p.set_slots(2), 2, "{policy:?}");
        assert_eq!(p.residents().collect::<Vec<_>>(), [(0, 0), (1, 1)]);
        assert_eq!((p.slots(), p.resident(), p.stats().demotions), (2, 2, 2));
        assert!(!p.is_resident(2) && !p.is_resident(3));
        assert_eq!(p.set_slots(2), 0, "no change, nothing demoted");

        // Grow past the expert count: clamped; the new slots are free and a refresh fills
        // them around the residents, which keep their slots.
        assert_eq!(p.set_slots(100), 0);
        assert_eq!((p.slots(), p.resident()), (8, 2));
        let mut plan = MigrationPlan::new(p.slots());
        let ids: Vec<u32> = (0..8).collect();
        p.plan_step(Step { index: 1, prefill: true, mode: Mode::Refresh }, &ids, &mut plan).unwrap();
        assert!(plan.promotions().iter().all(|m| m.slot >= 2 && m.demoted.is_none()), "{policy:?}");
        commit_all(&mut p, &plan);
        assert_eq!(p.resident(), 8, "{policy:?}: every expert fits once the slot count allows");
        assert_eq!((p.slot_of(0), p.slot_of(1)), (Some(0), Some(1)));
        // Experts 0 and 1 were resident before the step: hits. The six copied in for it (by a
        // refresh or by demand admissions) are misses served by copy, under every policy.
        let served = p.serve(&ids);
        assert_eq!((served.hits, served.served_by_copy, served.served_in_place), (2, 6, 0), "{policy:?}");
        assert_eq!(served.misses, 6);
        // Served again without a planned step, every resident hits.
        assert_eq!(p.serve(&ids).hits, 8, "{policy:?}");

        // Down to nothing: everything from slow memory.
        assert_eq!(p.set_slots(0), 8);
        assert_eq!((p.slots(), p.resident()), (0, 0));
        assert_eq!(p.serve(&ids).misses, 8);
    }
}

#[test]
fn plans_from_before_a_slot_count_change_are_refused() {
    let mut p = pool(8, 4, InitialPlacement::Cold);
    let mut plan = MigrationPlan::new(4);
    p.refresh(&[4, 5, 6, 7], &mut plan).unwrap();
    let into_slot_3 = *plan.promotions().iter().find(|m| m.slot == 3).unwrap();
    assert_eq!(p.check_planned(&plan, into_slot_3), Ok(PromotionState::Pending));
    // Shrink, then grow back: slot 3 exists again, but its memory may have been reused.
    p.set_slots(2);
    p.set_slots(4);
    let changed = Err(PlanError::SlotsChanged { plan: 0, pool: 2 });
    for &promotion in plan.promotions() {
        assert_eq!(p.check_planned(&plan, promotion), changed);
    }
    // A plan made now is accepted.
    p.refresh(&[4, 5, 6, 7], &mut plan).unwrap();
    assert_eq!(plan.slots_generation(), 2);
    assert!(plan.promotions().iter().all(|&m| p.check_planned(&plan, m) == Ok(PromotionState::Pending)));
}

#[test]
fn construction_checks_and_clamps() {
    assert_eq!(ExpertPool::new(PoolConfig::new(0, 1)).unwrap_err(), PoolError::NoExperts);
    assert!(matches!(ExpertPool::new(PoolConfig::new(MAX_EXPERTS + 1, 1)), Err(PoolError::TooManyExperts { .. })));
    assert_eq!(
        (PoolConfig::new(4, 9).slots(), PoolConfig::new(4, 3).slots(), PoolConfig::new(4, 0).slots()),
        (4, 3, 0)
    );
    let p = ExpertPool::new(PoolConfig::new(4, 9)).unwrap();
    assert_eq!((p.slots(), p.resident()), (4, 0));
    let p = pool(4, 9, InitialPlacement::Warm);
    assert_eq!((p.slots(), p.resident()), (4, 4));
    let mut plan = MigrationPlan::new(4);
    p.initial_plan(&mut plan);
    assert!(plan.is_empty());
    let p = pool(8, 3, InitialPlacement::Warm);
    assert_eq!(p.residents().collect::<Vec<_>>(), [(0, 0), (1, 1), (2, 2)]);
    assert_eq!(pool(8, 3, InitialPlacement::Cold).resident(), 0);
}

#[test]
fn refresh_promotes_into_free_slots_then_demotes_coldest() {
    let mut p = pool(8, 3, InitialPlacement::Cold);
    let mut plan = MigrationPlan::new(3);
    p.refresh(&[5, 5, 2, 9, 5, 2], &mut plan).unwrap();
    let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.slot, m.demoted)).collect();
    assert_eq!(got, [(5, 0, None), (2, 1, None)]);
    commit_all(&mut p, &plan);
    // Both experts were copied in for this step: every valid id is a miss served by copy.
    let by_copy = ServeStats { hits: 0, misses: 5, served_by_copy: 5, served_in_place: 0, invalid_ids: 1 };
    assert_eq!(p.serve(&[5, 5, 2, 9, 5, 2]), by_copy);

    // 7 and 6 are new targets; 5 stays; 2 is a target too but only 3 fit: 7(3) 5(2) 6(2) 2(1).
    p.refresh(&[7, 7, 7, 5, 5, 6, 6, 2], &mut plan).unwrap();
    let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.slot, m.demoted)).collect();
    assert_eq!(got, [(7, 2, None), (6, 1, Some(2))]);
    assert_eq!(p.stats().demotions, 1);
    assert!(!p.is_resident(2) && p.expert_in(1).is_none());
    commit_all(&mut p, &plan);
    assert_eq!(p.residents().collect::<Vec<_>>(), [(0, 5), (1, 6), (2, 7)]);
    assert_eq!(p.stats().promotions, 4);
    assert_eq!(p.stats().bytes_promoted, 40);
}

#[test]
fn demotions_only_as_many_as_needed_and_coldest_first() {
    let mut p = pool(10, 4, InitialPlacement::Warm); // residents 0..4
    let mut plan = MigrationPlan::new(4);
    // Targets: 9 (2), 3 (1), 1 (1), 8 (1) → promotions 9, 8; demotion candidates among {0, 2}: both count 0 → 0 first.
    p.refresh(&[9, 3, 9, 1, 8], &mut plan).unwrap();
    let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.demoted)).collect();
    assert_eq!(got, [(9, Some(0)), (8, Some(2))]);
    // One target only: nothing demoted beyond the single promotion's need.
    let mut p = pool(10, 4, InitialPlacement::Warm);
    p.refresh(&[7, 7, 7], &mut plan).unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(p.resident(), 3);
    assert_eq!(p.stats().demotions, 1);
}

#[test]
fn all_resident_never_moves_and_masks_report_residency() {
    let mut p = pool(5, 5, InitialPlacement::Warm);
    let mut plan = MigrationPlan::new(5);
    p.refresh(&[4, 4, 0, 7], &mut plan).unwrap();
    assert!(plan.is_empty());
    assert_eq!(p.serve(&[4, 4, 0, 7]), ServeStats { hits: 3, invalid_ids: 1, ..ServeStats::default() });
    let mut p = pool(40, 2, InitialPlacement::Warm);
    let mut mask = [true; 41];
    p.resident_mask(&mut mask).unwrap();
    assert_eq!(mask.iter().filter(|&&m| m).count(), 3); // experts 0, 1, plus the untouched tail entry
    let mut bits = [u32::MAX; 3];
    p.resident_bits(&mut bits).unwrap();
    assert_eq!(bits, [0b11, 0, 0]);
    assert!(p.resident_bits(&mut [0; 1]).is_err());
    assert!(p.resident_mask(&mut [false; 39]).is_err());
    p.refresh(&[39, 39], &mut plan).unwrap();
    commit_all(&mut p, &plan);
    p.resident_bits(&mut bits).unwrap();
    assert_eq!(bits, [0b10, 1 << 7, 0]);
}

#[test]
fn commits_are_checked_and_idempotent() {
    let mut p = pool(4, 2, InitialPlacement::Warm);
    let promo = |expert, slot| Promotion { expert, slot, demoted: None };
    assert_eq!(p.commit(promo(0, 0), 1), Ok(PromotionState::Done));
    assert_eq!(p.commit(promo(0, 1), 1), Err(PlanError::AlreadyResident { expert: 0, slot: 0 }));
    assert_eq!(p.commit(promo(2, 1), 1), Err(PlanError::SlotOccupied { slot: 1, expert: 1 }));
    assert_eq!(p.commit(promo(4, 1), 1), Err(PlanError::ExpertOutOfRange { expert: 4, experts: 4 }));
    assert_eq!(p.commit(promo(2, 2), 1), Err(PlanError::SlotOutOfRange { slot: 2, slots: 2 }));
    assert_eq!(p.stats().promotions, 2);
}

#[test]
fn schedule_gates_refreshes() {
    let every2 = Schedule::EveryDecodeSteps(core::num::NonZeroU32::new(2).unwrap());
    let mut p = ExpertPool::new(PoolConfig::new(8, 2).schedule(every2).initial(InitialPlacement::Cold)).unwrap();
    let mut plan = MigrationPlan::new(2);
    assert_eq!(p.plan_step(Step::decode(1), &[3], &mut plan), Ok(false));
    assert!(plan.is_empty());
    assert_eq!(p.plan_step(Step::decode(2), &[3], &mut plan), Ok(true));
    assert_eq!(plan.len(), 1);
    assert_eq!(p.plan_step(Step::prefill(3), &[4], &mut plan), Ok(true));
    assert_eq!(p.stats().refreshes, 2);
}

#[test]
fn zero_slots_serve_everything_from_slow_memory() {
    let mut p = pool(4, 0, InitialPlacement::Warm);
    let mut plan = MigrationPlan::new(0);
    p.refresh(&[1, 2, 3], &mut plan).unwrap();
    assert!(plan.is_empty());
    let served = p.serve(&[1, 2, 3]);
    assert_eq!((served.misses, served.served_in_place, served.served_by_copy), (3, 3, 0));
}

#[test]
fn a_given_placement_fills_slots_in_list_order_and_skips_what_cannot_move() {
    let mut p = ExpertPool::new(PoolConfig::new(8, 3).initial(InitialPlacement::Cold)).unwrap();
    let mut plan = MigrationPlan::new(3);
    // The repeated 6 is skipped; entries past the slot count are ignored.
    p.placement_plan(&[6, 6, 2, 1], &mut plan).unwrap();
    let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.slot, m.demoted)).collect();
    assert_eq!(got, [(6, 0, None), (2, 2, None)]);
    commit_all(&mut p, &plan);
    // Placing again: what is resident stays, slot 1 is free for the list's second entry.
    p.placement_plan(&[6, 3, 2], &mut plan).unwrap();
    let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.slot)).collect();
    assert_eq!(got, [(3, 1)]);
    assert_eq!(p.placement_plan(&[1, 8], &mut plan), Err(PlanError::ExpertOutOfRange { expert: 8, experts: 8 }));
    assert!(plan.is_empty(), "nothing half planned");
    assert_eq!(p.placement_plan(&[70_000], &mut plan), Err(PlanError::ExpertOutOfRange { expert: 70_000, experts: 8 }));
    // The warm start is the list 0..slots.
    let warm = ExpertPool::new(PoolConfig::new(8, 3)).unwrap();
    let (mut a, mut b) = (MigrationPlan::new(3), MigrationPlan::new(3));
    warm.initial_plan(&mut a);
    warm.placement_plan(&[0, 1, 2], &mut b).unwrap();
    assert_eq!(a, b);
}

/// A fetch cap bounds a step's promotions, hottest first under TIDE and in serving order under
/// a demand policy; the misses left are served in place, and lifting the cap restores the rule.
#[test]
fn a_fetch_cap_bounds_a_step_s_promotions() {
    let step = crate::schedule::Step::decode(1);
    // TIDE on 4 slots, cold: the step's counts are 5:3, 6:2, 7:1.
    let mut tide = pool(8, 4, InitialPlacement::Cold);
    let mut plan = MigrationPlan::new(4);
    tide.set_fetch_cap(Some(1));
    assert_eq!(tide.fetch_cap(), Some(1));
    let ids = [7, 5, 6, 5, 6, 5];
    tide.plan_step(step, &ids, &mut plan).unwrap();
    assert_eq!(plan.promotions().iter().map(|p| p.expert).collect::<Vec<_>>(), [5], "the hottest only");
    commit_all(&mut tide, &plan);
    let served = tide.serve(&ids);
    assert_eq!((served.served_by_copy, served.served_in_place), (3, 3));
    tide.set_fetch_cap(None);
    tide.plan_step(crate::schedule::Step::decode(2), &ids, &mut plan).unwrap();
    assert_eq!(plan.len(), 2, "no cap: 6 and 7 too");
    #[cfg(feature = "demand")]
    {
        let mut lru =
            ExpertPool::new(PoolConfig::new(8, 4).policy(Policy::Lru).initial(InitialPlacement::Cold)).unwrap();
        lru.set_fetch_cap(Some(2));
        lru.plan_step(step, &ids, &mut plan).unwrap();
        assert_eq!(plan.promotions().iter().map(|p| p.expert).collect::<Vec<_>>(), [7, 5], "serving order");
        commit_all(&mut lru, &plan);
        let served = lru.serve(&ids);
        assert_eq!((served.served_by_copy, served.served_in_place), (4, 2));
        let mut shared = SharedSlotPool::new(2, PoolConfig::new(8, 4).policy(Policy::Lru), 16).unwrap();
        shared.set_fetch_cap(Some(0));
        shared.plan_step(0, step, &ids, &mut plan).unwrap();
        assert!(plan.is_empty(), "a cap of 0 promotes nothing");
    }
}

/// Plans, migrates and serves one step of `ids`; the serve's counters.
#[cfg(feature = "demand")]
fn demand_step(pool: &mut ExpertPool, index: u64, ids: &[u32], plan: &mut MigrationPlan) -> ServeStats {
    pool.plan_step(crate::schedule::Step::prefill(index), ids, plan).unwrap();
    commit_all(pool, plan);
    pool.serve(ids)
}

#[cfg(feature = "demand")]
#[test]
fn busiest_first_gives_a_prefill_s_slots_to_its_busiest_experts() {
    use crate::plan::Promotion;
    use crate::MissOrder;
    let build = |order| {
        let mut p = ExpertPool::new(PoolConfig::new(8, 2).policy(Policy::Lru).miss_order(order)).unwrap();
        let mut plan = MigrationPlan::new(2);
        p.initial_plan(&mut plan);
        commit_all(&mut p, &plan);
        p
    };
    // Experts 0 and 1 resident; the step routes 0 once, 2 three times, 3 twice and 1 once.
    let prefill = [0, 2, 2, 3, 2, 3, 1];
    let mut plan = MigrationPlan::new(2);
    // Routing order: 0 and 1 are pinned by their use, so 2 and 3 are served in place.
    let mut routing = build(MissOrder::Routing);
    let served = demand_step(&mut routing, 0, &prefill, &mut plan);
    assert!(plan.promotions().is_empty());
    assert_eq!((served.hits, served.served_by_copy, served.served_in_place), (2, 0, 5));
    // Busiest first: 2 and 3 take the slots (2 first, into the slot of 0, used longer ago), each
    // copied once; 0 and 1 give them up and their pairs are served in place.
    let mut busiest = build(MissOrder::Busiest);
    let served = demand_step(&mut busiest, 0, &prefill, &mut plan);
    assert_eq!(
        plan.promotions(),
        [Promotion { expert: 2, slot: 0, demoted: Some(0) }, Promotion { expert: 3, slot: 1, demoted: Some(1) }]
    );
    assert_eq!((served.hits, served.served_by_copy, served.served_in_place), (0, 5, 2));
    // A tie goes to the resident: 3 (resident, one pair) keeps its slot against 5 (one pair).
    let served = demand_step(&mut busiest, 1, &[5, 3, 2, 2], &mut plan);
    assert!(plan.promotions().is_empty());
    assert_eq!((busiest.slot_of(2), busiest.slot_of(3)), (Some(0), Some(1)));
    assert_eq!((served.hits, served.served_in_place), (3, 1));
    // The fetch cap admits the busiest: 4 (three pairs), not 6 (two), into the slot of 3.
    busiest.set_fetch_cap(Some(1));
    demand_step(&mut busiest, 2, &[6, 4, 6, 4, 4, 2], &mut plan);
    assert_eq!(plan.promotions(), [Promotion { expert: 4, slot: 1, demoted: Some(3) }]);
    // A step of no more pairs than slots is served in routing order: 7 takes the slot of 2, the
    // resident the step does not route.
    busiest.set_fetch_cap(None);
    demand_step(&mut busiest, 3, &[7, 4], &mut plan);
    assert_eq!(plan.promotions(), [Promotion { expert: 7, slot: 0, demoted: Some(2) }]);
}
