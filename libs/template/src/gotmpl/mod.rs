//! Ollama's Go templates: how Ollama fills in the data (`template.go`
//! `Execute`) over our own interpreter of the `text/template` subset.
//!
//! Three modes, as in Ollama:
//! - **suffix**: with [`Request::suffix`], `.Prompt` (the last user message)
//!   and `.Suffix` are rendered once (fill-in-the-middle);
//! - **messages**: a template that names `.Messages` gets `.System` (all
//!   system messages joined by a blank line), `.Messages` (consecutive
//!   messages of one role merged, except tool results), `.Tools`,
//!   `.Response` = "", `.Think`, `.ThinkLevel`, `.IsThinkSet`;
//! - **legacy**: any other template is rendered once per turn with
//!   `.System`/`.Prompt`/`.Response`, and the last turn is cut right after
//!   `{{ .Response }}` so the model writes the answer there.
//!
//! Differences from Go kept on purpose: a missing key prints as nothing
//! (Go prints `<no value>`); lists and maps print as JSON; `define`,
//! `template` and `block` are refused.

mod exec;
mod lex;
pub(crate) mod parse;

use std::rc::Rc;

use exec::{Exec, Val};
use parse::Node;

use crate::{Message, Rendered, Request, Result};

/// Renders an Ollama Go template.
pub(crate) fn render(src: &str, req: &Request) -> Result<Rendered> {
    let mut nodes = parse::parse(src, req.limits.max_depth)?;
    let mut vars = Vec::new();
    parse::identifiers(&nodes, &mut vars);
    let has = |v: &str| vars.iter().any(|x| x == v);
    let messages_mode = has("messages");
    if !messages_mode && !has("response") {
        // Ollama appends {{ .Response }} to templates that lack it.
        nodes.push(Node::Action(parse::Pipe {
            decl: Vec::new(),
            assign: false,
            cmds: vec![vec![parse::Arg::Field(vec!["Response".into()])]],
            line: 0,
        }));
    }

    let msgs = req.conversation()?;
    let mut ex = Exec::new(&req.limits, req.now());
    let think = |m: &mut Vec<(String, Val)>| {
        m.push(("Think".into(), Val::Bool(req.think.unwrap_or(false))));
        let level = match (&req.think_level, req.think) {
            (Some(l), _) => l.as_str(),
            (None, Some(true)) => "medium",
            (None, _) => "",
        };
        m.push(("ThinkLevel".into(), Val::str(level, false)));
        m.push(("IsThinkSet".into(), Val::Bool(req.think.is_some())));
    };
    let s = |x: &str| Val::str(x, false);

    if let Some(suffix) = req.suffix.as_deref().filter(|s| !s.is_empty()) {
        let prompt = msgs
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        if !prompt.is_empty() {
            let mut root = vec![
                ("Prompt".into(), s(prompt)),
                ("Suffix".into(), s(suffix)),
                ("Response".into(), Val::str("", true)),
            ];
            think(&mut root);
            ex.run(&nodes, &Val::Map(Rc::new(root)))?;
            return Ok(Rendered { segments: ex.out });
        }
    }

    let (system, collated) = collate(&msgs);
    if messages_mode {
        let mut root = vec![
            ("System".into(), s(&system)),
            (
                "Messages".into(),
                Val::List(Rc::new(collated.iter().map(message_val).collect())),
            ),
            (
                "Tools".into(),
                req.tools.as_ref().map_or(Val::Nil, tools_val),
            ),
            ("Response".into(), Val::str("", true)),
        ];
        think(&mut root);
        ex.run(&nodes, &Val::Map(Rc::new(root)))?;
        return Ok(Rendered { segments: ex.out });
    }

    // Legacy: one rendering per turn, the last one cut after .Response.
    let (mut system, mut prompt, mut response) = (String::new(), String::new(), String::new());
    let turn = |ex: &mut Exec, nodes: &[Node], sys: &str, p: &str, r: &str| -> Result<()> {
        let mut root = vec![
            ("System".into(), s(sys)),
            ("Prompt".into(), s(p)),
            ("Response".into(), s(r)),
        ];
        think(&mut root);
        let out = std::mem::take(&mut ex.out);
        ex.run(nodes, &Val::Map(Rc::new(root)))?;
        let new = std::mem::replace(&mut ex.out, out);
        for seg in new {
            crate::taint::push(&mut ex.out, seg.text, seg.trusted);
        }
        Ok(())
    };
    for m in &collated {
        match m.role.as_str() {
            "system" => {
                if !prompt.is_empty() || !response.is_empty() {
                    turn(&mut ex, &nodes, &system, &prompt, &response)?;
                    (prompt, response) = Default::default();
                }
                system = m.content.clone();
            }
            "user" => {
                if !response.is_empty() {
                    turn(&mut ex, &nodes, &system, &prompt, &response)?;
                    (system, response) = Default::default();
                }
                prompt = m.content.clone();
            }
            "assistant" => response = m.content.clone(),
            _ => {}
        }
    }
    let last = parse::cut_after_response(&nodes, &mut false);
    turn(&mut ex, &last, &system, &prompt, &response)?;
    Ok(Rendered { segments: ex.out })
}

