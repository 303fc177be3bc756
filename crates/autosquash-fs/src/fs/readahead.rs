//! Sequential readahead detection of one file.

/// Sequential readahead of one file: while reads follow each other, the next `window`
/// bytes are fetched (in parallel parts, so decompression uses every core) before they are
/// asked for, the window doubling from 1 MiB up to 64 MiB (or an eighth of the memory budget).
/// The kernel's own readahead arrives slightly out of order, so a read starting within 1 MiB
/// of where the last one ended still counts as sequential.
#[derive(Default)]
pub(super) struct Readahead {
    /// Where the last read ended.
    next: u64,
    window: u64,
    /// Everything before this has been fetched or is being fetched.
    ahead: u64,
}

const READAHEAD_MIN: u64 = 1 << 20;
pub(super) const READAHEAD_MAX: u64 = 64 << 20;
pub(super) const READAHEAD_PART: u64 = 4 << 20;

impl Readahead {
    /// Records a read of `offset..end` and returns the range to fetch ahead, if any.
    pub(super) fn advance(
        &mut self,
        offset: u64,
        end: u64,
        max_window: u64,
    ) -> Option<std::ops::Range<u64>> {
        let sequential =
            offset.abs_diff(self.next) <= READAHEAD_MIN && (offset > 0 || self.next > 0);
        self.next = self.next.max(end);
        if !sequential {
            self.window = 0;
            self.ahead = end;
            return None;
        }
        self.window = (self.window * 2).clamp(READAHEAD_MIN, max_window.max(READAHEAD_MIN));
        let target = end + self.window;
        // Only refill once half the window has been consumed, so fetches come in big parts.
        if self.ahead >= end + self.window / 2 {
            return None;
        }
        let from = self.ahead.max(end);
        self.ahead = target;
        Some(from..target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readahead_grows_on_sequential_reads_and_resets_on_seeks() {
        let mut r = Readahead::default();
        let max = 64 << 20;
        assert_eq!(
            r.advance(0, 131072, max),
            None,
            "the first read is no pattern yet"
        );
        let first = r
            .advance(131072, 262144, max)
            .expect("sequential read triggers readahead");
        assert_eq!(first, 262144..262144 + (1 << 20));
        // Slightly out of order (kernel readahead) still counts, and the window doubles.
        let mut fetched = vec![first];
        let mut offset = 262144;
        while offset < 40 << 20 {
            if let Some(range) = r.advance(offset, offset + 131072, max) {
                assert_eq!(
                    range.start,
                    fetched.last().unwrap().end,
                    "gap or overlap in readahead"
                );
                fetched.push(range);
            }
            offset += 131072;
        }
        assert!(r.window > 8 << 20, "window did not grow: {}", r.window);
        assert!(
            fetched.last().unwrap().end >= offset,
            "readahead fell behind the reader"
        );
        // A seek far away resets it.
        assert_eq!(r.advance(900 << 20, (900 << 20) + 4096, max), None);
        assert_eq!(r.window, 0);
        // The window never exceeds the cap.
        let mut r = Readahead::default();
        let mut offset = 0;
        for _ in 0..1000 {
            r.advance(offset, offset + (1 << 20), 4 << 20);
            offset += 1 << 20;
        }
        assert_eq!(r.window, 4 << 20);
    }
}
