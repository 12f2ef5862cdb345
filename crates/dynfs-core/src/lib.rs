//! DynamicFS storage engine: extents, replication, Reed-Solomon, BLAKE3, redb metadata.
