//! `expertslab inspect`: the MoE layers of a GGUF file, as tables or as one JSON document.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use expertslab_std::gguf::{GgufFile, GgufModel, MoeLayer, Placement, TensorInfo};
use expertslab_std::{ExpertSource, Format, Projection, SharedBytes};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::CliError;
use crate::table::{Align, Table};
use crate::units::format_size;

/// Arguments of `expertslab inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF model file.
    file: PathBuf,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Add the SHA-256 of every expert slab, in expert order, to each expert tensor (with --json).
    #[arg(long, requires = "json")]
    hashes: bool,
}

/// Runs `expertslab inspect`.
pub fn run(args: &Args) -> Result<(), CliError> {
    let path = args.file.as_path();
    let model = crate::model::open_model(path)?;
    let file = model.file().map_err(|e| CliError::model(path, e))?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &document(path, &model, &file, args.hashes)?)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, path, &model, &file)?;
    }
    Ok(())
}

/// One expert tensor of the file: the stack of every expert of a projection, or one expert's own
/// tensor (`blk.N.ffn_gate.E.weight`).
struct ExpertTensor<'f, 'a> {
    info: &'f TensorInfo<'a>,
    block: usize,
    projection: Projection,
    format: Format,
    /// Bytes of one expert's slab.
    expert_stride: usize,
    /// The experts whose slabs the tensor holds.
    experts: Range<usize>,
}

/// Every expert tensor, in file order.
fn expert_tensors<'f, 'a>(
    path: &Path,
    model: &GgufModel<SharedBytes>,
    file: &'f GgufFile<'a>,
) -> Result<Vec<ExpertTensor<'f, 'a>>, CliError> {
    let mut tensors = Vec::new();
    for layer in model.moe().layers() {
        let block = layer.block();
        for (&(projection, stack), placement) in layer.layout().projections().iter().zip(layer.placements()) {
            let format = stack.format();
            match placement {
                Placement::Stacked(range) => tensors.push(ExpertTensor {
                    info: tensor_at(path, file, range)?,
                    block,
                    projection,
                    format,
                    expert_stride: stack.expert_bytes(),
                    experts: 0..stack.experts(),
                }),
                Placement::PerExpert(ranges) => {
                    for (expert, range) in ranges.iter().enumerate() {
                        tensors.push(ExpertTensor {
                            info: tensor_at(path, file, range)?,
                            block,
                            projection,
                            format,
                            expert_stride: range.len(),
                            experts: expert..expert + 1,
                        });
                    }
                }
            }
        }
    }
    tensors.sort_by_key(|t| t.info.data_offset);
    Ok(tensors)
}

/// The directory entry whose bytes are `range`.
fn tensor_at<'f, 'a>(
    path: &Path,
    file: &'f GgufFile<'a>,
    range: &Range<usize>,
) -> Result<&'f TensorInfo<'a>, CliError> {
    file.tensors()
        .iter()
        .find(|t| t.range().ok().as_ref() == Some(range))
        .ok_or_else(|| CliError::unusable(path, format!("no tensor holds bytes {}..{}", range.start, range.end)))
}

/// A layer's totals: its experts, one expert's bytes over all projections, and all its stacks.
struct LayerTotals {
    experts: usize,
    expert_bytes: usize,
    stack_bytes: u64,
}

impl LayerTotals {
    fn of(layer: &MoeLayer) -> Self {
        let layout = layer.layout();
        Self {
            experts: layout.experts(),
            expert_bytes: layout.expert_bytes(),
            stack_bytes: layout.projections().iter().map(|(_, stack)| stack.total_bytes() as u64).sum(),
        }
    }
}