/// Ollama's `collate`: all system messages joined by a blank line, and
/// consecutive messages of the same role (except `tool`) merged.
fn collate(msgs: &[Message]) -> (String, Vec<Message>) {
    let mut system = Vec::new();
    let mut out: Vec<Message> = Vec::new();
    for m in msgs {
        if m.role == "system" {
            system.push(m.content.as_str());
        }
        match out.last_mut() {
            Some(last) if last.role == m.role && m.role != "tool" => {
                last.content.push_str("\n\n");
                last.content.push_str(&m.content);
            }
            _ => out.push(m.clone()),
        }
    }
    (system.join("\n\n"), out)
}

/// A message as Ollama's `templateMessage`: `Role` (trusted: it was checked
/// to be a plain word), `Content`, `Thinking`, `Images`, `ToolCalls`
/// (`ID`, `Function.Index/Name/Arguments`), `ToolName`, `ToolCallID`.
fn message_val(m: &Message) -> Val {
    let s = |x: &str| Val::str(x, false);
    let calls = if m.tool_calls.is_empty() {
        Val::Nil
    } else {
        Val::List(Rc::new(
            m.tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let func = vec![
                        ("Index".into(), Val::Int(i as i64)),
                        ("Name".into(), s(&c.name)),
                        (
                            "Arguments".into(),
                            // Ollama prints nil arguments as {}.
                            match &c.arguments {
                                serde_json::Value::Null => Val::Map(Rc::new(Vec::new())),
                                a => sorted(Val::from_json(a)),
                            },
                        ),
                    ];
                    Val::Map(Rc::new(vec![
                        ("ID".into(), s(c.id.as_deref().unwrap_or_default())),
                        ("Function".into(), Val::Map(Rc::new(func))),
                    ]))
                })
                .collect(),
        ))
    };
    Val::Map(Rc::new(vec![
        ("Role".into(), Val::str(&m.role, true)),
        ("Content".into(), s(&m.content)),
        (
            "Thinking".into(),
            s(m.thinking.as_deref().unwrap_or_default()),
        ),
        ("Images".into(), Val::Nil),
        ("ToolCalls".into(), calls),
        (
            "ToolName".into(),
            s(m.tool_name.as_deref().unwrap_or_default()),
        ),
        ("ToolCallID".into(), s("")),
    ]))
}

/// Tools as Ollama's `templateTools`: each tool's keys in Ollama's struct
/// order (`type`, `function` with `name`, `description`, `parameters` with
/// `type`, `required`, `properties`), maps below sorted as Go marshals them.
fn tools_val(tools: &serde_json::Value) -> Val {
    const TOOL: [&str; 3] = ["type", "items", "function"];
    const FUNC: [&str; 3] = ["name", "description", "parameters"];
    const PARAMS: [&str; 5] = ["type", "$defs", "items", "required", "properties"];
    fn ordered(v: &serde_json::Value, order: &[&str], f: &dyn Fn(&str, Val) -> Val) -> Val {
        let Some(o) = v.as_object() else {
            return Val::from_json(v);
        };
        let mut out: Vec<(String, Val)> = Vec::new();
        for k in order {
            if let Some(x) = o.get(*k) {
                out.push((k.to_string(), f(k, Val::from_json(x))));
            }
        }
        let mut rest: Vec<_> = o
            .iter()
            .filter(|(k, _)| !order.contains(&k.as_str()))
            .collect();
        rest.sort_by(|a, b| a.0.cmp(b.0));
        out.extend(
            rest.into_iter()
                .map(|(k, x)| (k.clone(), sorted(Val::from_json(x)))),
        );
        Val::Map(Rc::new(out))
    }
    let Some(list) = tools.as_array() else {
        return Val::from_json(tools);
    };
    Val::List(Rc::new(
        list.iter()
            .map(|t| {
                let func = t.get("function").cloned().unwrap_or_default();
                let params = func.get("parameters").cloned().unwrap_or_default();
                let p = ordered(&params, &PARAMS, &|_, v| sorted(v));
                let f = ordered(&func, &FUNC, &|k, v| {
                    if k == "parameters" {
                        p.clone()
                    } else {
                        v
                    }
                });
                ordered(t, &TOOL, &|k, v| {
                    if k == "function" {
                        f.clone()
                    } else {
                        sorted(v)
                    }
                })
            })
            .collect(),
    ))
}

