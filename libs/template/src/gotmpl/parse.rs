//! Lexer and parser for the subset of Go's `text/template` that Ollama's
//! templates use.

use super::lex::{lex, syntax, Item, Spaced, Tok};
use crate::{Error, ErrorKind, Result};

/// A node of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// Literal text, already trimmed by `{{-`/`-}}`.
    Text(String),
    /// `{{ pipeline }}`: printed unless it declares or assigns a variable.
    Action(Pipe),
    /// `{{ if }}`; `else if` is an `If` alone in `else_`.
    If(Branch),
    /// `{{ with }}`; `else with` is a `With` alone in `else_`.
    With(Branch),
    /// `{{ range }}`: the pipe may declare one or two variables.
    Range(Branch),
    /// `{{ break }}`.
    Break,
    /// `{{ continue }}`.
    Continue,
}

/// The common shape of `if`, `with` and `range`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Branch {
    pub pipe: Pipe,
    pub then: Vec<Node>,
    pub else_: Vec<Node>,
    pub line: usize,
}

/// Commands joined by `|`, optionally declaring (`:=`) or assigning (`=`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pipe {
    pub decl: Vec<String>,
    pub assign: bool,
    pub cmds: Vec<Vec<Arg>>,
    pub line: usize,
}

/// An operand of a command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// `.`
    Dot,
    /// `.A.B`
    Field(Vec<String>),
    /// `$x.A.B`, `$` for the root.
    Var(String, Vec<String>),
    /// A string literal.
    Str(String),
    /// An integer literal (or a character constant).
    Int(i64),
    /// A float literal.
    Float(f64),
    /// `true`/`false`.
    Bool(bool),
    /// `nil`.
    Nil,
    /// A function name.
    Func(String),
    /// `( pipeline ).A.B`
    Sub(Box<Pipe>, Vec<String>),
}

/// Functions the interpreter knows; others are a parse error, as in Go.
pub(crate) const FUNCS: [&str; 20] = [
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "len",
    "index",
    "slice",
    "print",
    "printf",
    "println",
    "json",
    "html",
    "urlquery",
    "currentDate",
    "yesterdayDate",
];

struct Parser {
    items: std::vec::IntoIter<Item>,
    depth: usize,
    max_depth: usize,
    ranges: usize,
}

/// How a list ended.
enum Stop {
    Eof,
    EndTag(usize),
    Else(Vec<Spaced>, usize),
}

/// Parses a template; nesting deeper than `max_depth` is an error.
pub(crate) fn parse(src: &str, max_depth: usize) -> Result<Vec<Node>> {
    let items = lex(src)?;
    let mut p = Parser {
        items: items.into_iter(),
        depth: 0,
        max_depth,
        ranges: 0,
    };
    let (nodes, end) = p.list()?;
    match end {
        Stop::Eof => Ok(nodes),
        Stop::EndTag(l) => Err(syntax(l, "unexpected {{end}}")),
        Stop::Else(_, l) => Err(syntax(l, "unexpected {{else}}")),
    }
}

