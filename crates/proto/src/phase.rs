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
//! With `--delay-updates` or a late deletion pass (`--delete-after`,
//! `--delete-delay`) the same markers are written, some of them only after
//! the receiver has finished the redo phase ([`GeneratorSchedule`]).

use crate::error::{Error, Result};

/// Phases the sender and receiver loop through (phase 0 and the redo phase).
pub const MAX_PHASE: u32 = 2;

/// One step of the generator's end-of-run sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenStep {
    /// Write NDX_DONE.
    Done,
    /// Write NDX_DEL_STATS and the counts (only when deleting).
    DelStats,
    /// Run the deletion pass now (`--delete-after` / `--delete-delay`).
    LateDelete,
}

/// The NDX_DONE schedule of a generator without incremental recursion, as
/// rsync's `generate_files` writes it: one NDX_DONE ends phase 0; the
/// redo-phase, delay-updates and (protocol >= 31) delete-phase markers
/// follow at once when those phases have nothing to wait for, otherwise
/// once the receiver has finished the redo phase; then the goodbye.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorSchedule {
    /// NDX_DONEs after the phase-0 requests.
    pub after_phase0: usize,
    /// Steps once the receiver has finished phase 0.
    pub at_phase0_done: Vec<GenStep>,
    /// Steps once the receiver has finished the redo phase.
    pub at_redo_done: Vec<GenStep>,
    /// NDX_DONEs of the goodbye.
    pub goodbye: usize,
}

impl GeneratorSchedule {
    /// The schedule for `protocol` with `--delay-updates` and a late
    /// (`--delete-after` / `--delete-delay`) deletion pass.
    pub fn new(protocol: i32, delay_updates: bool, late_delete: bool) -> Result<Self> {
        if protocol < 30 {
            return Err(Error::Unsupported(format!("protocol {protocol}")));
        }
        let (early_delay, early_delete) = (!delay_updates, !late_delete);
        let new31 = protocol >= 31;
        let mut p0 = vec![GenStep::Done];
        if early_delay {
            p0.push(GenStep::Done);
        }
        if new31 && early_delete {
            p0.push(GenStep::DelStats);
            if early_delay {
                p0.push(GenStep::Done);
            }
        }
        let mut redo = Vec::new();
        if !early_delay {
            redo.push(GenStep::Done);
            if new31 && early_delete {
                redo.push(GenStep::Done);
            }
        }
        if late_delete {
            redo.push(GenStep::LateDelete);
            if new31 {
                redo.push(GenStep::DelStats);
                redo.push(GenStep::Done);
            }
        }
        Ok(GeneratorSchedule {
            after_phase0: 1,
            at_phase0_done: p0,
            at_redo_done: redo,
            goodbye: 1,
        })
    }

    /// NDX_DONEs written in total (phase 0 to the goodbye).
    pub fn total_done(&self) -> usize {
        let steps = self.at_phase0_done.iter().chain(&self.at_redo_done);
        self.after_phase0 + steps.filter(|s| **s == GenStep::Done).count() + self.goodbye
    }
}

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
            let total = g.total_done();
            // Every combination writes the same markers, only later.
            for (d, l) in [(true, false), (false, true), (true, true)] {
                let other = GeneratorSchedule::new(proto, d, l).unwrap();
                assert_eq!(other.total_done(), total, "{proto} {d} {l}");
                assert!(!other.at_redo_done.is_empty());
            }
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
        assert!(GeneratorSchedule::new(29, false, false).is_err());
        let g = GeneratorSchedule::new(31, false, false).unwrap();
        assert_eq!(
            g.at_phase0_done,
            [
                GenStep::Done,
                GenStep::Done,
                GenStep::DelStats,
                GenStep::Done
            ]
        );
        assert!(g.at_redo_done.is_empty());
    }
}
