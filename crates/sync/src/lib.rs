//! Local sync engine with rsync semantics.
