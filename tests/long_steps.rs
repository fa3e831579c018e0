//! Long steps (prefill, batched decode): the pool counts them in banks and selects its targets by
//! bucket passes; its decisions must still be the reference model's, id for id.

use expertslab::{ExpertPool, MigrationPlan, PoolConfig};
use expertslab_tests::{commit_plan as commit, resident_set, ReferenceServed, ReferenceTide};
use proptest::prelude::*;

/// A layer and steps of 1024 to 3000 skewed ids (a few hot experts, some ids out of range).
fn trace() -> impl Strategy<Value = (u32, usize, bool, Vec<Vec<u32>>)> {
    (1u32..300, 0usize..80, any::<bool>()).prop_flat_map(|(experts, slots, warm)| {
        let id = prop_oneof![4 => 0..experts.min(3), 4 => 0..experts, 1 => experts..experts + 2];
        let ids = prop::collection::vec(prop::collection::vec(id, 1024..3000), 1..5);
        (Just(experts), Just(slots), Just(warm), ids)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(expertslab_tests::cases(48)))]

    #[test]
    fn long_steps_match_the_reference((experts, slots, warm, steps) in trace()) {
        let initial = if warm { expertslab::InitialPlacement::Warm } else { expertslab::InitialPlacement::Cold };
        let config = PoolConfig::new(experts as usize, slots).initial(initial);
        // Banks that cover the experts, and none at all: the same decisions.
        for plan_experts in [experts as usize, 0] {
            let mut pool = ExpertPool::new(config).unwrap();
            let mut plan = MigrationPlan::with_experts(pool.slots(), plan_experts);
            pool.initial_plan(&mut plan);
            commit(&mut pool, &plan);
            let mut reference = ReferenceTide::new(experts, slots, warm);
            for ids in &steps {
                pool.refresh(ids, &mut plan).unwrap();
                let expected = reference.refresh(ids);
                let promoted: Vec<u32> = plan.promotions().iter().map(|p| u32::from(p.expert)).collect();
                prop_assert_eq!(&promoted, &expected.promoted);
                let demoted: Vec<u32> = plan.promotions().iter().filter_map(|p| p.demoted).map(u32::from).collect();
                prop_assert_eq!(&demoted, &expected.demoted);
                commit(&mut pool, &plan);
                prop_assert_eq!(resident_set(&pool), reference.resident.clone());
                prop_assert_eq!(ReferenceServed::of(&pool.serve(ids)), reference.serve(ids));
            }
        }
    }
}
