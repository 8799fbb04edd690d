//! A line under construction, for writers whose every row is the hot path.
//!
//! `core::fmt` with width and padding went through a formatter, a padding
//! loop writing one `char` at a time, and a `write_all` into the
//! `BufWriter` per piece: over half of portsnoop's CPU with the table on.
//! Here a row is built in one reused byte buffer and handed over whole.
//! Its pieces are a few bytes each, so they are copied inline: a call to
//! libc's `memcpy` per piece was a third of what remained.

/// A growable line of bytes with integer, hex and padding appends.
#[derive(Default)]
pub struct Line {
    buf: Vec<u8>,
}

impl Line {
    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the line, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Where the next byte goes: pass it to the `pad_*` calls.
    pub fn mark(&self) -> usize {
        self.buf.len()
    }

    /// Appends text.
    #[inline]
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.put(s.as_bytes());
        self
    }

    /// Appends bytes; pieces of up to 16 bytes without a call.
    #[inline(always)]
    fn put(&mut self, b: &[u8]) {
        let n = b.len();
        if n > 16 {
            self.buf.extend_from_slice(b);
            return;
        }
        self.buf.reserve(16);
        let len = self.buf.len();
        // SAFETY: 16 bytes of spare capacity were reserved and n <= 16; the
        // reads stay inside `b` (two overlapping words cover any n from
        // the word size to twice it), the writes inside the reservation,
        // and the n bytes are initialized before set_len.
        unsafe {
            let (src, dst) = (b.as_ptr(), self.buf.as_mut_ptr().add(len));
            use std::ptr::{read_unaligned as rd, write_unaligned as wr};
            if n >= 8 {
                wr(dst.cast::<u64>(), rd(src.cast::<u64>()));
                wr(
                    dst.add(n - 8).cast::<u64>(),
                    rd(src.add(n - 8).cast::<u64>()),
                );
            } else if n >= 4 {
                wr(dst.cast::<u32>(), rd(src.cast::<u32>()));
                wr(
                    dst.add(n - 4).cast::<u32>(),
                    rd(src.add(n - 4).cast::<u32>()),
                );
            } else if n >= 2 {
                wr(dst.cast::<u16>(), rd(src.cast::<u16>()));
                wr(
                    dst.add(n - 2).cast::<u16>(),
                    rd(src.add(n - 2).cast::<u16>()),
                );
            } else if n == 1 {
                *dst = *src;
            }
            self.buf.set_len(len + n);
        }
    }

    /// Appends one ASCII byte.
    #[inline]
    pub fn byte(&mut self, b: u8) -> &mut Self {
        self.buf.push(b);
        self
    }

    /// Appends `n` in decimal.
    #[inline]
    pub fn u64(&mut self, n: u64) -> &mut Self {
        let mut buf = [0u8; 20];
        self.put(decimal(n, &mut buf));
        self
    }

    /// Appends `n` in decimal, with a `-` if negative.
    #[inline]
    pub fn i64(&mut self, n: i64) -> &mut Self {
        if n < 0 {
            self.buf.push(b'-');
        }
        self.u64(n.unsigned_abs())
    }

    /// Appends `n` right-aligned in `width` columns (`{:>width}`).
    #[inline]
    pub fn i64_right(&mut self, n: i64, width: usize) -> &mut Self {
        let mut buf = [0u8; 20];
        let digits = decimal(n.unsigned_abs(), &mut buf);
        let len = digits.len() + usize::from(n < 0);
        self.blanks(width.saturating_sub(len));
        if n < 0 {
            self.buf.push(b'-');
        }
        self.put(digits);
        self
    }

    /// Appends `s` right-aligned in `width` columns (`{:>width}`).
    #[inline]
    pub fn str_right(&mut self, s: &str, width: usize) -> &mut Self {
        self.blanks(width.saturating_sub(chars(s.as_bytes())));
        self.str(s)
    }

    /// Appends `s` left-aligned in `width` columns (`{:<width}`).
    #[inline]
    pub fn str_left(&mut self, s: &str, width: usize) -> &mut Self {
        self.str(s);
        self.blanks(width.saturating_sub(chars(s.as_bytes())))
    }

    /// Appends `n` in lowercase hex, at least two digits (`{:02x}`).
    #[inline]
    pub fn hex2(&mut self, n: u64) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        let mut at = digits.len();
        let mut n = n;
        while n != 0 || digits.len() - at < 2 {
            at -= 1;
            digits[at] = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        self.put(&digits[at..]);
        self
    }

    /// Appends `n` zero-padded to six digits (`{:06}`).
    #[inline]
    pub fn u64_06(&mut self, n: u64) -> &mut Self {
        let mut buf = [0u8; 20];
        let digits = decimal(n, &mut buf);
        self.put(&b"000000"[..6usize.saturating_sub(digits.len())]);
        self.put(digits);
        self
    }

    /// Appends text the traced program controls, escaped for a terminal
    /// (see [`super::escape`]).
    #[inline]
    pub fn str_escaped(&mut self, s: &str) -> &mut Self {
        super::escape::escape_into(&mut self.buf, s);
        self
    }

    /// Appends `s` as a JSON string, quoted and escaped as serde_json does
    /// (`"`, `\\`, and control characters), and also, as `\u00NN` or
    /// `\uNNNN`, DEL, the C1 controls and the few other characters a
    /// terminal must not get raw (see [`super::escape`]): still valid JSON,
    /// decoding to the same string, and safe to `cat`.
    pub fn json_str(&mut self, s: &str) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.byte(b'"');
        let bytes = s.as_bytes();
        let mut from = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let short = match b {
                b'"' => b'"',
                b'\\' => b'\\',
                b'\n' => b'n',
                b'\r' => b'r',
                b'\t' => b't',
                0x08 => b'b',
                0x0c => b'f',
                0..=0x1f | 0x7f => 0,
                // Lead bytes of U+0080..U+00BF and U+2000..U+2FFF: on a
                // char boundary, since every byte before was ASCII or a
                // whole char's.
                0xc2 | 0xe2 => {
                    let c = s[i..].chars().next().expect("i is inside s");
                    if !super::escape::unsafe_char(c) {
                        i += c.len_utf8();
                        continue;
                    }
                    self.put(&bytes[from..i]);
                    let cp = c as u32;
                    self.put(&[
                        b'\\',
                        b'u',
                        HEX[(cp >> 12) as usize & 0xf],
                        HEX[(cp >> 8) as usize & 0xf],
                        HEX[(cp >> 4) as usize & 0xf],
                        HEX[cp as usize & 0xf],
                    ]);
                    i += c.len_utf8();
                    from = i;
                    continue;
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            self.put(&bytes[from..i]);
            if short != 0 {
                self.put(&[b'\\', short]);
            } else {
                self.put(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
            }
            i += 1;
            from = i;
        }
        self.put(&bytes[from..]);
        self.byte(b'"')
    }

    /// Left-aligns what was written since `start` in `width` columns
    /// (`{:<width}`), for text made of several appends.
    #[inline]
    pub fn pad_after(&mut self, start: usize, width: usize) -> &mut Self {
        let cols = chars(&self.buf[start..]);
        self.blanks(width.saturating_sub(cols))
    }

    #[inline]
    fn blanks(&mut self, n: usize) -> &mut Self {
        const BLANKS: &[u8; 16] = b"                ";
        let mut n = n;
        while n > 0 {
            let k = n.min(16);
            self.put(&BLANKS[..k]);
            n -= k;
        }
        self
    }
}

