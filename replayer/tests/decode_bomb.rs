//! Decompression bombs cost memory up to the body limit, never up to what they would inflate
//! to: measured with an allocator that keeps each thread's peak of live bytes (its own test
//! binary, so that no other test shares the allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use bytes::Bytes;
use tapwire_replayer::compare::decode::{DecodeError, decode};

struct PeakPerThread;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(size: usize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get().saturating_add(size));
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

fn shrank(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(size)));
}

// SAFETY: every call is passed on to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for PeakPerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            // Both blocks may be live while the bytes are copied.
            grew(new_size);
            shrank(layout.size());
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: PeakPerThread = PeakPerThread;

const MIB: usize = 1 << 20;

/// The most bytes live at once on this thread while `work` runs, above those live before.
fn peak_while(work: impl FnOnce()) -> usize {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    work();
    PEAK.with(Cell::get) - before
}

fn response(coding: &str, body: &[u8]) -> Bytes {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat().into()
}

#[test]
fn a_gzip_bomb_costs_about_the_limit_not_what_it_inflates_to() {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0; 10 * MIB]).unwrap();
    let raw = response("gzip", &encoder.finish().unwrap());
    let mut result = None;
    let peak = peak_while(|| result = Some(decode(&raw, false, MIB)));
    assert!(
        matches!(result, Some(Err(DecodeError::TooLarge { limit: MIB }))),
        "{result:?}"
    );
    assert!(peak < 2 * MIB, "peak {peak} bytes for a 1 MiB limit");
}

#[test]
fn a_brotli_bomb_costs_the_limit_and_at_most_the_format_s_window() {
    // The largest window brotli allows (16 MiB), as a hostile target would choose: the decoder
    // allocates its ring buffer as the stream's header asks, whatever our limit.
    let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 9, 24);
    encoder.write_all(&vec![0; 64 * MIB]).unwrap();
    let raw = response("br", &encoder.into_inner());
    let mut result = None;
    let peak = peak_while(|| result = Some(decode(&raw, false, MIB)));
    assert!(
        matches!(result, Some(Err(DecodeError::TooLarge { limit: MIB }))),
        "{result:?}"
    );
    // Measured: 19.97 MB (the 16 MiB ring buffer, the decoder's tables, the 1 MiB buffer).
    assert!(
        peak < 2 * MIB + 20 * MIB,
        "peak {peak} bytes for a 1 MiB limit"
    );
}
