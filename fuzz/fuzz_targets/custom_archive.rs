//! Any bytes as pg_dump's custom archive stream, cut into pieces anywhere: the row counter
//! that watches every backup and every parallel restore must never panic, loop or claim
//! unbounded memory on a damaged or hostile archive — it says "not counted" instead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opsrunner::pg::custom_archive::RowCounter;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where the stream is cut, so pieces of every size are seen.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut).max(1);
    let mut counter = RowCounter::default();
    for chunk in stream.chunks(piece) {
        counter.feed(chunk);
    }
    let _ = counter.finish_layout();
    let mut whole = RowCounter::default();
    whole.feed(stream);
    let _ = whole.finish();
});
