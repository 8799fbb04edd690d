//! The protobuf wire format, as much of it as a Perfetto trace needs:
//! varints, and length-delimited fields (strings, nested messages).
//!
//! A nested message is written in place: its length is not known until it
//! ends, so [`Proto::begin`] leaves room for the longest length prefix
//! a message here can need and [`Proto::end`] writes it and moves the body
//! up if the prefix came out shorter. Fields are written in the order the
//! caller gives: the same records always make the same bytes.

/// Wire type of a varint field.
const VARINT: u32 = 0;
/// Wire type of a length-delimited field.
const LEN: u32 = 2;
/// Bytes reserved for a nested message's length: 4 varint bytes hold up
/// to 2^28 - 1, far more than one packet of ours.
const LEN_ROOM: usize = 4;

/// A protobuf message under construction.
#[derive(Default)]
pub struct Proto {
    buf: Vec<u8>,
}

/// Where a nested message started, from [`Proto::begin`].
#[must_use = "a nested message must be ended"]
pub struct Nested(usize);

impl Proto {
    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the message, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// An unsigned varint field (`uint64`, `uint32`, an enum).
    pub fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(v);
        self
    }

    /// A signed varint field (`int64`, `int32`): two's complement, ten
    /// bytes for a negative number, as protobuf encodes `int64`.
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.uint(field, v as u64)
    }

    /// A `bool` field.
    pub fn bool(&mut self, field: u32, v: bool) -> &mut Self {
        self.uint(field, u64::from(v))
    }

    /// A `string` field. `&str` is UTF-8 already, as protobuf requires.
    pub fn str(&mut self, field: u32, s: &str) -> &mut Self {
        self.key(field, LEN);
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    /// Starts a nested message in `field`; every field until the matching
    /// [`Proto::end`] is the nested message's.
    pub fn begin(&mut self, field: u32) -> Nested {
        self.key(field, LEN);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; LEN_ROOM]);
        Nested(at)
    }

    /// Ends a nested message: writes its length where [`Proto::begin`] left
    /// room, and closes the gap if the length took fewer bytes.
    pub fn end(&mut self, nested: Nested) -> &mut Self {
        let at = nested.0;
        let body = self.buf.len() - at - LEN_ROOM;
        assert!(body < 1 << (7 * LEN_ROOM), "a nested message over 256 MiB");
        let mut len = [0u8; LEN_ROOM];
        let mut n = 0;
        let mut v = body;
        loop {
            len[n] = (v as u8 & 0x7f) | if v >= 0x80 { 0x80 } else { 0 };
            n += 1;
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        self.buf[at..at + n].copy_from_slice(&len[..n]);
        self.buf.drain(at + n..at + LEN_ROOM);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut Proto)) -> Vec<u8> {
        let mut p = Proto::default();
        f(&mut p);
        p.as_bytes().to_vec()
    }

    #[test]
    fn varints_as_the_protobuf_docs_show_them() {
        // "Base 128 Varints": 1 is 01, 150 is 96 01; key = field << 3 | wire.
        assert_eq!(
            bytes(|p| {
                p.uint(1, 1);
            }),
            [0x08, 0x01]
        );
        assert_eq!(
            bytes(|p| {
                p.uint(1, 150);
            }),
            [0x08, 0x96, 0x01]
        );
        assert_eq!(
            bytes(|p| {
                p.uint(1, 0);
            }),
            [0x08, 0x00]
        );
        assert_eq!(
            bytes(|p| {
                p.uint(1, u64::MAX);
            }),
            [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        // A field number past 15 takes a two-byte key (TracePacket's 58).
        assert_eq!(
            bytes(|p| {
                p.uint(58, 3);
            }),
            [0xd0, 0x03, 0x03]
        );
    }

    #[test]
    fn negative_ints_take_ten_bytes() {
        let b = bytes(|p| {
            p.int(4, -1);
        });
        assert_eq!(b.len(), 11);
        assert_eq!(b[0], 0x20);
        assert_eq!(b[10], 0x01);
    }

    #[test]
    fn strings_are_length_prefixed() {
        // The docs' "testing" in field 2.
        assert_eq!(
            bytes(|p| {
                p.str(2, "testing");
            }),
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
    }

    #[test]
    fn nested_messages_get_their_length_in_place() {
        // The docs' Test3 { c: Test1 { a: 150 } }: 1a 03 08 96 01.
        let b = bytes(|p| {
            let n = p.begin(3);
            p.uint(1, 150);
            p.end(n);
        });
        assert_eq!(b, [0x1a, 0x03, 0x08, 0x96, 0x01]);
        // Two levels, then a field after them.
        let b = bytes(|p| {
            let outer = p.begin(1);
            let inner = p.begin(2);
            p.uint(1, 1);
            p.end(inner);
            p.end(outer);
            p.uint(3, 2);
        });
        assert_eq!(b, [0x0a, 0x04, 0x12, 0x02, 0x08, 0x01, 0x18, 0x02]);
        // An empty nested message, and one longer than 127 bytes (a
        // two-byte length).
        assert_eq!(
            bytes(|p| {
                let n = p.begin(1);
                p.end(n);
            }),
            [0x0a, 0x00]
        );
        let long = "x".repeat(200);
        let b = bytes(|p| {
            let n = p.begin(1);
            p.str(1, &long);
            p.end(n);
        });
        // 203 = 0xcb 0x01: the string's key, its two-byte length, 200 bytes.
        assert_eq!(&b[..3], [0x0a, 0xcb, 0x01]);
        assert_eq!(&b[3..6], [0x0a, 0xc8, 0x01]);
        assert_eq!(b.len(), 3 + 203);
    }
}
