//! Test plugin `scorer` 2.0.0: scores 2 + bonus. Same code as scorer 1.0.0.
const VERSION: &str = "2.0.0";
const BASE: f64 = 2.0;
include!("../../scorer/src/pack.rs");
