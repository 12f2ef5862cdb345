//! The `dynfs` command: pool administration subcommands and the FUSE mount.
//!
//! `main.rs` only calls [`cli::main`]; the subcommands live in [`cli`], the mount and daemon
//! logic in [`mount`], and the kernel-request adaptor in [`fuse`].

pub mod cli;
pub mod fuse;
pub mod metrics;
pub mod mount;
