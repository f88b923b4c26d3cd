//! Raw bytes into the checkpoint reader (`Snapshot::decode`), as they are and
//! with the trailing checksum repaired; see `src/checkpoint_oracle.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hessfree_fuzz::checkpoint_oracle::check_checkpoint(data);
});
