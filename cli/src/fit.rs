//! `expertslab fit` (formerly `plan`): how many experts of each MoE layer fit in a memory size, split equally
//! (every layer the same number of slots) and as one shared byte budget.

use std::io::{self, Write};
use std::path::PathBuf;

use expertslab_std::{slots_per_layer, split_byte_budget, LayerDemand, LayoutError, SlotArena};
use serde_json::{json, Value};

use crate::error::CliError;
use crate::table::{Align, Table};
use crate::units::{format_size, parse_size};

/// Arguments of `expertslab fit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF model file.
    file: PathBuf,
    /// Fast memory for expert slots and everything else, like 8GiB, 512MiB, 1.5GB or 4096.
    #[arg(long, value_parser = parse_size)]
    memory: u64,
    /// Part of the memory kept for everything but expert slots (activations, KV cache, dense
    /// weights).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    reserve: u64,
    /// Alignment of every slot and projection in bytes (a power of two).
    #[arg(long, value_parser = parse_align, default_value_t = 64)]
    align: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_align(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(align) if align.is_power_of_two() => Ok(align),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
            Err(format!("'{text}' is larger than the largest alignment, {}", usize::MAX / 2 + 1))
        }
        _ => Err(format!("'{text}' is not a power of two")),
    }
}

/// One layer's slots under both splits.
struct LayerPlan {
    block: usize,
    demand: LayerDemand,
    equal_slots: u32,
    shared_slots: u32,
}

impl LayerPlan {
    fn equal_bytes(&self) -> u64 {
        u64::from(self.equal_slots).saturating_mul(self.demand.slot_bytes)
    }

    fn shared_bytes(&self) -> u64 {
        u64::from(self.shared_slots).saturating_mul(self.demand.slot_bytes)
    }
}

/// Runs `expertslab fit`.
pub fn run(args: &Args) -> Result<(), CliError> {
    let path = args.file.as_path();
    let model = crate::model::open_model(path)?;
    // The model's own sizes fit in memory, so only the alignment can make slot sizes overflow.
    let fail = |e| match e {
        LayoutError::Overflow => CliError::Usage(format!(
            "--align {}: slots aligned to it are too large to count in bytes (size arithmetic overflows)",
            args.align
        )),
        e => CliError::model(path, e),
    };
    let mut plans = Vec::new();
    for layer in model.moe().layers() {
        let slot = SlotArena::new(layer.layout(), 1, args.align).map_err(fail)?;
        let experts = u32::try_from(layer.layout().experts()).unwrap_or(u32::MAX);
        let demand = LayerDemand { slot_bytes: slot.slot_stride() as u64, experts };
        plans.push(LayerPlan { block: layer.block(), demand, equal_slots: 0, shared_slots: 0 });
    }
    let largest_slot =
        plans.iter().map(|p| p.demand.slot_bytes).max().ok_or_else(|| CliError::unusable(path, "no MoE layers"))?;
    let layers = u32::try_from(plans.len()).unwrap_or(u32::MAX);
    for plan in &mut plans {
        plan.equal_slots =
            slots_per_layer(args.memory, args.reserve, largest_slot, layers, plan.demand.experts).map_err(fail)?;
    }
    let budget = args.memory.saturating_sub(args.reserve);
    let demands: Vec<LayerDemand> = plans.iter().map(|p| p.demand).collect();
    let mut shared = vec![0; plans.len()];
    split_byte_budget(budget, &demands, &mut shared).map_err(fail)?;
    for (plan, slots) in plans.iter_mut().zip(shared) {
        plan.shared_slots = slots;
    }

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &document(args, budget, largest_slot, &plans))?;
        writeln!(out)?;
    } else {
        write_text(&mut out, args, budget, largest_slot, &plans)?;
    }
    Ok(())
}

fn document(args: &Args, budget: u64, largest_slot: u64, plans: &[LayerPlan]) -> Value {
    let layers: Vec<Value> = plans
        .iter()
        .map(|p| {
            json!({
                "block": p.block,
                "experts": p.demand.experts,
                "slot_bytes": p.demand.slot_bytes,
                "equal_slots": p.equal_slots,
                "equal_bytes": p.equal_bytes(),
                "shared_slots": p.shared_slots,
                "shared_bytes": p.shared_bytes(),
            })
        })
        .collect();
    json!({
        "file": args.file.display().to_string(),
        "memory": args.memory,
        "reserve": args.reserve,
        "budget": budget,
        "align": args.align,
        "largest_slot_bytes": largest_slot,
        "layers": layers,
        "equal_bytes": plans.iter().map(LayerPlan::equal_bytes).sum::<u64>(),
        "shared_bytes": plans.iter().map(LayerPlan::shared_bytes).sum::<u64>(),
    })
}

fn write_text(
    out: &mut impl Write,
    args: &Args,
    budget: u64,
    largest_slot: u64,
    plans: &[LayerPlan],
) -> Result<(), CliError> {
    writeln!(
        out,
        "{}: {} MoE layers; memory {}, reserve {}, budget for slots {budget} bytes ({}); slots aligned to {} bytes",
        args.file.display(),
        plans.len(),
        format_size(args.memory),
        format_size(args.reserve),
        format_size(budget),
        args.align,
    )?;
    writeln!(
        out,
        "equal split: every layer gets budget / (layers x {largest_slot}-byte largest slot) slots, at most its experts"
    )?;
    writeln!(out, "shared budget: one slot per layer per round, in layer order, while the next one fits")?;
    writeln!(out)?;
    let mut table = Table::new(&[
        ("block", Align::Right),
        ("experts", Align::Right),
        ("slot bytes", Align::Right),
        ("equal slots", Align::Right),
        ("equal bytes", Align::Right),
        ("shared slots", Align::Right),
        ("shared bytes", Align::Right),
    ]);
    for p in plans {
        table.row(vec![
            p.block.to_string(),
            p.demand.experts.to_string(),
            p.demand.slot_bytes.to_string(),
            p.equal_slots.to_string(),
            p.equal_bytes().to_string(),
            p.shared_slots.to_string(),
            p.shared_bytes().to_string(),
        ]);
    }
    let slots = |f: fn(&LayerPlan) -> u32| plans.iter().map(|p| u64::from(f(p))).sum::<u64>().to_string();
    let bytes = |f: fn(&LayerPlan) -> u64| plans.iter().map(f).sum::<u64>();
    let (equal, shared) = (bytes(LayerPlan::equal_bytes), bytes(LayerPlan::shared_bytes));
    table.row(vec![
        "total".to_owned(),
        String::new(),
        String::new(),
        slots(|p| p.equal_slots),
        equal.to_string(),
        slots(|p| p.shared_slots),
        shared.to_string(),
    ]);
    table.write(out)?;
    writeln!(out)?;
    writeln!(
        out,
        "used: equal split {} of {}, shared budget {}",
        format_size(equal),
        format_size(budget),
        format_size(shared)
    )?;
    Ok(())
}
