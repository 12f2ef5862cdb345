//! The NDX_DONE choreography at the end of a run (no incremental recursion).
//!
//! The generator (on the receiving side) ends phase 0 (normal transfers) with
//! NDX_DONE, then, once its receiver finished phase 0, ends the redo phase
//! (files whose whole-file checksum failed are requested again with full
//! sums), then the delay-updates phase and (protocol >= 31) the delete phase,
//! and finally says goodbye. The sender echoes each phase end while phases
//! remain (it has two: phase 0 and redo), ends its own loop with NDX_DONE,
//! writes its stats (server sender only), and with protocol >= 31 echoes the
//! delete-phase NDX_DONE before reading the goodbye.
//!
//! This module supports the options arsync uses remotely: no
//! `--delay-updates`, no `--delete-after`/`--delete-delay`.

use crate::error::{Error, Result};

/// Phases the sender and receiver loop through (phase 0 and the redo phase).
pub const MAX_PHASE: u32 = 2;

/// The generator's NDX_DONE schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorSchedule {
    /// NDX_DONEs sent after the phase-0 requests.
    pub after_phase0: usize,
    /// NDX_DONEs sent after the redo requests (redo, delay and, at >= 31,
    /// delete phase ends).
    pub after_redo: usize,
    /// The final goodbye NDX_DONE (protocol >= 24: always here).
    pub goodbye: usize,
}

impl GeneratorSchedule {
    /// The schedule for `protocol` with `delay_updates` / late deletion.
    pub fn new(protocol: i32, delay_updates: bool, late_delete: bool) -> Result<Self> {
        if delay_updates || late_delete {
            return Err(Error::Unsupported(
                "--delay-updates / --delete-after over the wire".into(),
            ));
        }
        Ok(GeneratorSchedule {
            after_phase0: 1,
            after_redo: if protocol >= 31 { 3 } else { 2 },
            goodbye: 1,
        })
    }
}

/// What a sender does with each NDX_DONE it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderDoneAction {
    /// Write NDX_DONE back and keep serving requests (next phase).
    Echo,
    /// Leave the file loop: write NDX_DONE, then (server) the stats, then
    /// start the goodbye exchange.
    EndOfFiles,
}

/// Tracks the sender's phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderPhases {
    phase: u32,
}

impl SenderPhases {
    /// Starts in phase 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current phase (0 normal, 1 redo, 2 delay).
    pub fn phase(&self) -> u32 {
        self.phase
    }

    /// Call for each NDX_DONE read in the file loop.
    pub fn on_done(&mut self) -> SenderDoneAction {
        self.phase += 1;
        if self.phase > MAX_PHASE {
            SenderDoneAction::EndOfFiles
        } else {
            SenderDoneAction::Echo
        }
    }

    /// True when requests still carry short (first-pass) checksums.
    pub fn is_redo(&self) -> bool {
        self.phase >= 1
    }
}

/// NDX_DONEs the sender expects during the goodbye after its stats:
/// protocol >= 31 echoes one and then reads the goodbye.
pub fn goodbye_reads(protocol: i32) -> usize {
    if protocol >= 31 {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a generator and a sender and checks the totals match rsync's
    /// sequence: generator writes 1 + after_redo + goodbye, the sender echoes
    /// two phases, ends its loop, then handles the goodbye.
    #[test]
    fn generator_and_sender_agree() {
        for proto in [30, 31, 32] {
            let g = GeneratorSchedule::new(proto, false, false).unwrap();
            let total = g.after_phase0 + g.after_redo + g.goodbye;
            let mut s = SenderPhases::new();
            let mut sender_writes = 0;
            let mut consumed = 0;
            loop {
                consumed += 1;
                match s.on_done() {
                    SenderDoneAction::Echo => sender_writes += 1,
                    SenderDoneAction::EndOfFiles => {
                        sender_writes += 1;
                        break;
                    }
                }
            }
            let reads = goodbye_reads(proto);
            consumed += reads;
            sender_writes += reads - 1;
            assert_eq!(consumed, total, "protocol {proto}");
            // The receiver reads: 2 echoes, the end-of-files, and at >= 31 one more echo.
            assert_eq!(sender_writes, if proto >= 31 { 4 } else { 3 });
        }
        assert!(GeneratorSchedule::new(31, true, false).is_err());
    }
}
