//! GGUF chat templates (Jinja) rendered with minijinja, the way Hugging
//! Face's `apply_chat_template` renders them.

use std::io;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind as MjKind, State};
use serde_json::{json, Map, Value as Json};

use crate::{taint, Error, ErrorKind, Message, Rendered, Request, Result};

/// Renders a Jinja chat template.
pub(crate) fn render(src: &str, req: &Request) -> Result<Rendered> {
    let limits = req.limits;
    if taint::has_marks(src) {
        return Err(Error::new(
            ErrorKind::Syntax,
            "jinja template: contains the reserved characters U+FDD0/U+FDD1",
        ));
    }
    check_depth(src, limits.max_depth)?;

    let mut env = Environment::new();
    // Hugging Face: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(limits.max_steps));
    env.set_recursion_limit(limits.max_depth);
    env.set_unknown_method_callback(methods);
    env.add_function("raise_exception", raise_exception);
    let now = req.now();
    env.add_function("strftime_now", move |fmt: &str| strftime(fmt, now));
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim);
    env.add_template("chat", src)
        .map_err(|e| mj_error(e, false))?;
    let tmpl = env.get_template("chat").map_err(|e| mj_error(e, false))?;

    let msgs = req.conversation()?;
    let mut ctx = Map::new();
    ctx.insert(
        "messages".into(),
        Json::Array(msgs.iter().map(message_json).collect()),
    );
    let add_gen = req.add_generation_prompt && !req.continue_final_message;
    ctx.insert("add_generation_prompt".into(), Json::Bool(add_gen));
    ctx.insert("bos_token".into(), Json::String(req.bos_token.clone()));
    ctx.insert("eos_token".into(), Json::String(req.eos_token.clone()));
    if let Some(tools) = &req.tools {
        ctx.insert("tools".into(), wrap_leaves(tools));
    }
    if let Some(think) = req.think {
        ctx.insert("enable_thinking".into(), Json::Bool(think));
    }
    if let Some(level) = &req.think_level {
        ctx.insert("reasoning_effort".into(), Json::String(taint::wrap(level)));
    }

    let mut w = CappedWriter {
        buf: Vec::new(),
        cap: limits.max_output_bytes,
        over: false,
    };
    if let Err(e) = tmpl.render_captured_to(Json::Object(ctx), &mut w) {
        if w.over {
            return Err(output_too_large(limits.max_output_bytes));
        }
        return Err(mj_error(e, true));
    }
    let out = String::from_utf8(w.buf)
        .map_err(|_| Error::new(ErrorKind::Render, "jinja template: output is not utf-8"))?;
    let mut segments = taint::segments(&out);
    if req.continue_final_message {
        cut_after_final(&mut segments, &msgs)?;
    }
    Ok(Rendered { segments })
}

pub(crate) fn output_too_large(cap: usize) -> Error {
    Error::new(
        ErrorKind::OutputTooLarge,
        format!("chat template output is larger than the limit of {cap} bytes"),
    )
}

/// Hugging Face's `continue_final_message`: keep the output up to the end of
/// the last message's content.
fn cut_after_final(segments: &mut Vec<crate::Segment>, msgs: &[Message]) -> Result<()> {
    let last = msgs.last().map(|m| m.content.trim()).unwrap_or_default();
    let missing = || {
        Error::new(
            ErrorKind::Request,
            "continue_final_message: the final message's content is not in the rendered prompt",
        )
    };
    if last.is_empty() {
        return Err(missing());
    }
    let i = segments
        .iter()
        .rposition(|s| !s.trusted && s.text.contains(last))
        .ok_or_else(missing)?;
    let seg = &mut segments[i];
    let end = seg.text.rfind(last).unwrap_or_default() + last.len();
    seg.text.truncate(end);
    segments.truncate(i + 1);
    Ok(())
}