impl Parser {
    fn enter(&mut self, line: usize) -> Result<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(Error::new(
                ErrorKind::TooDeep,
                format!(
                    "go template: line {line}: nesting is deeper than the limit of {}",
                    self.max_depth
                ),
            ));
        }
        Ok(())
    }

    fn list(&mut self) -> Result<(Vec<Node>, Stop)> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let (toks, line) = match item {
                Item::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Item::Action(toks, line) => (toks, line),
            };
            let kw = match toks.first() {
                Some((Tok::Word(w), _)) => w.as_str(),
                None => return Err(syntax(line, "missing value for command")),
                _ => "",
            };
            match kw {
                "end" => {
                    if toks.len() > 1 {
                        return Err(syntax(line, "unexpected tokens after end"));
                    }
                    return Ok((nodes, Stop::EndTag(line)));
                }
                "else" => return Ok((nodes, Stop::Else(toks[1..].to_vec(), line))),
                "if" | "with" | "range" => {
                    nodes.push(self.branch(kw, &toks[1..], line)?);
                }
                "break" | "continue" => {
                    if self.ranges == 0 {
                        return Err(syntax(line, format!("{{{{{kw}}}}} outside {{{{range}}}}")));
                    }
                    if toks.len() > 1 {
                        return Err(syntax(line, format!("unexpected tokens after {kw}")));
                    }
                    nodes.push(if kw == "break" {
                        Node::Break
                    } else {
                        Node::Continue
                    });
                }
                "define" | "template" | "block" => {
                    return Err(syntax(line, format!("{{{{{kw}}}}} is not supported")));
                }
                _ => nodes.push(Node::Action(self.pipe(&toks, line, false)?)),
            }
        }
        Ok((nodes, Stop::Eof))
    }

    fn branch(&mut self, kw: &str, toks: &[Spaced], line: usize) -> Result<Node> {
        self.enter(line)?;
        let pipe = self.pipe(toks, line, kw == "range")?;
        if pipe.cmds.is_empty() {
            return Err(syntax(line, format!("missing value for {kw}")));
        }
        if kw == "range" {
            self.ranges += 1;
        }
        let (then, end) = self.list()?;
        if kw == "range" {
            self.ranges -= 1;
        }
        let else_ = match end {
            Stop::Eof => return Err(syntax(line, format!("unclosed {{{{{kw}}}}}"))),
            Stop::EndTag(_) => Vec::new(),
            Stop::Else(rest, l) => match rest.first() {
                None => {
                    let (e, end) = self.list()?;
                    match end {
                        Stop::EndTag(_) => e,
                        Stop::Eof => return Err(syntax(line, format!("unclosed {{{{{kw}}}}}"))),
                        Stop::Else(_, l2) => {
                            return Err(syntax(l2, "expected end; found {{else}}"))
                        }
                    }
                }
                // `else if` / `else with` share this branch's {{end}}.
                Some((Tok::Word(w), _)) if (w == "if" || w == "with") && kw != "range" => {
                    let w = w.clone();
                    vec![self.branch(&w, &rest[1..], l)?]
                }
                _ => return Err(syntax(l, "unexpected tokens after else")),
            },
        };
        self.depth -= 1;
        let b = Branch {
            pipe,
            then,
            else_,
            line,
        };
        Ok(match kw {
            "if" => Node::If(b),
            "with" => Node::With(b),
            _ => Node::Range(b),
        })
    }

    fn pipe(&mut self, toks: &[Spaced], line: usize, range: bool) -> Result<Pipe> {
        let mut decl = Vec::new();
        let mut assign = false;
        let mut rest = toks;
        let var = |t: &Spaced| match t {
            (Tok::Var(v, c), _) if c.is_empty() && v != "$" => Some(v.clone()),
            _ => None,
        };
        match rest {
            [v, (Tok::Declare, _), ..] | [v, (Tok::Assign, _), ..] if var(v).is_some() => {
                decl.push(var(v).unwrap_or_default());
                assign = rest[1].0 == Tok::Assign;
                rest = &rest[2..];
            }
            [a, (Tok::Comma, _), b, (Tok::Declare, _), ..]
                if range && var(a).is_some() && var(b).is_some() =>
            {
                decl.push(var(a).unwrap_or_default());
                decl.push(var(b).unwrap_or_default());
                rest = &rest[4..];
            }
            _ => {}
        }
        let (pipe, used) = self.commands(rest, line)?;
        if used != rest.len() {
            return Err(syntax(line, "unexpected \")\" in command"));
        }
        if !decl.is_empty() && pipe.is_empty() {
            return Err(syntax(line, "missing value for declaration"));
        }
        Ok(Pipe {
            decl,
            assign,
            cmds: pipe,
            line,
        })
    }

    /// Parses commands until the end or an unmatched `)`; returns them and
    /// how many tokens were used.
    fn commands(&mut self, toks: &[Spaced], line: usize) -> Result<(Vec<Vec<Arg>>, usize)> {
        let mut cmds = Vec::new();
        let mut cur: Vec<Arg> = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let (tok, _) = &toks[i];
            i += 1;
            let arg = match tok {
                Tok::RParen => {
                    i -= 1;
                    break;
                }
                Tok::Pipe => {
                    if cur.is_empty() {
                        return Err(syntax(line, "missing command before |"));
                    }
                    cmds.push(std::mem::take(&mut cur));
                    continue;
                }
                Tok::LParen => {
                    self.enter(line)?;
                    let (sub, used) = self.commands(&toks[i..], line)?;
                    self.depth -= 1;
                    i += used;
                    if toks.get(i).map(|t| &t.0) != Some(&Tok::RParen) {
                        return Err(syntax(line, "unclosed left paren"));
                    }
                    i += 1;
                    if sub.is_empty() {
                        return Err(syntax(line, "missing value in parentheses"));
                    }
                    let mut chain = Vec::new();
                    if let Some((Tok::Field(c), false)) = toks.get(i) {
                        chain = c.clone();
                        i += 1;
                    }
                    Arg::Sub(
                        Box::new(Pipe {
                            decl: Vec::new(),
                            assign: false,
                            cmds: sub,
                            line,
                        }),
                        chain,
                    )
                }
                Tok::Dot => Arg::Dot,
                Tok::Field(c) => Arg::Field(c.clone()),
                Tok::Var(v, c) => Arg::Var(v.clone(), c.clone()),
                Tok::Str(s) => Arg::Str(s.clone()),
                Tok::Int(n) => Arg::Int(*n),
                Tok::Float(f) => Arg::Float(*f),
                Tok::Word(w) => match w.as_str() {
                    "true" => Arg::Bool(true),
                    "false" => Arg::Bool(false),
                    "nil" => Arg::Nil,
                    w if FUNCS.contains(&w) => Arg::Func(w.to_string()),
                    w => return Err(syntax(line, format!("function {w:?} not defined"))),
                },
                Tok::Comma | Tok::Declare | Tok::Assign => {
                    return Err(syntax(line, "unexpected declaration or comma"));
                }
            };
            cur.push(arg);
        }
        if !cur.is_empty() {
            cmds.push(cur);
        } else if !cmds.is_empty() {
            return Err(syntax(line, "missing command after |"));
        }
        Ok((cmds, i))
    }
}

