//! Raw bytes into the IDX labels parser. Input starting with the gzip magic
//! goes through the decompressor, so the gzip seeds explore damaged gzip too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hessfree_fuzz::check_labels(data);
});
