//! The log: events as lines on stderr (the journal under systemd), in tracing-subscriber's
//! default format, `2025-01-31T12:00:00.000000Z  INFO ocf_agent::board: message key=value`.
//!
//! A small `tracing::Subscriber` of its own rather than tracing-subscriber's `fmt` layer and
//! registry: the agent logs events only (no spans), and on the board RSS follows binary size
//! (README.md, "Performance").
//!
//! `OCF_LOG` takes a level (`debug`) or per-target levels (`ocf_agent=debug,warn`), like
//! tracing-subscriber's `Targets`: the longest target prefix that matches an event decides, a
//! bare level is the default, a bare target means every level.

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata};

/// Installs the subscriber, filtered by `OCF_LOG` (default `info`).
pub fn init() {
    let filter = match std::env::var("OCF_LOG") {
        Ok(spec) => Filter::parse(&spec).unwrap_or_else(|e| {
            eprintln!("ocf-agent: OCF_LOG={spec:?} is not a log filter ({e}); using info");
            Filter::default()
        }),
        Err(_) => Filter::default(),
    };
    let subscriber = StderrLog {
        filter,
        ansi: std::io::stderr().is_terminal(),
    };
    // Fails only if a subscriber is already installed.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Per-target maximum levels.
#[derive(Debug)]
struct Filter {
    /// Target prefix and level, longest prefix first.
    targets: Vec<(String, LevelFilter)>,
    default: LevelFilter,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            targets: Vec::new(),
            default: LevelFilter::INFO,
        }
    }
}

impl Filter {
    /// `level` | `target` | `target=level`, comma-separated.
    fn parse(spec: &str) -> Result<Filter, String> {
        let mut filter = Filter {
            targets: Vec::new(),
            default: LevelFilter::OFF,
        };
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some((target, level)) => filter
                    .targets
                    .push((target.to_string(), parse_level(level)?)),
                None => match parse_level(directive) {
                    Ok(level) => filter.default = level,
                    Err(_) => filter
                        .targets
                        .push((directive.to_string(), LevelFilter::TRACE)),
                },
            }
        }
        filter.targets.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        Ok(filter)
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(prefix, _)| target.starts_with(prefix.as_str()))
            .map_or(self.default, |t| t.1)
    }

    fn max_level(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|t| t.1)
            .fold(self.default, LevelFilter::max)
    }
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::OFF,
        "error" | "1" => LevelFilter::ERROR,
        "warn" | "2" => LevelFilter::WARN,
        "info" | "3" => LevelFilter::INFO,
        "debug" | "4" => LevelFilter::DEBUG,
        "trace" | "5" => LevelFilter::TRACE,
        _ => return Err(format!("invalid level {s:?}")),
    })
}

struct StderrLog {
    filter: Filter,
    /// Colour the level, as tracing-subscriber does on a terminal.
    ansi: bool,
}

impl tracing::Subscriber for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.level_for(metadata.target()) >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter.max_level())
    }

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut line = String::with_capacity(128);
        timestamp(&mut line);
        let level = metadata.level();
        if self.ansi {
            let colour = match *level {
                Level::TRACE => "35",
                Level::DEBUG => "34",
                Level::INFO => "32",
                Level::WARN => "33",
                Level::ERROR => "31",
            };
            let _ = write!(line, " \x1b[{colour}m{level:>5}\x1b[0m ");
        } else {
            let _ = write!(line, " {level:>5} ");
        }
        let _ = write!(line, "{}: ", metadata.target());
        let mut fields = Fields { line };
        event.record(&mut fields);
        let mut line = fields.line;
        line.push('\n');
        // One write per line, so lines from several threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    // The agent has no spans: they get a dummy id and are otherwise ignored.
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Writes the message, then the other fields as ` name=value` (`Debug` formatting, or what
/// `%` / `?` chose).
struct Fields {
    line: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name == "message" {
            let _ = write!(self.line, "{value:?}");
        } else if !name.starts_with("log.") {
            let sep = if self.line.ends_with(": ") { "" } else { " " };
            let _ = write!(
                self.line,
                "{sep}{}={value:?}",
                name.strip_prefix("r#").unwrap_or(name)
            );
        }
    }
}

/// The current UTC time as RFC 3339 with microseconds.
fn timestamp(out: &mut String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    );
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn filters() {
        let f = Filter::parse("ocf_agent=debug,ocf_agent::cloud=trace,warn").unwrap();
        assert_eq!(f.level_for("ocf_agent::board"), LevelFilter::DEBUG);
        assert_eq!(f.level_for("ocf_agent::cloud"), LevelFilter::TRACE);
        assert_eq!(f.level_for("rustls::client"), LevelFilter::WARN);
        assert_eq!(f.max_level(), LevelFilter::TRACE);
        let f = Filter::parse("debug").unwrap();
        assert_eq!(f.level_for("anything"), LevelFilter::DEBUG);
        assert_eq!(
            Filter::parse("ocf_agent").unwrap().level_for("ocf_agent"),
            LevelFilter::TRACE
        );
        assert!(Filter::parse("ocf_agent=loud").is_err());
    }
}