/// `v` with every map's keys sorted, as Go marshals maps.
fn sorted(v: Val) -> Val {
    match v {
        Val::Map(m) => {
            let mut kv: Vec<(String, Val)> = m
                .iter()
                .map(|(k, x)| (k.clone(), sorted(x.clone())))
                .collect();
            kv.sort_by(|a, b| a.0.cmp(&b.0));
            Val::Map(Rc::new(kv))
        }
        Val::List(l) => Val::List(Rc::new(l.iter().cloned().map(sorted).collect())),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Limits};

    fn run(src: &str, data: serde_json::Value) -> Result<String> {
        let limits = Limits::default();
        let nodes = parse::parse(src, limits.max_depth)?;
        let mut ex = Exec::new(&limits, time::OffsetDateTime::UNIX_EPOCH);
        ex.run(&nodes, &Val::from_json(&data))?;
        Ok(ex.out.iter().map(|s| s.text.as_str()).collect())
    }

    fn ok(src: &str, data: serde_json::Value) -> String {
        run(src, data).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn conditions_and_comparisons() {
        let d = serde_json::json!({"R": "tool", "N": 3, "E": "", "L": [1, 2]});
        assert_eq!(
            ok(
                r#"{{ if eq .R "user" "tool" }}y{{ else }}n{{ end }}"#,
                d.clone()
            ),
            "y"
        );
        assert_eq!(
            ok(
                r#"{{ if eq .R "a" }}a{{ else if eq .R "tool" }}t{{ else }}n{{ end }}"#,
                d.clone()
            ),
            "t"
        );
        assert_eq!(
            ok(
                r#"{{ ne .R "x" }} {{ lt 1 .N }} {{ gt 1 .N }} {{ le 3 .N }} {{ ge 2.5 .N }}"#,
                d.clone()
            ),
            "true true false true false"
        );
        assert_eq!(
            ok(
                r#"{{ and .N .R }}|{{ and .E .R }}|{{ or .E .N }}|{{ not .E }}"#,
                d.clone()
            ),
            "tool||3|true"
        );
        assert_eq!(
            ok(
                r#"{{ with .R }}[{{ . }}]{{ end }}{{ with .E }}x{{ else with .N }}{{ . }}{{ end }}"#,
                d.clone()
            ),
            "[tool]3"
        );
        // Missing keys are zero values, also deep.
        assert_eq!(
            ok(
                r#"[{{ .Nope }}]{{ if .Nope.Deeper }}x{{ end }}{{ len .L }}"#,
                d.clone()
            ),
            "[]2"
        );
        let e = run(r#"{{ eq .R 1 }}"#, d).unwrap_err();
        assert!(e.to_string().contains("incompatible types"), "{e}");
    }

    #[test]
    fn ranges_variables_and_loop_control() {
        let d =
            serde_json::json!({"M": ["a", "b", "c", "d"], "Map": {"z": 1, "a": 2}, "Empty": []});
        assert_eq!(
            ok(
                r#"{{ range $i, $m := .M }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ if eq $m "d" }}{{ break }}{{ end }}{{ $i }}{{ . }}{{ end }}"#,
                d.clone()
            ),
            "0a2c"
        );
        assert_eq!(
            ok(
                r#"{{ range $k, $v := .Map }}{{ $k }}={{ $v }};{{ end }}"#,
                d.clone()
            ),
            "a=2;z=1;"
        );
        assert_eq!(
            ok(
                r#"{{ range .Empty }}x{{ else }}none{{ end }}{{ range 3 }}{{ . }}{{ end }}"#,
                d.clone()
            ),
            "none012"
        );
        // Reassignment inside a loop is seen after it; declarations are scoped.
        assert_eq!(
            ok(
                r#"{{ $last := -1 }}{{ range $i, $_ := .M }}{{ $last = $i }}{{ $x := 1 }}{{ end }}{{ $last }}"#,
                d.clone()
            ),
            "3"
        );
        let e = run(r#"{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}"#, d.clone()).unwrap_err();
        assert!(e.to_string().contains("undefined variable: $x"), "{e}");
        // $ is the root inside range.
        assert_eq!(
            ok(r#"{{ range .M }}{{ len $.M }}{{ break }}{{ end }}"#, d),
            "4"
        );
    }

    #[test]
    fn functions() {
        let d =
            serde_json::json!({"S": "hello", "L": [1, 2, 3], "O": {"k": "<v>", "a": [true, null]}});
        assert_eq!(
            ok(
                r#"{{ slice .S 1 3 }}|{{ slice .L 1 }}|{{ len (slice .L 2) }}"#,
                d.clone()
            ),
            "el|[2,3]|1"
        );
        assert_eq!(
            ok(
                r#"{{ index .L 2 }}|{{ index .O "k" }}|{{ index .O "a" 0 }}|[{{ index .O "nope" }}]"#,
                d.clone()
            ),
            "3|<v>|true|[]"
        );
        assert_eq!(
            ok(r#"{{ json .O }}|{{ .O }}"#, d.clone()),
            r#"{"k":"\u003cv\u003e","a":[true,null]}|{"k":"\u003cv\u003e","a":[true,null]}"#
        );
        assert_eq!(
            ok(
                r#"{{ printf "%s-%d-%q-%v%%" .S 42 "q" true }}|{{ print 1 2 "a" "b" 3 }}"#,
                d.clone()
            ),
            "hello-42-\"q\"-true%|1 2ab3"
        );
        assert_eq!(
            ok(r#"{{ .S | printf "<%s>" }}|{{ "x" | eq "x" }}"#, d.clone()),
            "<hello>|true"
        );
        assert_eq!(ok(r#"{{ (index .L 0) }}{{ (.O).k }}"#, d.clone()), "1<v>");
        assert_eq!(
            ok(r#"{{ currentDate }} {{ yesterdayDate }}"#, d.clone()),
            "1970-01-01 1969-12-31"
        );
        let e = run(r#"{{ index .L 9 }}"#, d.clone()).unwrap_err();
        assert!(e.to_string().contains("index out of range"), "{e}");
        let e = run(r#"{{ slice .S 3 9 }}"#, d).unwrap_err();
        assert!(e.to_string().contains("slice index out of range"), "{e}");
    }

    #[test]
    fn trim_markers_and_comments() {
        let d = serde_json::json!({"A": "a"});
        assert_eq!(
            ok(
                "x  \n {{- .A -}} \n  y {{/* c */}}z{{- /* c\n2 */ -}}  w",
                d.clone()
            ),
            "xay zw"
        );
        assert_eq!(ok("{{ \"{{ }}\" }}{{ `raw\\n` }}", d), "{{ }}raw\\n");
    }

    #[test]
    fn caps() {
        let d = serde_json::json!({});
        let e = run(
            "{{ range $i := 100000 }}{{ range $j := 100000 }}{{ end }}{{ end }}",
            d.clone(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::TooManySteps, "{e}");
        let e = run(
            r#"{{ $s := "0123456789" }}{{ range 40 }}{{ $s = printf "%s%s" $s $s }}{{ end }}"#,
            d.clone(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::OutputTooLarge, "{e}");
        let e = run("{{ range 1000000000000 }}{{ end }}", d.clone()).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::TooManySteps, "{e}");
        let e = run("{{ range 3000000 }}xx{{ end }}", d.clone()).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::OutputTooLarge, "{e}");
        let deep = "{{ if true }}".repeat(5500) + &"{{ end }}".repeat(5500);
        assert_eq!(
            run(&deep, d.clone()).unwrap_err().kind(),
            &ErrorKind::TooDeep
        );
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(run(&parens, d).unwrap_err().kind(), &ErrorKind::TooDeep);
    }
}
