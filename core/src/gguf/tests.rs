use alloc::string::String;
use alloc::vec::Vec;

use super::*;
use crate::error::LayoutError;
use crate::format::Format;
use crate::layout::Projection;
use crate::source::{ExpertSource, StackSource};

/// A small GGUF writer for tests: metadata entries and tensors laid out as ggml does.
#[derive(Default)]
struct Writer {
    version: u32,
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<(String, Vec<u64>, u32, usize)>,
    alignment: u64,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Writer {
    fn new() -> Self {
        Self { version: 3, alignment: 32, ..Self::default() }
    }

    fn kv(mut self, key: &str, type_id: u32, value: &[u8]) -> Self {
        string(&mut self.kv, key);
        self.kv.extend_from_slice(&type_id.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.kv_count += 1;
        self
    }

    fn kv_str(self, key: &str, value: &str) -> Self {
        let mut v = Vec::new();
        string(&mut v, value);
        self.kv(key, 8, &v)
    }

    fn kv_u32(self, key: &str, value: u32) -> Self {
        self.kv(key, 4, &value.to_le_bytes())
    }

    /// A tensor of `format` with dims `ne`; its bytes are filled with its index.
    fn tensor(mut self, name: &str, ne: &[u64], format: Format) -> Self {
        let size =
            ne.iter().product::<u64>() as usize / format.block().elems() as usize * format.block().bytes() as usize;
        self.tensors.push((name.into(), ne.to_vec(), format.ggml_type().unwrap(), size));
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.kv_count.to_le_bytes());
        out.extend_from_slice(&self.kv);
        let align = |v: usize| v.div_ceil(self.alignment as usize) * self.alignment as usize;
        let mut offset = 0usize;
        for (name, ne, type_id, size) in &self.tensors {
            string(&mut out, name);
            out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&type_id.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = align(offset + size);
        }
        out.resize(align(out.len()), 0);
        for (index, (_, _, _, size)) in self.tensors.iter().enumerate() {
            let start = out.len();
            out.resize(start + size, index as u8 + 1);
            out.resize(align(out.len()), 0);
        }
        out
    }
}

fn moe_writer() -> Writer {
    Writer::new()
        .kv_str("general.architecture", "qwen2moe")
        .kv_u32("qwen2moe.expert_count", 4)
        .kv_u32("qwen2moe.expert_used_count", 2)
        .tensor("token_embd.weight", &[64, 10], Format::F32)
        .tensor("blk.0.ffn_gate.weight", &[64, 16], Format::F32)
        .tensor("blk.1.ffn_gate_exps.weight", &[64, 16, 4], Format::Q8_0)
        .tensor("blk.1.ffn_up_exps.weight", &[64, 16, 4], Format::Q8_0)
        .tensor("blk.1.ffn_down_exps.weight", &[16, 64, 4], Format::F16)
        .tensor("blk.2.ffn_gate_up_exps.weight", &[64, 32, 4], Format::BF16)
        .tensor("blk.2.ffn_down_exps.weight", &[16, 64, 4], Format::F32)
}

#[test]
fn a_moe_file_parses_into_layers_and_slabs() {
    let bytes = moe_writer().build();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!((file.version(), file.alignment(), file.tensors().len()), (3, 32, 7));
    assert_eq!(file.architecture(), Some("qwen2moe"));
    assert_eq!(file.arch_u64("expert_count"), Some(4));
    assert!(file.data_start().is_multiple_of(32));
    let moe = file.moe().unwrap();
    assert_eq!((moe.expert_count(), moe.expert_used_count()), (Some(4), Some(2)));
    let blocks: Vec<usize> = moe.layers().iter().map(MoeLayer::block).collect();
    assert_eq!(blocks, [1, 2]);
    let layer1 = moe.layer(1).unwrap().layout();
    let names: Vec<&str> = layer1.projections().iter().map(|(p, _)| p.name()).collect();
    assert_eq!(names, ["gate", "up", "down"]);
    assert_eq!(layer1.find(Projection::Gate).unwrap().1.expert_bytes(), 16 * 2 * 34);
    let fused: Vec<&str> = moe.layer(2).unwrap().layout().projections().iter().map(|(p, _)| p.name()).collect();
    assert_eq!(fused, ["gate_up", "down"]);

    let model = GgufModel::new(bytes.as_slice()).unwrap();
    let gate = file.tensor("blk.1.ffn_gate_exps.weight").unwrap();
    let slab = model.expert(1, Projection::Gate, 3).unwrap();
    let stride = 16 * 2 * 34;
    assert_eq!(slab, &bytes[gate.data_offset as usize + 3 * stride..][..stride]);
    assert!(slab.iter().all(|&b| b == 3)); // the writer fills tensor 2 with 3s
    assert_eq!(model.stack(2, Projection::Down).unwrap().len(), 16 * 64 * 4 * 4);
    assert_eq!(model.expert(0, Projection::Gate, 0), Err(LayoutError::LayerOutOfRange { layer: 0, layers: 3 }));
    assert_eq!(
        model.expert(2, Projection::Gate, 0),
        Err(LayoutError::ProjectionMissing { projection: Projection::Gate })
    );
    assert!(matches!(model.expert(1, Projection::Up, 4), Err(LayoutError::ExpertOutOfRange { .. })));
}

#[test]
fn legacy_per_expert_tensors_form_a_layer() {
    let mut w = Writer::new();
    for e in 0..3 {
        for p in ["gate", "up", "down"] {
            w = w.tensor(&alloc::format!("blk.0.ffn_{p}.{e}.weight"), &[32, 8], Format::Q4_0);
        }
    }
    let bytes = w.build();
    let model = GgufModel::new(bytes.as_slice()).unwrap();
    let layer = model.moe().layer(0).unwrap();
    assert!(matches!(layer.placements()[0], Placement::PerExpert(ref r) if r.len() == 3));
    let file = model.file().unwrap();
    let t = file.tensor("blk.0.ffn_up.2.weight").unwrap();
    assert_eq!(model.expert(0, Projection::Up, 2).unwrap(), file.tensor_data(t).unwrap());
    // Not one stack: a full-stack push is refused rather than copying.
    assert!(model.stack(0, Projection::Up).is_err());

    let gap = Writer::new()
        .tensor("blk.0.ffn_down.0.weight", &[32, 8], Format::Q4_0)
        .tensor("blk.0.ffn_down.2.weight", &[32, 8], Format::Q4_0)
        .build();
    assert_eq!(
        GgufModel::new(gap.as_slice()).unwrap_err(),
        GgufError::Moe { block: 0, problem: MoeProblem::MissingExpert(1) }
    );
    let mixed = Writer::new()
        .tensor("blk.0.ffn_down.0.weight", &[32, 8], Format::Q4_0)
        .tensor("blk.0.ffn_down_exps.weight", &[32, 8, 1], Format::Q4_0)
        .build();
    assert_eq!(
        GgufModel::new(mixed.as_slice()).unwrap_err(),
        GgufError::Moe { block: 0, problem: MoeProblem::MixedLayouts }
    );
}

#[test]
fn header_errors_name_what_and_where() {
    let good = moe_writer().build();
    assert_eq!(GgufFile::parse(b"GGUX").unwrap_err(), GgufError::BadMagic);
    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(GgufFile::parse(&v1).unwrap_err(), GgufError::UnsupportedVersion { version: 1 });
    let mut big_endian = good.clone();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(GgufFile::parse(&big_endian), Err(GgufError::UnsupportedVersion { .. })));
    let mut v2 = good.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert!(GgufFile::parse(&v2).is_ok());