/// Names used as fields or variables, lowercased, like Ollama's
/// `Template.Vars` (which decides between messages and legacy mode).
pub(crate) fn identifiers(nodes: &[Node], out: &mut Vec<String>) {
    fn pipe(p: &Pipe, out: &mut Vec<String>) {
        for c in &p.cmds {
            for a in c {
                match a {
                    Arg::Field(ch) => out.extend(ch.iter().map(|s| s.to_lowercase())),
                    Arg::Var(v, ch) => {
                        out.push(v.to_lowercase());
                        out.extend(ch.iter().map(|s| s.to_lowercase()));
                    }
                    Arg::Sub(p, _) => pipe(p, out),
                    _ => {}
                }
            }
        }
    }
    for n in nodes {
        match n {
            Node::Action(p) => pipe(p, out),
            Node::If(b) | Node::With(b) | Node::Range(b) => {
                pipe(&b.pipe, out);
                identifiers(&b.then, out);
                identifiers(&b.else_, out);
            }
            _ => {}
        }
    }
}

/// The template cut right after the first `.Response` field, in tree order,
/// as Ollama renders the last turn of a legacy template.
pub(crate) fn cut_after_response(nodes: &[Node], cut: &mut bool) -> Vec<Node> {
    fn pipe(p: &Pipe, cut: &mut bool) -> Option<Pipe> {
        let mut cmds = Vec::new();
        for c in &p.cmds {
            let mut args = Vec::new();
            for a in c {
                if *cut {
                    continue;
                }
                match a {
                    Arg::Field(ch) if ch.iter().any(|s| s == "Response") => {
                        *cut = true;
                        args.push(a.clone());
                    }
                    Arg::Sub(sp, ch) => {
                        if let Some(sp) = pipe(sp, cut) {
                            args.push(Arg::Sub(Box::new(sp), ch.clone()));
                        }
                    }
                    a => args.push(a.clone()),
                }
            }
            if !args.is_empty() {
                cmds.push(args);
            }
        }
        (!cmds.is_empty()).then(|| Pipe { cmds, ..p.clone() })
    }
    let mut out = Vec::new();
    for n in nodes {
        if *cut {
            break;
        }
        match n {
            Node::Action(p) => {
                if let Some(p) = pipe(p, cut) {
                    out.push(Node::Action(p));
                }
            }
            Node::If(b) | Node::With(b) | Node::Range(b) => {
                let nb = Branch {
                    pipe: b.pipe.clone(),
                    then: cut_after_response(&b.then, cut),
                    else_: cut_after_response(&b.else_, cut),
                    line: b.line,
                };
                out.push(match n {
                    Node::If(_) => Node::If(nb),
                    Node::With(_) => Node::With(nb),
                    _ => Node::Range(nb),
                });
            }
            n => out.push(n.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Vec<Node>> {
        parse(s, 50)
    }

    #[test]
    fn trims_and_comments() {
        let n = p("a  {{- /* c */ -}}  b {{- \"x\" -}} \n c{{/* d */}}").unwrap();
        assert_eq!(
            n,
            vec![
                Node::Text("a".into()),
                Node::Text("b".into()),
                Node::Action(Pipe {
                    decl: vec![],
                    assign: false,
                    cmds: vec![vec![Arg::Str("x".into())]],
                    line: 1
                }),
                Node::Text("c".into()),
            ]
        );
        // `{{-3}}` is the number -3, not a trim marker.
        assert!(
            matches!(&p("{{-3}}").unwrap()[0], Node::Action(p) if p.cmds[0][0] == Arg::Int(-3))
        );
    }

    #[test]
    fn errors() {
        for (src, want) in [
            ("{{ .Prompt ", "unclosed action"),
            ("{{ if .X }}", "unclosed {{if}}"),
            ("{{ end }}", "unexpected {{end}}"),
            ("{{ break }}", "outside {{range}}"),
            ("{{ foo 1 }}", "function \"foo\" not defined"),
            ("{{ template \"x\" }}", "not supported"),
            ("{{ (1 }}", "unclosed left paren"),
            ("{{ \"abc }}", "unterminated quoted string"),
            ("{{ → }}", "unexpected '→' in action"),
            ("{{ ×x }}", "unexpected '×' in action"),
            ("{{ é }}", "function \"é\" not defined"),
        ] {
            let e = p(src).unwrap_err();
            assert!(e.to_string().contains(want), "{src}: {e}");
            assert_eq!(e.kind(), &ErrorKind::Syntax);
        }
    }

    #[test]
    fn vars() {
        let n = p("{{ range $i, $m := .Messages }}{{ $.System }}{{ (.A).B }}{{ end }}").unwrap();
        let mut v = Vec::new();
        identifiers(&n, &mut v);
        assert_eq!(v, ["messages", "$", "system", "a"]);
    }
}
