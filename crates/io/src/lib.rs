//! Platform I/O: filesystem operations over io_uring or a thread-pool fallback.
