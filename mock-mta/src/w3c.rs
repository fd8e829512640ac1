//! The IIS W3C extended log (IIS-6): `exYYMMDD.log` files with `#Software`, `#Version`,
//! `#Date` and `#Fields` headers and one record per command; a new file when the (UTC) date changes.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Which fields the log has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum W3cFieldSet {
    /// The whitepaper's recommended set (default):
    /// `date time c-ip cs-username cs-method cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken`.
    #[default]
    Recommended,
    /// Every field IIS offers, in UI order.
    Full,
}

/// The recommended field set.
pub const RECOMMENDED_FIELDS: &str = "date time c-ip cs-username cs-method cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken";
/// The full field set, in the IIS UI order.
pub const FULL_FIELDS: &str = "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-stem cs-uri-query sc-status sc-substatus sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host cs(User-Agent) cs(Cookie) cs(Referer)";

/// W3C log settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct W3cConfig {
    /// The directory the `exYYMMDD.log` files go to (created if missing).
    pub dir: PathBuf,
    /// Which fields.
    #[serde(default)]
    pub fields: W3cFieldSet,
}

/// One log record (one command).
#[derive(Debug, Clone)]
pub(crate) struct W3cRecord<'a> {
    pub at: Timestamp,
    pub c_ip: String,
    pub username: Option<&'a str>,
    pub computer: &'a str,
    pub s_ip: Option<std::net::IpAddr>,
    pub s_port: Option<u16>,
    pub method: &'a str,
    pub query: &'a str,
    pub status: u16,
    pub sc_bytes: u64,
    pub cs_bytes: u64,
    pub time_taken_ms: i64,
}

/// A value as IIS writes it: `-` when empty, spaces as `+`.
pub(crate) fn field(v: &str) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.replace(' ', "+")
    }
}

#[derive(Debug)]
struct Open {
    date: Date,
    file: File,
}

/// The log writer (shared by all sessions; one line per write, flushed).
#[derive(Debug)]
pub(crate) struct W3cLog {
    cfg: W3cConfig,
    software: String,
    open: Mutex<Option<Open>>,
}

impl W3cLog {
    pub fn new(cfg: W3cConfig, iis_version: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)?;
        let major = iis_version.split('.').take(2).collect::<Vec<_>>().join(".");
        Ok(Self {
            cfg,
            software: format!("Microsoft Internet Information Services {major}"),
            open: Mutex::new(None),
        })
    }

    /// The file name for a UTC date.
    pub fn file_name(date: Date) -> String {
        format!("ex{}.log", date.strftime("%y%m%d"))
    }

    fn format(&self, r: &W3cRecord<'_>) -> String {
        let dt = r.at.to_zoned(TimeZone::UTC);
        let date = dt.strftime("%Y-%m-%d").to_string();
        let time = dt.strftime("%H:%M:%S").to_string();
        let user = field(r.username.unwrap_or(""));
        let query = field(r.query);
        match self.cfg.fields {
            W3cFieldSet::Recommended => format!(
                "{date} {time} {} {user} {} {query} {} 0 {} {} {}",
                r.c_ip,
                field(r.method),
                r.status,
                r.sc_bytes,
                r.cs_bytes,
                r.time_taken_ms
            ),
            W3cFieldSet::Full => format!(
                "{date} {time} {} {user} SMTPSVC1 {} {} {} {} - {query} {} 0 0 {} {} {} SMTP - - - -",
                r.c_ip,
                field(r.computer),
                r.s_ip.map_or("-".to_string(), |i| i.to_string()),
                r.s_port.unwrap_or(0),
                field(r.method),
                r.status,
                r.sc_bytes,
                r.cs_bytes,
                r.time_taken_ms
            ),
        }
    }

    pub fn write(&self, r: &W3cRecord<'_>) {
        let line = self.format(r);
        let date = r.at.to_zoned(TimeZone::UTC).date();
        let mut guard = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.as_ref().is_none_or(|o| o.date != date) {
            match self.open_file(date, r.at) {
                Ok(f) => *guard = Some(Open { date, file: f }),
                Err(e) => {
                    tracing::error!("W3C log: cannot open file: {e}");
                    return;
                }
            }
        }
        if let Some(o) = guard.as_mut() {
            if let Err(e) = writeln!(o.file, "{line}\r") {
                tracing::error!("W3C log write failed: {e}");
            }
        }
    }

    fn open_file(&self, date: Date, at: Timestamp) -> std::io::Result<File> {
        let path = self.cfg.dir.join(Self::file_name(date));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let fields = match self.cfg.fields {
            W3cFieldSet::Recommended => RECOMMENDED_FIELDS,
            W3cFieldSet::Full => FULL_FIELDS,
        };
        let stamp = at.to_zoned(TimeZone::UTC).strftime("%Y-%m-%d %H:%M:%S");
        write!(
            f,
            "#Software: {}\r\n#Version: 1.0\r\n#Date: {stamp}\r\n#Fields: {fields}\r\n",
            self.software
        )?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_escaping() {
        assert_eq!(field(""), "-");
        assert_eq!(field(" FROM:<a@b> SIZE=10"), "+FROM:<a@b>+SIZE=10");
    }

    #[test]
    fn file_names() {
        assert_eq!(
            W3cLog::file_name(jiff::civil::date(2026, 11, 2)),
            "ex261102.log"
        );
    }
}
