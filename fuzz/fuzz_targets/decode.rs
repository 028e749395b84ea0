#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio_pvm::fuzzing::{MAX_FRAME, decode};

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the stream is cut into reads (1..=256 bytes each); the rest is
    // the byte stream the control socket delivers.
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    let (_frames, _error, cap) = decode(stream, chunk);
    // The receive buffer never grows beyond what one maximal frame plus one read needs,
    // however the input is cut and whatever it claims.
    let bound = 2 * (MAX_FRAME + chunk) + 64;
    assert!(
        cap <= bound,
        "receive buffer reached {cap} bytes, above the bound {bound} (chunk {chunk}, {} input bytes)",
        stream.len()
    );
});
