//! Safe io_uring core: owned-buffer operations, batches, chains, registration, executor.
