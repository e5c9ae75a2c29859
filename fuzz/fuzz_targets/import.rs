//! Any bytes through the importers (customers CSV, events CSV, CDNOW lines; the
//! first byte picks one): parsing, row mapping and validation must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stagecraft::services::import::check_without_storing(data);
});
