//! Conformance scenarios (grown with the engine; see issue 6).