/// `n`'s decimal digits, written at the end of `buf`.
#[inline]
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// UTF-8 chars in `bytes`: every byte that does not continue a char.
#[inline]
fn chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| (**b & 0xc0) != 0x80).count()
}

#[cfg(test)]
mod tests {
    use super::Line;

    fn text(f: impl FnOnce(&mut Line)) -> String {
        let mut l = Line::default();
        f(&mut l);
        String::from_utf8(l.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn numbers_match_fmt() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(
                text(|l| {
                    l.u64(n);
                }),
                n.to_string()
            );
            assert_eq!(
                text(|l| {
                    l.hex2(n);
                }),
                format!("{n:02x}")
            );
        }
        for n in [0i64, -1, 7, -4095, i64::MIN, i64::MAX] {
            assert_eq!(
                text(|l| {
                    l.i64(n);
                }),
                n.to_string()
            );
        }
        for n in [0u64, 5, 123, 999_999] {
            assert_eq!(
                text(|l| {
                    l.u64_06(n);
                }),
                format!("{n:06}")
            );
        }
    }

    #[test]
    fn pieces_of_every_length_are_copied_whole() {
        let text: String = ('a'..='z').cycle().take(40).collect();
        for n in 0..=40 {
            let piece = &text[..n];
            assert_eq!(
                super::tests::text(|l| {
                    l.str("<").str(piece).str(">");
                }),
                format!("<{piece}>")
            );
            assert_eq!(
                super::tests::text(|l| {
                    l.str_left(piece, 40).str("|");
                }),
                format!("{piece:<40}|")
            );
        }
    }

    #[test]
    fn json_strings_are_escaped_as_serde_json_escapes_them() {
        let all: String = (0u8..0x7f).map(char::from).collect();
        for s in [
            "",
            "echo",
            "a\"b\\c",
            "tab\there\nnl",
            "é→x",
            all.as_str(),
            "\u{1f}end",
            "\u{a0}\u{2030}\u{e000}",
        ] {
            assert_eq!(
                text(|l| {
                    l.json_str(s);
                }),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    /// DEL, C1 and the separators and bidi controls: escaped where
    /// serde_json leaves them raw, and decoding to the same string.
    #[test]
    fn json_strings_keep_terminal_controls_escaped() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for (s, want) in [
            ("\u{7f}", r#""\u007f""#),
            ("a\u{9b}2J", r#""a\u009b2J""#),
            ("\u{80}\u{9f}\u{a0}", "\"\\u0080\\u009f\u{a0}\""),
            ("x\u{2028}y\u{202e}z\u{2069}", r#""x\u2028y\u202ez\u2069""#),
        ] {
            assert_eq!(
                text(|l| {
                    l.json_str(s);
                }),
                want,
                "{s:?}"
            );
        }
        let got = text(|l| {
            l.json_str(&all);
        });
        assert_eq!(serde_json::from_str::<String>(&got).unwrap(), all);
        assert!(!got.chars().any(super::super::escape::unsafe_char));
    }

    #[test]
    fn padding_matches_fmt_in_chars() {
        for s in ["", "ab", "read-entry", "é→x", "longer than eight"] {
            assert_eq!(
                text(|l| {
                    l.str_left(s, 8);
                }),
                format!("{s:<8}")
            );
            assert_eq!(
                text(|l| {
                    l.str_right(s, 8);
                }),
                format!("{s:>8}")
            );
            let after = text(|l| {
                l.str("|");
                let m = l.mark();
                l.str(s).str("!").pad_after(m, 8);
            });
            assert_eq!(after, format!("|{:<8}", format!("{s}!")));
        }
        for n in [0i64, 7, -1, 12345, -12345, 1234567] {
            assert_eq!(
                text(|l| {
                    l.i64_right(n, 5);
                }),
                format!("{n:>5}")
            );
        }
    }
}
