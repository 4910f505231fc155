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
    let mut loaded = std::collections::BTreeSet::new();
    for chunk in stream.chunks(piece) {
        counter.feed(chunk);
        // What a parallel restore asks as the archive arrives: which blocks started and
        // ended, where, and which indexes could be built now.
        for id in counter.take_started() {
            assert!(counter.block(id).is_some(), "a started block has a start");
        }
        for (id, _) in counter.take_completed() {
            let (start, end) = counter.block(id).expect("a completed block has a start");
            assert!(end.is_some_and(|end| end > start), "a completed block ends after it starts");
            loaded.insert(id);
        }
        if counter.head_parsed() {
            let _ = counter.toc().ready_after_data(&loaded);
        }
    }
    let _ = counter.finish_layout();
    // However the stream is cut, the counts are the same: the counter's fast path for
    // whole rows and its byte-by-byte path must agree.
    let mut cut = RowCounter::default();
    for chunk in stream.chunks(piece) {
        cut.feed(chunk);
    }
    let mut whole = RowCounter::default();
    whole.feed(stream);
    assert_eq!(cut.finish().ok(), whole.finish().ok(), "pieces of {piece}");
});
