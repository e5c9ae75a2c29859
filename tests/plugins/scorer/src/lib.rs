//! Test plugin `scorer` 1.0.0: scores 1 + bonus. See `pack.rs`.
const VERSION: &str = "1.0.0";
const BASE: f64 = 1.0;
include!("pack.rs");
