//! SITE.CFG: reading both forms (CFG-1) and every delivery keyword (docs/behaviour.md: CFG, FWD,
//! WRK, POOL, RATE, COPY and DIST rules, and the examples EX-1 to EX-21).
//!
//! Entry points: [`load`], [`load_with_overrides`] and [`parse_str`]. A file with any error gives
//! [`ConfigError::Invalid`] holding every diagnostic of the file (errors and warnings, in file
//! order); a good file gives a [`SiteConfig`] whose `warnings` hold the warnings.

mod dist;
mod forward;
mod host;
mod model;
mod parse;
mod pools;
mod rate;
mod span;
mod view;

use std::path::{Path, PathBuf};

pub use dist::{MAX_WEIGHT, SELF};
pub use forward::{MAX_COUNT, MAX_WORKERS};
pub use model::*;
pub use parse::{DELIVERY_KEYWORDS, MAX_LINE_BYTES, PASSIVE_KEYWORDS};
pub use pools::parse_delivery_pool;
pub use view::ResolvedView;

use parse::{parse_sources, Source};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file has errors. `diagnostics` holds all of them and the warnings, in file order.
    #[error("{}", render(.diagnostics))]
    Invalid {
        /// Every finding, errors and warnings, in file order.
        diagnostics: Vec<Diagnostic>,
    },
    /// The file could not be read.
    #[error("cannot read {}: {source}", crate::text::escape_controls(&.path.display().to_string()))]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        #[source]
        /// Why it could not be read.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Every diagnostic (empty for an I/O error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics } => diagnostics,
            ConfigError::Io { .. } => &[],
        }
    }
    /// Only the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics()
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

fn render(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn finish(r: (Option<SiteConfig>, Vec<Diagnostic>)) -> Result<SiteConfig, ConfigError> {
    match r {
        (Some(cfg), _) => Ok(cfg),
        (None, diagnostics) => Err(ConfigError::Invalid { diagnostics }),
    }
}

/// Parses a rate-limit value in SMTP_RATE_LIMIT's syntax (`12Mbps AB:1.5Mbps`) found elsewhere
/// (the settings file's `[cluster] rate_limit`): `file`, `line` and `column` say where it starts,
/// for the diagnostics.
pub fn parse_rate_limit_value(
    text: &str,
    file: &str,
    line: usize,
    column: usize,
) -> Result<RateLimits, Vec<Diagnostic>> {
    let mut d = span::Diags::default();
    let s = span::Span {
        text,
        file,
        line,
        col: column,
    };
    match rate::parse_rate_limits(&s, &mut d) {
        Some(r) if !d.has_errors() => Ok(r),
        _ => Err(d.items),
    }
}

/// Parses the text of a SITE.CFG (either form); `file_name` is used in diagnostics.
pub fn parse_str(text: &str, file_name: &str) -> Result<SiteConfig, ConfigError> {
    finish(parse_sources(&[Source {
        name: file_name,
        text,
    }]))
}

/// Parses a main file and an override file (SITECFG.FILE, CFG-3) read after it: a keyword
/// set in the override replaces the main file's value.
pub fn parse_str_with_overrides(
    main: (&str, &str),
    overrides: (&str, &str),
) -> Result<SiteConfig, ConfigError> {
    finish(parse_sources(&[
        Source {
            name: main.1,
            text: main.0,
        },
        Source {
            name: overrides.1,
            text: overrides.0,
        },
    ]))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads and parses a SITE.CFG / go.user file.
pub fn load(path: &Path) -> Result<SiteConfig, ConfigError> {
    let text = read(path)?;
    parse_str(&text, &path.display().to_string())
}

/// Reads `main`, then `overrides` (SITECFG.FILE) when given (CFG-3).
pub fn load_with_overrides(
    main: &Path,
    overrides: Option<&Path>,
) -> Result<SiteConfig, ConfigError> {
    let Some(over) = overrides else {
        return load(main);
    };
    let (m, o) = (read(main)?, read(over)?);
    let (mn, on) = (main.display().to_string(), over.display().to_string());
    parse_str_with_overrides((&m, &mn), (&o, &on))
}

impl std::str::FromStr for TimeOfDay {
    type Err = String;
    /// `H:MM` or `HH:MM` on a 24-hour clock.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a time of day, expected HH:MM such as 07:30");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if h.len() > 2 || m.len() != 2 || !digits(h) || !digits(m) {
            return Err(bad());
        }
        let (h, m) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        TimeOfDay::new(h, m).ok_or_else(bad)
    }
}
