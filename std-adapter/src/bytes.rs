//! Weight bytes shared by `Arc`: owned copies with a 64-byte alignment, typed slices
//! (`Arc<[f32]>`, …) or a memory-mapped file, behind one cheap-to-clone handle.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use bytemuck::{AnyBitPattern, NoUninit, Pod, Zeroable};
use expertslab::{cast_bytes, LayoutError, ViewError};

/// The alignment of owned copies: a cache line, enough for every typed view and SIMD load.
pub const COPY_ALIGN: usize = 64;

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct CacheLine([u8; COPY_ALIGN]);

/// Something that owns bytes and can be shared between threads.
trait Storage: Send + Sync {
    fn bytes(&self) -> &[u8];
}

struct Aligned {
    lines: Vec<CacheLine>,
    len: usize,
}

impl Storage for Aligned {
    fn bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.lines);
        all.get(..self.len).unwrap_or(all)
    }
}

struct Typed<T>(Arc<[T]>);

impl<T: NoUninit + Send + Sync> Storage for Typed<T> {
    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// Any owner of bytes ([`SharedBytes::from_owner`]).
struct Owned<O>(O);

impl<O: AsRef<[u8]> + Send + Sync> Storage for Owned<O> {
    fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl Storage for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Bytes shared by `Arc`: cloning copies a pointer, never the bytes.
///
/// A handle may cover part of its owner ([`SharedBytes::slice`]), so one mapped model file can
/// hand out its expert stacks without copying them.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn Storage>,
    range: Range<usize>,
}

impl SharedBytes {
    /// A 64-byte aligned copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut lines = vec![CacheLine([0; COPY_ALIGN]); bytes.len().div_ceil(COPY_ALIGN)];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut lines);
        if let Some(dst) = dst.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        Self::own(Aligned { lines, len: bytes.len() }, bytes.len())
    }

    /// Shares typed elements (`Arc<[f32]>`, `Arc<[u16]>` for f16/bf16, …) as bytes, without a
    /// copy; typed views of them need no alignment fix-up.
    pub fn from_typed<T: NoUninit + Send + Sync>(elements: Arc<[T]>) -> Self {
        let len = std::mem::size_of_val::<[T]>(&elements);
        Self::own(Typed(elements), len)
    }

    /// Shares the bytes of `owner` (page-locked host memory of a GPU runtime, a buffer of the
    /// caller's), without a copy. The bytes must not change while any handle lives: `owner`
    /// gives them out only as `&[u8]`, and every handle keeps it alive.
    pub fn from_owner<O: AsRef<[u8]> + Send + Sync + 'static>(owner: O) -> Self {
        let len = owner.as_ref().len();
        Self::own(Owned(owner), len)
    }

    /// Maps `file` read-only.
    ///
    /// The map reflects the file: if another process truncates or rewrites it while mapped, reads
    /// may see the new bytes or fault. Map only files that stay unchanged while in use (model
    /// files); use [`SharedBytes::read_file`] otherwise.
    ///
    /// # Errors
    /// The operating system's mapping error.
    #[allow(unsafe_code)] // mapping a file
    pub fn map_file(file: &File) -> std::io::Result<Self> {
        // SAFETY: the map is read-only and only read through `&[u8]`; the documented contract
        // above (the file stays unchanged while mapped) is the caller's, as for every mmap.
        let map = unsafe { memmap2::Mmap::map(file)? };
        let len = map.len();
        Ok(Self::own(map, len))
    }

    /// Reads `file` into a 64-byte aligned copy: the safe alternative to mapping.
    ///
    /// # Errors
    /// The read error.
    pub fn read_file(file: &mut File) -> std::io::Result<Self> {
        use std::io::Read;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Self::copy_from(&bytes))
    }

    fn own(storage: impl Storage + 'static, len: usize) -> Self {
        Self { owner: Arc::new(storage), range: 0..len }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // The range was checked against the owner when the handle was made.
        self.owner.bytes().get(self.range.clone()).unwrap_or(&[])
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// A handle to `range` of these bytes, sharing the same owner.
    ///
    /// # Errors
    /// [`LayoutError::LengthMismatch`] when `range` reaches past the end (or is reversed).
    pub fn slice(&self, range: Range<usize>) -> Result<Self, LayoutError> {
        let outside = LayoutError::LengthMismatch { expected: range.end, actual: self.len() };
        if range.start > range.end || range.end > self.len() {
            return Err(outside);
        }
        // Both ends lie within this handle's range, which lies within the owner's bytes.
        let start = self.range.start.checked_add(range.start).ok_or(outside)?;
        let end = self.range.start.checked_add(range.end).ok_or(outside)?;
        Ok(Self { owner: Arc::clone(&self.owner), range: start..end })
    }

    /// The bytes as a slice of `T`, without copying.
    ///
    /// # Errors
    /// [`ViewError::Misaligned`] or [`ViewError::LengthMismatch`].
    pub fn typed<T: AnyBitPattern>(&self) -> Result<&[T], ViewError> {
        cast_bytes(self.as_bytes())
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes").field("range", &self.range).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_aligned_and_slices_share_the_owner() {
        let source: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let shared = SharedBytes::copy_from(&source[1..]);
        assert_eq!(shared.as_bytes(), &source[1..]);
        assert_eq!(shared.as_bytes().as_ptr().addr() % COPY_ALIGN, 0);
        let part = shared.slice(10..20).unwrap();
        assert_eq!(part.as_bytes(), &source[11..21]);
        let inner = part.slice(2..4).unwrap();
        assert_eq!(inner.as_bytes(), &[13, 14]);
        assert!(part.slice(5..11).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = part.slice(5..4);
        assert!(reversed.is_err());
        assert_eq!(Arc::strong_count(&shared.owner), 3);
        let head = shared.slice(0..16).unwrap();
        assert_eq!(head.typed::<f32>().unwrap().len(), 4);
        assert!(matches!(shared.slice(1..5).unwrap().typed::<f32>(), Err(ViewError::Misaligned { .. })));
    }

    #[test]
    fn typed_arcs_are_shared_without_copying() {
        let values: Arc<[f32]> = Arc::from(vec![1.0f32, 2.0, 3.0]);
        let shared = SharedBytes::from_typed(Arc::clone(&values));
        assert_eq!(shared.len(), 12);
        assert_eq!(shared.typed::<f32>().unwrap(), &[1.0, 2.0, 3.0]);
        assert_eq!(shared.as_bytes().as_ptr(), values.as_ptr().cast::<u8>());
        let clone = shared.clone();
        std::thread::spawn(move || assert_eq!(clone.typed::<f32>().unwrap()[2], 3.0)).join().unwrap();
    }

    #[test]
    fn any_owner_is_shared_without_copying_and_kept_alive() {
        let owner: Box<[u8]> = (0..10u8).collect();
        let at = owner.as_ptr();
        let shared = SharedBytes::from_owner(owner);
        let part = shared.slice(2..5).unwrap();
        drop(shared);
        assert_eq!(part.as_bytes(), &[2, 3, 4]);
        assert_eq!(part.as_bytes().as_ptr(), at.wrapping_add(2));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map files")]
    fn files_map_and_read_to_the_same_bytes() {
        let path = std::env::temp_dir().join(format!("expertslab-bytes-{}.bin", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let mapped = SharedBytes::map_file(&File::open(&path).unwrap()).unwrap();
        let read = SharedBytes::read_file(&mut File::open(&path).unwrap()).unwrap();
        assert_eq!(mapped.as_bytes(), b"0123456789");
        assert_eq!(read.as_bytes(), mapped.as_bytes());
        std::fs::remove_file(&path).unwrap();
    }
}
