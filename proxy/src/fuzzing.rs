//! Entry points for the `fuzz/` targets over the proxy's parsers of untrusted bytes, and the
//! replay of their corpus on stable. Each must return without panicking, whatever it is fed;
//! the asserts are invariants whose failure is a bug.

use bytes::Bytes;

use crate::dialect::{Endpoint, UsageScanner};
use crate::pipeline::inspect;

/// A client request body: parsed, and if accepted, rebuilt for an upstream and parsed again
/// to the same model and stream flag.
pub fn request_body(data: &[u8]) {
    if let Ok(inference) = inspect::parse(Bytes::copy_from_slice(data), Endpoint::ChatCompletions) {
        let rebuilt = inference.body_for("upstream-model");
        let again = inspect::parse(rebuilt, Endpoint::Messages);
        assert!(again.is_ok(), "a rebuilt body no longer parses");
        if let Ok(again) = again {
            assert_eq!(&*again.model, "upstream-model");
            assert_eq!(again.stream, inference.stream);
        }
    }
}

/// An upstream response body, as SSE and as JSON, fed in uneven pieces.
pub fn sse_usage(data: &[u8]) {
    for content_type in ["text/event-stream", "application/json"] {
        let mut scanner = UsageScanner::new(Some(content_type));
        let mut rest = data;
        let mut step = 1;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(step.min(rest.len()));
            scanner.feed(piece);
            rest = tail;
            step = step * 3 % 17 + 1;
        }
        let _usage = scanner.finish();
    }
}

#[cfg(test)]
mod tests {
    /// Replays every file of `fuzz/corpus/<target>/` through the entry points on stable.
    #[test]
    fn fuzz_corpus_replays_without_panics() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, target) in [
            ("request_body", super::request_body as fn(&[u8])),
            ("sse_usage", super::sse_usage),
        ] {
            let dir = root.join(name);
            let mut count = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                target(&std::fs::read(entry.unwrap().path()).unwrap());
                count += 1;
            }
            assert!(count > 0, "{} has no corpus files", dir.display());
        }
    }
}
