//! What a chat template lets a model do, as Ollama reads it from the
//! template: call tools, fill in the middle, think.
//!
//! - A Go template (a manifest's template layer) supports tools when it
//!   uses a variable named `tools` (`.Tools`, `$.Tools`), insert when it
//!   uses `suffix`, and thinking when a `.Thinking` field inside a `range`
//!   over `.Messages` sits between two text nodes: those are the tags that
//!   surround the model's reasoning (Ollama's `thinking.InferTags`).
//! - A Jinja template (the GGUF's `tokenizer.chat_template`) supports tools
//!   when its text holds `tools` or `tool_call`, and thinking when it holds
//!   `<think>` and `</think>` (Ollama's `chatTemplateCapabilities`); it has
//!   no insert.
//!
//! A Go template that does not parse has none of them, as in Ollama.

use crate::gotmpl::parse::{self, Arg, Node, Pipe};
use crate::{ChatTemplate, Limits};

/// The tags around a model's reasoning in its output (`<think>`, `</think>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinkTags {
    /// The text that opens the reasoning.
    pub open: String,
    /// The text that closes it.
    pub close: String,
}

/// What a template supports ([`template_capabilities`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateCaps {
    /// It renders tool definitions (`tools`).
    pub tools: bool,
    /// It renders a suffix for fill-in-the-middle (`insert`).
    pub insert: bool,
    /// It renders reasoning between these tags (`thinking`).
    pub think: Option<ThinkTags>,
    /// The text a tool call starts with in the model's output
    /// (`<tool_call>`), or `{` for a bare JSON object (Ollama's `parseTag`:
    /// the first text inside the template's `{{ if .ToolCalls }}`, cut
    /// before any `{`).
    pub tool_tag: String,
}

impl Default for TemplateCaps {
    fn default() -> TemplateCaps {
        TemplateCaps {
            tools: false,
            insert: false,
            think: None,
            tool_tag: "{".into(),
        }
    }
}

impl TemplateCaps {
    /// Ollama's names of these capabilities, in its order: `tools`,
    /// `insert`, `thinking`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.tools, "tools"),
            (self.insert, "insert"),
            (self.think.is_some(), "thinking"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }
}

/// What the template a model renders with supports: its template layer if
/// any, else its GGUF's chat template ([`ChatTemplate::choose`]).
pub fn model_capabilities(
    template_layer: Option<&str>,
    gguf_chat_template: Option<&str>,
) -> TemplateCaps {
    template_capabilities(&ChatTemplate::choose(template_layer, gguf_chat_template))
}

/// What `tmpl` supports (see the module docs).
pub fn template_capabilities(tmpl: &ChatTemplate) -> TemplateCaps {
    match tmpl {
        ChatTemplate::Jinja(s) => TemplateCaps {
            tools: s.contains("tools") || s.contains("tool_call"),
            insert: false,
            think: (s.contains("<think>") && s.contains("</think>")).then(|| ThinkTags {
                open: "<think>".into(),
                close: "</think>".into(),
            }),
            tool_tag: if s.contains("<tool_call>") {
                "<tool_call>".into()
            } else {
                "{".into()
            },
        },
        ChatTemplate::Go(s) => {
            let Ok(nodes) = parse::parse(s, Limits::default().max_depth) else {
                return TemplateCaps::default();
            };
            let mut vars = Vec::new();
            parse::identifiers(&nodes, &mut vars);
            let has = |v: &str| vars.iter().any(|x| x == v);
            let mut tags = Tags::default();
            tags.list(&nodes, false);
            TemplateCaps {
                tools: has("tools"),
                insert: has("suffix"),
                think: tags.found(),
                tool_tag: tool_tag(&nodes),
            }
        }
    }
}

/// Ollama's `InferTags`: for every `.Thinking` field inside a range over
/// `.Messages`, the trimmed first and last text nodes of the nearest list
/// around it (a later field overrides an earlier one, node by node).
#[derive(Default)]
struct Tags {
    open: String,
    close: String,
}

impl Tags {
    fn found(self) -> Option<ThinkTags> {
        (!self.open.is_empty() && !self.close.is_empty()).then_some(ThinkTags {
            open: self.open,
            close: self.close,
        })
    }

    /// Visits `list`; `in_messages`: the nearest range ranges over `.Messages`.
    fn list(&mut self, list: &[Node], in_messages: bool) {
        for n in list {
            match n {
                Node::Action(p) => self.pipe(p, list, in_messages),
                Node::If(b) | Node::With(b) => {
                    self.pipe(&b.pipe, list, in_messages);
                    self.list(&b.then, in_messages);
                    self.list(&b.else_, in_messages);
                }
                Node::Range(b) => {
                    let over = uses_messages(&b.pipe);
                    self.pipe(&b.pipe, list, in_messages);
                    self.list(&b.then, over);
                    self.list(&b.else_, over);
                }
                _ => {}
            }
        }
    }

    fn pipe(&mut self, p: &Pipe, list: &[Node], in_messages: bool) {
        for a in p.cmds.iter().flatten() {
            match a {
                Arg::Field(ch) if in_messages && ch.first().is_some_and(|f| f == "Thinking") => {
                    let text = |n: Option<&Node>| match n {
                        Some(Node::Text(t)) => Some(t.trim().to_string()),
                        _ => None,
                    };
                    if let Some(t) = text(list.first()) {
                        self.open = t;
                    }
                    if let Some(t) = text(list.last()) {
                        self.close = t;
                    }
                }
                Arg::Sub(sub, _) => self.pipe(sub, list, in_messages),
                _ => {}
            }
        }
    }
}

