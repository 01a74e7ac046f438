//! `inspect_reader` on arbitrary bytes: it must never panic, and the 10 MB limit on the
//! uncompressed stream keeps gzip bombs bounded (libFuzzer's -timeout catches a slow input).
#![no_main]

use dropdeploy::archive::inspect::{Limits, inspect_reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_uncompressed: 10_000_000,
    };
    // Reading from a slice cannot fail, so the outer result is always Ok.
    let verdict = inspect_reader(data, &limits).expect("a byte slice never fails to read");
    // Accepted or rejected, the verdict must be printable (Display/Debug must not panic).
    match verdict {
        Ok(summary) => {
            let _ = format!("{summary:?}");
        }
        Err(rejection) => {
            let _ = format!("{rejection} {rejection:?}");
        }
    }
});
