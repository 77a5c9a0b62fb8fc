//! What a client sends: cut into reads, split into lines, each run as a command.
//!
//! The first byte says where to cut the rest into reads (so the fuzzer also explores lines
//! split across reads); the checks are in `manhole::__fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let whole = manhole::__fuzz::session_lines(&[rest]);
    let split = manhole::__fuzz::session_lines(&[&rest[..cut], &rest[cut..]]);
    assert_eq!(whole, split, "the lines depend on how the input was cut");
    for line in whole.into_iter().flatten() {
        manhole::__fuzz::command(line.trim());
    }
});
