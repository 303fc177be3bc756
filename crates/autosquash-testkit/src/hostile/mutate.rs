//! Seeded random corruptions of any image, biased towards the superblock and towards values
//! that sit on size and sign boundaries.

use super::format::SB_LEN;
use super::rng::Rng;

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x00ff_ffff,
    0x0100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// A position biased towards the superblock: a third of picks land in its first 96 bytes.
fn pick_pos(rng: &mut Rng, len: usize) -> usize {
    if rng.below(3) == 0 {
        rng.below(len.min(SB_LEN))
    } else {
        rng.below(len)
    }
}

fn mutate(image: &[u8], rng: &mut Rng) -> Vec<u8> {
    if image.is_empty() {
        return vec![rng.byte()];
    }
    let mut out = image.to_vec();
    let ops = 1 + rng.below(3);
    for _ in 0..ops {
        let n = out.len();
        if n == 0 {
            break;
        }
        match rng.below(10) {
            // Bit flips.
            0..=2 => {
                for _ in 0..1 + rng.below(4) {
                    let p = pick_pos(rng, n);
                    out[p] ^= 1 << rng.below(8);
                }
            }
            // Overwrite a short run with 0x00, 0xff or random bytes.
            3..=5 => {
                let p = pick_pos(rng, n);
                let run = (1 + rng.below(16)).min(n - p);
                let mode = rng.below(3);
                for b in &mut out[p..p + run] {
                    *b = match mode {
                        0 => 0x00,
                        1 => 0xff,
                        _ => rng.byte(),
                    };
                }
            }
            // Truncation, often inside the first 128 bytes.
            6 => {
                let new_len = if rng.below(4) == 0 {
                    rng.below(n.min(128))
                } else {
                    rng.below(n)
                };
                out.truncate(new_len);
            }
            // Copy a range over another part of the image.
            7 | 8 => {
                let run = 1 + rng.below(n.min(512));
                let src = rng.below(n - run + 1);
                let dst = rng.below(n - run + 1);
                out.copy_within(src..src + run, dst);
            }
            // An interesting little-endian value in a 2/4/8-byte field.
            _ => {
                let width = [2, 4, 8][rng.below(3)];
                if n >= width {
                    let p = pick_pos(rng, n - width + 1);
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    out[p..p + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
        }
    }
    if out == image {
        let p = pick_pos(rng, out.len());
        out[p] ^= 1 << rng.below(8);
    }
    out
}

/// `count` seeded mutations of `image` (bit flips, byte overwrites with 0x00/0xff/random,
/// truncations, copied ranges, interesting field values), deterministic for a seed. Mutation `i`
/// depends only on `seed` and `i`, so a longer run extends a shorter one. Every mutation differs
/// from `image`.
pub fn mutations(image: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
            rng.next();
            mutate(image, &mut rng)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::fixtures::random_bytes;

    #[test]
    fn hostile_mutations_are_deterministic() {
        let image = random_bytes(7, 8192);
        let m1 = mutations(&image, 42, 200);
        let m2 = mutations(&image, 42, 200);
        assert_eq!(m1.len(), 200);
        assert_eq!(m1, m2);
        assert_eq!(&mutations(&image, 42, 50)[..], &m1[..50]);
        assert_ne!(mutations(&image, 43, 200), m1);
        assert!(m1.iter().all(|m| m != &image));
        assert!(mutations(&image, 1, 0).is_empty());
        assert_eq!(mutations(&[], 1, 5).len(), 5);
        assert_eq!(mutations(&[0x55], 9, 30).len(), 30);
        // Some of each kind: shorter (truncated) and same-length (overwritten) images.
        assert!(m1.iter().any(|m| m.len() < image.len()));
        assert!(m1.iter().any(|m| m.len() == image.len()));
    }
}
