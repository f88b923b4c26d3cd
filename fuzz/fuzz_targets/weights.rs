//! Raw bytes into the weights reader (`weights::from_bytes`), as they are and
//! with the header length repaired; see `src/weights_oracle.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hessfree_fuzz::weights_oracle::check_weights(data);
});
