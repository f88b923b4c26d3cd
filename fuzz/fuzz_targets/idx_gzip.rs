//! The input is gzip-compressed before parsing, so the fuzzer mutates the
//! IDX content behind a valid gzip layer (mutating compressed bytes directly
//! mostly breaks the CRC); both the images and the labels parser run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hessfree_fuzz::check_gzip_wrapped(data);
});
