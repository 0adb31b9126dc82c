//! Finds tool calls in a model's streamed output, as Ollama's `tools.Parser`
//! does for template-driven models: after the template's tool-call tag
//! (`<tool_call>`, `[TOOL_CALLS]`; `template::TemplateCaps::tool_tag`), or
//! at the very start of the output when the tag is `{` (any JSON object),
//! each JSON object naming one of the request's tools is a call; its
//! arguments are the object's `arguments` or `parameters` (an object, or a
//! string holding one). Text before the tag is content; with a `{` or `[`
//! tag, text before the JSON means there are no calls.

use serde_json::{Map, Value};

use crate::think::overlap;

/// A call of a tool, parsed from the output.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// Its place among this output's calls, from 0.
    pub index: usize,
    /// The tool's name.
    pub name: String,
    /// Its arguments (a JSON object).
    pub arguments: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    LookingForTag,
    ToolCalling,
    Done,
}

/// A streaming tool-call parser ([`ToolParser::add`]).
#[derive(Clone, Debug)]
pub struct ToolParser {
    tag: String,
    names: Vec<String>,
    state: State,
    buffer: String,
    n: usize,
}

impl ToolParser {
    /// A parser for output whose calls follow `tag`, for `tools` (the
    /// request's `[{"type":"function","function":{"name":…}}]`).
    pub fn new(tag: &str, tools: &Value) -> ToolParser {
        let names = tools
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        ToolParser {
            tag: tag.to_string(),
            names,
            state: State::LookingForTag,
            buffer: String::new(),
            n: 0,
        }
    }

    /// Feeds the next piece of output: the calls complete now, and the text
    /// that is content (text that may be part of a call is held back).
    pub fn add(&mut self, s: &str) -> (Vec<ToolCall>, String) {
        if self.state == State::Done {
            return (vec![], s.to_string());
        }
        self.buffer.push_str(s);
        let mut content = String::new();
        if self.state == State::LookingForTag {
            let (at, found) = self.find_tag();
            content = self.buffer[..at].to_string();
            self.buffer.drain(..at);
            if (self.tag == "{" || self.tag == "[") && !content.trim().is_empty() {
                self.state = State::Done;
                content += &std::mem::take(&mut self.buffer);
                return (vec![], content);
            }
            if !found {
                return (vec![], content);
            }
            self.state = State::ToolCalling;
        }
        let mut calls = vec![];
        while let Some(c) = self.next_call() {
            calls.push(c);
        }
        if self.done() {
            self.state = State::Done;
            content = std::mem::take(&mut self.buffer);
        }
        (calls, content)
    }

    /// The content held back at the end of the output: a partial tag, or
    /// JSON that held no call (with a `{` or `[` tag); nothing once a call
    /// was found.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.buffer);
        match self.state {
            State::LookingForTag => rest,
            _ if self.n == 0 && (self.tag == "{" || self.tag == "[") => rest,
            _ => String::new(),
        }
    }

    /// Where the tag starts in the buffer and whether it is whole; else
    /// where a partial tag at its end starts, or its end.
    fn find_tag(&self) -> (usize, bool) {
        if let Some(i) = self.buffer.find(&self.tag) {
            return (i, true);
        }
        (self.buffer.len() - overlap(&self.buffer, &self.tag), false)
    }

    /// The next complete call in the buffer, which then starts after it.
    fn next_call(&mut self) -> Option<ToolCall> {
        let (name, mut end) = self.find_tool()?;
        let (arguments, at) = find_arguments(&name, &self.buffer)?;
        end = end.max(at);
        self.buffer.drain(..end);
        let c = ToolCall {
            index: self.n,
            name,
            arguments: Value::Object(arguments),
        };
        self.n += 1;
        Some(c)
    }

    /// The first tool named in the buffer (the longest name where several
    /// start at one place) and where its name ends; none while the buffer
    /// ends with the start of a name.
    fn find_tool(&self) -> Option<(String, usize)> {
        let buf = &self.buffer;
        let longest = self.names.iter().map(String::len).max().unwrap_or(0);
        for i in 1..=buf.len().min(longest) {
            let Some(tail) = buf.get(buf.len() - i..) else {
                continue;
            };
            if self
                .names
                .iter()
                .any(|n| tail.len() < n.len() && n.starts_with(tail))
            {
                return None;
            }
        }
        let mut best: Option<(usize, &String)> = None;
        for n in &self.names {
            let Some(pos) = buf.find(n.as_str()) else {
                continue;
            };
            if best.is_some_and(|(p, b)| pos > p || (pos == p && n.len() <= b.len())) {
                continue;
            }
            best = Some((pos, n));
        }
        best.map(|(pos, n)| (n.clone(), pos + n.len()))
    }

    /// With a `{` or `[` tag: the buffer's first bracket is closed (its JSON
    /// is over, calls or not).
    fn done(&self) -> bool {
        let (open, close) = match self.tag.as_str() {
            "{" => (b'{', b'}'),
            "[" => (b'[', b']'),
            _ => return false,
        };
        let mut depth = 0i64;
        let mut strings = Strings::default();
        for &c in self.buffer.as_bytes() {
            if strings.skip(c) {
                continue;
            }
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return true;
                }
            }
        }
        false
    }
}

