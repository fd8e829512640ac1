//! SITE.CFG: reading both forms (SPEC §0) and every delivery keyword (SPEC §1-§6, §10-§12).

mod model;

pub use model::*;