/// Ollama's `parseTag`: the first non-blank text inside the first
/// `{{ if … .ToolCalls … }}`, up to any `{`, trimmed; else `{`.
fn tool_tag(nodes: &[Node]) -> String {
    fn calls_if(nodes: &[Node]) -> Option<&[Node]> {
        nodes.iter().find_map(|n| match n {
            Node::If(b) if names_tool_calls(&b.pipe) => Some(b.then.as_slice()),
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                calls_if(&b.then).or_else(|| calls_if(&b.else_))
            }
            _ => None,
        })
    }
    fn names_tool_calls(p: &Pipe) -> bool {
        p.cmds.iter().flatten().any(|a| match a {
            Arg::Field(ch) => ch.iter().any(|f| f == "ToolCalls"),
            _ => false,
        })
    }
    /// Depth first, stopping at the first action.
    fn first_text(nodes: &[Node]) -> Option<&str> {
        for n in nodes {
            match n {
                Node::Text(t) if t.trim().is_empty() => {}
                Node::Text(t) => return Some(t),
                Node::If(b) | Node::Range(b) | Node::With(b) => {
                    return first_text(&b.then).or_else(|| first_text(&b.else_));
                }
                Node::Action(_) => return None,
                _ => {}
            }
        }
        None
    }
    let tag = calls_if(nodes)
        .and_then(first_text)
        .map(|t| t.replace("\r\n", "\n"))
        .unwrap_or_default();
    let tag = tag.split('{').next().unwrap_or_default().trim();
    if tag.is_empty() {
        "{".into()
    } else {
        tag.into()
    }
}

/// Whether a range's pipe names the field `.Messages`.
fn uses_messages(p: &Pipe) -> bool {
    p.cmds.iter().flatten().any(|a| match a {
        Arg::Field(ch) => ch.first().is_some_and(|f| f == "Messages"),
        Arg::Sub(sub, _) => uses_messages(sub),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(s: &str) -> TemplateCaps {
        template_capabilities(&ChatTemplate::Go(s.into()))
    }

    fn think(open: &str, close: &str) -> Option<ThinkTags> {
        Some(ThinkTags {
            open: open.into(),
            close: close.into(),
        })
    }

    #[test]
    fn go_templates_by_their_variables() {
        assert_eq!(go("{{ .Prompt }}"), TemplateCaps::default());
        let t = go("{{ if .Tools }}{{ range $.Tools }}{{ . }}{{ end }}{{ end }}{{ .Prompt }}");
        assert_eq!(t.names(), ["tools"]);
        assert_eq!(go("{{ .Prompt }}<FILL>{{ .Suffix }}").names(), ["insert"]);
        // prose and string literals are not variables
        assert_eq!(go("tools suffix {{ \"Tools\" }}"), TemplateCaps::default());
        // a template that does not parse supports nothing
        assert_eq!(go("{{ if .Tools }}"), TemplateCaps::default());
    }

    #[test]
    fn go_thinking_tags_are_inferred() {
        let qwen3 = "{{- range $i, $_ := .Messages }}{{ if eq .Role \"assistant\" }}<|im_start|>assistant\n\
                     {{ if (and $.IsThinkSet .Thinking) -}}\n<think>{{ .Thinking }}</think>\n{{ end -}}\
                     {{ .Content }}<|im_end|>\n{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n\
                     {{ end }}{{ end }}<|im_start|>assistant\n";
        let c = go(qwen3);
        assert_eq!(c.think, think("<think>", "</think>"));
        assert_eq!(c.names(), ["thinking"]);
        // .Thinking outside a range over .Messages tells nothing
        assert_eq!(go("<think>{{ .Thinking }}</think>").think, None);
        // nor does one without text on both sides
        assert_eq!(
            go("{{ range .Messages }}<t>{{ .Thinking }}{{ end }}").think,
            None
        );
        // $.Messages is a variable, not the field Ollama looks for
        assert_eq!(
            go("{{ range $.Messages }}<t>{{ .Thinking }}</t>{{ end }}").think,
            None
        );
    }

    #[test]
    fn tool_call_tags() {
        let t = "{{ range .Messages }}{{ if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}\
                 {\"name\": \"{{ .Function.Name }}\"}{{ end }}</tool_call>{{ end }}{{ end }}";
        assert_eq!(go(t).tool_tag, "<tool_call>");
        let t = "{{ range .Messages }}{{ if .ToolCalls }}[TOOL_CALLS] [{{ range .ToolCalls }}{{ end }}]{{ end }}{{ end }}";
        assert_eq!(
            go(t).tool_tag,
            "[TOOL_CALLS] [",
            "cut at the first brace only"
        );
        // JSON right away, or no .ToolCalls at all: any object
        let t = "{{ range .Messages }}{{ if .ToolCalls }}{\"name\": {{ end }}{{ end }}";
        assert_eq!(go(t).tool_tag, "{");
        assert_eq!(go("{{ .Prompt }}").tool_tag, "{");
        let j = |s: &str| template_capabilities(&ChatTemplate::Jinja(s.into())).tool_tag;
        assert_eq!(j("{{ '<tool_call>' }}{{ tools }}"), "<tool_call>");
        assert_eq!(j("{{ tools }}"), "{");
    }

    #[test]
    fn jinja_templates_by_their_text() {
        let j = |s: &str| template_capabilities(&ChatTemplate::Jinja(s.into()));
        assert_eq!(j("{{ messages }}"), TemplateCaps::default());
        assert_eq!(j("{% if tools %}{% endif %}").names(), ["tools"]);
        assert_eq!(j("{{ m.tool_calls }}").names(), ["tools"]);
        assert_eq!(
            j("{{ '<think>' }}{{ '</think>' }}").think,
            think("<think>", "</think>")
        );
        assert_eq!(j("{{ '<think>' }}").think, None);
        assert!(!j("{{ suffix }}").insert);
    }
}
