//! The demo's sizes, checked before anything is allocated: a generated model's experts against
//! the most a pool holds, and the memory its model and slots take against what a command may plan
//! for ([`crate::limits`]).

use expertslab_cuda::demo::ModelSpec;
use expertslab_std::PoolConfig;

use super::{Args, Cpu, Model};
use crate::error::CliError;
use crate::limits;
use crate::units::format_size;

/// Checks a model `demo --device cuda` generates (`spec`, experts of `expert_bytes`): its experts
/// against the most a pool holds, and the host memory holding every layer's experts for the
/// uploads.
///
/// # Errors
/// [`CliError::Usage`] naming the flags.
pub(super) fn check_generated_cuda(args: &Args, spec: &ModelSpec, expert_bytes: usize) -> Result<(), CliError> {
    let wide = limits::wide;
    let (layers, experts) = (spec.layers, spec.experts);
    let flag = if args.experts.is_some() { "--experts" } else { "--routing's header: experts" };
    limits::experts(flag, wide(experts))?;
    let what = format!(
        "demo --device cuda: a model of --layers {layers} × --experts {experts} experts of {} (--d-model {} × \
         --d-ff {})",
        format_size(wide(expert_bytes)),
        spec.shape.hidden,
        spec.shape.ffn
    );
    limits::memory(&what, limits::product(&[wide(layers), wide(experts), wide(expert_bytes)]))
}

/// Checks the CPU demo's sizes before anything is allocated: a generated model's experts
/// against the most a pool holds, and the memory of its model (every layer's experts and router)
/// and of the slots; with a model file, mapped in place, the memory of the slots only.
pub(super) fn check_cpu(args: &Cpu, file: Option<&Model>) -> Result<(), CliError> {
    let wide = limits::wide;
    let slots = wide(PoolConfig::new(args.experts, args.slots).slots());
    let layers = wide(args.layers);
    if let Some(model) = file {
        let expert_bytes = model.store.layer(0).map_or(0, |l| wide(l.layout().expert_bytes()));
        let what = format!("demo: --slots {slots} × {layers} layers of experts of {}", format_size(expert_bytes));
        return limits::memory(&what, limits::product(&[slots, layers, expert_bytes]));
    }
    limits::experts("--experts", wide(args.experts))?;
    let (experts, d_model, d_ff) = (wide(args.experts), wide(args.d_model), wide(args.d_ff));
    // Gate, up and down, F32.
    let expert_bytes = limits::product(&[3, d_model, d_ff, 4]);
    let per_layer = limits::sum(&[
        expert_bytes.and_then(|b| b.checked_mul(experts.checked_add(slots)?)),
        limits::product(&[experts, d_model, 4]),
    ]);
    let what = format!(
        "demo: a model of --layers {layers} × --experts {experts} experts of --d-model {d_model} × --d-ff {d_ff} \
         (F32), with --slots {slots}"
    );
    limits::memory(&what, per_layer.and_then(|b| b.checked_mul(layers)))
}
