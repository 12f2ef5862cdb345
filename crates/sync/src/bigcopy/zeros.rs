//! Finding the all-zero blocks of data just copied (`-S`), so they can be punched out.

use std::io;

/// Zero detection granularity: holes are made of whole blocks aligned to the file, the
/// block size of tmpfs and ext4.
pub(super) const BLOCK: u64 = 4096;

/// True if every byte of `block` is zero.
///
/// Most data blocks are rejected by their first 64-byte line alone (one cache line read per
/// block: the blocks were just written and may already have left the cache); then by a few
/// bytes spread over the block (data with a long zero prefix); only blocks that pass both
/// are scanned whole, a line at a time.
pub(super) fn is_zero(block: &[u8]) -> bool {
    let n = block.len();
    if n == 0 {
        return true;
    }
    if let Some(first) = block.first_chunk::<64>() {
        if line_or(first) != 0 {
            return false;
        }
    }
    if block[0] | block[n / 4] | block[n / 2] | block[n - 1 - n / 4] | block[n - 1] != 0 {
        return false;
    }
    // Whole 64-byte lines at a time: the OR of a line's words vectorises, and a data block
    // ends the scan at its first nonzero line.
    let mut lines = block.chunks_exact(64);
    for line in &mut lines {
        if line_or(line) != 0 {
            return false;
        }
    }
    lines.remainder().iter().all(|&b| b == 0)
}

/// The OR of the 8-byte words of a 64-byte line (zero only if the line is).
fn line_or(line: &[u8]) -> u64 {
    line.chunks_exact(8).fold(0u64, |a, w| {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        a | u64::from_ne_bytes(word)
    })
}

/// Calls `hole(from, to)` for each maximal run of all-zero blocks in `bytes`, which hold the
/// file's bytes at offset `start`. Blocks are aligned to the file (so holes line up with the
/// filesystem's blocks); the first and last may be partial, and a run reaching the end of
/// `bytes` ends there.
pub(super) fn zero_runs(
    bytes: &[u8],
    start: u64,
    mut hole: impl FnMut(u64, u64) -> io::Result<()>,
) -> io::Result<()> {
    let end = start + bytes.len() as u64;
    let mut run: Option<u64> = None;
    let mut at = start;
    while at < end {
        let block_end = ((at / BLOCK + 1) * BLOCK).min(end);
        let zero = is_zero(&bytes[(at - start) as usize..(block_end - start) as usize]);
        match (zero, run) {
            (true, None) => run = Some(at),
            (false, Some(from)) => {
                hole(from, at)?;
                run = None;
            }
            _ => {}
        }
        at = block_end;
    }
    if let Some(from) = run {
        hole(from, end)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain definitions the fast code must agree with.
    fn is_zero_slow(block: &[u8]) -> bool {
        block.iter().all(|&b| b == 0)
    }

    fn zero_runs_slow(bytes: &[u8], start: u64) -> Vec<(u64, u64)> {
        let end = start + bytes.len() as u64;
        let mut blocks = Vec::new();
        let mut at = start;
        while at < end {
            let block_end = ((at / BLOCK + 1) * BLOCK).min(end);
            let zero = is_zero_slow(&bytes[(at - start) as usize..(block_end - start) as usize]);
            blocks.push((at, block_end, zero));
            at = block_end;
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (from, to, zero) in blocks {
            if !zero {
                continue;
            }
            match runs.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => runs.push((from, to)),
            }
        }
        runs
    }

    fn runs_of(bytes: &[u8], start: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        zero_runs(bytes, start, |a, b| {
            runs.push((a, b));
            Ok(())
        })
        .unwrap();
        runs
    }

    #[test]
    fn zero_runs_are_file_aligned_blocks() {
        // Three blocks at file offset 4096: zero, data in its last byte, zero.
        let mut bytes = vec![0u8; 3 * 4096];
        bytes[2 * 4096 - 1] = 1;
        assert_eq!(runs_of(&bytes, 4096), vec![(4096, 8192), (12288, 16384)]);
        // The same bytes seen from offset 100: blocks are cut at file multiples of 4096.
        assert_eq!(runs_of(&bytes, 100), vec![(100, 8192), (12288, 12388)]);
        // No zeros, no runs; all zeros, one run.
        assert_eq!(runs_of(&[9u8; 10000], 0), vec![]);
        assert_eq!(runs_of(&vec![0u8; 10000], 0), vec![(0, 10000)]);
        // An error from the callback stops the search and comes back.
        let err = zero_runs(&[0u8; 10], 0, |_, _| Err(io::Error::other("x")));
        assert!(err.is_err());
    }

    #[test]
    fn one_nonzero_byte_anywhere_is_data() {
        for len in [1usize, 7, 8, 9, 63, 64, 65, 100, 4095, 4096] {
            let mut block = vec![0u8; len];
            assert!(is_zero(&block), "len {len}");
            for at in 0..len {
                block[at] = 0x80;
                assert!(!is_zero(&block), "len {len}, byte {at}");
                block[at] = 0;
            }
        }
        assert!(is_zero(&[]));
    }

    proptest! {
        #[test]
        fn is_zero_matches_definition(
            len in 0usize..9000,
            hits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..3),
        ) {
            let mut block = vec![0u8; len];
            if len > 0 {
                for (at, v) in &hits {
                    block[at.index(len)] = *v;
                }
            }
            prop_assert_eq!(is_zero(&block), is_zero_slow(&block));
            // An unaligned view of the same bytes.
            if len > 3 {
                prop_assert_eq!(is_zero(&block[3..]), is_zero_slow(&block[3..]));
            }
        }

        #[test]
        fn zero_runs_match_definition(
            blocks in proptest::collection::vec(0u8..3, 0..12),
            start in 0u64..10000,
            cut in 0usize..4096,
        ) {
            // Blocks of zeros (0), data in the first byte (1) or in the last byte (2),
            // placed at an arbitrary file offset and cut short at the end.
            let mut bytes = Vec::new();
            for b in &blocks {
                let mut block = vec![0u8; 4096];
                match b {
                    1 => block[0] = 7,
                    2 => block[4095] = 7,
                    _ => {}
                }
                bytes.extend_from_slice(&block);
            }
            let keep = bytes.len().saturating_sub(cut);
            bytes.truncate(keep);
            prop_assert_eq!(runs_of(&bytes, start), zero_runs_slow(&bytes, start));
        }
    }
}
