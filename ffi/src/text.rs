//! Error texts: [`Text`], a fixed buffer written from static strings and integers without
//! `core::fmt`, and [`Reason`], what a failure writes into it.
//!
//! On hosts a core error writes its full `Display` text; on firmware (`target_os = "none"`) its
//! static summary (`summary()`), so that the library links neither `core::fmt` nor float
//! formatting there. The interface's own texts are written the same way on every target.

#[cfg(not(target_os = "none"))]
use core::fmt;

use expertslab::{LayoutError, PlanError, PolicyError, PoolError};

/// Bytes of error text a handle keeps (the text is cut at a character boundary to fit).
pub const ES_ERROR_CAPACITY: usize = 160;

/// A fixed buffer that keeps what fits of a text, cut at a character boundary.
pub(crate) struct Text<'a> {
    bytes: &'a mut [u8],
    len: usize,
}

impl<'a> Text<'a> {
    /// An empty text over `bytes`.
    pub(crate) fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes, len: 0 }
    }

    /// The bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `s`, cut at a character boundary when it does not fit.
    pub(crate) fn put(&mut self, s: &str) -> &mut Self {
        let mut n = s.len().min(self.bytes.len().saturating_sub(self.len));
        while !s.is_char_boundary(n) {
            n = n.saturating_sub(1);
        }
        self.push(s.as_bytes().get(..n).unwrap_or(&[]))
    }

    /// Appends `bytes`, whole characters that fit (callers cut them).
    fn push(&mut self, bytes: &[u8]) -> &mut Self {
        let end = self.len.saturating_add(bytes.len());
        if let Some(dest) = self.bytes.get_mut(self.len..end) {
            dest.copy_from_slice(bytes);
            self.len = end;
        }
        self
    }

    /// Appends `value` in decimal.
    pub(crate) fn num(&mut self, value: usize) -> &mut Self {
        // Digits from the last; `usize::MAX` has at most 20.
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = value;
        while let Some(digit) = start.checked_sub(1).and_then(|i| digits.get_mut(i)) {
            // `rest % 10` is below 10: it fits the low bits of `b'0'` (0x30).
            *digit = b'0' | (rest % 10) as u8;
            start = start.saturating_sub(1);
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        // ASCII digits: any prefix is whole characters.
        let room = self.bytes.len().saturating_sub(self.len);
        let digits = digits.get(start..).unwrap_or(&[]);
        self.push(digits.get(..room.min(digits.len())).unwrap_or(digits))
    }

    /// Appends `value` in decimal, signed.
    pub(crate) fn int(&mut self, value: i32) -> &mut Self {
        if value < 0 {
            self.put("-");
        }
        self.num(value.unsigned_abs() as usize)
    }

    /// Appends `value`'s `Display` text (hosts only: firmware links no `core::fmt`).
    #[cfg(not(target_os = "none"))]
    pub(crate) fn display(&mut self, value: &dyn fmt::Display) -> &mut Self {
        // `Text` keeps what fits and never reports an error.
        let _ = fmt::write(self, format_args!("{value}"));
        self
    }
}

#[cfg(not(target_os = "none"))]
impl fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.put(s);
        Ok(())
    }
}

/// What a failure writes as its text.
pub(crate) trait Reason {
    /// Writes the text into `text`.
    fn write(&self, text: &mut Text<'_>);
}

impl Reason for &str {
    fn write(&self, text: &mut Text<'_>) {
        text.put(self);
    }
}

/// A text built from pieces: `|t| { t.put("slot ").num(slot); }`.
impl<F: Fn(&mut Text<'_>)> Reason for F {
    fn write(&self, text: &mut Text<'_>) {
        self(text)
    }
}

/// The core's errors: the full text on hosts, the static summary on firmware.
macro_rules! core_reason {
    ($($error:ty),* $(,)?) => {$(
        impl Reason for $error {
            fn write(&self, text: &mut Text<'_>) {
                #[cfg(not(target_os = "none"))]
                text.display(self);
                #[cfg(target_os = "none")]
                text.put(self.summary());
            }
        }
    )*};
}

core_reason!(LayoutError, PlanError, PolicyError, PoolError);

/// A host-only error (trace parsing and replay): its `Display` text on hosts, `brief` on
/// firmware.
pub(crate) struct Brief<'a, E> {
    /// The error.
    pub(crate) error: &'a E,
    /// What firmware writes instead.
    pub(crate) brief: &'static str,
}

#[cfg(not(target_os = "none"))]
impl<E: fmt::Display> Reason for Brief<'_, E> {
    fn write(&self, text: &mut Text<'_>) {
        let _ = self.brief;
        text.display(self.error);
    }
}

#[cfg(target_os = "none")]
impl<E> Reason for Brief<'_, E> {
    fn write(&self, text: &mut Text<'_>) {
        let _ = self.error;
        text.put(self.brief);
    }
}

/// Writes `reason` to `f`: the `Display` of this crate's own errors on hosts, where the core's
/// `Display` impls print them inside theirs.
#[cfg(not(target_os = "none"))]
pub(crate) fn fmt_reason(reason: &dyn Reason, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut bytes = [0u8; ES_ERROR_CAPACITY];
    let mut text = Text::new(&mut bytes);
    reason.write(&mut text);
    let len = text.len();
    f.write_str(bytes.get(..len).and_then(|b| core::str::from_utf8(b).ok()).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(capacity: usize, write: impl FnOnce(&mut Text<'_>)) -> String {
        let mut bytes = vec![0u8; capacity];
        let mut text = Text::new(&mut bytes);
        write(&mut text);
        let len = text.len();
        String::from_utf8(bytes[..len].to_vec()).expect("a text is UTF-8")
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        assert_eq!(
            written(64, |t| {
                t.num(0).put(" ").num(7).put(" ").num(1234567890);
            }),
            "0 7 1234567890"
        );
        assert_eq!(
            written(64, |t| {
                t.num(usize::MAX);
            }),
            usize::MAX.to_string()
        );
        assert_eq!(
            written(64, |t| {
                t.int(-42).put(" ").int(i32::MIN);
            }),
            format!("-42 {}", i32::MIN)
        );
    }

    #[test]
    fn a_text_is_cut_at_a_character_boundary() {
        assert_eq!(
            written(5, |t| {
                t.put("abcd").put("é");
            }),
            "abcd"
        );
        assert_eq!(
            written(6, |t| {
                t.put("abcd").put("é");
            }),
            "abcdé"
        );
        assert_eq!(
            written(3, |t| {
                t.put("ab").num(12345);
            }),
            "ab1"
        );
    }

    #[test]
    fn core_errors_write_their_full_text_on_hosts() {
        let error = PolicyError::HalfLife(-1.5);
        assert_eq!(written(160, |t| error.write(t)), error.to_string());
    }
}
