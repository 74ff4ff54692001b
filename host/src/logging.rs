//! Log set-up shared by the programs: to standard error, filtered by `RUST_LOG` (default: `info`
//! for checkvalve's own crates, `warn` for the libraries it uses), as text (coloured on a
//! terminal) or one flat JSON object per line for log collectors.
//!
//! A JSON line is `{"time": RFC 3339 UTC, "level": "INFO", "target": module, "message": text,
//! FIELD: value…}`: the event's fields sit beside the message (never nested), integers and
//! booleans are JSON numbers and booleans, and the fields a library's `log` records carry about
//! the build (`log.file`, `log.module_path`…) are left out. docs/operator.md lists the fields.

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people (what journald shows).
    #[default]
    Human,
    /// One flat JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The flag's value, to hand on to a child process.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// `x` to `digits` decimals, for a log field that is a number (a `format_args!` would make it
/// a string in JSON lines).
pub fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// The filter without `RUST_LOG`: checkvalve's crates at INFO, every library at WARN (their INFO
/// lines say nothing an operator acts on).
const DEFAULT_FILTER: &str = "warn,checkvalve_send=info,checkvalve_receive=info,\
checkvalve_status=info,checkvalve_sim=info,checkvalve_host=info,checkvalve_common=info,\
checkvalve_confine=info,checkvalve_formats=info";

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The format the logger was installed with (a child process is handed the same).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Installs the global logger.
pub fn init(format: LogFormat) {
    init_with(format, tracing_subscriber::layer::Identity::new());
}

/// Installs the global logger with `extra`, a layer that sees every event unfiltered (the
/// sender's status file keeps the last warning with one).
pub fn init_with<L: Layer<Registry> + Send + Sync + 'static>(format: LogFormat, extra: L) {
    let _ = FORMAT.set(format);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Human => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt.event_format(FlatJson).boxed(),
    };
    tracing_subscriber::registry()
        .with(extra)
        .with(fmt.with_filter(filter))
        .init();
}

/// One JSON object per event, its fields beside the message.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str(&json_line(
            std::time::SystemTime::now(),
            meta.level().as_str(),
            meta.target(),
            |visit| event.record(visit),
        ))?;
        writer.write_char('\n')
    }
}

/// The line for one event (without its newline); `record` hands the event's fields to the visitor.
fn json_line(
    time: std::time::SystemTime,
    level: &str,
    target: &str,
    record: impl FnOnce(&mut Fields),
) -> String {
    let mut fields = Fields(Vec::new());
    record(&mut fields);
    let message = fields
        .0
        .iter()
        .position(|(k, _)| k == "message")
        .map_or(Value::String(String::new()), |i| fields.0.remove(i).1);
    // The four fixed fields first, in this order, then the event's in the order it gives them.
    let head = [
        (
            "time",
            Value::String(humantime::format_rfc3339_micros(time).to_string()),
        ),
        ("level", Value::String(level.to_owned())),
        ("target", Value::String(target.to_owned())),
        ("message", message),
    ];
    let mut line = String::from("{");
    let mut put = |k: &str, v: &Value| {
        if line.len() > 1 {
            line.push(',');
        }
        line.push_str(&Value::String(k.to_owned()).to_string());
        line.push(':');
        line.push_str(&v.to_string());
    };
    for (k, v) in &head {
        put(k, v);
    }
    for (k, v) in &fields.0 {
        // An event field named like a fixed one keeps its value under a name of its own.
        if head.iter().any(|(h, _)| h == k) {
            put(&format!("field.{k}"), v);
        } else {
            put(k, v);
        }
    }
    line.push('}');
    line
}

/// An event's fields as JSON values, in the order the event gives them.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        // What a `log` record says about the library's build: not for operators.
        if !field.name().starts_with("log.") {
            self.0.push((field.name().to_owned(), value));
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.put(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` and the message arrive here as Display wrapped in Debug: the text as written.
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_flat_with_numbers_as_numbers_and_no_build_fields() {
        let line = json_line(
            std::time::UNIX_EPOCH,
            "INFO",
            "checkvalve_receive::outcome",
            |f| {
                f.0.push(("message".into(), Value::String("delivered".into())));
                f.0.push(("size".into(), Value::from(5_000u64)));
                f.0.push(("level".into(), Value::String("x".into())));
            },
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "delivered");
        assert_eq!(v["size"], 5_000);
        assert_eq!(v["field.level"], "x");
        assert!(!line.contains('\n'));
        assert!(line.starts_with(
            r#"{"time":"1970-01-01T00:00:00.000000Z","level":"INFO","target":"checkvalve_receive::outcome","message":"delivered","size":5000"#
        ));
    }
}
