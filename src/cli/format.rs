//! Output the way docker prints it: tables aligned like Go's tabwriter (minimum width 10,
//! padding 3), sizes in decimal units with three significant digits (`2.14MB`), relative times
//! (`2 hours ago`), `--format` with Go-template-like `{{.Field}}`, `{{json .}}`, `{{json .Field}}`
//! and a `table` prefix, and `--format json` for one JSON array (as podman).

use serde_json::{Map, Value};

/// Docker's `HumanSizeWithPrecision(size, 3)`: decimal units, no space.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", sig3(v), UNITS[i])
}

/// `%.3g` for values below 1000.
fn sig3(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// go-units `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if s < 1 {
        "Less than a second".into()
    } else if s == 1 {
        "1 second".into()
    } else if s < 60 {
        format!("{s} seconds")
    } else if s / 60 == 1 {
        "About a minute".into()
    } else if s < 3600 {
        format!("{} minutes", s / 60)
    } else if (s as f64 / 3600.0).round() as i64 == 1 {
        "About an hour".into()
    } else if s < 48 * 3600 {
        format!("{} hours", (s as f64 / 3600.0).round() as i64)
    } else if s < 7 * 24 * 3600 * 2 {
        plural(s / (24 * 3600), "day")
    } else if s < 24 * 3600 * 30 * 2 {
        plural(s / (24 * 3600 * 7), "week")
    } else if s < 24 * 3600 * 365 * 2 {
        plural(s / (24 * 3600 * 30), "month")
    } else {
        plural(s / (24 * 3600 * 365), "year")
    }
}

/// `N units ago` for a unix time.
pub fn ago(unix: i64) -> String {
    format!("{} ago", human_duration(crate::store::now() - unix))
}

/// Go's `time.String()` in UTC: `2026-11-29 06:06:08 +0000 UTC`.
pub fn go_time(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::store::image::civil(unix);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} +0000 UTC")
}

/// Docker's truncation with an ellipsis.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Aligns tab-separated lines like `tabwriter.NewWriter(w, 10, 1, 3, ' ', 0)`.
pub fn tabulate(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; ncols];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i + 1 < r.len() {
                widths[i] = widths[i].max(c.chars().count() + 3).max(10);
            }
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                for _ in c.chars().count()..widths[i] {
                    line.push(' ');
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A row of a listing: ordered (key, value) pairs; keys are the template field names.
pub type Row = Vec<(&'static str, Value)>;

fn row_object(r: &Row) -> Value {
    let mut m = Map::new();
    for (k, v) in r {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}

/// Go's `fmt` rendering of a value inside a template.
pub fn go_string(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(go_string).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(o) => format!(
            "map[{}]",
            o.iter()
                .map(|(k, v)| format!("{k}:{}", go_string(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = cur.get(part)?;
    }
    Some(cur)
}

/// Errors in a `--format` template.
#[derive(Debug, thiserror::Error)]
#[error("template: {0}")]
pub struct TemplateError(pub String);

/// Renders a template for one value.
pub fn render(template: &str, v: &Value) -> Result<String, TemplateError> {
    let tpl = template.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = tpl.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| TemplateError(format!("unclosed action in {template:?}")))?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push_str(&action_value(action, v)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn action_value(action: &str, v: &Value) -> Result<String, TemplateError> {
    let words: Vec<&str> = action.split_whitespace().collect();
    match words.as_slice() {
        ["json", path] if path.starts_with('.') => {
            let x = lookup(v, path).ok_or_else(|| TemplateError(format!("no field {path}")))?;
            Ok(serde_json::to_string(x).expect("JSON values serialize"))
        }
        [path] if path.starts_with('.') => {
            let x = lookup(v, path).ok_or_else(|| {
                TemplateError(format!(
                    "can't evaluate field {}",
                    path.trim_start_matches('.')
                ))
            })?;
            Ok(go_string(x))
        }
        ["upper", path] if path.starts_with('.') => {
            Ok(go_string(lookup(v, path).unwrap_or(&Value::Null)).to_uppercase())
        }
        ["lower", path] if path.starts_with('.') => {
            Ok(go_string(lookup(v, path).unwrap_or(&Value::Null)).to_lowercase())
        }
        ["join", path, sep] if path.starts_with('.') => {
            let sep = sep.trim_matches('"');
            match lookup(v, path) {
                Some(Value::Array(a)) => Ok(a.iter().map(go_string).collect::<Vec<_>>().join(sep)),
                Some(x) => Ok(go_string(x)),
                None => Ok(String::new()),
            }
        }
        _ => Err(TemplateError(format!(
            "unsupported action {{{{{action}}}}}"
        ))),
    }
}

/// Prints rows: a table with `headers` by default, or as `--format` asks.
pub fn print_rows(
    rows: &[Row],
    headers: &[(&str, &str)],
    format: Option<&str>,
) -> Result<(), TemplateError> {
    let mut out = String::new();
    match format {
        Some("json") => {
            let arr: Vec<Value> = rows.iter().map(row_object).collect();
            out = serde_json::to_string_pretty(&Value::Array(arr)).expect("JSON values serialize");
            out.push('\n');
        }
        Some(f) if f.starts_with("table") => {
            let body = f["table".len()..].trim_start();
            let body = if body.is_empty() {
                headers
                    .iter()
                    .map(|(k, _)| format!("{{{{.{k}}}}}"))
                    .collect::<Vec<_>>()
                    .join("\t")
            } else {
                body.to_string()
            };
            let mut header_obj = Map::new();
            for (k, h) in headers {
                header_obj.insert((*k).to_string(), Value::String((*h).to_string()));
            }
            let mut lines = vec![render(&body, &Value::Object(header_obj))?];
            for r in rows {
                lines.push(render(&body, &row_object(r))?);
            }
            out = tabulate(&lines);
        }
        Some(f) => {
            for r in rows {
                out.push_str(&render(f, &row_object(r))?);
                out.push('\n');
            }
        }
        None => return print_rows(rows, headers, Some("table")),
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(2136576), "2.14MB");
        assert_eq!(human_size(1982256), "1.98MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn durations_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
        assert_eq!(human_duration(90 * 86400), "3 months");
        assert_eq!(human_duration(3 * 365 * 86400), "3 years");
    }

    #[test]
    fn templates() {
        let v =
            serde_json::json!({"Repository": "busybox", "Tag": "1.35", "Config": {"Env": ["A=1"]}});
        assert_eq!(
            render("{{.Repository}}:{{.Tag}}", &v).unwrap(),
            "busybox:1.35"
        );
        assert_eq!(render("{{json .Config.Env}}", &v).unwrap(), "[\"A=1\"]");
        assert_eq!(render("{{ .Config.Env }}", &v).unwrap(), "[A=1]");
        assert!(render("{{.Nope}}", &v).is_err());
        assert!(render("{{.Repository", &v).is_err());
    }

    #[test]
    fn table_alignment() {
        let t = tabulate(&["A\tBB\tC".into(), "longer-value-here\tx\ty".into()]);
        assert_eq!(
            t,
            // Each column: its widest cell plus 3, at least 10 (docker's tabwriter settings).
            "A                   BB        C\nlonger-value-here   x         y\n"
        );
    }
}
