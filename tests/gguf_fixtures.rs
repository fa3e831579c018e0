//! The GGUF reader against files written by ggml-org's own writer (the `gguf` package from
//! PyPI, see `tests/fixtures/gguf/make_fixtures.py`) and the manifest that script computed:
//! every tensor's type, dims, offset and size, and every expert slab's offset, size and SHA-256.

use std::collections::BTreeSet;
use std::path::PathBuf;

use expertslab::gguf::{GgufFile, GgufModel};
use expertslab::{ExpertSource, Projection};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn projection(name: &str) -> Projection {
    match name {
        "gate" => Projection::Gate,
        "up" => Projection::Up,
        "down" => Projection::Down,
        "gate_up" => Projection::GateUp,
        other => panic!("unknown projection {other}"),
    }
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().expect("an unsigned integer")
}

#[test]
fn every_fixture_matches_its_manifest() {
    let manifest = manifest();
    let files = manifest["files"].as_object().expect("files");
    assert_eq!(files.len(), 4);
    let mut formats_seen = BTreeSet::new();
    for (name, expected) in files {
        let bytes = std::fs::read(fixtures().join(name)).expect("fixture");
        assert_eq!(bytes.len() as u64, u64_of(&expected["file_size"]), "{name}");
        let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(u64::from(file.version()), u64_of(&expected["version"]), "{name}");
        assert_eq!(file.alignment(), u64_of(&expected["alignment"]), "{name}");
        assert_eq!(file.data_start(), u64_of(&expected["data_start"]), "{name}");
        assert_eq!(file.architecture(), expected["architecture"].as_str(), "{name}");
        let tensors = expected["tensors"].as_array().expect("tensors");
        assert_eq!(file.tensors().len(), tensors.len(), "{name}");
        for t in tensors {
            let tname = t["name"].as_str().expect("name");
            let info = file.tensor(tname).unwrap_or_else(|| panic!("{name}: no tensor {tname}"));
            let format = info.format.expect("known type");
            assert_eq!(format.name(), t["type"].as_str().unwrap(), "{tname}");
            assert_eq!(u64::from(info.ggml_type), u64_of(&t["type_id"]), "{tname}");
            let ne: Vec<u64> = t["ne"].as_array().unwrap().iter().map(u64_of).collect();
            assert_eq!(info.dims(), ne.as_slice(), "{tname}");
            assert_eq!(info.data_offset, u64_of(&t["offset"]), "{tname}");
            assert_eq!(info.size, Some(u64_of(&t["nbytes"])), "{tname}");
            formats_seen.insert(format.name());
        }

        let model = GgufModel::new(bytes.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.moe().expert_count(), expected["expert_count"].as_u64(), "{name}");
        assert_eq!(model.moe().expert_used_count(), expected["expert_used_count"].as_u64(), "{name}");
        let experts = expected["experts"].as_array().expect("experts");
        let blocks: BTreeSet<u64> = experts.iter().map(|e| u64_of(&e["block"])).collect();
        let found: BTreeSet<u64> = model.moe().layers().iter().map(|l| l.block() as u64).collect();
        assert_eq!(found, blocks, "{name}: MoE blocks");
        let mut slabs_checked = 0;
        for entry in experts {
            let block = u64_of(&entry["block"]) as usize;
            let proj = projection(entry["projection"].as_str().unwrap());
            let layout = model.moe().layer(block).unwrap().layout();
            let (_, stack) = layout.find(proj).unwrap();
            // Under Miri, which hashes thousands of times slower, the first slab of each stack.
            let sample = if cfg!(miri) { 1 } else { usize::MAX };
            for slab in entry["slabs"].as_array().unwrap().iter().take(sample) {
                let expert = u64_of(&slab["expert"]) as usize;
                let got = model.expert(block, proj, expert).unwrap();
                let offset = got.as_ptr().addr() - bytes.as_ptr().addr();
                assert_eq!(offset as u64, u64_of(&slab["offset"]), "{name} block {block} {proj:?} expert {expert}");
                assert_eq!(got.len() as u64, u64_of(&slab["nbytes"]));
                assert_eq!(stack.expert_bytes() as u64, u64_of(&slab["nbytes"]));
                let hash = format!("{:x}", Sha256::digest(got));
                assert_eq!(hash, slab["sha256"].as_str().unwrap(), "{name} block {block} {proj:?} expert {expert}");
                slabs_checked += 1;
            }
            if entry["slabs"].as_array().unwrap().len() > 1 {
                assert_eq!(stack.expert_bytes() as u64, u64_of(&entry["expert_stride"]));
            }
        }
        assert!(slabs_checked > 0, "{name}");
    }
    for format in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K"] {
        assert!(formats_seen.contains(format), "no fixture covers {format}");
    }
}

#[test]
fn damaged_fixtures_are_refused_without_panicking() {
    let bytes = std::fs::read(fixtures().join("moe_fused.gguf")).unwrap();
    // Cut at every 97th byte and at the data section: each parse ends in an error or, once the
    // directory is whole, in tensors checked against the shorter file.
    // Under Miri, a sparser sample of both.
    let (cut_step, flip_step) = if cfg!(miri) { (997, 13) } else { (97, 1) };
    for len in (0..bytes.len()).step_by(cut_step) {
        assert!(GgufModel::new(&bytes[..len]).is_err(), "cut at {len}");
    }
    // Flip single bytes all over the header and directory: never a panic.
    let data_start = GgufFile::parse(&bytes).unwrap().data_start() as usize;
    for at in (0..data_start).step_by(flip_step) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xFF;
        let _ = GgufModel::new(damaged.as_slice());
    }
}