fn document(path: &Path, model: &GgufModel<SharedBytes>, file: &GgufFile<'_>, hashes: bool) -> Result<Value, CliError> {
    let moe = model.moe();
    let layers: Vec<Value> = moe
        .layers()
        .iter()
        .map(|layer| {
            let totals = LayerTotals::of(layer);
            json!({
                "block": layer.block(),
                "experts": totals.experts,
                "expert_bytes": totals.expert_bytes,
                "stack_bytes": totals.stack_bytes,
            })
        })
        .collect();
    let mut tensors = Vec::new();
    for t in expert_tensors(path, model, file)? {
        let mut entry = json!({
            "name": t.info.name,
            "type": t.format.name(),
            "ne": t.info.dims(),
            "offset": t.info.data_offset,
            "expert_stride": t.expert_stride,
            "nbytes": t.info.size,
            "block": t.block,
            "projection": t.projection.name(),
            "first_expert": t.experts.start,
            "experts": t.experts.len(),
        });
        if let (true, Some(fields)) = (hashes, entry.as_object_mut()) {
            fields.insert("sha256".into(), slab_hashes(path, model, &t)?.into());
        }
        tensors.push(entry);
    }
    Ok(json!({
        "file": path.display().to_string(),
        "version": file.version(),
        "alignment": file.alignment(),
        "data_start": file.data_start(),
        "architecture": file.architecture(),
        "expert_count": moe.expert_count(),
        "expert_used_count": moe.expert_used_count(),
        "layers": layers,
        "expert_tensors": tensors,
    }))
}

/// The SHA-256 (lower-case hex) of each expert slab of `tensor`, read through the model as a
/// source.
fn slab_hashes(
    path: &Path,
    model: &GgufModel<SharedBytes>,
    tensor: &ExpertTensor<'_, '_>,
) -> Result<Vec<String>, CliError> {
    tensor
        .experts
        .clone()
        .map(|expert| {
            let slab = model.expert(tensor.block, tensor.projection, expert).map_err(|e| CliError::model(path, e))?;
            Ok(format!("{:x}", Sha256::digest(slab)))
        })
        .collect()
}

fn write_text(
    out: &mut impl Write,
    path: &Path,
    model: &GgufModel<SharedBytes>,
    file: &GgufFile<'_>,
) -> Result<(), CliError> {
    let moe = model.moe();
    let optional = |v: Option<u64>| v.map_or_else(|| "not set".to_owned(), |v| v.to_string());
    writeln!(
        out,
        "{}: GGUF v{}, architecture {}, alignment {}, data from byte {}",
        path.display(),
        file.version(),
        file.architecture().unwrap_or("not set"),
        file.alignment(),
        file.data_start(),
    )?;
    writeln!(
        out,
        "{} MoE layers; expert_count {}, expert_used_count {}",
        moe.layers().len(),
        optional(moe.expert_count()),
        optional(moe.expert_used_count()),
    )?;
    if moe.layers().is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    let mut table = Table::new(&[
        ("block", Align::Right),
        ("projection", Align::Left),
        ("type", Align::Left),
        ("ne", Align::Left),
        ("storage", Align::Left),
        ("bytes/expert", Align::Right),
        ("stack bytes", Align::Right),
    ]);
    let (mut stack_bytes, mut expert_bytes) = (0u64, 0u64);
    for layer in moe.layers() {
        let block = layer.block().to_string();
        for ((projection, stack), placement) in layer.layout().projections().iter().zip(layer.placements()) {
            let storage = match placement {
                Placement::Stacked(_) => "stacked".to_owned(),
                Placement::PerExpert(ranges) => format!("{} tensors", ranges.len()),
            };
            table.row(vec![
                block.clone(),
                projection.name().to_owned(),
                stack.format().name().to_owned(),
                format!("[{}, {}, {}]", stack.cols(), stack.rows(), stack.experts()),
                storage,
                stack.expert_bytes().to_string(),
                stack.total_bytes().to_string(),
            ]);
        }
        let totals = LayerTotals::of(layer);
        let all = format!("all ({} experts)", totals.experts);
        let row = [block, all, String::new(), String::new(), String::new()];
        table.row(row.into_iter().chain([totals.expert_bytes.to_string(), totals.stack_bytes.to_string()]).collect());
        stack_bytes += totals.stack_bytes;
        expert_bytes += totals.expert_bytes as u64;
    }
    table.write(out)?;
    writeln!(out)?;
    writeln!(
        out,
        "expert stacks: {stack_bytes} bytes ({}) in {} layers; one expert of every layer: {expert_bytes} bytes ({})",
        format_size(stack_bytes),
        moe.layers().len(),
        format_size(expert_bytes),
    )?;
    Ok(())
}