    let mut many_kv = good.clone();
    many_kv[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(GgufFile::parse(&many_kv), Err(GgufError::TooMany { what: "metadata entries", offset: 16, .. })));
    let mut many_tensors = good.clone();
    many_tensors[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(GgufFile::parse(&many_tensors), Err(GgufError::TooMany { what: "tensors", offset: 8, .. })));
    // The first key's length reaches past the file.
    let mut long_key = good.clone();
    long_key[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_eq!(GgufFile::parse(&long_key).unwrap_err(), GgufError::Truncated { what: "a metadata key", offset: 32 });
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let good = moe_writer().build();
    // Under Miri (slow) a sample of the cuts; natively every one.
    let step = if cfg!(miri) { 97 } else { 1 };
    for len in (0..good.len()).step_by(step) {
        let result = GgufModel::new(&good[..len]);
        assert!(result.is_err(), "a file cut at {len} of {} bytes parsed", good.len());
    }
}

#[test]
fn metadata_values_are_checked() {
    let bad_bool = Writer::new().kv("flag", 7, &[2]).build();
    assert!(matches!(GgufFile::parse(&bad_bool), Err(GgufError::InvalidValue { value: 2, .. })));
    let bad_type = Writer::new().kv("x", 13, &[0; 8]).build();
    assert!(matches!(GgufFile::parse(&bad_type), Err(GgufError::InvalidValue { value: 13, .. })));
    let dup = Writer::new().kv_u32("a", 1).kv_u32("a", 2).build();
    assert!(matches!(GgufFile::parse(&dup), Err(GgufError::DuplicateKey { .. })));
    let bad_utf8 = Writer::new().kv("k", 8, &[1, 0, 0, 0, 0, 0, 0, 0, 0xFF]).build();
    assert!(matches!(GgufFile::parse(&bad_utf8), Err(GgufError::InvalidUtf8 { .. })));

    // Arrays: fixed-size elements, strings, and nesting (skipped, depth-limited).
    let mut strings = Vec::new();
    strings.extend_from_slice(&8u32.to_le_bytes());
    strings.extend_from_slice(&2u64.to_le_bytes());
    string(&mut strings, "ab");
    string(&mut strings, "c");
    let mut u16s = Vec::new();
    u16s.extend_from_slice(&2u32.to_le_bytes());
    u16s.extend_from_slice(&3u64.to_le_bytes());
    u16s.extend_from_slice(&[1, 0, 2, 0, 3, 0]);
    let file_bytes = Writer::new().kv("s", 9, &strings).kv("n", 9, &u16s).build();
    let file = GgufFile::parse(&file_bytes).unwrap();
    assert!(matches!(file.get("s"), Some(MetaValue::Array { elem_type: 8, count: 2, .. })));
    assert!(matches!(file.get("n"), Some(MetaValue::Array { elem_type: 2, count: 3, bytes }) if bytes.len() == 6));
    let mut nested = Vec::new();
    for _ in 0..6 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    nested.extend_from_slice(&0u32.to_le_bytes());
    nested.extend_from_slice(&0u64.to_le_bytes());
    let deep = Writer::new().kv("deep", 9, &nested).build();
    assert!(matches!(GgufFile::parse(&deep), Err(GgufError::NestingTooDeep { .. })));
    let mut huge = Vec::new();
    huge.extend_from_slice(&4u32.to_le_bytes());
    huge.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    let huge = Writer::new().kv("huge", 9, &huge).build();
    assert!(matches!(GgufFile::parse(&huge), Err(GgufError::TooMany { what: "array elements", .. })));
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    let mut w = moe_writer().kv_u32("general.alignment", 64);
    w.alignment = 64;
    let file_bytes = w.build();
    let file = GgufFile::parse(&file_bytes).unwrap();
    assert_eq!(file.alignment(), 64);
    assert!(file.tensors().iter().all(|t| (t.data_offset - file.data_start()).is_multiple_of(64)));
    let three = Writer::new().kv_u32("general.alignment", 48).build();
    assert_eq!(GgufFile::parse(&three).unwrap_err(), GgufError::InvalidAlignment { value: 48 });
    let wrong_type = Writer::new().kv("general.alignment", 10, &64u64.to_le_bytes()).build();
    assert_eq!(GgufFile::parse(&wrong_type).unwrap_err(), GgufError::InvalidAlignment { value: 10 });
}

/// Offset of the first tensor record's fields, for patching: the writer puts records right
/// after the metadata.
fn patch_record(bytes: &mut [u8], kv_len: usize, name_len: usize, n_dims: usize, field: &str, value: &[u8]) {
    let record = 24 + kv_len;
    let at = match field {
        "n_dims" => record + 8 + name_len,
        "ne0" => record + 8 + name_len + 4,
        "type" => record + 8 + name_len + 4 + 8 * n_dims,
        "offset" => record + 8 + name_len + 4 + 8 * n_dims + 4,
        _ => unreachable!(),
    };
    bytes[at..at + value.len()].copy_from_slice(value);
}

#[test]
fn tensor_records_are_checked() {
    let w = Writer::new().tensor("t", &[32, 2], Format::F32).tensor("u", &[32, 2], Format::F32);
    let good = w.build();
    let problem = |bytes: &[u8]| match GgufFile::parse(bytes) {
        Err(GgufError::Tensor { name, problem }) => (name, problem),
        other => panic!("expected a tensor error, got {other:?}"),
    };
    let mut bad = good.clone();
    patch_record(&mut bad, 0, 1, 2, "n_dims", &5u32.to_le_bytes());
    assert_eq!(problem(&bad), ("t".into(), TensorProblem::TooManyDims(5)));
    let mut bad = good.clone();
    patch_record(&mut bad, 0, 1, 2, "ne0", &0u64.to_le_bytes());
    assert_eq!(problem(&bad).1, TensorProblem::BadDims);
    let mut bad = good.clone();
    patch_record(&mut bad, 0, 1, 2, "ne0", &(u64::MAX / 2).to_le_bytes());
    assert_eq!(problem(&bad).1, TensorProblem::BadDims);
    let mut bad = good.clone();
    patch_record(&mut bad, 0, 1, 2, "offset", &8u64.to_le_bytes());
    assert_eq!(problem(&bad).1, TensorProblem::Misaligned(8));
    let mut bad = good.clone();
    patch_record(&mut bad, 0, 1, 2, "offset", &(1u64 << 20).to_le_bytes());
    assert!(matches!(problem(&bad).1, TensorProblem::OutOfBounds { .. }));
    let mut bad = good.clone();
    patch_record(&mut bad, 0, 1, 2, "ne0", &33u64.to_le_bytes());
    patch_record(&mut bad, 0, 1, 2, "type", &8u32.to_le_bytes());
    assert_eq!(problem(&bad).1, TensorProblem::NotWholeBlocks);

    // Second record's offset moved onto the first tensor.
    let mut overlap = good.clone();
    let second = 24 + (8 + 1 + 4 + 16 + 4 + 8);
    overlap[second + 8 + 1 + 4 + 16 + 4..][..8].copy_from_slice(&0u64.to_le_bytes());
    assert!(matches!(GgufFile::parse(&overlap), Err(GgufError::TensorsOverlap { .. })));

    let dup = Writer::new().tensor("t", &[32], Format::F32).tensor("t", &[32], Format::F32).build();
    assert_eq!(problem(&dup), ("t".into(), TensorProblem::Duplicate));
    let long = "x".repeat(64);
    let long = Writer::new().tensor(&long, &[32], Format::F32).build();
    assert_eq!(GgufFile::parse(&long).unwrap_err(), GgufError::NameTooLong { index: 0, len: 64 });
}

#[test]
fn unknown_types_are_listed_and_refused_where_used() {
    let mut bytes = Writer::new()
        .tensor("blk.0.ffn_down_exps.weight", &[32, 2, 2], Format::F32)
        .tensor("other", &[32], Format::F32)
        .build();
    // Make the second tensor's type unknown (40-byte record of a 5-byte name, 1 dim).
    let second = 24 + (8 + 26 + 4 + 24 + 4 + 8);
    bytes[second + 8 + 5 + 4 + 8..][..4].copy_from_slice(&31u32.to_le_bytes());
    let file = GgufFile::parse(&bytes).unwrap();
    let other = file.tensor("other").unwrap();
    assert_eq!((other.format, other.size), (None, None));
    assert_eq!(
        file.tensor_data(other).unwrap_err(),
        GgufError::Tensor { name: "other".into(), problem: TensorProblem::UnknownType(31) }
    );
    assert!(file.moe().is_ok());
    // An expert tensor of an unknown type refuses the MoE view.
    bytes[24 + 8 + 26 + 4 + 24..][..4].copy_from_slice(&1000u32.to_le_bytes());
    let file = GgufFile::parse(&bytes).unwrap();
    assert!(matches!(file.moe(), Err(GgufError::Tensor { problem: TensorProblem::UnknownType(1000), .. })));
}

#[test]
fn tensor_records_built_by_hand_are_checked_where_used() {
    let bytes = Writer::new().tensor("t", &[32], Format::F32).build();
    let file = GgufFile::parse(&bytes).unwrap();
    let t = file.tensor("t").unwrap();
    assert_eq!(file.tensor_data(t).unwrap().len(), 128);
    let out_of_bounds =
        |start, size| GgufError::Tensor { name: "t".into(), problem: TensorProblem::OutOfBounds { start, size } };
    // Past the end of the address space, and past the end of this file.
    let wrapped = TensorInfo { data_offset: u64::MAX - 1, ..t.clone() };
    assert_eq!(wrapped.range().unwrap_err(), out_of_bounds(u64::MAX - 1, 128));
    assert_eq!(file.tensor_data(&wrapped).unwrap_err(), out_of_bounds(u64::MAX - 1, 128));
    let beyond = TensorInfo { data_offset: bytes.len() as u64, ..t.clone() };
    assert_eq!(file.tensor_data(&beyond).unwrap_err(), out_of_bounds(bytes.len() as u64, 128));
}

#[test]
fn a_missing_data_section_is_truncation_even_for_unknown_types() {
    let mut bytes = Writer::new().tensor("t", &[32], Format::F32).build();
    // Type 31 is unknown, so the tensor's size cannot be checked; the data section still must exist.
    let record = 24 + 8 + 1 + 4 + 8;
    bytes[record..record + 4].copy_from_slice(&31u32.to_le_bytes());
    let infos_end = record + 4 + 8;
    assert!(GgufFile::parse(&bytes[..infos_end + 8]).is_ok());
    assert_eq!(
        GgufFile::parse(&bytes[..infos_end]).unwrap_err(),
        GgufError::Truncated { what: "the data section", offset: infos_end as u64 }
    );
}

#[test]
fn expert_count_is_cross_checked() {
    let bytes = Writer::new()
        .kv_str("general.architecture", "mix")
        .kv_u32("mix.expert_count", 8)
        .tensor("blk.3.ffn_down_exps.weight", &[32, 2, 4], Format::F32)
        .build();
    assert_eq!(
        GgufModel::new(bytes.as_slice()).unwrap_err(),
        GgufError::Moe { block: 3, problem: MoeProblem::ExpertCount { tensors: 4, metadata: 8 } }
    );
    let flat = Writer::new().tensor("blk.0.ffn_up_exps.weight", &[32, 2], Format::F32).build();
    assert_eq!(
        GgufModel::new(flat.as_slice()).unwrap_err(),
        GgufError::Moe { block: 0, problem: MoeProblem::NotThreeDimensional }
    );
}
