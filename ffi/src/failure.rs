//! Failures and their texts: where a text is kept ([`ErrorText`], [`Keeper`]), the failure
//! that can only be made by keeping one ([`Failed`]), and what the checks of C arguments refuse
//! ([`Bad`], kept with [`OrKeep::or_keep`]). See the handles' module (`handle.rs`) for how entry
//! points use them.

use core::cell::{Cell, UnsafeCell};

use crate::status::EsStatus;
use crate::text::{Reason, Text, ES_ERROR_CAPACITY};

/// The kind word `kind` as an error text names it, with its article.
pub(crate) fn kind_name(kind: u8) -> &'static str {
    const NAMES: [&str; 8] =
        ["an unknown kind of", "an expert layout", "an arena", "a pool", "a plan", "a source", "a sink", "a trace"];
    NAMES.get(usize::from(kind)).copied().unwrap_or("an unknown kind of")
}

/// A kept error text. Written through a shared reference, so that a handle passed `const` (the
/// layout of a migration, an arena asked for its sizes) keeps its text too: the text is not part
/// of what `const` protects. Handles are used from one thread at a time, and no reference to the
/// bytes outlives the function that takes it.
#[repr(C)]
pub(crate) struct ErrorText {
    len: Cell<usize>,
    bytes: UnsafeCell<[u8; ES_ERROR_CAPACITY]>,
}

impl ErrorText {
    /// No text.
    pub(crate) const fn new() -> Self {
        Self { len: Cell::new(0), bytes: UnsafeCell::new([0; ES_ERROR_CAPACITY]) }
    }

    /// Writes `reason`'s text, cut to fit. Not generic: every failure path shares it (firmware
    /// code size).
    #[inline(never)]
    pub(crate) fn write(&self, reason: &dyn Reason) {
        // SAFETY: the only references to the bytes are this one and `read`'s, each of which ends
        // before its function returns, and neither function calls the other; `ErrorText` is not
        // `Sync`, and C uses a handle from one thread at a time.
        let bytes = unsafe { &mut *self.bytes.get() };
        let mut text = Text::new(bytes);
        reason.write(&mut text);
        self.len.set(text.len());
    }

    /// Runs `f` on the text kept.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: as in `write`; `f` is given a copy-out borrow and no way to reach `write`.
        let bytes = unsafe { &*self.bytes.get() };
        f(bytes.get(..self.len.get()).unwrap_or(&[]))
    }
}

/// A failure whose text was kept where the caller reads it: on the call's handle or in a
/// constructor's message. Only this module makes one, and only by keeping a text.
#[must_use = "a failure is returned to C as its status"]
#[derive(Debug)]
pub(crate) struct Failed(EsStatus);

impl Failed {
    /// The status C sees.
    pub(crate) fn status(self) -> EsStatus {
        self.0
    }
}

/// Where a failure's text is kept: a handle, a constructor's message, or [`Nowhere`].
pub(crate) trait Keeper {
    /// The text, or `None` for nowhere.
    fn errors(&self) -> Option<&ErrorText>;

    /// Keeps `reason`'s text and returns the failure of `status`.
    fn fail(&self, status: EsStatus, reason: impl Reason) -> Failed {
        if let Some(errors) = self.errors() {
            errors.write(&reason);
        }
        Failed(status)
    }
}

impl Keeper for ErrorText {
    fn errors(&self) -> Option<&ErrorText> {
        Some(self)
    }
}

/// Where the failures of a function with no handle and no message buffer go: nowhere, so that
/// their texts are neither written nor linked (firmware code size).
pub(crate) struct Nowhere;

impl Keeper for Nowhere {
    fn errors(&self) -> Option<&ErrorText> {
        None
    }
}

/// What was wrong with a pointer, a handle or a caller buffer the checks below refused. It
/// becomes a failure only with its text ([`OrKeep::or_keep`]). Its values are bytes, so that a
/// check's result travels in registers (firmware code size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// A null pointer.
    Null,
    /// A pointer not a multiple of `1 << log2` bytes.
    Misaligned {
        /// The alignment's base-2 logarithm.
        log2: u8,
    },
    /// Memory whose first word is not a live handle's: freed, or never a handle.
    NoHandle,
    /// A live handle of another kind.
    Kind {
        /// Its kind word (0 when it is none of the kinds).
        is: u8,
        /// The kind word the call needs.
        wanted: u8,
    },
    /// A caller buffer too small for what it must hold.
    TooSmall,
    /// More elements than the address space holds.
    TooLong,
    /// A name that is not ASCII.
    NotAscii,
}

impl Bad {
    /// The status C sees.
    pub(crate) fn status(self) -> EsStatus {
        match self {
            Self::Null => EsStatus::NullPointer,
            Self::Misaligned { .. } => EsStatus::Misaligned,
            Self::NoHandle | Self::Kind { .. } => EsStatus::WrongHandle,
            Self::TooSmall { .. } => EsStatus::BufferTooSmall,
            Self::TooLong => EsStatus::OutOfRange,
            Self::NotAscii => EsStatus::InvalidArgument,
        }
    }

    /// Writes what is wrong, after the argument's name: `is null`, `is not aligned to 8 bytes`.
    pub(crate) fn describe(self, text: &mut Text<'_>) {
        match self {
            Self::Null => {
                text.put("is null");
            }
            Self::Misaligned { log2 } => {
                text.put("is not aligned to ").num(1usize.checked_shl(u32::from(log2)).unwrap_or(0)).put(" bytes");
            }
            Self::NoHandle => {
                text.put("is not a live handle (freed, or never one)");
            }
            Self::Kind { is, wanted } => {
                text.put("is ").put(kind_name(is)).put(" handle, not ").put(kind_name(wanted)).put(" handle");
            }
            Self::TooSmall => {
                text.put("is too small");
            }
            Self::TooLong => {
                text.put("has more elements than the address space holds");
            }
            Self::NotAscii => {
                text.put("is not ASCII");
            }
        }
    }
}

/// An argument the checks refused, named as the header names it (`` `slot` ``).
struct Arg {
    what: &'static str,
    bad: Bad,
}

impl Reason for Arg {
    fn write(&self, text: &mut Text<'_>) {
        text.put(self.what).put(" ");
        self.bad.describe(text);
    }
}

/// Keeps the text of an argument the checks refused.
pub(crate) trait OrKeep<T> {
    /// The value, or the failure with the text "`what` is null" (or what else was wrong) kept
    /// on `on`.
    fn or_keep(self, on: &impl Keeper, what: &'static str) -> Result<T, Failed>;
}

impl<T> OrKeep<T> for Result<T, Bad> {
    #[inline]
    fn or_keep(self, on: &impl Keeper, what: &'static str) -> Result<T, Failed> {
        match self {
            Ok(value) => Ok(value),
            Err(bad) => Err(keep_arg(on.errors(), what, bad)),
        }
    }
}

/// Keeps the text of an argument the checks refused (when there is somewhere to keep it): one
/// copy for every call site (firmware code size).
#[inline(never)]
fn keep_arg(on: Option<&ErrorText>, what: &'static str, bad: Bad) -> Failed {
    if let Some(errors) = on {
        errors.write(&Arg { what, bad });
    }
    Failed(bad.status())
}