/// A message as Hugging Face templates see it: `role`, `content`, and when
/// present `thinking` (also as `reasoning_content`), `tool_calls` in the
/// OpenAI shape, and `name` for tool results. Strings from the request are
/// marked untrusted; the role is checked to be a plain word, so it is not.
fn message_json(m: &Message) -> Json {
    let mut o = Map::new();
    o.insert("role".into(), Json::String(m.role.clone()));
    o.insert("content".into(), Json::String(taint::wrap(&m.content)));
    if let Some(t) = &m.thinking {
        o.insert("thinking".into(), Json::String(taint::wrap(t)));
        o.insert("reasoning_content".into(), Json::String(taint::wrap(t)));
    }
    if !m.tool_calls.is_empty() {
        let calls = m
            .tool_calls
            .iter()
            .map(|c| {
                let mut call = json!({
                    "type": "function",
                    "function": {
                        "name": taint::wrap(&c.name),
                        "arguments": if c.arguments.is_null() { json!({}) } else { wrap_leaves(&c.arguments) },
                    }
                });
                if let Some(id) = &c.id {
                    call["id"] = Json::String(taint::wrap(id));
                }
                call
            })
            .collect();
        o.insert("tool_calls".into(), Json::Array(calls));
    }
    if let Some(n) = &m.tool_name {
        o.insert("name".into(), Json::String(taint::wrap(n)));
    }
    Json::Object(o)
}

/// `v` with every string value (not key) marked untrusted.
fn wrap_leaves(v: &Json) -> Json {
    match v {
        Json::String(s) => Json::String(taint::wrap(s)),
        Json::Array(a) => Json::Array(a.iter().map(wrap_leaves).collect()),
        Json::Object(o) => Json::Object(
            o.iter()
                .map(|(k, v)| (taint::strip(k), wrap_leaves(v)))
                .collect(),
        ),
        v => v.clone(),
    }
}

/// Rejects sources whose blocks or brackets nest deeper than `max`, before
/// the recursive parser sees them (HOSTILE.md row 37: 5,500 nested ifs).
fn check_depth(src: &str, max: usize) -> Result<()> {
    const OPENERS: [&str; 8] = ["if", "for", "macro", "call", "filter", "set", "with", "raw"];
    let mut blocks = 0usize;
    let mut brackets = 0usize;
    let mut rest = src;
    let too_deep = || {
        Error::new(
            ErrorKind::TooDeep,
            format!("jinja template: nesting is deeper than the limit of {max}"),
        )
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{#") {
            rest = r.split_once("#}").map_or("", |(_, after)| after);
            continue;
        }
        if let Some(r) = rest.strip_prefix("{%") {
            let r = r.trim_start_matches(['-', '+']).trim_start();
            let word: String = r
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if word.starts_with("end") {
                blocks = blocks.saturating_sub(1);
            } else if OPENERS.contains(&word.as_str()) {
                // `{% set x = 1 %}` has no end tag; only `{% set x %}` does.
                let stmt = r.split("%}").next().unwrap_or_default();
                if word != "set" || !stmt.contains('=') {
                    blocks += 1;
                }
            }
            rest = r;
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        match c {
            '(' | '[' | '{' => brackets += 1,
            ')' | ']' | '}' => brackets = brackets.saturating_sub(1),
            _ => {}
        }
        if blocks > max || brackets > max + 2 {
            return Err(too_deep());
        }
        rest = &rest[c.len_utf8()..];
    }
    Ok(())
}

fn mj_error(e: minijinja::Error, rendering: bool) -> Error {
    let kind = match e.kind() {
        MjKind::OutOfFuel => ErrorKind::TooManySteps,
        MjKind::SyntaxError => ErrorKind::Syntax,
        _ if e.to_string().contains("recursion") || e.to_string().contains("nested") => {
            ErrorKind::TooDeep
        }
        _ if rendering => ErrorKind::Render,
        _ => ErrorKind::Syntax,
    };
    let mut msg = e.to_string();
    if let Some(d) = e.detail() {
        if !msg.contains(d) {
            msg = format!("{msg}: {d}");
        }
    }
    Error::new(kind, format!("jinja template: {}", taint::strip(&msg)))
}

/// An `io::Write` that refuses to grow past `cap` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.buf.len() + b.len() > self.cap {
            self.over = true;
            return Err(io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---- functions and filters ----

fn raise_exception(msg: &str) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        MjKind::InvalidOperation,
        format!("raise_exception: {}", taint::strip(msg)),
    ))
}

