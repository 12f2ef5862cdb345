//! rsync filter rules: include/exclude/merge syntax and matching.
