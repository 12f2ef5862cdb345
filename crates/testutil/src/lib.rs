//! Test helpers: tree generation and exact tree comparison.