/// Python string methods (minijinja-contrib's pycompat), made aware of the
/// taint marks: a method on a marked string runs on the plain text and its
/// string results are marked again, as a whole.
fn methods(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        if taint::has_marks(s) {
            let plain = Value::from(taint::strip(s));
            let r =
                minijinja_contrib::pycompat::unknown_method_callback(state, &plain, method, args)?;
            return Ok(rewrap(r));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn rewrap(v: Value) -> Value {
    if let Some(s) = v.as_str() {
        return Value::from(taint::wrap(s));
    }
    if v.kind() == ValueKind::Seq {
        if let Ok(it) = v.try_iter() {
            return Value::from(it.map(rewrap).collect::<Vec<_>>());
        }
    }
    v
}

/// Jinja's `trim`, aware of taint marks.
fn trim(s: &str, chars: Option<&str>) -> String {
    let cut = |t: &str| -> String {
        match chars {
            Some(cs) => t.trim_matches(|c| cs.contains(c)).to_string(),
            None => t.trim().to_string(),
        }
    };
    if taint::has_marks(s) {
        taint::wrap(&cut(&taint::strip(s)))
    } else {
        cut(s)
    }
}

/// Hugging Face's `tojson`: `json.dumps(x, ensure_ascii=False, indent=…,
/// sort_keys=…)` with Python's separators (`", "`, `": "`), no HTML escaping.
fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(i) if i.is_none() || i.is_undefined() => None,
        Some(i) => match i.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(i.as_usize().unwrap_or(0).min(32))),
        },
    };
    let j = serde_json::to_value(&v)
        .map_err(|e| minijinja::Error::new(MjKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_json(
        &j,
        indent.as_deref(),
        sort_keys.unwrap_or(false),
        0,
        &mut out,
    );
    // Keep the marks so that data stays untrusted, and mark it safe so that
    // no autoescape applies.
    Ok(Value::from_safe_string(out))
}

fn py_json(v: &Json, indent: Option<&str>, sort: bool, level: usize, out: &mut String) {
    let nl = |out: &mut String, level: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                py_json(x, indent, sort, level + 1, out);
            }
            nl(out, level);
            out.push(']');
        }
        Json::Object(o) if !o.is_empty() => {
            let mut items: Vec<(&String, &Json)> = o.iter().collect();
            if sort {
                items.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                py_json(x, indent, sort, level + 1, out);
            }
            nl(out, level);
            out.push('}');
        }
        v => out.push_str(&v.to_string()),
    }
}

/// Python's `strftime` for the directives chat templates use.
pub(crate) fn strftime(fmt: &str, t: time::OffsetDateTime) -> String {
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let day = DAYS[t.weekday().number_days_from_monday() as usize];
    let month = MONTHS[u8::from(t.month()) as usize - 1];
    let h12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut d = it.next();
        let pad = d != Some('-');
        if !pad {
            d = it.next();
        }
        let n2 = |n: u32| {
            if pad {
                format!("{n:02}")
            } else {
                n.to_string()
            }
        };
        match d {
            Some('Y') => out.push_str(&t.year().to_string()),
            Some('y') => out.push_str(&format!("{:02}", t.year().rem_euclid(100))),
            Some('m') => out.push_str(&n2(u8::from(t.month()).into())),
            Some('d') => out.push_str(&n2(t.day().into())),
            Some('e') => out.push_str(&format!("{:>2}", t.day())),
            Some('H') => out.push_str(&n2(t.hour().into())),
            Some('I') => out.push_str(&n2(h12.into())),
            Some('M') => out.push_str(&n2(t.minute().into())),
            Some('S') => out.push_str(&n2(t.second().into())),
            Some('p') => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{:03}", t.ordinal())),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('F') => out.push_str(&format!(
                "{}-{:02}-{:02}",
                t.year(),
                u8::from(t.month()),
                t.day()
            )),
            Some('%') => out.push('%'),
            Some(x) => {
                out.push('%');
                out.push(x);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_directives() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = time::OffsetDateTime::from_unix_timestamp(1_722_000_309).unwrap();
        assert_eq!(
            strftime("%d %b %Y|%-d %B|%A %a|%H:%M:%S %I%p|%j|%F|%%", t),
            "26 Jul 2024|26 July|Friday Fri|13:25:09 01PM|208|2024-07-26|%"
        );
    }

    #[test]
    fn python_json() {
        let v = json!({"b": [1, 2.5, "x<y>"], "a": {}});
        let mut s = String::new();
        py_json(&v, None, false, 0, &mut s);
        assert_eq!(s, r#"{"b": [1, 2.5, "x<y>"], "a": {}}"#);
        let mut s = String::new();
        py_json(&v, Some("  "), true, 0, &mut s);
        assert_eq!(
            s,
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.5,\n    \"x<y>\"\n  ]\n}"
        );
    }
}
