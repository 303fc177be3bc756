//! A hand-written deflate encoder for one thing: [`zlib_zeros`], a zlib stream about a
//! thousandth the size of the run of zero bytes it inflates to (the raw material of the bombs).

/// LSB-first bit writer for a deflate stream.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, sent most significant bit first.
    fn code(&mut self, code: u64, len: u32) {
        for i in (0..len).rev() {
            self.put((code >> i) & 1, 1);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream inflating to `len` zero bytes, written directly: one dynamic-Huffman block whose
/// literal/length code has only literal 0 (`10`), end of block (`11`) and length 258 (`0`), and
/// whose distance code has distances 1 (`0`) and 2 (`1`). After one literal zero, every 258
/// further zeros cost two bits, so 64 MiB takes about 64 KiB.
pub(super) fn zlib_zeros(len: usize) -> Vec<u8> {
    let mut w = Bits {
        out: vec![0x78, 0x9c],
        acc: 0,
        n: 0,
    };
    w.put(1, 1); // BFINAL
    w.put(2, 2); // BTYPE = dynamic
    w.put(286 - 257, 5); // HLIT: literal/length codes 0..=285
    w.put(2 - 1, 5); // HDIST: distance codes 0 and 1
    w.put(18 - 4, 4); // HCLEN: code length codes up to symbol 1 in the permuted order
    // Code length code lengths, in the order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1:
    // symbol 18 (zero run of 11..=138) gets 1 bit, symbols 1 and 2 get 2 bits.
    for len in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        w.put(len, 3);
    }
    // Canonical codes: 18 -> 0, 1 -> 10, 2 -> 11.
    let len1 = |w: &mut Bits| w.code(0b10, 2);
    let len2 = |w: &mut Bits| w.code(0b11, 2);
    let zeros = |w: &mut Bits, n: u64| {
        w.code(0, 1);
        w.put(n - 11, 7);
    };
    len2(&mut w); // literal 0
    zeros(&mut w, 138); // literals 1..=138
    zeros(&mut w, 117); // literals 139..=255
    len2(&mut w); // end of block
    zeros(&mut w, 28); // lengths 257..=284
    len1(&mut w); // length 258 (symbol 285)
    len1(&mut w); // distance 1
    len1(&mut w); // distance 2
    if len > 0 {
        w.code(0b10, 2); // literal 0
        let rest = len - 1;
        for _ in 0..rest / 258 {
            w.code(0, 1); // length 258
            w.code(0, 1); // distance 1
        }
        for _ in 0..rest % 258 {
            w.code(0b10, 2);
        }
    }
    w.code(0b11, 2); // end of block
    let mut out = w.finish();
    let adler = ((len % 65521) as u32) << 16 | 1;
    out.extend_from_slice(&adler.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::format::MIB;
    use flate2::read::ZlibDecoder;
    use std::io::Read;

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ZlibDecoder::new(stream).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn hostile_zlib_zeros_inflates() {
        for len in [0, 1, 2, 3, 258, 259, 260, 1000, 8193, 100_000] {
            assert_eq!(inflate(&zlib_zeros(len)), vec![0u8; len], "len {len}");
        }
        assert!(zlib_zeros(64 * MIB).len() < 70 * 1024);
    }
}