/// Tracks JSON strings while scanning bytes.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Whether `c` is inside a string (or a quote), not structure.
    fn skip(&mut self, c: u8) -> bool {
        if self.escaped {
            self.escaped = false;
            return true;
        }
        match c {
            b'\\' => {
                self.escaped = true;
                true
            }
            b'"' => {
                self.inside = !self.inside;
                true
            }
            _ => self.inside,
        }
    }
}

/// The arguments of `tool` in the first JSON object of `buf` that parses
/// (the object itself when it holds none by name), and where that object's
/// closing brace is; none when there is none yet, or it names a tool
/// without arguments.
fn find_arguments(tool: &str, buf: &str) -> Option<(Map<String, Value>, usize)> {
    let mut start = None;
    let mut depth = 0i64;
    let mut strings = Strings::default();
    for (i, &c) in buf.as_bytes().iter().enumerate() {
        if strings.skip(c) {
            continue;
        }
        if c == b'{' {
            if depth == 0 {
                start = Some(i);
            }
            depth += 1;
        } else if c == b'}' {
            depth -= 1;
            if depth == 0 {
                if let Some(s) = start {
                    match serde_json::from_str::<Map<String, Value>>(&buf[s..=i]) {
                        Ok(data) => {
                            return match find_object(tool, &data) {
                                Some(Some(args)) => Some((args, i)),
                                // named, without arguments: not a call (as Ollama)
                                Some(None) => None,
                                None => Some((data, i)),
                            };
                        }
                        Err(_) => start = None,
                    }
                }
            }
            depth = depth.max(0);
        }
    }
    None
}

/// The arguments an object holds for `tool`: `Some(Some(args))` found,
/// `Some(None)` a call without arguments (`{"name": …}`), `None` not here.
fn find_object(tool: &str, obj: &Map<String, Value>) -> Option<Option<Map<String, Value>>> {
    let as_map = |v: Option<&Value>| match v {
        Some(Value::Object(m)) => Some(m.clone()),
        Some(Value::String(s)) => serde_json::from_str(s).ok(),
        _ => None,
    };
    if obj.contains_key("name") {
        let args = as_map(obj.get("arguments")).or_else(|| as_map(obj.get("parameters")));
        return Some(args);
    }
    if let Some(args) = as_map(obj.get(tool)) {
        return Some(Some(args));
    }
    obj.values().find_map(|v| match v {
        Value::Object(child) => find_object(tool, child),
        Value::Array(items) => items.iter().find_map(|x| match x {
            Value::Object(child) => find_object(tool, child),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather"}},
               {"type": "function", "function": {"name": "get"}}])
    }

    /// Feeds `text` in pieces of `n` characters; all calls and content.
    fn parse(tag: &str, text: &str, n: usize) -> (Vec<ToolCall>, String) {
        let mut p = ToolParser::new(tag, &tools());
        let chars: Vec<char> = text.chars().collect();
        let (mut calls, mut content) = (vec![], String::new());
        for piece in chars.chunks(n) {
            let (c, t) = p.add(&piece.iter().collect::<String>());
            calls.extend(c);
            content += &t;
        }
        content += &p.finish();
        (calls, content)
    }

    fn call(index: usize, name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            index,
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn calls_after_a_tag() {
        let text = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        for n in [1, 3, 1000] {
            let (calls, content) = parse("<tool_call>", text, n);
            assert_eq!(
                calls,
                [call(0, "get_weather", json!({"city": "Paris"}))],
                "pieces of {n}"
            );
            assert_eq!(content, "Let me check.", "pieces of {n}");
        }
    }

    #[test]
    fn json_objects_when_the_tag_is_a_brace() {
        let text = r#"{"name": "get", "parameters": "{\"q\": 1}"} {"name": "get_weather", "arguments": {"city": "Oslo"}}"#;
        let (calls, content) = parse("{", text, 2);
        assert_eq!(
            calls,
            [
                call(0, "get", json!({"q": 1})),
                call(1, "get_weather", json!({"city": "Oslo"}))
            ]
        );
        assert_eq!(content, "");
        // text first: no calls, all content
        let (calls, content) = parse("{", r#"Sure: {"name": "get"}"#, 1);
        assert!(calls.is_empty());
        assert_eq!(content, r#"Sure: {"name": "get"}"#);
        // JSON naming no tool is content
        let (calls, content) = parse("{", r#"{"a": 1} rest"#, 1);
        assert!(calls.is_empty());
        assert_eq!(content, r#"{"a": 1} rest"#);
    }

    #[test]
    fn other_shapes_of_arguments() {
        // {"get_weather": {...}}: the arguments under the tool's name
        let (calls, _) = parse("{", r#"{"get_weather": {"city": "Rome"}}"#, 1000);
        assert_eq!(calls, [call(0, "get_weather", json!({"city": "Rome"}))]);
        // a name without arguments is no call, as in Ollama
        let (calls, content) = parse("{", r#"{"name": "get"}"#, 1000);
        assert!(calls.is_empty());
        assert_eq!(content, r#"{"name": "get"}"#);
        // braces inside strings are text
        let (calls, _) = parse("{", r#"{"name": "get", "arguments": {"s": "}{\"x"}}"#, 1);
        assert_eq!(calls, [call(0, "get", json!({"s": "}{\"x"}))]);
    }

    #[test]
    fn a_partial_tag_at_the_end_is_content() {
        let (calls, content) = parse("<tool_call>", "hello <tool_c", 1);
        assert!(calls.is_empty());
        assert_eq!(content, "hello <tool_c");
    }
}
