//! Benchmark support (see issue 7).
