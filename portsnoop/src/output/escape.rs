//! Text that the traced program controls, made safe for a terminal.
//!
//! Callback names, log messages and file names come from the traced
//! program, and paths come from whoever named the files. Written raw they could
//! clear the screen, set the window title, move the cursor or forge rows
//! (ESC, BEL, CR, LF...). Everywhere portsnoop shows such a string to a
//! person (the table, its lines on stderr, `portsnoop list`) it goes
//! through [`escape`] (or [`Escaped`], or `Line::str_escaped`). Each of
//! these characters is shown as an escape, never raw:
//!
//! - `\n`, `\r`, `\t` and `\\` (the backslash, so an escape shown is
//!   never ambiguous);
//! - the other C0 controls and DEL as `\xNN` (ESC is `\x1b`);
//! - the C1 controls U+0080..U+009F, which some terminals obey like ESC
//!   sequences (U+009B is CSI), as `\u{NN}`;
//! - the Unicode line and paragraph separators and the bidirectional
//!   overrides (U+200E/F, U+2028/9, U+202A..E, U+2066..9), which can make
//!   a row read as something else, as `\u{NNNN}`.
//!
//! Invalid UTF-8 in strings the app hands its probes is decoded lossily (to
//! U+FFFD) where it is read (`engine::raw`, `list`); names from the OS
//! (paths) show such bytes as `\xNN` ([`os_str`]).
//!
//! JSON output has its own quoting (`Line::json_str`). JSON's rules already
//! escape the C0 controls. The other characters above are escaped there as
//! `\u00NN`/`\uNNNN`, which is still valid JSON and decodes to the same
//! string.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal raw (see the module doc).
#[inline]
pub fn unsafe_char(c: char) -> bool {
    matches!(c,
        '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether byte `b` of UTF-8 text may start a character that needs
/// escaping: an ASCII control, DEL, the backslash, or the lead byte of
/// U+0080..U+00BF (0xc2) or of U+2000..U+2FFF (0xe2). Every other byte is
/// copied as it is without decoding.
#[inline(always)]
fn may_need(b: u8) -> bool {
    b < 0x20 || b == 0x7f || b == b'\\' || b == 0xc2 || b == 0xe2
}

/// Appends `s` to `out` with everything the module doc lists escaped.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut from = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !may_need(bytes[i]) {
            i += 1;
            continue;
        }
        // A byte `may_need` accepts is ASCII or a lead byte: `i` is on a
        // char boundary.
        let c = s[i..].chars().next().expect("i is inside s");
        let len = c.len_utf8();
        if c == '\\' || unsafe_char(c) {
            out.extend_from_slice(&bytes[from..i]);
            push_escape(out, c);
            from = i + len;
        }
        i += len;
    }
    out.extend_from_slice(&bytes[from..]);
}

fn push_escape(out: &mut Vec<u8>, c: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\0'..='\u{1f}' | '\u{7f}' => {
            let b = c as u8;
            out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        }
        _ => out.extend_from_slice(format!("\\u{{{:x}}}", c as u32).as_bytes()),
    }
}

/// `s` with everything the module doc lists escaped; borrowed when there
/// is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(may_need) || !s.chars().any(|c| c == '\\' || unsafe_char(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len() + 8);
    escape_into(&mut out, s);
    Cow::Owned(String::from_utf8(out).expect("escaping keeps UTF-8"))
}

/// Shows a string escaped: `format!("{}", Escaped(name))`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// A path as text, escaped.
pub fn path(p: &std::path::Path) -> String {
    os_str(p.as_os_str())
}

/// A name from the OS (a path, an argument) as text, escaped; bytes that
/// are not UTF-8 are shown as `\xNN`, so two different names never look
/// the same.
pub fn os_str(s: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::with_capacity(s.len());
    for chunk in s.as_bytes().utf8_chunks() {
        escape_into(&mut out, chunk.valid());
        for &b in chunk.invalid() {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    }
    String::from_utf8(out).expect("escaping keeps UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_names_show_bytes_that_are_not_utf8_as_hex() {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"/tmp/a\xff\x1b[2J\\b");
        assert_eq!(os_str(name), "/tmp/a\\xff\\x1b[2J\\\\b");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in [
            "",
            "echo",
            "fixture-cb",
            "é→x ü 日本",
            "a/b c.rs:42",
            "\u{a0}\u{2030}",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn controls_and_backslash_are_shown_as_escapes() {
        let cases = [
            ("a\nb", r"a\nb"),
            ("\r\t", r"\r\t"),
            ("back\\slash", r"back\\slash"),
            ("\x1b[2J", r"\x1b[2J"),
            ("\x07\x00\x7f", r"\x07\x00\x7f"),
            ("csi\u{9b}31m", r"csi\u{9b}31m"),
            ("\u{80}\u{9f}\u{a0}", "\\u{80}\\u{9f}\u{a0}"),
            ("ab\u{202e}cd", r"ab\u{202e}cd"),
            (
                "\u{2028}\u{2029}\u{2066}\u{200f}",
                r"\u{2028}\u{2029}\u{2066}\u{200f}",
            ),
            ("\u{fffd}ok", "\u{fffd}ok"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escape(raw), shown, "{raw:?}");
            let mut v = b"<".to_vec();
            escape_into(&mut v, raw);
            assert_eq!(v, format!("<{shown}").into_bytes());
            assert_eq!(Escaped(raw).to_string(), shown);
        }
    }

    /// The hostile name the end-to-end test fires: nothing a terminal acts
    /// on survives, and every character is still readable.
    #[test]
    fn a_hostile_name_has_no_control_left() {
        let hostile = "\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\r\u{9b}1A";
        let shown = escape(hostile);
        assert_eq!(shown, r"\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\r\u{9b}1A");
        assert!(!shown.chars().any(unsafe_char), "{shown:?}");
    }

    #[test]
    fn every_char_is_escaped_or_kept() {
        for cp in (0u32..0x3000).chain([0xfeff, 0x10ffff]) {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = c.to_string();
            let shown = escape(&s);
            if c == '\\' || unsafe_char(c) {
                assert!(
                    shown.starts_with('\\') && shown.len() > 1,
                    "{cp:#x}: {shown:?}"
                );
                assert!(!shown.chars().any(unsafe_char));
            } else {
                assert_eq!(shown, s, "{cp:#x}");
            }
        }
    }

    #[test]
    fn paths_are_escaped_with_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\xff\nb"));
        assert_eq!(path(p), "/tmp/a\\xff\\nb");
    }
}
