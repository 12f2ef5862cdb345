//! The `dynfs` command: pool administration subcommands and the FUSE mount.
//!
//! `main.rs` only calls [`cli::main`]; the subcommands live in [`cli`], the mount and daemon
//! logic in [`mount`], and the kernel-request adaptor in [`fuse`]. A mounted daemon runs its
//! scrub, rebuild and drain jobs through [`jobs`] and answers admin commands on the control
//! socket of [`control`].

pub mod cli;
pub mod control;
pub mod fuse;
pub mod jobs;
pub mod metrics;
pub mod mount;
