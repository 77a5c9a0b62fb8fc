//! The `MANHOLE` environment variable's parser; the checks are in `manhole::__fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let _ = manhole::__fuzz::manhole_env(&value);
});
